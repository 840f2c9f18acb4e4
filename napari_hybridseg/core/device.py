"""Choosing the compute device and its precision.

``"auto"`` picks CUDA, then Apple MPS, then the CPU. On the CPU, bf16
autocast is used where the processor has native bf16 instructions (AVX512-BF16
or AMX): it is what makes minutes-long CPU sessions practical; elsewhere fp32.
On CUDA, fp16 autocast (AMP) with a gradient scaler.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["DeviceInfo", "cpu_has_bf16", "release", "resolve_device"]


@functools.cache
def cpu_has_bf16() -> bool:
    """True if the CPU runs bf16 natively (AVX512-BF16 or AMX-BF16, Linux ``/proc/cpuinfo``)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass(frozen=True)
class DeviceInfo:
    """A resolved device and the precision used on it.

    Attributes
    ----------
    device : torch.device
    amp_dtype : torch.dtype or None
        The autocast dtype, or ``None`` for plain fp32.
    label : str
        Human-readable, e.g. ``"cpu (bf16 autocast)"``; goes into every report.
    """

    device: torch.device
    amp_dtype: torch.dtype | None
    label: str

    def autocast(self):
        """Context manager: autocast on this device, or nothing for fp32."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    @property
    def needs_scaler(self) -> bool:
        return self.amp_dtype is torch.float16


def resolve_device(spec: str = "auto", precision: str = "auto") -> DeviceInfo:
    """Turn a device setting into a :class:`DeviceInfo`.

    Parameters
    ----------
    spec : str
        ``"auto"`` (cuda > mps > cpu), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
    precision : str
        ``"auto"`` (bf16 autocast on CPUs with native bf16, fp16 AMP on CUDA,
        fp32 on MPS) or ``"fp32"``.

    Raises
    ------
    ValueError
        If the device is unknown or not available here.
    """
    spec = (spec or "auto").lower()
    if precision not in ("auto", "fp32"):
        raise ValueError(f"precision {precision!r}: choose 'auto' or 'fp32'")
    if spec == "auto":
        if torch.cuda.is_available():
            spec = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            spec = "mps"
        else:
            spec = "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {spec!r}: use auto, cpu, cuda, cuda:N or mps") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} asked for but no CUDA GPU is available here; use --device cpu or auto")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {spec!r} asked for but MPS is not available here; use --device cpu or auto")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())

    amp: torch.dtype | None = None
    if precision == "auto":
        if device.type == "cuda":
            amp = torch.float16
        elif device.type == "cpu" and cpu_has_bf16():
            amp = torch.bfloat16
    if device.type == "cuda":
        name = f"{device} {torch.cuda.get_device_name(device)}"
    else:
        name = str(device)
    mode = {None: "fp32", torch.float16: "fp16 AMP", torch.bfloat16: "bf16 autocast"}[amp]
    return DeviceInfo(device, amp, f"{name} ({mode})")


def release(device: torch.device) -> None:
    """Give cached accelerator memory back once training ends."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()
