"""Content codings of an engine's whole answer: an engine (a hosted API behind a CDN, say) that compressed its answer
although the hub asked for none gets it decoded here, so that the gateway can read its errors, usage and response
ids. Streams pass on as they are."""

from __future__ import annotations

import zlib


def decoded(data: bytes, headers: list[tuple[bytes, bytes]]) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """A whole answer that an engine compressed although the hub asked for none (a hosted API behind a CDN, say):
    gzip and deflate decoded, so that its errors, usage and response ids can be read; other codings pass on as
    they are, with their header (streams always do)."""
    coding = next((v for k, v in headers if k == b"content-encoding"), None)
    if coding is None or coding.strip().lower() not in (b"gzip", b"x-gzip", b"deflate"):
        return data, headers
    try:
        plain = inflate(data)
    except zlib.error:
        try:
            plain = zlib.decompress(data, -15)  # deflate sent raw, as some servers do
        except zlib.error:
            return data, headers
    return plain, [(k, v) for k, v in headers if k != b"content-encoding"]


def inflate(data: bytes) -> bytes:
    """gzip or zlib data decoded, told apart by its header; gzip members back to back (RFC 1952 2.2: a server that
    compresses as it writes may send several) all decoded, not only the first. zlib.error if it is neither."""
    out = []
    while True:
        d = zlib.decompressobj(47)
        out.append(d.decompress(data))
        if not d.eof:
            raise zlib.error("incomplete or truncated stream")
        data = d.unused_data
        if data[:2] != b"\x1f\x8b":  # the end, or bytes after the last member: ignored, as zlib.decompress does
            return b"".join(out)
