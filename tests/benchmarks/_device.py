"""What a benchmark ran on: printed beside every number it reports."""

from __future__ import annotations

import os
import platform

import torch


def describe_device(device: torch.device | str = "cpu") -> str:
    """The CUDA device's name, or the CPU's model name with its core count and torch's thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"CPU {model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
