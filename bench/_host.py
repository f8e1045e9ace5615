"""What machine a benchmark ran on, for its results file.

CPU results are repeatable on one host at one thread count but not across them (oneDNN picks
other kernels on another CPU), so every result records the host it came from.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch

BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo (Linux); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def bf16_flags(cpuinfo: dict[str, str] | None = None) -> str:
    """The CPU's bf16 flags, e.g. ``avx512_bf16 amx_bf16``; empty when none or unknown."""
    flags = (_cpuinfo() if cpuinfo is None else cpuinfo).get("flags", "").split()
    return " ".join(f for f in flags if f in BF16_FLAGS)


def host_info() -> dict[str, Any]:
    """CPU model, bf16 flags, torch threads and versions, plus the GPU when there is one."""
    cpuinfo = _cpuinfo()
    info: dict[str, Any] = {
        "cpu": cpuinfo.get("model name") or platform.processor() or platform.machine(),
        "bf16_flags": bf16_flags(cpuinfo),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def host_line(info: dict[str, Any]) -> str:
    """One line for a Markdown results file."""
    gpu = f", GPU {info['gpu']}" if "gpu" in info else ""
    return (
        f"Host: {info['cpu']} (bf16 flags: {info['bf16_flags'] or 'none'}), "
        f"{info['threads']} threads, torch {info['torch']}{gpu}."
    )
