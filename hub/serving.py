"""How `hub serve` runs uvicorn: its HTTP options from the registry, and uvicorn's httptools protocol bounded by the
hub's limits on a request's head. The protocol subclasses a private class of uvicorn's (its httptools_impl): uvicorn
is pinned exactly in locks/hub-test.txt and locks/hub.txt, and tests/test_hostile.py's 431 cases fail first when an
upgrade moves what it relies on (`make test-latest` names the package)."""

from __future__ import annotations

import json
from typing import Any

from hub.config import HubSettings

CLIENT_KEEPALIVE_S = 75  # longer than clients keep an idle connection (httpx, so the openai SDK: 5 s)


def server_options(hub: HubSettings) -> dict[str, Any]:
    """uvicorn's HTTP options: the [hub] limits on a request's head (its request line and headers) with uvicorn's
    httptools protocol, bounded (where httptools is missing, h11's own bound on the head: a plain 400 then); and a
    keep-alive longer than the clients', so that a client never reuses a connection the hub is closing that moment
    (uvicorn's 5 s equals httpx's: under load a request now and then failed with a read error)."""
    max_bytes = int(hub.max_header_kb * 1024)
    options: dict[str, Any] = {"timeout_keep_alive": CLIENT_KEEPALIVE_S}
    try:
        return {**options, "http": bounded_http_protocol(max_bytes, hub.max_headers)}
    except ImportError:
        return {**options, "http": "h11", "h11_max_incomplete_event_size": max_bytes}


READ_SLACK = 1024 * 1024  # more than one read of the event loop's transports (256 KB): see bounded_http_protocol


def bounded_http_protocol(max_bytes: int, max_headers: int) -> type:
    """uvicorn's httptools protocol that answers 431 (an OpenAI-shaped error, Anthropic's on /v1/messages) and
    closes the connection when a request's head passes `max_bytes` or `max_headers`. httptools itself has no
    bound: it would keep a 1 GB header in memory.

    The head is measured exactly as the parser hands it over (the URL in pieces, each header whole). A header is
    handed over only once it ends, so the raw bytes that arrive while a head is open are counted too, against
    max_bytes plus READ_SLACK: a read may also hold the end of the previous request on the connection (pipelined),
    and that must not count; memory stays bounded whatever the client sends."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from hub.endpoints import dialect_of
    from hub.errors import HeadersTooLarge
    from hub.vocab import shaped_error

    too_big = (f"the request line and headers are larger than {max_bytes / 1024:g} KB, the hub's limit ([hub] "
               "max_header_kb in the registry)")
    too_many = f"the request has more than {max_headers} headers, the hub's limit ([hub] max_headers in the registry)"

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        in_head = False
        head_bytes = 0  # of the open head, as parsed
        raw_bytes = 0  # read while it was open
        refused: HeadersTooLarge | None = None

        def refuse(self, message: str) -> None:
            """Stop the parser: uvicorn catches the error and answers through send_400_response."""
            self.refused = HeadersTooLarge(message)
            raise self.refused

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.in_head, self.head_bytes, self.raw_bytes = True, 0, 0

        def on_url(self, url: bytes) -> None:
            self.head_bytes += len(url)
            if self.head_bytes > max_bytes:
                self.refuse(too_big)
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self.head_bytes += len(name) + len(value) + 4
            if self.head_bytes > max_bytes:
                self.refuse(too_big)
            if len(self.headers) >= max_headers:
                self.refuse(too_many)
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self.in_head = False
            super().on_headers_complete()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.in_head and not self.transport.is_closing():
                self.raw_bytes += len(data)
                if self.raw_bytes > max_bytes + READ_SLACK:
                    self.refused = HeadersTooLarge(too_big)
                    self.send_400_response(too_big)

        def send_400_response(self, msg: str) -> None:
            if self.refused is None:
                super().send_400_response(msg)
                return
            path = self.url.split(b"?", 1)[0].decode("latin-1")
            body = json.dumps(shaped_error(self.refused, dialect_of(path))).encode()
            head = [b"HTTP/1.1 431 Request Header Fields Too Large\r\n"]
            head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
            head += [b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body),
                     b"connection: close\r\n\r\n"]
            self.transport.write(b"".join(head) + body)
            self.transport.close()

    return BoundedHttpToolsProtocol
