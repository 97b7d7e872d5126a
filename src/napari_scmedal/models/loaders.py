"""Minibatch sources for :func:`napari_scmedal.models.fit`.

Both kinds yield :class:`~napari_scmedal.models.Tensors` minibatches on the training device and
split the work between the ranks of a :class:`~napari_scmedal.distributed.Comm` (one rank: all of it).

* :class:`InMemorySource` -- the split's rows as tensors, on the training device when they fit
  ("whole data set on the device": no host-to-device copy per step) or in (pinned) host memory,
  minibatched by one random permutation per epoch. With several ranks every rank takes every
  ``world``-th index of the same permutation.
* :class:`StreamingSource` -- the split's rows of an on-disk ``.h5ad`` (:class:`~napari_scmedal.data.stream.
  OnDiskTraining`), read block by block: each epoch the blocks are shuffled, every rank takes its own
  blocks, ``buffer_blocks`` of them are read and transformed into a buffer whose rows are shuffled and
  cut into minibatches, while the next buffer is read in a background thread. Peak memory is about
  two buffers, whatever the number of cells. When the split fits one block, the minibatches are
  exactly those of :class:`InMemorySource` for the same seed.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ..selection import subsample
from .batch import Tensors

__all__ = ["InMemorySource", "StreamingSource", "fits_on_device", "expected_bytes", "sample_rows"]


def fits_on_device(nbytes: int, device: torch.device, fraction: float = 0.5) -> bool:
    """Whether ``nbytes`` of training data should live on ``device``: always on CPU; on CUDA when they
    take at most ``fraction`` of the free memory."""
    if device.type != "cuda":
        return True
    try:
        free, _ = torch.cuda.mem_get_info(device)
    except Exception:  # pragma: no cover - no CUDA here
        return False
    return nbytes <= fraction * free


def _even_steps(sizes: list[int], batch_size: int) -> int:
    """Minibatches a list of buffer sizes gives (trailing batches of < 2 rows are skipped)."""
    steps = 0
    for s in sizes:
        full, rest = divmod(int(s), batch_size)
        steps += full + (1 if rest >= 2 else 0)
    return steps


class InMemorySource:
    """Rows of one split held as tensors (see the module docstring)."""

    def __init__(self, tensors, device: torch.device):
        self.tensors = tensors
        self.device = torch.device(device)

    @property
    def n(self) -> int:
        return self.tensors.n

    def epoch(self, batch_size: int, gen: torch.Generator, epoch: int, comm, max_steps: int | None = None):
        n = self.n
        perm = torch.randperm(n, generator=gen)
        if comm.world > 1:
            perm = perm[comm.rank::comm.world][: n // comm.world]
        here = self.tensors.X.device
        perm = perm.to(here)
        steps = 0
        for i in range(0, perm.numel(), batch_size):
            idx = perm[i:i + batch_size]
            if idx.numel() < 2:  # BatchNorm needs >= 2 samples in training mode
                continue
            if max_steps is not None and steps >= max_steps:
                return
            steps += 1
            b = self.tensors.take(idx)
            yield b if here == self.device else b.to(self.device)

    def chunks(self, size: int, comm):
        for t in self.tensors.chunks(size, comm):
            yield t if t.X.device == self.device else t.to(self.device)


class StreamingSource:
    """Rows of one split of an on-disk data set, streamed block by block (see the module docstring)."""

    def __init__(self, plan, positions, device: torch.device, buffer_blocks: int = 4, seed: int = 0,
                 prefetch: bool = True, world: int = 1):
        self.plan = plan
        self._rows = plan.lazy()  # reads and transforms rows: the same code as every other on-disk read
        self.device = torch.device(device)
        self.buffer_blocks = max(1, int(buffer_blocks))
        self.seed = int(seed)
        self.prefetch = bool(prefetch)
        pos = np.sort(np.asarray(positions, dtype=np.int64))
        rows = plan.cells[pos]
        block_of = rows // int(plan.chunk_cells)
        cuts = np.flatnonzero(np.diff(block_of)) + 1
        self.blocks = [p for p in np.split(pos, cuts) if p.size]  # positions per file block, in file order
        if world > 1 and len(self.blocks) < 4 * world:
            # too few blocks to give every rank its own: cut each into contiguous pieces (a rank then reads
            # only its pieces' rows)
            k = math.ceil(4 * world / max(len(self.blocks), 1))
            self.blocks = [q for p in self.blocks for q in np.array_split(p, k) if q.size]
        while world > 1 and len(self.blocks) % world and max(b.size for b in self.blocks) > 1:
            # a count that ranks share evenly: halve the largest block (rows left over per epoch stay small)
            i = int(np.argmax([b.size for b in self.blocks]))
            big = self.blocks.pop(i)
            self.blocks[i:i] = [big[: big.size // 2], big[big.size // 2:]]
        self._n = int(pos.size)

    @property
    def n(self) -> int:
        return self._n

    def _load(self, block_ids):
        """Model-ready tensors of the given blocks' rows (read and transformed like any on-disk rows)."""
        pos = np.concatenate([self.blocks[int(k)] for k in block_ids])
        return Tensors.from_prepared(self._rows.subset(pos), device=self.device)

    def _load_positions(self, positions):
        """Model-ready tensors of the given split positions (read and transformed like any on-disk rows)."""
        return Tensors.from_prepared(self._rows.subset(np.sort(np.asarray(positions))), device=self.device)

    def _groups(self, ids) -> list[list[int]]:
        ids = list(ids)
        return [ids[i:i + self.buffer_blocks] for i in range(0, len(ids), self.buffer_blocks)]

    def _order(self, epoch: int) -> np.ndarray:
        nb = len(self.blocks)
        if nb <= 1:
            return np.arange(nb)
        g = torch.Generator().manual_seed(self.seed * 7919 + int(epoch))
        return torch.randperm(nb, generator=g).numpy()

    def epoch(self, batch_size: int, gen: torch.Generator, epoch: int, comm, max_steps: int | None = None):
        order = self._order(epoch)
        # every rank plans every rank's minibatches, so all take the same number of steps (DDP lock-step)
        steps = min(_even_steps([sum(self.blocks[k].size for k in grp) for grp in self._groups(order[r::comm.world])],
                                batch_size) for r in range(comm.world))
        if max_steps is not None:
            steps = min(steps, int(max_steps))
        groups = self._groups(order[comm.rank::comm.world])
        done = 0
        pool = ThreadPoolExecutor(1) if self.prefetch and len(groups) > 1 else None
        try:
            nxt = None
            for gi, grp in enumerate(groups):
                if done >= steps:
                    return
                buf = nxt.result() if nxt is not None else self._load(grp)
                nxt = pool.submit(self._load, groups[gi + 1]) if pool is not None and gi + 1 < len(groups) else None
                perm = torch.randperm(buf.n, generator=gen).to(buf.X.device)
                for i in range(0, buf.n, batch_size):
                    idx = perm[i:i + batch_size]
                    if idx.numel() < 2:
                        continue
                    if done >= steps:
                        return
                    done += 1
                    yield buf.take(idx)
                del buf
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def chunks(self, size: int, comm):
        for k in range(comm.rank, len(self.blocks), comm.world):
            t = self._load([k])
            for i in range(0, t.n, size):
                yield t.slice(i, min(i + size, t.n))


def expected_bytes(n_rows: int, n_genes: int, n_batches: int) -> int:
    """Bytes of one split held as float32 tensors (X + one-hot) plus int64 codes."""
    return int(n_rows) * (4 * (int(n_genes) + int(n_batches)) + 16)


def sample_rows(source, n: int, seed: int = 0, chunk: int = 8192):
    """Up to ``n`` rows of a split drawn at random over the *whole* split (seeded; the same rows for the same
    seed), as Tensors chunks of at most ``chunk`` rows on the source's device. Not sharded between ranks:
    used for the BatchNorm refresh and the health checks, which must not see only a prefix of a file sorted
    by batch."""
    total = int(source.n)
    if total == 0 or n <= 0:
        return
    if isinstance(source, StreamingSource):
        pos = np.concatenate(source.blocks)
        pick = subsample(pos.size, n, seed)
        for i in range(0, pick.size, chunk):
            yield source._load_positions(pos[pick[i:i + chunk]])
        return
    pick = subsample(total, n, seed)
    t = source.tensors
    for i in range(0, pick.size, chunk):
        idx = torch.as_tensor(pick[i:i + chunk], device=t.X.device)
        b = t.take(idx)
        yield b if b.X.device == source.device else b.to(source.device)
