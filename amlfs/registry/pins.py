"""Pins by content: how a file whose store reports no etag (an http server that sends
no ETag header) is pinned without a column of its own.

Such a file is hashed when it is registered. Its MD5 goes into the entry's `md5`, and its
`etag` (a required column) holds a token that carries the same MD5 and can never be an
entity tag a server sent: an ETag is a quoted string without spaces (RFC 9110,
section 8.8.3), and this token is neither quoted nor free of spaces. So a block cache key
(source, etag) names the content itself, the manifest digest covers the pin like any
other, and a token is never mistaken for something to send in an If-Match header.
"""

from __future__ import annotations

import re

CONTENT_PREFIX = "content-md5 "
_TOKEN = re.compile(r"content-md5 ([0-9a-f]{32})")


def content_etag(md5: bytes) -> str:
    """The etag of a file pinned by content whose MD5 is MD5."""
    return f"{CONTENT_PREFIX}{md5.hex()}"


def pinned_md5(etag: str) -> bytes | None:
    """The MD5 a file is pinned by, if ETAG is a pin by content; None for a store's etag."""
    match = _TOKEN.fullmatch(etag)
    return bytes.fromhex(match.group(1)) if match else None


def problem(etag: str, md5: bytes | None) -> str | None:
    """What is wrong with a pin by content as a manifest gives it (ETAG and MD5), if ETAG
    is one at all; None when it is well formed or a store's etag."""
    if not etag.startswith(CONTENT_PREFIX):
        return None
    pinned = pinned_md5(etag)
    if pinned is None:
        return f"etag {etag!r}: a pin by content is {CONTENT_PREFIX!r} and 32 hex digits"
    if md5 != pinned:
        return f"etag {etag!r} pins by content, so md5 must be {pinned.hex()}"
    return None
