"""A plain web server on 127.0.0.1 serving a folder, for datastores of public URLs.

Python's http.server, as many public servers: folder indexes as HTML links (what
fsspec's http listing reads), a Last-Modified header to the second, and no ETag and no
ranges. With `etags=True` it sends an ETag (changed whenever a file is rewritten) and
answers Range requests, as object stores and CDNs do.
"""

from __future__ import annotations

import os
import re
import threading
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


class _Handler(SimpleHTTPRequestHandler):
    etags = False
    requests: list[tuple[str, str, str | None]]  # the server's (method, path, Range header)

    def log_message(self, *_args: object) -> None:  # quiet tests
        return

    def send_head(self):  # type: ignore[no-untyped-def]
        self.requests.append((self.command, self.path, self.headers.get("Range")))
        path = self.translate_path(self.path)
        if not self.etags or os.path.isdir(path):
            return super().send_head()
        try:
            source = open(path, "rb")  # noqa: SIM115 (handed to the caller, as the base does)
        except OSError:
            self.send_error(HTTPStatus.NOT_FOUND, "File not found")
            return None
        st = os.fstat(source.fileno())
        start, end = 0, st.st_size
        wanted = _RANGE.fullmatch(self.headers.get("Range", ""))
        if wanted:
            start = int(wanted.group(1))
            end = min(st.st_size, int(wanted.group(2)) + 1 if wanted.group(2) else st.st_size)
            self.send_response(HTTPStatus.PARTIAL_CONTENT)
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{st.st_size}")
        else:
            self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{st.st_mtime_ns:x}-{st.st_size:x}"')
        self.end_headers()
        source.seek(start)
        return _Limited(source, end - start)


class _Limited:
    """The first LENGTH bytes of an open file, as copyfile() reads them."""

    def __init__(self, source, length: int):  # type: ignore[no-untyped-def]
        self.source, self.left = source, length

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        data = self.source.read(size)
        self.left -= len(data)
        return data

    def close(self) -> None:
        self.source.close()


class WebServer:
    """Serves FOLDER at http://127.0.0.1:PORT/ in a thread until stop()."""

    def __init__(self, folder: Path, *, etags: bool = False):
        self.folder = folder
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        handler = type("Handler", (_Handler,), {"etags": etags, "requests": self.requests})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=folder))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def gets(self, path: str) -> list[str | None]:
        """The Range header (None: the whole file) of each GET of PATH so far."""
        return [wanted for method, got, wanted in self.requests if (method, got) == ("GET", path)]

    def put(self, files: dict[str, bytes]) -> None:
        for path, data in files.items():
            target = self.folder / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
