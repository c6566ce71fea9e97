"""Peak memory of a call: CUDA's allocator statistics on GPU, the profiler's allocation trace on CPU.

The CPU allocator keeps no peak statistic, so on CPU the call runs under ``torch.profiler`` with
``profile_memory=True`` and the peak is the maximum running sum of its allocation (+) and free (−)
events, i.e. the most bytes of tensors allocated during the call that were alive at one time.
"""

from __future__ import annotations

from typing import Any, Callable

import torch


def peak_allocated_bytes(fn: Callable[[], Any], device: str | torch.device = "cpu") -> tuple[Any, int]:
    """Run ``fn()`` and return ``(result, peak bytes allocated on device above the level at the start)``."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        torch.cuda.synchronize(device)
        return result, torch.cuda.max_memory_allocated(device) - start
    if device.type != "cpu":
        raise ValueError(f"peak memory is measured on cpu or cuda, not {device}")
    from torch._C._autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and e.device_type() == DeviceType.CPU]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return result, peak
