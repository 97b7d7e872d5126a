"""The minibatch container of training: one split's model-space tensors on the training device.

:class:`Tensors` holds the scaled expression, batch codes and one-hot, and optional label codes of a set of
cells; the minibatch sources (:mod:`napari_scmedal.models.loaders`) yield it and the tasks
(:mod:`napari_scmedal.models.tasks`) train on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Tensors"]


@dataclass
class Tensors:
    """Model-space tensors of one split, already on the training device."""

    X: torch.Tensor            # (n, G) float32 scaled
    batch: torch.Tensor        # (n,) int64 codes
    batch_onehot: torch.Tensor  # (n, B) float32
    label: torch.Tensor | None = None  # (n,) int64 codes, -1 = unknown

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @classmethod
    def from_prepared(cls, prepared, idx=None, device="cpu") -> Tensors:
        sel = slice(None) if idx is None else np.asarray(idx)

        def t(a, dtype):
            return torch.as_tensor(np.ascontiguousarray(a[sel]), dtype=dtype, device=device)

        label = None
        if getattr(prepared, "label", None) is not None:
            label = t(prepared.label, torch.int64)
        return cls(t(prepared.X, torch.float32), t(prepared.batch, torch.int64),
                   t(prepared.batch_onehot, torch.float32), label)

    def take(self, idx: torch.Tensor) -> Tensors:
        return Tensors(self.X.index_select(0, idx), self.batch.index_select(0, idx),
                       self.batch_onehot.index_select(0, idx),
                       None if self.label is None else self.label.index_select(0, idx))

    def slice(self, start: int, stop: int) -> Tensors:
        sl = slice(start, stop)
        return Tensors(self.X[sl], self.batch[sl], self.batch_onehot[sl],
                       None if self.label is None else self.label[sl])

    def chunks(self, size: int, comm=None):
        """Consecutive slices of ``size`` rows (this rank's share of the rows when ``comm`` has several)."""
        lo, hi = 0, self.n
        if comm is not None and comm.world > 1:
            lo, hi = self.n * comm.rank // comm.world, self.n * (comm.rank + 1) // comm.world
        for i in range(lo, hi, size):
            yield self.slice(i, min(i + size, hi))

    def to(self, device, non_blocking: bool = False) -> Tensors:
        def mv(t):
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return Tensors(mv(self.X), mv(self.batch), mv(self.batch_onehot), mv(self.label))

    def pin_memory(self) -> Tensors:
        def pin(t):
            return None if t is None else t.pin_memory()

        return Tensors(pin(self.X), pin(self.batch), pin(self.batch_onehot), pin(self.label))

