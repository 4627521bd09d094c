"""A small local server that speaks the Hugging Face Hub's download protocol, for tests without internet: what
huggingface_hub 2.x asks of a hub (HF_ENDPOINT pointed here) to list, size and download a repo.

- GET /api/models/{repo}/revision/{rev}: {"id", "sha"} (the commit of a branch, tag or commit).
- GET /api/models/{repo}/tree/{rev}?recursive=true: the files, `{"type": "file", "path", "size", "oid"}`, a page at
  a time with a `Link: <...>; rel="next"` header.
- HEAD and GET /{repo}/resolve/{rev}/{path}: X-Repo-Commit, ETag, Content-Length; GET sends the bytes at
  `throttle` bytes a second (0: at once), so that progress and cancel can be seen.
- Errors as the hub sends them: 404 with X-Error-Code RepoNotFound, RevisionNotFound or EntryNotFound; a gated repo
  answers its files with 403 GatedRepo; a repo with a token answers 401 without `Authorization: Bearer <token>`
  (with X-Error-Message "Invalid credentials in Authorization header" for a wrong one).

Repos are folders the test builds: `add_repo("org/name", {"main": folder, "v1": other})`, a revision per folder.
`sizes` declares sizes that differ from the files' (a file that claims a petabyte: the disk check refuses it before
any byte is asked for). `gate` holds every file's bytes while it is clear. The server runs uvicorn in a thread
(start/stop) and records the files it began to send (`sent`).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from hub.procs import free_port

PAGE = 3  # tree entries per page: a repo of a few files is paginated
CHUNK = 16 * 1024


@dataclass
class Repo:
    """A repo: its revisions (name -> folder), and how it guards its files."""

    revisions: dict[str, Path]
    gated: bool = False
    token: str | None = None
    sizes: dict[str, int] = field(default_factory=dict)  # declared sizes that differ from the files'

    def commit(self, rev: str) -> str | None:
        """The commit of a revision name, or the revision itself when it is one of the commits."""
        for name in self.revisions:
            sha = hashlib.sha1(f"{id(self)}:{name}".encode()).hexdigest()
            if rev in (name, sha):
                return sha
        return None

    def folder(self, commit: str) -> Path:
        return next(f for name, f in self.revisions.items() if self.commit(name) == commit)


def _error(status: int, code: str | None, message: str) -> Response:
    headers = {"X-Error-Message": message}
    if code:
        headers["X-Error-Code"] = code
    return JSONResponse({"error": message}, status, headers=headers)


class FakeHub:
    """The server: add repos, start, point HF_ENDPOINT at `url`."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.throttle = 0  # bytes a second of a GET (0: no limit)
        self.gate = threading.Event()  # GETs of files send nothing while it is clear (a download held, then let go)
        self.gate.set()
        self.sent: list[tuple[str, str]] = []  # (repo, path) of every GET of a file begun
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[tuple[float, str, str]] = []  # (time.time(), method, path) of every request
        self._hashes: dict[tuple[str, int], tuple[str, str]] = {}
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def add_repo(self, repo: str, revisions: dict[str, Path], **kw: Any) -> Repo:
        self.repos[repo] = r = Repo(revisions, **kw)
        return r

    # ---- the protocol ----

    def _repo(self, request: Request, files: bool = False) -> tuple[Repo | None, Response | None]:
        self.requests.append((time.time(), request.method, request.url.path))
        name = f"{request.path_params['org']}/{request.path_params['name']}"
        repo = self.repos.get(name)
        if repo is None:
            return None, _error(404, "RepoNotFound", "Repository not found")
        if repo.token:
            auth = request.headers.get("authorization", "")
            if not auth:
                return None, _error(401, None, "Unauthorized")
            if auth != f"Bearer {repo.token}":
                return None, _error(401, None, "Invalid credentials in Authorization header")
        if files and repo.gated:
            return None, _error(403, "GatedRepo", f"Access to model {name} is restricted: accept its terms")
        return repo, None

    def _commit(self, repo: Repo, rev: str) -> tuple[str | None, Response | None]:
        sha = repo.commit(rev)
        return (sha, None) if sha else (None, _error(404, "RevisionNotFound", f"Invalid rev id: {rev}"))

    def _repo_at(self, request: Request) -> tuple[Repo | None, str | None, Response | None]:
        """The repo and commit a revision or tree request names, or the error the Hub answers."""
        repo, err = self._repo(request)
        if err:
            return None, None, err
        sha, err = self._commit(repo, request.path_params["rev"])
        return repo, sha, err

    async def revision(self, request: Request) -> Response:
        repo, sha, err = self._repo_at(request)
        if err:
            return err
        name = f"{request.path_params['org']}/{request.path_params['name']}"
        return JSONResponse({"id": name, "modelId": name, "sha": sha, "private": repo.token is not None,
                             "gated": "manual" if repo.gated else False})

    def _digests(self, f: Path) -> tuple[str, str]:
        """(sha1, sha256) of a file: its git oid and its ETag (computed once per file: a demo model is 270 MB)."""
        key = (str(f), f.stat().st_mtime_ns)
        if key not in self._hashes:
            sha1, sha256 = hashlib.sha1(), hashlib.sha256()
            with f.open("rb") as fh:
                while block := fh.read(1 << 20):
                    sha1.update(block)
                    sha256.update(block)
            self._hashes[key] = (sha1.hexdigest(), sha256.hexdigest())
        return self._hashes[key]

    def _entries(self, repo: Repo, sha: str) -> list[dict[str, Any]]:
        root = repo.folder(sha)
        out = []
        for p in sorted(root.rglob("*")):
            if p.is_file():
                rel = p.relative_to(root).as_posix()
                out.append({"type": "file", "path": rel, "size": repo.sizes.get(rel, p.stat().st_size),
                            "oid": self._digests(p)[0]})
        return out

    async def tree(self, request: Request) -> Response:
        repo, sha, err = self._repo_at(request)
        if err:
            return err
        entries = self._entries(repo, sha)
        start = int(request.query_params.get("cursor", 0))
        page = entries[start:start + PAGE]
        headers = {}
        if start + PAGE < len(entries):
            nxt = request.url.include_query_params(cursor=start + PAGE)
            headers["Link"] = f'<{nxt}>; rel="next"'
        return JSONResponse(page, headers=headers)

    async def resolve(self, request: Request) -> Response:
        repo, err = self._repo(request, files=True)
        if err:
            return err
        sha, err = self._commit(repo, request.path_params["rev"])
        if err:
            return err
        rel = request.path_params["path"]
        f = repo.folder(sha) / rel
        if not f.is_file():
            return _error(404, "EntryNotFound", f"{rel} does not exist at {sha}")
        size = repo.sizes.get(rel, f.stat().st_size)
        headers = {"X-Repo-Commit": sha, "ETag": f'"{self._digests(f)[1]}"',
                   "Content-Length": str(size), "Accept-Ranges": "bytes"}
        if request.method == "HEAD":
            return Response(b"", headers=headers)
        self.sent.append((f"{request.path_params['org']}/{request.path_params['name']}", rel))

        async def body():
            while not self.gate.is_set():
                await asyncio.sleep(0.05)
            with f.open("rb") as fh:
                while chunk := fh.read(CHUNK):
                    if self.throttle:
                        await asyncio.sleep(len(chunk) / self.throttle)
                    yield chunk

        return StreamingResponse(body(), headers=headers, media_type="application/octet-stream")

    # ---- running it ----

    def app(self) -> Starlette:
        repo = "/{org}/{name}"
        return Starlette(routes=[
            Route(f"/api/models{repo}/revision/{{rev:path}}", self.revision),
            Route(f"/api/models{repo}/tree/{{rev}}", self.tree),
            Route(f"{repo}/resolve/{{rev}}/{{path:path}}", self.resolve, methods=["GET", "HEAD"]),
        ])

    def start(self) -> FakeHub:
        self._server = uvicorn.Server(uvicorn.Config(self.app(), host="127.0.0.1", port=self.port,
                                                     log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True, name="fake-hf-hub")
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fake Hugging Face hub did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._server:
            self._server.should_exit = True
        if self._thread:
            self._thread.join(10)


def tiny_checkpoint(folder: Path, weights: int = 64 * 1024, bin_too: bool = True) -> Path:
    """A repo folder shaped like a model's: a config, a tokenizer file, safetensors weights of `weights` bytes and
    (bin_too) their pytorch_model.bin duplicate, and Meta's original/ checkpoint."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "tiny"}')
    (folder / "tokenizer.json").write_text('{"version": "1.0"}')
    (folder / "model.safetensors").write_bytes((bytes(range(256)) * (weights // 256 + 1))[:weights])
    if bin_too:
        (folder / "pytorch_model.bin").write_bytes(b"\x01" * weights)
        (folder / "original").mkdir(exist_ok=True)
        (folder / "original" / "consolidated.00.pth").write_bytes(b"\x02" * 1024)
    return folder
