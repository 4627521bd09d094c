"""Memory benchmark: peak memory per model while it loads and serves a small workload, labelled with the device.

Sources, best first for the budget (the ledger takes the first one present):
- nvidia-smi: GPU memory used by the engine's process tree (per process, where nvidia-smi exists);
- the engine's own report, GET <engine>/memory (the Diffusers image server): torch's CUDA peak, or its RSS;
- rss: the engine's process tree on this machine, sampled; each process counts its PSS (shared pages split
  between the processes that map them) where Linux reports it, else its RSS. vLLM runs two processes that share
  much of their memory: summed RSS would count it twice.
- rss_hwm: the sum of the kernel's per-process RSS high-water marks, an upper bound (shown, never budgeted).
Measured peaks are posted to the hub (POST /hub/models/{id}/memory), which keeps them in its memory ledger.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

from benchmarks.measure import HubClient, generate_images, run_sync, stream_chat
from benchmarks.scenarios import MemoryScenario

MB = 1024 * 1024


def process_tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants (those still alive)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process tree now, in MB: the sum of each process's PSS, or RSS where PSS is unknown."""
    total = 0
    for p in process_tree(pid):
        try:
            info = p.memory_full_info() if hasattr(psutil.Process, "memory_full_info") else p.memory_info()
        except psutil.AccessDenied:
            info = p.memory_info()
        except psutil.Error:
            continue
        total += getattr(info, "pss", None) or info.rss
    return total / MB


def high_water_mb(pid: int) -> float:
    """VmHWM (the kernel's peak RSS) of one process in MB; 0 where /proc does not have it."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def nvidia_smi_mb(pids: set[int]) -> float | None:
    """GPU memory (MB) that nvidia-smi lists for these pids; None without nvidia-smi."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    total = 0.0
    for line in out.splitlines():
        parts = [x.strip() for x in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and int(parts[0]) in pids:
            try:
                total += float(parts[1])
            except ValueError:
                continue
    return total


class TreeSampler:
    """Samples an engine's process tree in a thread: peak RSS, high-water marks, and nvidia-smi where present."""

    def __init__(self, pid_of: Callable[[], int | None], interval: float = 0.1) -> None:
        self.pid_of = pid_of
        self.interval = interval
        self.pid: int | None = None
        self.peak_rss_mb = 0.0
        self.hwm_mb: dict[int, float] = {}
        self.gpu_mb: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="tree-sampler")
        self._last_gpu = 0.0

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.pid:
            self.sample()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self.pid is None:
                try:
                    self.pid = self.pid_of()
                except Exception:
                    self.pid = None
            if self.pid:
                self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        """One sample of the tree."""
        if not self.pid:
            return
        procs = process_tree(self.pid)
        self.peak_rss_mb = max(self.peak_rss_mb, tree_rss_mb(self.pid))
        for p in procs:
            self.hwm_mb[p.pid] = max(self.hwm_mb.get(p.pid, 0.0), high_water_mb(p.pid))
        now = time.monotonic()
        if now - self._last_gpu >= 0.5:  # nvidia-smi is slow: at most twice a second
            self._last_gpu = now
            gpu = nvidia_smi_mb({p.pid for p in procs})
            if gpu is not None:
                self.gpu_mb = max(self.gpu_mb or 0.0, gpu)

    @property
    def hwm_sum_mb(self) -> float:
        """The sum of the kernel's per-process RSS high-water marks (shared pages counted in each process)."""
        return sum(self.hwm_mb.values())


def engine_url(entry: dict[str, Any]) -> str | None:
    """The engine's own base URL from a GET /hub/models entry (process runtime: its loopback port)."""
    info = entry.get("process") or {}
    if info.get("base_url"):
        return str(info["base_url"]).rstrip("/")
    if info.get("port"):
        return f"http://{info.get('address') or '127.0.0.1'}:{info['port']}"
    return None


