"""torch.distributed plumbing for data-parallel training (docs/scaling.md).

``scmedal train`` started by ``torchrun --nproc_per_node=N -m napari_scmedal train ...`` finds the
``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` variables torchrun sets, calls :func:`init_from_env` (gloo on CPU,
NCCL on CUDA) and every process trains on its own shard: :class:`Comm` is what the data and training
code see. ``Comm()`` without a process group is the single-process case (rank 0 of 1, reductions are
no-ops), so the same code path serves one process and many.
"""

from __future__ import annotations

import datetime
import os

import numpy as np
import torch

__all__ = ["Comm", "init_from_env", "launched_by_torchrun", "shutdown"]


def launched_by_torchrun() -> bool:
    """True when the environment says this process is one of several started by torchrun."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def init_from_env(device: str | None = None, timeout_s: float = 1800.0) -> "Comm":
    """Join the process group described by torchrun's environment variables.

    Backend: NCCL when ``device`` asks for CUDA (``"cuda"``, or ``None``/``"auto"`` with CUDA
    available), each process on ``cuda:LOCAL_RANK``; gloo otherwise. Returns the :class:`Comm`.
    """
    import torch.distributed as dist

    use_cuda = (device in (None, "auto") and torch.cuda.is_available()) or (
        device is not None and str(device).startswith("cuda"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    return Comm(torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu"))


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class Comm:
    """Rank, world size and the few collective operations the trainer needs.

    Without an initialised process group (or with one process) every reduction returns its input.
    ``device``: where the collective tensors live (CUDA for NCCL, CPU for gloo).
    """

    def __init__(self, device=None):
        import torch.distributed as dist

        self.active = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.rank = dist.get_rank() if self.active else 0
        self.world = dist.get_world_size() if self.active else 1
        if device is None:
            device = "cuda" if self.active and dist.get_backend() == "nccl" else "cpu"
        self.device = torch.device(device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _reduce(self, arr, op):
        if not self.active:
            return arr
        import torch.distributed as dist

        a = np.asarray(arr)
        t = torch.as_tensor(np.ascontiguousarray(a), device=self.device)
        if t.dtype == torch.bool:
            t = t.to(torch.int32)
        dist.all_reduce(t, op=op)
        out = t.cpu().numpy().reshape(a.shape)
        return out.astype(a.dtype, copy=False) if a.dtype != bool else out.astype(bool)

    def sum(self, arr):
        """Elementwise sum over ranks of a numpy array (or scalar)."""
        import torch.distributed as dist

        return self._reduce(arr, dist.ReduceOp.SUM) if self.active else arr

    def max(self, arr):
        import torch.distributed as dist

        return self._reduce(arr, dist.ReduceOp.MAX) if self.active else arr

    def min(self, arr):
        import torch.distributed as dist

        return self._reduce(arr, dist.ReduceOp.MIN) if self.active else arr

    def sum_tensor_(self, t: torch.Tensor) -> torch.Tensor:
        """In-place sum over ranks of a tensor on the training device."""
        if self.active:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def broadcast_module_state_(self, module: torch.nn.Module) -> None:
        """Copy rank 0's parameters and buffers (e.g. BatchNorm running statistics) to every rank."""
        if not self.active:
            return
        import torch.distributed as dist

        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)

    def max_divergence(self, module: torch.nn.Module) -> float:
        """Largest absolute difference between any rank's parameters and rank 0's (0.0 when in sync)."""
        if not self.active:
            return 0.0
        import torch.distributed as dist

        worst = torch.zeros((), dtype=torch.float64, device=self.device)
        for p in module.parameters():
            ref = p.detach().clone()
            dist.broadcast(ref, src=0)
            worst = torch.maximum(worst, (p.detach() - ref).abs().max().to(torch.float64))
        dist.all_reduce(worst, op=dist.ReduceOp.MAX)
        return float(worst)

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            if dist.get_backend() == "nccl":
                dist.barrier(device_ids=[self.device.index or 0])
            else:
                dist.barrier()
