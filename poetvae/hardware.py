"""Where the work runs: device choice, whether to compute in bf16 there, and a CPU allocator
setting that matters for speed."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Iterable
from pathlib import Path

import torch

from poetvae.config import check_device
from poetvae.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """ "auto" -> cuda when there is one, else cpu; otherwise the named device, checked:
    only auto, cpu, cuda, cuda:N and mps (torch's others, such as meta, hold no data)."""
    if check_device(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name} asked for, but CUDA is not available here")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name} asked for, but this machine has {torch.cuda.device_count()} CUDA devices")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name} asked for, but MPS is not available here")
    return device


@functools.cache
def keep_freed_memory() -> bool:
    """Stop glibc from handing large freed blocks back to the kernel after every step.

    A training step allocates and frees the same ~50 MB logit tensors each time; by default
    glibc serves blocks that large with mmap/munmap, so every step pays for page faults
    and zeroing fresh pages. Raising the mmap and trim thresholds keeps those blocks in the
    heap for reuse: measured on the 2-core CPU, log_softmax forward+backward at
    (2688 x 4578) went from 105 ms to 46 ms, and a default-size training step from
    0.57 s to 0.51 s. Returns False where this is not glibc (nothing is changed).
    """
    path = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(path or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
    return bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, (1 << 31) - 1))


# CPU flags (as /proc/cpuinfo names them) of a native bf16 path: the AVX-512 bf16 dot
# products (Cooper Lake, Zen 4 and later) or the AMX tiles (Sapphire Rapids and later).
# Without them oneDNN emulates bf16 with fp32 instructions plus conversions, which is slower
# than fp32 alone.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The flags of this machine's CPU, from /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def _bf16_flags(flags: Iterable[str] | None) -> list[str]:
    """Which of CPU_BF16_FLAGS the CPU (with `flags`, or this machine's) has."""
    return sorted(set(cpu_flags() if flags is None else flags) & set(CPU_BF16_FLAGS))


def cpu_has_bf16(flags: Iterable[str] | None = None) -> bool:
    """Whether the CPU (with `flags`, or this machine's) computes bf16 natively."""
    return bool(_bf16_flags(flags))


def autocast_choice(device: torch.device, amp: str, flags: Iterable[str] | None = None) -> tuple[bool, str]:
    """Whether training on `device` runs under bf16 autocast for the setting `amp` (auto, cuda,
    off; TrainConfig.amp), and why, in words for the training header. `flags` stands in for
    the CPU's own (tests simulate a CPU without bf16 with it).

    Measured on a 2-core Zen 4 (avx512_bf16), batch 128: the LSTMs' forward and backward 1.6x
    faster in bf16 than in fp32, the whole training step 1.5-1.7x (docs/performance.md)."""
    if amp == "off":
        return False, "fp32 (amp = off)"
    if device.type == "cuda":
        return True, "bf16 autocast on CUDA"
    if device.type == "cpu" and amp == "auto":
        if have := _bf16_flags(flags):
            return True, f"bf16 autocast (the CPU has {', '.join(have)})"
        return False, "fp32 (the CPU has no native bf16: no avx512_bf16 or amx_bf16)"
    return False, f"fp32 (amp = {amp} on {device.type})"
