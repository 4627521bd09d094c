"""Peak memory of each pipeline call, for the x-peak-memory-mb header and GET /memory: CUDA's own counter on CUDA,
the process's RSS sampled while the call runs on CPU (torch has no allocator statistics there)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psutil

from imageserver.api import MB


class Memory:
    """Peak memory of each job: CUDA's max allocated (reset per job) on CUDA, the process's sampled RSS on CPU."""

    def __init__(self) -> None:
        self.device = "cpu"
        self.kind = "rss"
        self.last_peak_mb: float | None = None
        self.max_peak_mb: float | None = None
        self.requests = 0
        self._proc = psutil.Process()

    def use(self, device: str) -> None:
        """Measure on `device` (a torch device string) from now on."""
        if device.startswith("cuda"):
            import torch

            index = torch.device(device).index
            self.device = f"cuda:{torch.cuda.current_device() if index is None else index}"
            self.kind = "torch_cuda_max_allocated"
        else:
            self.device, self.kind = "cpu", "rss"

    def measure(self, fn: Callable[[], Any], requests: int = 1) -> tuple[Any, float]:
        """Run fn (the pipeline call of `requests` requests); its result and the peak memory in MiB while it ran."""
        if self.kind == "torch_cuda_max_allocated":
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
            result = fn()
            peak = torch.cuda.max_memory_allocated(self.device) / MB
        else:
            peak_bytes = self._proc.memory_info().rss
            stop = threading.Event()

            def sample() -> None:
                nonlocal peak_bytes
                while not stop.wait(0.01):
                    peak_bytes = max(peak_bytes, self._proc.memory_info().rss)

            sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
            sampler.start()
            try:
                result = fn()
            finally:
                stop.set()
                sampler.join()
                peak_bytes = max(peak_bytes, self._proc.memory_info().rss)
            peak = peak_bytes / MB
        self.last_peak_mb = round(peak, 1)
        self.max_peak_mb = max(self.max_peak_mb or 0.0, self.last_peak_mb)
        self.requests += requests
        return result, self.last_peak_mb

    def snapshot(self) -> dict[str, Any]:
        """The GET /memory body."""
        return {"device": self.device, "kind": self.kind, "last_peak_mb": self.last_peak_mb,
                "max_peak_mb": self.max_peak_mb, "requests": self.requests}
