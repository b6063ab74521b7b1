"""Summary statistics of latency samples, as TFLite's benchmark_model reports them."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from edgefrac.errors import UsageError

PERCENTILES = (50, 90, 95, 99)


@dataclasses.dataclass(frozen=True)
class LatencyStats:
    """Latency of ``runs`` timed calls, in milliseconds.

    ``std_ms`` is the population standard deviation (ddof=0). Percentiles
    interpolate linearly between the two nearest samples (numpy's default).
    """

    runs: int
    mean_ms: float
    std_ms: float
    min_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    @property
    def throughput_per_second(self) -> float:
        """Calls per second at the mean latency (runs divided by their summed time)."""
        return 1000.0 / self.mean_ms if self.mean_ms > 0 else math.inf

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["throughput_per_second"] = self.throughput_per_second
        return data


def latency_stats(samples_seconds: Sequence[float]) -> LatencyStats:
    """Summarise latency samples given in seconds.

    Raises:
        UsageError: no samples, or a negative or non-finite one.
    """
    values = np.asarray(samples_seconds, dtype=np.float64) * 1000.0
    if values.size == 0:
        raise UsageError("no latency samples to summarise; pass --runs 1 or more")
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise UsageError(f"latency samples must be finite and non-negative, got min {values.min()} ms")
    p50, p90, p95, p99 = (float(v) for v in np.percentile(values, PERCENTILES))
    return LatencyStats(
        runs=int(values.size),
        mean_ms=float(values.mean()),
        std_ms=float(values.std()),
        min_ms=float(values.min()),
        p50_ms=p50,
        p90_ms=p90,
        p95_ms=p95,
        p99_ms=p99,
        max_ms=float(values.max()),
    )
