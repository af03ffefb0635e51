"""Response bodies: read within a size cap while inflating them, and decoded to text.

Bodies are counted after decompression, so a gzip bomb stops at the cap instead of filling
memory; text is decoded by byte-order mark, declared charset, <meta charset>, or a guess.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from helpline.common.errors import Permanent

_BOMS = ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([\w.:-]+)""", re.IGNORECASE)


async def read_body(response: httpx.Response, max_bytes: int) -> bytes:
    """A response's body, inflated (gzip, deflate) and cut off with Permanent past `max_bytes`."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise Permanent(f"response larger than {max_bytes} bytes")
    inflater = _inflater(response.headers.get("content-encoding", ""))
    body = bytearray()
    try:
        async for part in _raw_parts(response):
            # Inflate no more than one byte past the cap: a bomb stops here, early.
            body += inflater(part, max_bytes - len(body) + 1) if inflater else part
            if len(body) > max_bytes:
                raise Permanent(f"response larger than {max_bytes} bytes")
    except zlib.error as exc:
        raise Permanent("could not decode the compressed response") from exc
    return bytes(body)


async def _raw_parts(response: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for part in response.aiter_raw():
            yield part
    except httpx.StreamConsumed:
        # A response built in memory (an injected transport) has no raw stream left.
        yield response.content


Inflater = Callable[[bytes, int], bytes]


def _inflater(content_encoding: str) -> Inflater | None:
    encoding = content_encoding.strip().lower()
    if encoding in {"", "identity"}:
        return None
    if encoding in {"gzip", "x-gzip"}:
        return zlib.decompressobj(wbits=zlib.MAX_WBITS | 16).decompress
    if encoding == "deflate":
        return _DeflateInflater()
    raise Permanent(f"unsupported content encoding {encoding[:20]!r}")


class _DeflateInflater:
    """`deflate` is zlib-wrapped by the standard, raw in practice: try both."""

    def __init__(self) -> None:
        self._inner: Any = None

    def __call__(self, data: bytes, max_length: int) -> bytes:
        if self._inner is None:
            self._inner = zlib.decompressobj()
            try:
                return bytes(self._inner.decompress(data, max_length))
            except zlib.error:
                self._inner = zlib.decompressobj(-zlib.MAX_WBITS)
        return bytes(self._inner.decompress(data, max_length))


def charset_param(content_type: str) -> str | None:
    """The charset a Content-Type header names, or None."""
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip("\"'") or None
    return None


def decode_body(body: bytes, charset: str | None) -> str:
    """Decode a page by its byte-order mark, the header's charset, <meta charset>, or UTF-8."""
    for bom, encoding in _BOMS:
        if body.startswith(bom):
            return body.decode(encoding, errors="replace")
    encoding = _text_encoding(charset) or _sniff_encoding(body)
    return body.decode(encoding, errors="replace")


def _text_encoding(name: str | None) -> str | None:
    if not name:
        return None
    try:
        # Rejects unknown names and also bytes-to-bytes codecs such as "zlib".
        b"a".decode(name, errors="ignore")
    except LookupError:
        return None
    return name


def _sniff_encoding(body: bytes) -> str:
    match = _META_CHARSET.search(body[:4096])
    if match is not None:
        declared = _text_encoding(match.group(1).decode("ascii", errors="ignore"))
        if declared is not None:
            return declared
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        # What browsers assume for undeclared legacy pages.
        return "cp1252"
    return "utf-8"
