"""Choosing the compute device and its precision.

``"auto"`` picks CUDA, then Apple MPS, then the CPU. On the CPU, bf16
autocast is used where the processor has native bf16 instructions (AVX512-BF16
or AMX): it is what makes minutes-long CPU sessions practical; elsewhere fp32.
On CUDA, fp16 autocast (AMP) with a gradient scaler.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["DeviceInfo", "ThreadTuner", "available_cpus", "cpu_has_bf16", "release", "resolve_device"]


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


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


class ThreadTuner:
    """Chooses torch's CPU thread count from measured throughput, and keeps checking it.

    On an idle machine several threads are faster. With another CPU job beside
    them (a second training, a browser, napari's own thread), torch's OpenMP
    threads wait for each other at every parallel region while one of them is
    descheduled, and throughput collapses (docs/performance.md: 10 steps in 46 s
    with torch's default threads, 4 s with one). The tuner times the work under
    each candidate count (all cores, half of them, one), keeps the fastest, and
    probes again every ``reprobe_s`` seconds or as soon as the work runs 1.8x
    slower than when it chose (the load changed).

    Call :meth:`record` after each unit of work (a training step, a batch of
    tiles) with its duration; it sets ``torch.set_num_threads`` for the next one.
    """

    def __init__(self, max_threads: int, *, probe_items: int = 3, reprobe_s: float = 120.0, warmup: int = 1,
                 clock=time.perf_counter, set_threads=None):
        self.max_threads = max(1, int(max_threads))
        self.candidates = sorted({self.max_threads, max(1, self.max_threads // 2), 1}, reverse=True)
        self.probe_items = probe_items
        self.reprobe_s = reprobe_s
        self.warmup = warmup
        self.clock = clock
        self._set = set_threads or torch.set_num_threads
        self.current = self.max_threads
        self.chosen: int | None = None
        self.chosen_time: float | None = None
        self.history: list[tuple[int, float]] = []  # (threads, seconds per item) of every probe sample
        self._start_probe()

    @classmethod
    def for_device(cls, device: torch.device, threads: int | None = None) -> ThreadTuner | None:
        """A tuner for CPU work, or ``None`` where the thread count is fixed: a GPU; ``threads`` given (set
        here); ``OMP_NUM_THREADS`` or ``HYBRIDSEG_THREADS`` set; torch's count already lowered by the caller."""
        if device.type != "cpu":
            return None
        fixed = threads or os.environ.get("HYBRIDSEG_THREADS")
        if fixed:
            torch.set_num_threads(max(1, int(fixed)))
            return None
        n = available_cpus()
        if os.environ.get("OMP_NUM_THREADS") or n <= 1 or torch.get_num_threads() < n:
            return None
        return cls(n)

    def _start_probe(self) -> None:
        self._queue = list(self.candidates)
        self._samples: dict[int, list[float]] = {}
        self._apply(self._queue[0])

    def _apply(self, n: int) -> None:
        if n != self.current or self.chosen is None:
            self._set(n)
        self.current = n

    @property
    def probing(self) -> bool:
        return bool(self._queue)

    def record(self, seconds: float, items: int = 1) -> None:
        """The last unit of work took ``seconds`` for ``items`` items (under the current thread count)."""
        if self.warmup > 0:  # the first step builds caches and kernels: not a measurement
            self.warmup -= 1
            return
        per = seconds / max(1, items)
        if self._queue:
            n = self._queue[0]
            self._samples.setdefault(n, []).append(per)
            self.history.append((n, per))
            if len(self._samples[n]) >= self.probe_items:
                self._queue.pop(0)
                if self._queue:
                    self._apply(self._queue[0])
                else:
                    med = {k: sorted(v)[len(v) // 2] for k, v in self._samples.items()}
                    best = min(med, key=lambda k: (med[k], k))
                    self.chosen, self.chosen_time = best, med[best]
                    self._next_probe = self.clock() + self.reprobe_s
                    self._apply(best)
            return
        slower = self.chosen_time is not None and per > 1.8 * self.chosen_time
        if slower or self.clock() >= self._next_probe:
            self._start_probe()
