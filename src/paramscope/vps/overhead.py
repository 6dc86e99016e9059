"""What VPS costs: seconds per scored token and peak memory, against the base model in the same run."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile


def peak_bytes(fn: Callable[[], object], device: str) -> float:
    """Peak bytes allocated by ``fn`` above what was allocated when it started.

    CUDA has a peak counter; on CPU the profiler's per-op allocations and frees, in time order, give the
    live-bytes curve whose maximum is the peak (tracemalloc cannot see torch's allocator).
    """
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - before)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    changes = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage)
    return float(max(np.cumsum([c for _, c in changes]).max(initial=0), 0))


def measure(base: Callable[[], object], treated: Callable[[], object], n_tokens: int, repeats: int,
            device: str) -> dict[str, float]:
    """Median wall time per token of each, alternating the two so that drifts hit both alike."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times: dict[str, list[float]] = {"base": [], "vps": []}
    base(), treated()  # warm-up
    for _ in range(repeats):
        for name, fn in (("base", base), ("vps", treated)):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    sec = {k: statistics.median(v) / n_tokens for k, v in times.items()}
    mem = {"base": peak_bytes(base, device), "vps": peak_bytes(treated, device)}
    return {
        "sec_per_token_base": sec["base"],
        "sec_per_token": sec["vps"],
        "latency_ratio": sec["vps"] / sec["base"],
        "peak_bytes_base": mem["base"],
        "peak_bytes": mem["vps"],
        "memory_ratio": mem["vps"] / mem["base"] if mem["base"] > 0 else float("nan"),
        "threads": torch.get_num_threads(),
    }
