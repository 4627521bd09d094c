"""Where registry reloads come from while the hub serves: POST /hub/reload (`hub reload`), SIGHUP to `hub serve`, and
`hub serve --watch`. Each reads the registry file the hub was started from, checks it in full (hub/registry.py) and
hands it to Manager.reload (hub/manager/reload.py says what changes how). A broken file changes nothing: its
ConfigError is logged in full and answered to the caller.

--watch polls the file every second (its mtime, size and content hash) and applies a change once the file has stayed
the same for one poll, so that an editor's save in progress is never read half-written. A broken save is logged once
and the old registry kept; a later good save applies.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub.config import Registry
from hub.errors import ConfigError
from hub.manager import Manager
from hub.manager.reload import ReloadReport
from hub.registry import load_registry

log = logging.getLogger("hub.reload")
WATCH_S = 1.0


@dataclass
class Reloading:
    """How a hub takes registry changes: the file it was started from (None: it has none), the [hub] keys its
    command line set (they win over the file's, as at the start), and whether `hub serve` asked for SIGHUP and for
    polling the file (--watch)."""

    file: Path | None
    overrides: dict[str, Any] = field(default_factory=dict)
    sighup: bool = False
    watch: bool = False

    def load(self) -> Registry:
        """The file's registry, checked in full, with the command line's [hub] keys; ConfigError if it is broken."""
        if self.file is None:
            raise ConfigError(["this hub was not started from a registry file: there is nothing to reload"])
        reg = load_registry(self.file)
        for key, value in self.overrides.items():
            setattr(reg.hub, key, value)
        return reg

    def signature(self) -> tuple[int, int, str] | None:
        """The file's mtime, size and content hash (None while it cannot be read)."""
        try:
            st = self.file.stat()  # type: ignore[union-attr]
            digest = hashlib.sha256(self.file.read_bytes()).hexdigest()  # type: ignore[union-attr]
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, digest


async def reload_file(manager: Manager, source: Reloading, restart: bool = False, why: str = "") -> ReloadReport:
    """Read, check and apply the registry file; a broken one raises ConfigError (logged in full) and changes
    nothing."""
    try:
        new = source.load()
    except ConfigError as err:
        log.error("registry reload%s refused, nothing changed: %s", f" ({why})" if why else "", err.message)
        raise
    log.info("reloading the registry from %s%s%s", source.file, f" ({why})" if why else "",
             ", restarting changed engines now" if restart else "")
    return await manager.reload(new, restart)


class Triggers:
    """SIGHUP and --watch for one serving hub (started and stopped by the app's lifespan: hub/router.py)."""

    def __init__(self, manager: Manager, source: Reloading) -> None:
        self.manager, self.source = manager, source
        self._tasks: set[asyncio.Task] = set()
        self._watch: asyncio.Task | None = None
        self._sighup = False

    def start(self) -> None:
        """Install the SIGHUP handler and start polling, as `source` asks."""
        if self.source.file is None:
            return
        if self.source.sighup:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_sighup)
            self._sighup = True
        if self.source.watch:
            self._watch = asyncio.create_task(self._poll(), name="hub-watch-registry")
            log.info("watching %s for changes", self.source.file)

    async def stop(self) -> None:
        """Remove the handler, stop polling and wait for a reload under way to be cancelled."""
        if self._sighup:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        tasks = [t for t in (self._watch, *self._tasks) if t]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _on_sighup(self) -> None:
        task = asyncio.create_task(self._apply("SIGHUP"), name="hub-reload-sighup")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _apply(self, why: str) -> bool:
        """Reload (its report and a refusal are logged); whether the file was good."""
        try:
            await reload_file(self.manager, self.source, why=why)
        except ConfigError:
            return False
        except Exception:  # a bug must not end the watch or go unseen
            log.exception("registry reload (%s) failed", why)
        return True

    async def _poll(self) -> None:
        """Every WATCH_S: reload once a changed file has stayed the same for one poll."""
        applied = seen = self.source.signature()
        while True:
            await asyncio.sleep(WATCH_S)
            now = self.source.signature()
            if now is not None and now == seen and now != applied:
                await self._apply("the file changed")
                applied = now  # a broken save is reported once; the next save is read again
            seen = now
