"""Hostile input, answered: a corpus of malformed and hostile requests across every endpoint of the route table,
/v1/models, /hub and /files, against ONE hub whose engines are the test responder (a `command` engine of each kind)
and the real demo image model (tiny-sd on the diffusers engine). Every case gets the 4xx it names, in the API's shape
(Anthropic's on /v1/messages), with a message that names the problem: never a 5xx, never a hang (each request has a
timeout). Afterwards every engine still serves, none restarted, and the hub logged no exception.

The image server's own limits (prompt length, decoded pixels of an upload, checked before decoding) answer the
image cases through the hub. Without the diffusers environment or the tiny model, the hub runs without tiny-sd and
only its cases skip (under HUB_STRICT=1 they fail).
"""

from __future__ import annotations

import json
import re
import select
import socket
import struct
import time
import zlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub.endpoints import ENDPOINTS, dialect_of, tasks_of
from hub.router import FILE_NAME
from tests.conftest import DEMO_MODELS, ENVS_DIR, STRICT, HubProcess, require, responder_command, start_hub

TINY = DEMO_MODELS / "tiny-sd"
HAS_TINY = (ENVS_DIR / "diffusers" / "bin" / "python").exists() and (TINY / "model_index.json").exists()
KIND_OF = {"echo": "text", "pix": "image", "emb": "embedding", "rank": "rerank", "ears": "transcription",
           "voice": "speech"}
MODEL_FOR = {"chat": "echo", "completions": "echo", "responses": "echo", "messages": "echo", "tokenize": "echo",
             "embeddings": "emb", "score": "emb", "rerank": "rank", "transcriptions": "ears",
             "translations": "ears", "speech": "voice", "images": "pix"}
BASE = {"chat": {"messages": [{"role": "user", "content": "hi"}]}, "completions": {"prompt": "hi"},
        "responses": {"input": "hi"}, "messages": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8},
        "tokenize": {"prompt": "hi", "tokens": [1, 2]}, "embeddings": {"input": "hi"},
        "score": {"text_1": "a", "text_2": "b"}, "rerank": {"query": "q", "documents": ["a", "b"]},
        "speech": {"input": "hello", "voice": "alloy"}, "images": {"prompt": "a red square", "size": "64x64"}}
MAX_BODY_MB, MAX_UPLOAD_MB = 1, 2  # small, so that "huge" costs little; the defaults are the README's
IMAGE_ARGS = ('device = "cpu"\ncpu_threads = 1\ndefault_steps = 2\ndefault_size = "64x64"\nmax_size = 256\n'
              "max_n = 4\nmax_upload_mb = 0.25\nrequest_timeout = 120\n")
JSON_EPS = [(p, ep) for ep in ENDPOINTS if ep.body == "json" for p in ep.paths]
FORM_EPS = [(p, ep) for ep in ENDPOINTS if ep.body == "multipart" for p in ep.paths]
NAME = "A" * 32 + ".png"  # a name the image server could have made (and never did)


def registry() -> str:
    out = f"[hub]\nmax_body_mb = {MAX_BODY_MB}\nmax_upload_mb = {MAX_UPLOAD_MB}\nstart_timeout = \"5m\"\n\n"
    for mid, kind in KIND_OF.items():
        out += f'[models.{mid}]\ntype = "{kind}"\nengine = "command"\n[models.{mid}.args]\n'
        out += f'command = {responder_command()}\n\n'
    if HAS_TINY:
        out += (f'[models.tiny-sd]\ntype = "image"\nengine = "diffusers"\nsource = "{TINY}"\n'
                f"[models.tiny-sd.args]\n{IMAGE_ARGS}")
    return out


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> HubProcess:
    """The hub, every model loaded; its engines' pids and start counts before the corpus."""
    h = start_hub(tmp_path_factory.mktemp("hostile"), registry())
    for mid in h.models():
        r = httpx.post(f"{h.url}/hub/models/{mid}/load", timeout=300)
        assert r.status_code == 200, r.text
    h.before = {mid: (m["starts"], m["process"]["pid"]) for mid, m in h.models().items()}  # type: ignore[attr-defined]
    yield h
    h.stop_leaving_nothing()


@pytest.fixture(scope="module")
def http(hub) -> httpx.Client:
    with httpx.Client(base_url=hub.url, timeout=httpx.Timeout(30, read=150)) as c:
        yield c


# ---- what is sent ----

def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def json_bytes(body: dict[str, Any], **raw: bytes) -> bytes:
    """`body` as JSON, with each `raw` field's value spliced in as given (not valid JSON on its own, or huge)."""
    out = json.dumps(body).encode()[:-1]
    for k, v in raw.items():
        out += b', "' + k.encode() + b'": ' + v
    return out + b"}"


