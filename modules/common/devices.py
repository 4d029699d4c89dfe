"""A torch device named by the user (`--device`), checked before any work: a name torch does not
know, or a CUDA / MPS device this machine lacks, is a one-line ConfigError."""
from __future__ import annotations

import torch

from modules.common.errors import ConfigError


def require_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"--device {name!r} is not a torch device ({str(err).splitlines()[0]}); use cpu or cuda") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name} but CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name} but this machine has {torch.cuda.device_count()} CUDA device(s); "
                              f"use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {name} but MPS is not available on this machine; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device {name} is not supported here; use cpu or cuda")
    return device


def native_bf16(accelerator: str = "auto", cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether bf16 matmuls run natively where Lightning's `accelerator` will put the model: a CUDA
    device with bf16, or a CPU with AVX512-BF16 or AMX (Linux /proc/cpuinfo flags). Elsewhere
    autocast emulates bf16 and is slower than fp32, so callers fall back to "32-true"."""
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    if accelerator not in ("auto", "cpu"):
        return False
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def mixed_precision(accelerator: str = "auto", cpuinfo: str = "/proc/cpuinfo") -> str:
    """Lightning's `trainer.precision` for `accelerator`: "bf16-mixed" where bf16 is native, else "32-true"."""
    return "bf16-mixed" if native_bf16(accelerator, cpuinfo) else "32-true"