def engine_memory(entry: dict[str, Any]) -> dict[str, Any] | None:
    """The engine's GET /memory report, if it has one."""
    url = engine_url(entry)
    if not url:
        return None
    try:
        r = httpx.get(url + "/memory", timeout=10)
    except httpx.HTTPError:
        return None
    if r.status_code != 200:
        return None
    try:
        data = r.json()
    except ValueError:
        return None
    return data if isinstance(data, dict) and "max_peak_mb" in data else None


def choose_peak(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The figure to budget with: nvidia-smi, else the engine's torch CUDA peak, else RSS (the largest)."""
    by = {r["source"]: r for r in rows if r.get("peak_mb")}
    for source in ("nvidia-smi", "torch_cuda_max_allocated"):
        if source in by:
            return by[source]
    rss = [r for r in rows if r["source"] in ("rss", "engine_rss") and r.get("peak_mb")]
    return max(rss, key=lambda r: r["peak_mb"]) if rss else None


async def _workload(hub: HubClient, entry: dict[str, Any], sc: MemoryScenario) -> None:
    async with hub.async_client(4) as client:
        for _ in range(sc.requests):
            if entry["type"] == "image":
                r = await generate_images(client, hub.v1, entry["id"], "a red bicycle", sc.image_size, 1,
                                          sc.image_steps, sc.steps_field)
                err = r["error"]
            else:
                rec = await stream_chat(client, hub.v1, entry["id"], "Count to ten.", sc.max_tokens)
                err = rec.error
            if err:
                raise RuntimeError(f"workload request to {entry['id']!r} failed: {err}")


def measure_model(hub: HubClient, model_id: str, sc: MemoryScenario) -> list[dict[str, Any]]:
    """Rows (one per source) of one model's peak; the chosen one has ledger=True (and is recorded if asked)."""
    if sc.cold and hub.model(model_id)["state"] != "stopped":
        hub.unload(model_id)

    def pid_of() -> int | None:
        return (hub.model(model_id).get("process") or {}).get("pid")

    with TreeSampler(pid_of, sc.sample_interval) as sampler:
        t0 = time.perf_counter()
        hub.load(model_id)
        load_s = time.perf_counter() - t0
        entry = hub.model(model_id)
        run_sync(_workload(hub, entry, sc))
    rows: list[dict[str, Any]] = []
    base = {"scenario": sc.name, "model": model_id, "type": entry["type"], "engine": entry["engine"],
            "load_s": load_s, "declared_gb": entry.get("memory_gb")}
    if sampler.pid:
        rows.append({**base, "source": "rss", "device": "cpu", "peak_mb": sampler.peak_rss_mb,
                     "note": "resident memory of the engine's process tree (PSS summed, sampled peak)"})
        if sampler.hwm_sum_mb:
            rows.append({**base, "source": "rss_hwm", "device": "cpu", "peak_mb": sampler.hwm_sum_mb,
                         "note": "sum of per-process RSS high-water marks: an upper bound, not budgeted"})
    if sampler.gpu_mb:
        rows.append({**base, "source": "nvidia-smi", "device": "cuda", "peak_mb": sampler.gpu_mb,
                     "note": "GPU memory of the engine's processes"})
    if rep := engine_memory(entry):
        kind = rep.get("kind", "")
        rows.append({**base, "source": "torch_cuda_max_allocated" if kind == "torch_cuda_max_allocated"
                     else "engine_rss", "device": rep.get("device") or "?", "peak_mb": rep.get("max_peak_mb"),
                     "note": f"reported by the engine ({kind}, {rep.get('requests')} requests)"})
    best = choose_peak(rows)
    for r in rows:
        r["ledger"] = r is best
    if best and sc.write_ledger:
        hub.record_memory(model_id, best["peak_mb"] / 1024, best["device"], best["source"])
    return rows


def measure_memory(hub: HubClient, sc: MemoryScenario) -> list[dict[str, Any]]:
    """Peak memory rows of every model of the scenario, one after another."""
    rows = []
    for mid in sc.models:
        rows.extend(measure_model(hub, mid, sc))
    return rows
