"""A cloud-like backend: the emulator behind a TCP proxy that delays every byte.

The emulator answers in microseconds; real Blob Storage takes tens of milliseconds
before the first byte of a GET. This kernel has no netem, so the delay is added in user
space: a proxy on 127.0.0.1 that holds each chunk it reads for a fixed time before
passing it on, in each direction. It is a delay line, not a throttle: chunks read while
others wait are forwarded in order, each at its own arrival time plus the delay, so a
request costs one round trip more (2 × the one-way delay) and bandwidth is unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator

CHUNK = 256 * 1024
QUEUED_CHUNKS = 64  # held per direction at most (16 MiB): a slow reader slows its source


class DelayProxy:
    """Forwards 127.0.0.1:port to 127.0.0.1:target_port, ONE_WAY_S late each way."""

    def __init__(self, target_port: int, one_way_s: float):
        self.target_port = target_port
        self.one_way_s = one_way_s
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None

    def __enter__(self) -> DelayProxy:
        self._thread = threading.Thread(target=self._run, name="delay-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10.0) or not self.port:
            raise RuntimeError("the delay proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10.0)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()
            server.close()

    async def _connection(self, client_r: asyncio.StreamReader,
                          client_w: asyncio.StreamWriter) -> None:  # fmt: skip
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            return
        writers = (client_w, server_w)
        try:
            await asyncio.gather(
                self._pipe(client_r, server_w, writers), self._pipe(server_r, client_w, writers)
            )
        except asyncio.CancelledError:  # the proxy stops: its connections end with it, quietly
            pass
        finally:
            for writer in writers:
                writer.close()

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter,
                    writers: tuple[asyncio.StreamWriter, ...]) -> None:  # fmt: skip
        """Read as fast as the source sends; write each chunk ONE_WAY_S after it came. An
        end of stream is passed on as such (HTTP half-closes); a failure closes both sides."""
        line: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=QUEUED_CHUNKS)

        async def deliver() -> None:
            while True:
                due, chunk = await line.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not chunk:
                    if sink.can_write_eof():
                        sink.write_eof()
                    return
                sink.write(chunk)
                await sink.drain()

        delivering = asyncio.create_task(deliver())
        try:
            while True:
                chunk = await source.read(CHUNK)
                await line.put((time.monotonic() + self.one_way_s, chunk))
                if not chunk:
                    break
            await delivering
        except Exception:  # a reset or a write to a closed peer: the connection is over
            delivering.cancel()
            for writer in writers:
                writer.close()


@contextlib.contextmanager
def delayed(target_port: int, one_way_s: float) -> Iterator[DelayProxy]:
    with DelayProxy(target_port, one_way_s) as proxy:
        yield proxy
