"""The memory ledger: measured peak memory per model, kept in `<state_dir>/memory.json`.

The memory benchmark (benchmarks/memory.py) writes it; the manager reads it. A model that declares `memory_gb` is
budgeted at that figure; one that does not is budgeted at its measured peak plus MEASURED_MARGIN (a fraction), or 0
when it was never measured. The file maps model id -> {"peak_gb", "device", "measured_at"}; it is re-read when its
modification time changes, so a benchmark run against a running hub takes effect at the next start.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hub.config import ModelConfig, Registry

LEDGER_FILE = "memory.json"
MEASURED_MARGIN = 0.10  # a measured peak is budgeted 10% higher: peaks vary with request sizes and batching


class LedgerEntry(BaseModel):
    """One model's measured peak."""

    model_config = ConfigDict(extra="forbid")

    peak_gb: float = Field(ge=0)
    device: str = Field(description='where it was measured, e.g. "cuda:0", "cpu"')
    measured_at: float = Field(description="Unix time of the measurement")
    source: str | None = Field(None, description='how: "torch_cuda_max_allocated", "nvidia-smi", "rss"')


class MemoryReport(BaseModel):
    """The body of POST /hub/models/{id}/memory: a measurement to keep."""

    model_config = ConfigDict(extra="forbid")

    peak_gb: float = Field(ge=0)
    device: str = Field(min_length=1)
    source: str | None = None


class Ledger:
    """Read and update a ledger file; reads are cached until the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cache: dict[str, LedgerEntry] = {}
        self._stamp: tuple[int, int] | None = None

    @classmethod
    def of(cls, registry: Registry) -> Ledger:
        """The ledger of a registry's state dir."""
        return cls(registry.state_dir / LEDGER_FILE)

    def entries(self) -> dict[str, LedgerEntry]:
        """Every measured model; an unreadable or malformed file counts as empty (it is only a hint)."""
        try:
            st = self.path.stat()
        except OSError:
            self._cache, self._stamp = {}, None
            return {}
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._cache = self._read()
            self._stamp = stamp
        return self._cache

    def _read(self) -> dict[str, LedgerEntry]:
        try:
            raw = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(raw, dict):
            return {}
        out = {}
        for mid, entry in raw.items():
            try:
                out[mid] = LedgerEntry.model_validate(entry)
            except ValidationError:
                continue
        return out

    def get(self, model_id: str) -> LedgerEntry | None:
        """A model's measured peak, if any."""
        return self.entries().get(model_id)

    def record(self, model_id: str, peak_gb: float, device: str, source: str | None = None,
               keep_max: bool = True) -> LedgerEntry:
        """Store a measurement. With keep_max, a lower peak on the same device keeps the earlier, higher one."""
        entries = dict(self._read())
        new = LedgerEntry(peak_gb=round(peak_gb, 4), device=device, measured_at=time.time(), source=source)
        old = entries.get(model_id)
        if keep_max and old and old.device == device and old.peak_gb >= new.peak_gb:
            new = old.model_copy(update={"measured_at": new.measured_at})
        entries[model_id] = new
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {mid: e.model_dump(exclude_none=True) for mid, e in sorted(entries.items())}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".memory-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, self.path)  # atomic: a reading hub never sees half a file
        return new


def budgeted_gb(declared: float | None, measured: LedgerEntry | None, margin: float = MEASURED_MARGIN) -> float:
    """The GB a model is budgeted at: declared memory_gb, else measured peak plus margin, else 0."""
    if declared is not None:
        return declared
    if measured is not None:
        return measured.peak_gb * (1 + margin)
    return 0.0


def ledger_memory_of(ledger: Ledger, margin: float = MEASURED_MARGIN) -> Callable[[str, ModelConfig], float]:
    """A Manager `memory_of` callable backed by the ledger."""

    def memory_of(model_id: str, cfg: ModelConfig) -> float:
        return budgeted_gb(cfg.memory_gb, ledger.get(model_id) if cfg.memory_gb is None else None, margin)

    return memory_of