def png(w: int, h: int, gray: bool = False) -> bytes:
    """A black PNG (RGB, or 8-bit grayscale) whose pixels are compressed row by row: a 10000x10000 one is small."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    z = zlib.compressobj(9)
    row = b"\x00" * (1 + w * (1 if gray else 3))
    idat = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0 if gray else 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def bomb_header(w: int, h: int) -> bytes:
    """A PNG that declares w x h pixels and carries almost none of them."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b""))


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "hostileboundary") -> tuple[bytes, str]:
    """A multipart/form-data body from (name, filename or None, value) parts, exactly as given."""
    out = b""
    for name, filename, value in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n".encode()
        out += b"Content-Type: application/octet-stream\r\n" if filename is not None else b""
        out += b"\r\n" + value + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def send_raw(url: str, request: bytes, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """Send `request` as is over a socket, stopping early if the server answers first (as it should to a head or a
    body over its limits); the answer's status, headers and body."""
    u = urlsplit(url)
    with socket.create_connection((u.hostname, u.port), timeout=timeout) as s:
        view, sent = memoryview(request), 0
        while sent < len(view):
            if select.select([s], [], [], 0)[0]:
                break
            try:
                sent += s.send(view[sent:sent + 16384])
            except OSError:
                break
            time.sleep(0.0005)
        data, deadline = b"", time.monotonic() + timeout
        while time.monotonic() < deadline:
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                if m and len(body) >= int(m.group(1)):
                    break
            try:
                got = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not got:
                break
            data += got
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 "), f"no answer: {data[:200]!r}"
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


# ---- the corpus ----

@dataclass
class Case:
    """One hostile request and the answer it must get: `status`, and `says` in the error's message."""

    id: str
    method: str
    path: str
    status: int
    says: str
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None
    data: dict[str, str] | None = None
    raw: bytes | None = None  # the whole request, over a socket
    image: bool = False  # sent to tiny-sd
    marks: tuple = ()


def jcase(id_: str, path: str, status: int, says: str, body: Any = None, raw: bytes | None = None, **kw) -> Case:
    if raw is not None:
        return Case(id_, "POST", path, status, says, content=raw, headers={"content-type": "application/json"}, **kw)
    return Case(id_, "POST", path, status, says, json=body, **kw)


def json_endpoint_cases() -> list[Case]:
    """Malformed bodies, wrong and missing fields, wrong models, limits and methods at every JSON path."""
    out = []
    for path, ep in JSON_EPS:
        model = MODEL_FOR[ep.task]
        good = {"model": model, **BASE[ep.task]}
        other = next(m for m, k in KIND_OF.items() if ep.task not in tasks_of(k))
        c = [
            jcase("truncated", path, 400, "not valid JSON", raw=json.dumps(good)[:-3].encode()),
            jcase("trailing-garbage", path, 400, "not valid JSON", raw=json.dumps(good).encode() + b"}}"),
            jcase("empty", path, 400, "body is empty", raw=b""),
            jcase("whitespace", path, 400, "body is empty", raw=b" \r\n\t "),
            jcase("array", path, 400, "must be a JSON object, not an array", raw=b"[1, 2]"),
            jcase("string", path, 400, "must be a JSON object, not a string", raw=b'"hi"'),
            jcase("null", path, 400, "must be a JSON object, not null", raw=b"null"),
            jcase("single-quotes", path, 400, "not valid JSON", raw=str(good).encode()),
            jcase("raw-control-char", path, 400, "Invalid control character", raw=json_bytes(good, x=b'"a\x01b"')),
            jcase("no-model", path, 400, "'model'", {k: v for k, v in good.items() if k != "model"}),
            jcase("model-number", path, 400, "'model'", {**good, "model": 7}),
            jcase("model-empty", path, 400, "'model'", {**good, "model": ""}),
            jcase("model-list", path, 400, "'model'", {**good, "model": [model]}),
            jcase("model-unknown", path, 404, "does not exist", {**good, "model": "nope"}),
            jcase("model-traversal", path, 404, "does not exist", {**good, "model": "../../../etc/passwd"}),
            jcase("model-control-chars", path, 404, "does not exist", {**good, "model": f"{model}\x00\x1b[31m\r\n"}),
            jcase("model-huge", path, 404, "does not exist", {**good, "model": "m" * 100_000}),
            jcase("wrong-kind", path, 400, "does not serve", {**good, "model": other}),
            jcase("nested-100000", path, 400, "nested more than 64 levels", raw=json_bytes(good, x=nested(100_000))),
            jcase("nested-65", path, 400, "nested more than 64 levels", raw=json_bytes(good, x=nested(64))),
            jcase("invalid-utf8", path, 400, "not valid UTF-8", raw=json_bytes(good, x=b'"\xff\xfe"')),
            jcase("utf8-encoded-surrogate", path, 400, "not valid UTF-8", raw=json_bytes(good, x=b'"\xed\xa0\x80"')),
            jcase("overlong-utf8", path, 400, "not valid UTF-8", raw=json_bytes(good, x=b'"\xc0\xaf"')),
            jcase("lone-surrogate", path, 400, "lone surrogate", raw=json_bytes(good, x=b'"\\ud800"')),
            jcase("lone-low-surrogate-key", path, 400, "lone surrogate", raw=json_bytes(good, **{"\\udc00": b"1"})),
            jcase("nan", path, 400, "NaN is not JSON", raw=json_bytes(good, temperature=b"NaN")),
            jcase("infinity", path, 400, "Infinity is not JSON", raw=json_bytes(good, temperature=b"-Infinity")),
            jcase("int-5000-digits", path, 400, "not valid JSON", raw=json_bytes(good, seed=b"9" * 5000)),
            jcase("stream-string", path, 400, "'stream' must be true or false", {**good, "stream": "yes"}),
            jcase("stream-number", path, 400, "'stream' must be true or false", {**good, "stream": 1}),
            jcase("too-big", path, 413, "max_body_mb",
                  raw=json_bytes(good, x=b'"' + b"a" * (MAX_BODY_MB << 20) + b'"')),
            Case("xml", "POST", path, 400, "not valid JSON", content=b"<model>echo</model>",
                 headers={"content-type": "application/xml"}),
            Case("urlencoded", "POST", path, 400, "not valid JSON", content=f"model={model}".encode(),
                 headers={"content-type": "application/x-www-form-urlencoded"}),
            Case("multipart-to-json", "POST", path, 400, "not valid JSON", data={"model": model},
                 files=[("file", ("a.txt", b"x", "text/plain"))]),
            Case("get", "GET", path, 405, "use POST"),
            Case("put", "PUT", path, 405, "use POST", json=good),
            Case("delete", "DELETE", path, 405, "use POST"),
        ]
        for f in ep.required:
            wrong = 5 if f.types else "x"
            c.append(jcase(f"no-{f.name}", path, 400, f"'{f.name}'", {k: v for k, v in good.items() if k != f.name}))
            c.append(jcase(f"{f.name}-null", path, 400, f"'{f.name}'", {**good, f.name: None}))
            c.append(jcase(f"{f.name}-wrong-type", path, 400, f"'{f.name}'", {**good, f.name: wrong}))
            c.append(jcase(f"{f.name}-bool", path, 400, f"'{f.name}'", {**good, f.name: True}))
        out += [Case(f"{path} {x.id}", x.method, x.path, x.status, x.says, x.json, x.content, x.headers, x.files,
                     x.data) for x in c]
    return out


def form_endpoint_cases() -> list[Case]:
    """Malformed and incomplete multipart bodies at every multipart path."""
    out = []
    for path, ep in FORM_EPS:
        model = MODEL_FOR[ep.task]
        fname = ep.required[0].name
        upload = [(fname, ("a.bin", b"\x00\x01", "application/octet-stream"))]
        body, ctype = multipart([("model", None, model.encode())])
        no_boundary = {"content-type": "multipart/form-data"}
        c = [
            Case("json-body", "POST", path, 400, "multipart/form-data", json={"model": model}),
            Case("urlencoded", "POST", path, 400, "multipart/form-data", data={"model": model}),
            Case("text-plain", "POST", path, 400, "multipart/form-data", content=b"model=x",
                 headers={"content-type": "text/plain"}),
            Case("no-boundary", "POST", path, 400, "multipart", content=body, headers=no_boundary),
            Case("other-boundary", "POST", path, 400, "cannot be parsed", content=body,
                 headers={"content-type": "multipart/form-data; boundary=notthisone"}),
            Case("garbage", "POST", path, 400, "cannot be parsed", content=b"\x00\xff" * 500,
                 headers={"content-type": ctype}),
            Case("unterminated", "POST", path, 400, "'model'", content=body[:40], headers={"content-type": ctype}),
            Case("no-model", "POST", path, 400, "'model'", files=upload),
            Case("model-empty", "POST", path, 400, "'model'", data={"model": ""}, files=upload),
            Case("model-as-file", "POST", path, 400, "'model'", files=[("model", ("m", model.encode(), "x/y")),
                                                                         *upload]),
            Case(f"no-{fname}", "POST", path, 400, f"'{fname}'", data={"model": model},
                 files=[("other", ("a.bin", b"1", "x/y"))]),
            Case("model-unknown", "POST", path, 404, "does not exist", data={"model": "nope"}, files=upload),
            Case("model-traversal", "POST", path, 404, "does not exist", data={"model": "../../etc/passwd"},
                 files=upload),
            Case("wrong-kind", "POST", path, 400, "does not serve", data={"model": "echo"}, files=upload),
            Case("stream-maybe", "POST", path, 400, "'stream' must be true or false",
                 data={"model": model, "stream": "maybe"}, files=upload),
            Case("too-big", "POST", path, 413, "max_upload_mb", data={"model": model},
                 files=[(fname, ("big.bin", b"\x00" * ((MAX_UPLOAD_MB << 20) + 1), "x/y"))]),
            Case("too-many-fields", "POST", path, 400, "cannot be parsed",
                 content=multipart([("model", None, model.encode())] + [(f"f{i}", None, b"1") for i in range(1100)])[0],
                 headers={"content-type": ctype}),
            Case("too-many-files", "POST", path, 400, "cannot be parsed",
                 content=multipart([("model", None, model.encode())] + [(fname, f"{i}", b"1") for i in range(1100)])[0],
                 headers={"content-type": ctype}),
            Case("field-over-1mb", "POST", path, 400, "cannot be parsed",
                 content=multipart([("model", None, model.encode()), ("prompt", None, b"p" * (1100 << 10))])[0],
                 headers={"content-type": ctype}),
            Case("get", "GET", path, 405, "use POST"),
        ]
        out += [Case(f"{path} {x.id}", x.method, x.path, x.status, x.says, x.json, x.content, x.headers, x.files,
                     x.data) for x in c]
    return out


def surface_cases() -> list[Case]:
    """/v1/models, /v1/responses/{id}, /hub, /files, unknown paths; raw paths the clients would normalise."""
    memory = "/hub/models/echo/memory"
    long = "x" * 5000
    return [
        Case("metrics post", "POST", "/metrics", 405, "method not allowed"),
        Case("models post", "POST", "/v1/models", 405, "use GET"),
        Case("models delete one", "DELETE", "/v1/models/echo", 405, "use GET"),
        Case("models unknown", "GET", "/v1/models/nope", 404, "does not exist"),
        Case("models nul", "GET", "/v1/models/%00", 404, "does not exist"),
        Case("models crlf", "GET", "/v1/models/echo%0d%0aX-Injected:%20yes", 404, "not found"),
        Case("models long id", "GET", f"/v1/models/{long}", 404, "does not exist"),
        Case("models encoded traversal", "GET", "/v1/models/..%2f..%2fetc%2fpasswd", 404, "does not exist"),
        Case("models invalid utf8", "GET", "/v1/models/%ff%fe", 404, "does not exist"),
        Case("models raw traversal", "GET", "/v1/models/../../../etc/passwd", 404, "does not exist",
             raw=b"GET /v1/models/../../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n"),
        Case("v1 raw traversal", "GET", "/v1/../../etc/passwd", 404, "serves no such endpoint",
             raw=b"GET /v1/../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n"),
        Case("unknown v1", "POST", "/v1/fine_tuning/jobs", 404, "serves no such endpoint", json={"model": "echo"}),
        Case("unknown v2", "GET", "/v2/models", 404, "serves no such endpoint"),
        Case("unknown under endpoint", "POST", "/v1/chat/completions/x", 404, "serves no such endpoint"),
        Case("responses get unknown", "GET", "/v1/responses/resp_nope", 404, "made through this hub"),
        Case("responses control id", "GET", "/v1/responses/%01%02%1b", 404, "made through this hub"),
        Case("responses long id", "GET", f"/v1/responses/{long}", 404, "made through this hub"),
        Case("responses delete unknown", "DELETE", "/v1/responses/resp_nope", 404, "made through this hub"),
        Case("responses cancel unknown", "POST", "/v1/responses/resp_nope/cancel", 404, "made through this hub"),
        Case("responses items unknown", "GET", "/v1/responses/resp_nope/input_items", 404, "made through this hub"),
        Case("responses put", "PUT", "/v1/responses/resp_nope", 405, "use GET or DELETE"),
        Case("responses get list", "GET", "/v1/responses", 405, "use POST"),
        Case("hub unknown", "GET", "/hub/nothing", 404, "serves no such endpoint"),
        Case("hub models post", "POST", "/hub/models", 405, "use GET"),
        Case("hub load unknown", "POST", "/hub/models/nope/load", 404, "does not exist"),
        Case("hub unload unknown", "POST", "/hub/models/nope/unload", 404, "does not exist"),
        Case("hub load get", "GET", "/hub/models/echo/load", 405, "use POST"),
        Case("hub load traversal", "POST", "/hub/models/..%2f..%2fx/load", 404, "serves no such endpoint"),
        Case("hub logs unknown", "GET", "/hub/models/nope/logs", 404, "does not exist"),
        Case("hub logs tail text", "GET", "/hub/models/echo/logs?tail=abc", 400, "tail"),
        Case("hub logs tail huge", "GET", "/hub/models/echo/logs?tail=" + "9" * 5000, 400, "tail"),
        Case("memory unknown model", "POST", "/hub/models/nope/memory", 404, "does not exist",
             json={"peak_gb": 1, "device": "cpu"}),
        jcase("memory bad json", memory, 400, "not valid JSON", raw=b'{"peak_gb": '),
        jcase("memory array", memory, 400, "must be a JSON object", raw=b"[]"),
        jcase("memory nested", memory, 400, "nested more than 64",
              raw=b'{"peak_gb": 1, "x": ' + nested(100_000) + b"}"),
        jcase("memory nan", memory, 400, "NaN is not JSON", raw=b'{"peak_gb": NaN, "device": "cpu"}'),
        jcase("memory 1e999", memory, 400, "out of range", raw=b'{"peak_gb": 1e999, "device": "cpu"}'),
        jcase("memory negative", memory, 400, "peak_gb", {"peak_gb": -1, "device": "cpu"}),
        jcase("memory text peak", memory, 400, "peak_gb", {"peak_gb": "big", "device": "cpu"}),
        jcase("memory empty device", memory, 400, "device", {"peak_gb": 1, "device": ""}),
        jcase("memory extra key", memory, 400, "colour", {"peak_gb": 1, "device": "cpu", "colour": 1}),
        jcase("memory lone surrogate", memory, 400, "lone surrogate", raw=b'{"peak_gb": 1, "device": "\\udfff"}'),
        jcase("memory invalid utf8", memory, 400, "not valid UTF-8", raw=b'{"peak_gb": 1, "device": "\xff"}'),
        jcase("memory too big", memory, 413, "max_body_mb", raw=b'{"x": "' + b"a" * (MAX_BODY_MB << 20) + b'"}'),
        Case("files text model", "GET", f"/files/echo/{NAME}", 404, "makes no files"),
        Case("files unknown model", "GET", f"/files/nope/{NAME}", 404, "does not exist"),
        Case("files control chars", "GET", "/files/pix/%01%02%1b.png", 404, "no image"),
        Case("files crlf", "GET", "/files/pix/a%0d%0aX-Injected:%20yes.png", 404, "no image"),
        Case("files nul", "GET", "/files/pix/" + "A" * 32 + "%00.png", 404, "no image"),
        Case("files dotdot", "GET", "/files/pix/..", 404, "no image",
             raw=b"GET /files/pix/.. HTTP/1.1\r\nHost: x\r\n\r\n"),
        Case("files encoded traversal", "GET", "/files/pix/..%2f..%2fetc%2fpasswd", 404, "serves no such endpoint"),
        Case("files backslash traversal", "GET", "/files/pix/..%5c..%5cwin.ini", 404, "no image"),
        Case("files raw traversal", "GET", "/files/../../etc/passwd", 404, "serves no such endpoint",
             raw=b"GET /files/../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n"),
        Case("files wrong extension", "GET", "/files/pix/" + "A" * 32 + ".exe", 404, "no image"),
        Case("files long name", "GET", "/files/pix/" + "A" * 300 + ".png", 404, "no image"),
        Case("files unicode name", "GET", "/files/pix/" + "☃" * 32 + ".png", 404, "no image"),
        Case("files query traversal", "GET", f"/files/pix/{NAME}?x=../../etc/passwd", 404, "is gone"),
        Case("files gone (responder)", "GET", f"/files/pix/{NAME}", 404, "is gone"),
        Case("files post", "POST", f"/files/pix/{NAME}", 405, "use GET"),
        Case("files no name", "GET", "/files/pix", 404, "serves no such endpoint"),
    ]


def head_cases() -> list[Case]:
    """The request head over the server's limits (the hub's defaults: 64 KB, 100 headers), sent over a socket."""
    def req(path: str, extra: bytes, method: bytes = b"GET") -> bytes:
        return method + b" " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n"

    many = b"".join(b"X-H%d: v\r\n" % i for i in range(20_000))
    return [
        Case("header 1MB", "GET", "/v1/models", 431, "max_header_kb",
             raw=req("/v1/models", b"X-Big: " + b"a" * (1 << 20) + b"\r\n")),
        Case("header 8MB", "GET", "/v1/models", 431, "max_header_kb",  # refused while it still arrives
             raw=req("/v1/models", b"X-Endless: " + b"a" * (8 << 20) + b"\r\n")),
        Case("headers 20000", "GET", "/v1/models", 431, "max_headers", raw=req("/v1/models", many)),
        Case("headers 101", "POST", "/v1/chat/completions", 431, "max_headers",
             raw=req("/v1/chat/completions", b"".join(b"X-H%d: v\r\n" % i for i in range(100)), b"POST")),
        Case("url 100KB", "GET", "/v1/models/" + "a" * 100, 431, "max_header_kb",
             raw=req("/v1/models/" + "a" * 100_000, b"")),
        Case("cookie 1MB", "GET", "/hub/models", 431, "max_header_kb",
             raw=req("/hub/models", b"Cookie: " + b"c=1; " * 200_000 + b"\r\n")),
        Case("header 1MB anthropic", "POST", "/v1/messages", 431, "max_header_kb",
             raw=req("/v1/messages", b"X-Big: " + b"a" * (1 << 20) + b"\r\n", b"POST")),
        Case("content-length 1TB json", "POST", "/v1/chat/completions", 413, "max_body_mb",
             raw=req("/v1/chat/completions", b"Content-Type: application/json\r\nContent-Length: 1000000000000\r\n",
                     b"POST")),
        Case("content-length 1TB anthropic", "POST", "/v1/messages", 413, "max_body_mb",
             raw=req("/v1/messages", b"Content-Length: 1000000000000\r\n", b"POST")),
        Case("content-length 1TB upload", "POST", "/v1/audio/transcriptions", 413, "max_upload_mb",
             raw=req("/v1/audio/transcriptions", b"Content-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: 1000000000000\r\n", b"POST")),
        Case("content-length 1TB admin", "POST", "/hub/models/echo/memory", 413, "max_body_mb",
             raw=req("/hub/models/echo/memory", b"Content-Length: 1000000000000\r\n", b"POST")),
        Case("chunked over limit", "POST", "/v1/embeddings", 413, "max_body_mb",
             raw=req("/v1/embeddings", b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n", b"POST")
             + b"".join(b"%x\r\n%s\r\n" % (1 << 16, b"a" * (1 << 16)) for _ in range(3 * 16 * MAX_BODY_MB))
             + b"0\r\n\r\n"),
        Case("chunked upload over limit", "POST", "/v1/images/edits", 413, "max_upload_mb",
             raw=req("/v1/images/edits", b"Content-Type: multipart/form-data; boundary=b\r\n"
                     b"Transfer-Encoding: chunked\r\n", b"POST")
             + b"".join(b"%x\r\n%s\r\n" % (1 << 16, b"a" * (1 << 16)) for _ in range(3 * 16 * MAX_UPLOAD_MB))
             + b"0\r\n\r\n"),
    ]


def image_cases() -> list[Case]:
    """Out-of-range numbers, wrong values and hostile uploads for the real image server, through the hub."""
    gen = "/v1/images/generations"
    good = {"model": "tiny-sd", "prompt": "a red square", "size": "64x64"}
    g = [
        ("n-zero", {"n": 0}, "'n'"), ("n-negative", {"n": -1}, "'n'"), ("n-over-max", {"n": 5}, "at most 4"),
        ("n-text", {"n": "two"}, "'n'"), ("n-fraction", {"n": 1.5}, "'n'"), ("n-huge", {"n": 10**30}, "'n'"),
        ("size-huge", {"size": "99992x99992"}, "at most 256"),
        ("size-zero", {"size": "0x0"}, "multiples of 8 for this model (StableDiffusionPipeline"),
        ("size-text", {"size": "big"}, "must look like"), ("size-number", {"size": 64}, "'size'"),
        ("size-negative", {"size": "-64x64"}, "must look like"),
        ("steps-zero", {"num_inference_steps": 0}, "num_inference_steps"),
        ("steps-huge", {"num_inference_steps": 10**6}, "num_inference_steps"),
        ("guidance-negative", {"guidance_scale": -1}, "guidance_scale"),
        ("seed-negative", {"seed": -1}, "seed"), ("seed-2**64", {"seed": 2**64}, "seed"),
        ("format-xml", {"response_format": "xml"}, "response_format"),
        ("output-tiff", {"output_format": "tiff"}, "output_format"),
        ("unknown-param", {"colour": "red"}, "unsupported parameter 'colour'"),
        ("prompt-blank", {"prompt": "   \n\t"}, "prompt is empty"),
        ("prompt-number", {"prompt": 5}, "'prompt'"),
    ]
    out = [jcase(f"tiny-sd {id_}", gen, 400, says, {**good, **extra}, image=True) for id_, extra, says in g]
    out.append(jcase("tiny-sd prompt-lone-surrogate", gen, 400, "lone surrogate", image=True,
                     raw=b'{"model": "tiny-sd", "prompt": "a fox \\ud83d", "size": "64x64"}'))
    out.append(jcase("tiny-sd prompt-200k", gen, 400, "prompt", {**good, "prompt": "fox " * 50_000}, image=True))
    edits = "/v1/images/edits"
    img = png(64, 64)

    def edit(id_: str, says: str, files: list, data: dict | None = None, status: int = 400, marks: tuple = ()) -> Case:
        return Case(f"tiny-sd edit {id_}", "POST", edits, status, says, data={"model": "tiny-sd", "prompt": "x",
                                                                             **(data or {})},
                    files=files, image=True, marks=marks)

    out += [
        edit("not-an-image", "not an image", [("image", ("../../../etc/passwd", b"root:x:0:0", "image/png"))]),
        edit("empty-file", "not an image", [("image", ("e.png", b"", "image/png"))]),
        edit("truncated-png", "not a readable image", [("image", ("t.png", img[:60], "image/png"))]),
        edit("bomb-400M-pixels", "image", [("image", ("bomb.png", bomb_header(20_000, 20_000), "image/png"))]),
        edit("bomb-100M-pixels", "image", [("image", ("bomb.png", png(10_000, 10_000, gray=True), "image/png"))]),
        edit("mask-not-image", "'mask'", [("image", ("a.png", img, "image/png")),
                                          ("mask", ("m.png", b"GIF89a nope", "image/png"))]),
        edit("mask-other-size", "same size", [("image", ("a.png", img, "image/png")),
                                              ("mask", ("m.png", png(32, 32), "image/png"))]),
        edit("two-masks", "at most one", [("image", ("a.png", img, "image/png")), ("mask", ("m.png", img, "image/png")),
                                          ("mask", ("n.png", img, "image/png"))]),
        edit("unknown-file-field", "unknown file parameter", [("image", ("a.png", img, "image/png")),
                                                              ("photo", ("p.png", img, "image/png"))]),
        edit("over-server-upload-limit", "larger than 0.25 MB",
             [("image", ("a.png", img + b"\x00" * 300_000, "image/png"))]),
        edit("n-zero", "'n'", [("image", ("a.png", img, "image/png"))], {"n": "0"}),
        edit("size-1x1", "multiples of 8", [("image", ("a.png", img, "image/png"))], {"size": "1x1"}),
        edit("strength-2", "strength", [("image", ("a.png", img, "image/png"))], {"strength": "2"}),
        edit("strength-text", "strength", [("image", ("a.png", img, "image/png"))], {"strength": "lots"}),
        edit("hostile-filename-bad-size", "'size'",
             [("image", ("..\\..\\\x01\x1b[2J☃\r\n.png", img, "image/png"))], {"size": "huge"}),
        Case("tiny-sd edit no-prompt", "POST", edits, 400, "'prompt'", data={"model": "tiny-sd"},
             files=[("image", ("a.png", img, "image/png"))], image=True),
        Case("tiny-sd files bad name", "GET", "/files/tiny-sd/%2e%2e.png", 404, "no image", image=True),
        Case("tiny-sd files gone", "GET", f"/files/tiny-sd/{NAME}", 404, "is gone", image=True),
    ]
    return out


CASES = json_endpoint_cases() + form_endpoint_cases() + surface_cases() + head_cases() + image_cases()


def check_error(case: Case, status: int, headers: dict[str, str], body: bytes) -> None:
    """The answer is `case.status` in the API's shape (Anthropic's on /v1/messages) and names the problem."""
    assert status < 500, f"{case.id}: a server error {status}: {body[:500]!r}"
    assert status == case.status, f"{case.id}: {status}, not {case.status}: {body[:500]!r}"
    assert headers.get("content-type", "").startswith("application/json"), (case.id, headers, body[:300])
    data = json.loads(body)
    if dialect_of(urlsplit(case.path).path) == "anthropic":
        assert data["type"] == "error" and set(data["error"]) == {"type", "message"}, data
        message = data["error"]["message"]
    else:
        assert set(data) == {"error"} and set(data["error"]) == {"message", "type", "param", "code"}, data
        assert data["error"]["type"] == "invalid_request_error", data
        message = data["error"]["message"]
    assert isinstance(message, str) and case.says.lower() in message.lower(), f"{case.id}: {message!r}"


def test_the_corpus_is_large_and_covers_the_route_table() -> None:
    assert len(CASES) >= 150, len(CASES)
    assert len({c.id for c in CASES}) == len(CASES), "case ids are unique"
    covered = {urlsplit(c.path).path for c in CASES}
    assert {p for ep in ENDPOINTS for p in ep.paths} <= covered
    assert {"/v1/models", "/hub/models"} <= covered and any(p.startswith("/files/") for p in covered)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_hostile_request_gets_a_clear_4xx(hub, http, case: Case) -> None:
    if case.image:
        require(HAS_TINY, f"the diffusers environment or {TINY} is missing")
    if case.raw is not None:
        status, headers, body = send_raw(hub.url, case.raw)
    else:
        kw: dict[str, Any] = {"headers": case.headers}
        if case.json is not None:
            kw["json"] = case.json
        if case.content is not None:
            kw["content"] = case.content
        if case.files is not None:
            kw["files"] = case.files
        if case.data is not None:
            kw["data"] = case.data
        r = http.request(case.method, case.path, **kw)
        status, headers, body = r.status_code, dict(r.headers), r.content
    check_error(case, status, headers, body)


# ---- field types, property-based: every field the hub checks, every JSON path ----

JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6)
FIELDS = [(path, ep, name) for path, ep in JSON_EPS for name in ("model", "stream", *(f.name for f in ep.required))]


def wrong_for(ep, name: str, value: Any) -> bool:
    """Whether the hub must refuse `value` in field `name` of `ep` (400 naming the field)."""
    if name == "model":
        return not isinstance(value, str) or not value
    if name == "stream":
        return value is not None and not isinstance(value, bool)
    f = next(f for f in ep.required if f.name == name)
    return value is None or isinstance(value, bool) or not isinstance(value, f.types)


@settings(max_examples=120, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.data())
def test_wrong_field_types_get_400_naming_the_field(hub, data) -> None:
    path, ep, name = data.draw(st.sampled_from(FIELDS), label="field")
    value = data.draw(JSON_VALUE.filter(lambda v: wrong_for(ep, name, v)), label="value")
    body = {"model": MODEL_FOR[ep.task], **BASE[ep.task], name: value}
    r = httpx.post(hub.url + path, json=body, timeout=30)
    case = Case(f"{path} {name}={value!r}", "POST", path, 400, f"'{name}'")
    check_error(case, r.status_code, dict(r.headers), r.content)
    if dialect_of(path) == "openai":
        assert r.json()["error"]["param"] == name


# ---- what must still work: the limits' edges, hostile names passed on intact, the engines afterwards ----

def test_just_under_the_limits_is_served(hub, http) -> None:
    headers = {f"x-h{i}": "v" for i in range(90)} | {"x-big": "a" * 60_000}
    assert http.get("/v1/models", headers=headers).status_code == 200
    msg = "a" * ((MAX_BODY_MB << 20) - 1000)
    r = http.post("/v1/chat/completions", json={"model": "echo", "messages": [{"role": "user", "content": msg}]})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == f"echo: {msg}"
    deep = {"model": "echo", "messages": [{"role": "user", "content": "hi"}], "metadata": json.loads(nested(63))}
    assert http.post("/v1/chat/completions", json=deep).status_code == 200
    emoji = b'{"model": "echo", "messages": [{"role": "user", "content": "\\ud83d\\ude00 \\\\ud800"}]}'
    r = http.post("/v1/chat/completions", content=emoji, headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "echo: \U0001F600 \\ud800"


def test_head_limit_is_per_request_on_a_kept_alive_connection(hub) -> None:
    """Three requests of 40 KB heads on one connection, one after another and then pipelined: each is served."""
    req = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 40_000 + b"\r\n\r\n"
    u = urlsplit(hub.url)
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        for batch in (1, 1, 3):
            s.sendall(req * batch)
            data = b""
            while data.count(b"HTTP/1.1 ") < batch or not data.endswith(b"]}"):
                got = s.recv(65536)
                assert got, data[-300:]
                data += got
            assert data.count(b"HTTP/1.1 200 OK") == batch, data[:300]


def test_hostile_file_names_reach_the_engine_intact(hub, http) -> None:
    name = "../../etc/passwd\x1b[2J ☃ %00.wav"
    r = http.post("/v1/audio/transcriptions", data={"model": "ears"}, files={"file": (name, b"RIFF", "audio/wav")})
    assert r.status_code == 200 and r.json()["filename"] == name


def test_file_names_the_image_server_makes_pass_the_hubs_check() -> None:
    from imageserver.files import FileStore

    store = FileStore(60, 10)
    names = {store.put(b"\x89PNG") for _ in range(200)}
    assert all(FILE_NAME.fullmatch(n) for n in names), names


def test_afterwards_every_engine_serves_and_none_restarted(hub, http) -> None:
    after = hub.models()
    for mid, (starts, pid) in hub.before.items():
        m = after[mid]
        assert m["state"] == "ready" and m["starts"] == starts and m["process"]["pid"] == pid, (mid, m)
    assert http.post("/v1/chat/completions", json={"model": "echo", **BASE["chat"]}).status_code == 200
    assert http.post("/v1/embeddings", json={"model": "emb", "input": "hi"}).status_code == 200
    assert http.post("/v1/rerank", json={"model": "rank", **BASE["rerank"]}).status_code == 200
    assert http.post("/v1/audio/speech", json={"model": "voice", **BASE["speech"]}).status_code == 200
    r = http.post("/v1/audio/transcriptions", data={"model": "ears"}, files={"file": ("a.wav", b"RIFF", "audio/wav")})
    assert r.status_code == 200
    assert http.post("/v1/images/generations", json={"model": "pix", **BASE["images"]}).status_code == 200
    if HAS_TINY:
        r = http.post("/v1/images/generations", json={"model": "tiny-sd", "prompt": "a fox", "size": "64x64",
                                                      "response_format": "url"})
        assert r.status_code == 200, r.text[:300]
        url = urlsplit(r.json()["data"][0]["url"])
        got = http.get(url.path)
        assert got.status_code == 200 and got.content[:8] == b"\x89PNG\r\n\x1a\n"
    elif STRICT:
        pytest.fail("HUB_STRICT=1: the corpus ran without the real image model")
    labels = set(re.findall(r'model="([^"]*)"', http.get("/metrics").text))
    assert labels and labels <= {*hub.before, "-"}, f"metrics labelled by ids no model has: {labels - set(hub.before)}"
    log = hub.log.read_text()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]
