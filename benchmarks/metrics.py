"""Pure measuring arithmetic: percentiles and the serving metrics of vLLM's `bench serve`.

Definitions (as vLLM's benchmarks/serve computes them), per streamed request with start time t0 and the arrival
times t1..tn of the chunks that carry output text:
- TTFT (time to first token) = t1 - t0.
- ITL (inter-token latency) = every gap t(i+1) - t(i); the ITLs of all requests are pooled before percentiles.
- E2EL (end-to-end latency) = time of the last byte - t0.
- TPOT (time per output token, first token excluded) = (E2EL - TTFT) / (output_tokens - 1), for requests with
  more than one output token; output_tokens is the engine's usage count when it reports one, else the number of
  text chunks.
- Output throughput = all output tokens / wall time of the whole run (first send to last answer).
Percentiles interpolate linearly between closest ranks (numpy's default).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

PERCENTILES = (50, 90, 99)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation, as numpy.percentile; NaN for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    xs = sorted(values)
    if not xs:
        return math.nan
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def mean(values: Sequence[float]) -> float:
    """The arithmetic mean; NaN for no values."""
    return sum(values) / len(values) if values else math.nan


def describe(values: Sequence[float], prefix: str, scale: float = 1.0) -> dict[str, float]:
    """{prefix_mean, prefix_p50, prefix_p90, prefix_p99} of values times scale."""
    xs = [v * scale for v in values]
    out = {f"{prefix}_mean": mean(xs)}
    out.update({f"{prefix}_p{q}": percentile(xs, q) for q in PERCENTILES})
    return out


@dataclass
class RequestRecord:
    """What the client saw of one request: its start, the arrival times of its text chunks and its end."""

    start: float
    end: float | None = None
    chunk_times: list[float] = field(default_factory=list)
    usage_tokens: int | None = None  # completion_tokens reported by the engine, when it reports them
    error: str | None = None

    @property
    def ok(self) -> bool:
        """The request completed without error."""
        return self.error is None and self.end is not None

    @property
    def output_tokens(self) -> int:
        """Output tokens: the engine's count if reported, else one per text chunk."""
        return self.usage_tokens if self.usage_tokens is not None else len(self.chunk_times)

    @property
    def ttft(self) -> float | None:
        """Seconds from sending to the first text chunk."""
        return self.chunk_times[0] - self.start if self.chunk_times else None

    @property
    def itl(self) -> list[float]:
        """Seconds between consecutive text chunks."""
        t = self.chunk_times
        return [b - a for a, b in itertools.pairwise(t)]

    @property
    def e2el(self) -> float | None:
        """Seconds from sending to the end of the answer."""
        return self.end - self.start if self.end is not None else None

    @property
    def tpot(self) -> float | None:
        """(E2EL - TTFT) / (output tokens - 1); None with fewer than two tokens."""
        n = self.output_tokens
        if not self.ok or self.ttft is None or n < 2:
            return None
        return (self.e2el - self.ttft) / (n - 1)


def summarize_text(records: Iterable[RequestRecord]) -> dict[str, float | int]:
    """The serving metrics of one run (one concurrency level): times in ms, throughput in tokens/s."""
    recs = list(records)
    ok = [r for r in recs if r.ok]
    if ok:
        first = min(r.start for r in ok)
        last = max(r.end for r in ok if r.end is not None)
        duration = last - first
    else:
        duration = math.nan
    tokens = sum(r.output_tokens for r in ok)
    out: dict[str, float | int] = {
        "requests": len(recs),
        "completed": len(ok),
        "failed": len(recs) - len(ok),
        "duration_s": duration,
        "output_tokens": tokens,
        "output_tok_s": tokens / duration if ok and duration > 0 else math.nan,
        "request_s": len(ok) / duration if ok and duration > 0 else math.nan,
    }
    out.update(describe([r.ttft for r in ok if r.ttft is not None], "ttft_ms", 1000))
    out.update(describe([t for r in ok if (t := r.tpot) is not None], "tpot_ms", 1000))
    out.update(describe([g for r in ok for g in r.itl], "itl_ms", 1000))
    out.update(describe([r.e2el for r in ok if r.e2el is not None], "e2el_ms", 1000))
    return out


def added_latency(direct: Sequence[float], through: Sequence[float]) -> dict[str, float]:
    """Milliseconds a hop adds: percentiles of `through` minus the same percentiles of `direct` (seconds in)."""
    out = {}
    for q in (50, 99):
        d, t = percentile(direct, q) * 1000, percentile(through, q) * 1000
        out[f"direct_p{q}_ms"], out[f"through_p{q}_ms"], out[f"added_p{q}_ms"] = d, t, t - d
    return out
