"""Images made with response_format=url, kept in memory for GET /files/{name}."""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict


class FileStore:
    """Images made with response_format=url, under unguessable names (with their format's extension), kept for a
    bounded time and count."""

    def __init__(self, ttl: float, max_files: int) -> None:
        self.ttl = ttl
        self.max_files = max_files
        self._files: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def _prune(self, now: float) -> None:
        while self._files and (len(self._files) > self.max_files or next(iter(self._files.values()))[0] < now):
            self._files.popitem(last=False)

    def put(self, data: bytes, ext: str = "png") -> str:
        """Keep the image `data` (a png, jpeg or webp file); its name."""
        name = f"{secrets.token_urlsafe(24)}.{ext}"
        with self._lock:
            now = time.monotonic()
            self._files[name] = (now + self.ttl, data)
            self._prune(now)
        return name

    def get(self, name: str) -> bytes | None:
        """The image of that name, or None once it is gone."""
        with self._lock:
            self._prune(time.monotonic())
            entry = self._files.get(name)
        return entry[1] if entry else None
