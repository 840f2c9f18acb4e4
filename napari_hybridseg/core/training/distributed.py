"""Training on several processes: PyTorch's DistributedDataParallel, started by ``torchrun``.

::

    torchrun --nproc_per_node 2 -m napari_hybridseg.cli train PROJECT --out RUN

The launcher (``torchrun``, or any that sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``) starts the processes;
:func:`from_env` joins them into one process group (NCCL on CUDA, gloo on
CPUs). Nothing here starts a process. Without those variables (or with
``WORLD_SIZE=1``) it returns None and the trainer takes its single-process
path, untouched.

What a distributed run does differently, each in one place:

* **batches**: every rank draws the same global batch of ``batch_size``
  images with the same seeded generator (so the generator stays in step on
  every rank) and trains on its slice ``[rank::world_size]``
  (:meth:`Distributed.shard`); DDP averages the gradients, so with equal
  slices the update is that of the global batch (the loss of a slice is its
  sum over rows divided by the slice's rows). ``batch_size`` must therefore
  be a multiple of the number of processes.
* **BatchNorm**: on CUDA the networks' BatchNorm layers become SyncBatchNorm
  (statistics over the global batch, as one process would compute them).
  PyTorch's SyncBatchNorm has no CPU kernel, so on CPUs (gloo) each rank
  normalises over its own slice; this is the main reason a CPU run differs
  from a single-process one (docs/training.md gives the measured tolerance).
  The running statistics are broadcast from rank 0 at every forward (DDP's
  ``broadcast_buffers``) and before each DII update.
* **DII**: the weak set is split into contiguous spans, one per rank; each
  rank scores its span against the strong gradient (the same strong images on
  every rank: the generator is shared, the weights are DDP's), the scores are
  gathered in order, and every rank takes the same step of the weight bank
  with them: every rank holds the same gammas.
* **files**: only rank 0 has a run folder (checkpoints, ``run.json``,
  ``gamma.json``, reports, the project's ``weights.json``); the others train
  with ``run_dir=None``.
* **stopping**: a Stop (Ctrl-C, SIGTERM) on any rank stops every rank at the
  same step (:meth:`Distributed.any` each step); a rank that dies makes the
  next collective of the others fail, and they end with a message after rank
  0 writes a checkpoint of the last completed step.

Not supported yet (refused with a message): MLB-Seg pixel weights
(``pixel.mode="exact"``), whose meta step would need the strong gradient of
the global batch.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta

import torch

from napari_hybridseg.core.errors import ConfigError, RunError

__all__ = ["LAUNCHER_VARIABLES", "Distributed", "check_config", "from_env", "is_launched", "lost_rank",
           "quiet_sigterm"]

#: the variables torchrun (torch.distributed.run) sets for every process it starts
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def is_launched(environ=None) -> bool:
    """A launcher started this process as one of several (``WORLD_SIZE`` > 1)."""
    environ = os.environ if environ is None else environ
    try:
        return int(environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


@dataclass
class Distributed:
    """This process's place in a distributed run, and the few collectives the trainer uses.

    Attributes
    ----------
    rank, world_size : int
        This process and the number of processes.
    local_rank, local_world_size : int
        The same on this machine (``LOCAL_RANK`` picks the GPU).
    backend : str
        ``"nccl"`` or ``"gloo"``.
    device : str
        ``"cuda:<local_rank>"`` or ``"cpu"``: the trainer's device setting.
    """

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    backend: str
    device: str
    #: DII updates so far, and the largest difference of one gamma between two ranks over them
    dii_updates: int = 0
    gamma_rank_spread: float = 0.0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0

    @property
    def label(self) -> str:
        """What the run record's device label gets appended."""
        bn = "SyncBatchNorm" if self.backend == "nccl" else "BatchNorm per rank"
        return f"x{self.world_size} processes (DDP, {self.backend}, {bn})"

    def _tensor(self, values, dtype=torch.float64) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=self.device if self.backend == "nccl" else "cpu")

    # -- data ----------------------------------------------------------------
    def shard(self, rows: list) -> list:
        """This rank's rows of a global batch: every ``world_size``-th, from ``rank``."""
        return list(rows)[self.rank::self.world_size]

    def span(self, n: int) -> tuple[int, int]:
        """This rank's contiguous span ``[lo, hi)`` of ``n`` items (the first ranks get one more)."""
        base, extra = divmod(n, self.world_size)
        lo = self.rank * base + min(self.rank, extra)
        return lo, lo + base + (1 if self.rank < extra else 0)

    # -- collectives -----------------------------------------------------------
    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any (a Stop seen by one stops all)."""
        import torch.distributed as dist

        t = self._tensor([1.0 if flag else 0.0])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def all_ok(self, ok: bool) -> bool:
        """True on every rank when ``ok`` is true on all."""
        return not self.any(not ok)

    def gather_scores(self, local: torch.Tensor) -> torch.Tensor:
        """Every rank's span of DII scores, concatenated in rank order (float64, CPU), on every rank."""
        import torch.distributed as dist

        parts: list = [None] * self.world_size
        dist.all_gather_object(parts, [float(v) for v in local.detach().double().cpu().tolist()])
        return torch.tensor([v for part in parts for v in part], dtype=torch.float64)

    def mean_losses(self, losses: dict[str, float]) -> dict[str, float]:
        """The logged terms of the global batch: the mean over ranks (a term a rank lacks counts as 0)."""
        import torch.distributed as dist

        parts: list = [None] * self.world_size
        dist.all_gather_object(parts, losses)
        keys = list(losses) + [k for part in parts for k in part if k not in losses]
        return {k: sum(float(part.get(k, 0.0)) for part in parts) / self.world_size for k in keys}

    def compare_gammas(self, values: dict[str, float]) -> float:
        """The largest difference of one gamma between ranks after a DII update (kept for :meth:`record`)."""
        import torch.distributed as dist

        parts: list = [None] * self.world_size
        dist.all_gather_object(parts, dict(values))
        spread = max((max(p.get(k, float("nan")) for p in parts) - min(p.get(k, float("nan")) for p in parts)
                      for k in values), default=0.0)
        if any(set(p) != set(values) for p in parts):
            spread = float("inf")
        self.dii_updates += 1
        self.gamma_rank_spread = max(self.gamma_rank_spread, float(spread))
        return float(spread)

    def record(self, batch_size: int) -> dict:
        """The run record's ``distributed`` entry."""
        return {"world_size": self.world_size, "backend": self.backend, "global_batch": int(batch_size),
                "per_rank_batch": int(batch_size) // self.world_size,
                "batchnorm": "SyncBatchNorm" if self.backend == "nccl" else "per rank",
                "dii_updates": self.dii_updates, "gamma_rank_spread": self.gamma_rank_spread}

    def broadcast_buffers(self, net: torch.nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank."""
        import torch.distributed as dist

        for buf in net.buffers():
            dist.broadcast(buf, src=0)

    # -- networks ----------------------------------------------------------------
    def wrap(self, net: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
        """``(network, DDP wrapper)``: the network SyncBatchNorm'd on CUDA (same parameters), and its DDP.

        The trainer keeps the network itself for DII, previews and checkpoints
        (no gradient synchronisation there) and forwards the training batch
        through the wrapper.
        """
        from torch.nn.parallel import DistributedDataParallel as DDP

        if self.backend == "nccl":
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
            return net, DDP(net, device_ids=[self.local_rank], output_device=self.local_rank)
        return net, DDP(net)

    def close(self) -> None:
        """Leave the process group (idempotent)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()


def lost_rank(exc: BaseException) -> bool:
    """``exc`` is a collective that failed because another rank died or stopped answering.

    torch raises :class:`torch.distributed.DistError` for most, but gloo's
    "Connection reset by peer" / "Connection closed by peer" come as a plain
    RuntimeError naming gloo; the trainer's own errors (a diverged loss) are not.
    """
    from torch.distributed import DistError

    from napari_hybridseg.core.errors import HybridsegError

    if isinstance(exc, HybridsegError):
        return False
    if isinstance(exc, DistError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(k in text for k in ("gloo", "NCCL", "Connection reset",
                                                                      "Connection closed", "ProcessGroup"))


def check_config(config, dist: Distributed | None) -> None:
    """What a distributed run refuses: a batch that does not split evenly, the pixel-weight meta step.

    Raises
    ------
    ConfigError
    """
    if dist is None:
        return
    if config.batch_size % dist.world_size:
        raise ConfigError("batch_size", f"{config.batch_size} images do not split evenly over {dist.world_size} "
                          "processes (the global batch is cut into equal slices); use a multiple of "
                          f"{dist.world_size}", str(config.batch_size - config.batch_size % dist.world_size
                                                     or dist.world_size))
    if config.pixel.mode != "off":
        raise ConfigError("pixel.mode", "MLB-Seg pixel weights are not available in distributed training yet "
                          "(their meta step needs the strong gradient of the global batch); train them on one "
                          "process, or use pixel.mode=off", "off")


def quiet_sigterm() -> None:
    """SIGTERM only noted, for the rest of this process (call it in the main thread of a distributed run).

    torchrun sends SIGTERM to every other rank as soon as one fails; the
    trainer's own handler (:func:`~.trainer.run`) turns it into a Stop, and
    this one keeps it from killing the process while it writes its rescue
    checkpoint and prints what happened. torchrun still ends a process that
    does not exit (SIGKILL after its grace period).
    """
    import signal
    import threading

    if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, lambda signum, frame: None)


def from_env(device: str = "auto", *, timeout_s: float = 600.0, environ=None) -> Distributed | None:
    """Join the process group a launcher set up; None when this process runs alone.

    Parameters
    ----------
    device : str
        The run's device setting: ``auto`` or ``cuda...`` with a GPU here gives
        NCCL and ``cuda:<LOCAL_RANK>``; ``cpu`` (or no GPU) gives gloo.
    timeout_s : float
        How long a collective waits for a rank that neither answers nor dies.

    Raises
    ------
    RunError
        A launcher variable is missing, more processes than GPUs on this
        machine, or MPS (no backend for it).
    """
    environ = os.environ if environ is None else environ
    if not is_launched(environ):
        return None
    missing = [k for k in LAUNCHER_VARIABLES if not environ.get(k)]
    if missing:
        raise RunError(f"WORLD_SIZE is set but {', '.join(missing)} is not: start distributed training with "
                       "torchrun (torchrun --nproc_per_node N -m napari_hybridseg.cli train ...)")
    import torch.distributed as dist

    rank, world = int(environ["RANK"]), int(environ["WORLD_SIZE"])
    local_rank = int(environ.get("LOCAL_RANK", "0"))
    local_world = int(environ.get("LOCAL_WORLD_SIZE", str(world)))
    spec = (device or "auto").lower()
    if spec.startswith("mps"):
        raise RunError("distributed training runs on CUDA GPUs (NCCL) or CPUs (gloo), not MPS; use --device cpu")
    cuda = spec.startswith("cuda") or (spec == "auto" and torch.cuda.is_available())
    if cuda:
        if not torch.cuda.is_available():
            raise RunError(f"device {device!r} asked for but no CUDA GPU is available here; use --device cpu")
        if local_rank >= torch.cuda.device_count():
            raise RunError(f"process {local_rank} of this machine has no GPU of its own ({torch.cuda.device_count()} "
                           "here): start at most one process per GPU (--nproc_per_node)")
        torch.cuda.set_device(local_rank)
        backend, dev = "nccl", f"cuda:{local_rank}"
    else:
        backend, dev = "gloo", "cpu"
    if not dist.is_initialized():
        try:  # binding the GPU at init (torch >= 2.3) lets NCCL connect eagerly
            kwargs = {"device_id": torch.device(dev)} if cuda else {}
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s), **kwargs)
        except TypeError:
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return Distributed(rank, world, local_rank, local_world, backend, dev)
