"""The reference DistributedDataLoader's token order, made seekable for exact resume.

Rank r of W reads micro-batches of B*T+1 tokens (x = buf[:-1], y = buf[1:]) at positions
r*B*T, r*B*T + B*T*W, ... of a shard, and moves to the next shard (cycling) as soon as
`pos + B*T*W + 1 > len(shard)`, dropping the tail. So the order depends on the world size W (the
stride) and, through the global batch, on the accumulation steps: with W ranks and A accumulation
steps a global step consumes A consecutive micro-batches per rank, i.e. A*W*B*T tokens.

The loader's whole state is the number of micro-batches drawn since reset; `seek(n)` recomputes
the shard and position from shard sizes, so a checkpoint stores one integer.
"""

from __future__ import annotations

import numpy as np
import torch

from trainer.errors import DataError
from trainer.shards import check_vocab_once, peek_shard, read_shard, resolve_shards


class ShardLoader:
    def __init__(self, pattern: str, *, B: int, T: int, rank: int, world_size: int,
                 field: str = "train_files", vocab_size: int | None = None):
        self.B, self.T, self.rank, self.world_size = B, T, rank, world_size
        self.field, self.vocab_size = field, vocab_size
        self.files = resolve_shards(pattern, field=field)
        self.sizes = [peek_shard(f) for f in self.files]
        need = world_size * B * T + 1
        for f, n in zip(self.files, self.sizes):
            if n < need:
                raise DataError(
                    f"{f}: {n} tokens, fewer than one global micro-batch ({world_size} ranks x "
                    f"{B} x {T} + 1 = {need}); lower device_batch_size/sequence_length or use larger shards "
                    f"({field})")
        self.ntok_total = int(sum(self.sizes))
        self._tokens: np.ndarray | None = None
        self._shard = -1
        self.reset()

    # ------------------------------------------------------------ position arithmetic
    def _start(self) -> int:
        return self.rank * self.B * self.T

    def batches_in_shard(self, shard: int) -> int:
        """How many next_batch calls read from `shard` before the loader advances."""
        stride = self.B * self.T * self.world_size
        # the smallest j >= 1 with start + (j+1)*stride + 1 > size, i.e. ceil((size-start)/stride) - 1
        return max(1, -(-(self.sizes[shard] - self._start()) // stride) - 1)

    def seek(self, drawn: int) -> None:
        """Position the loader as if `drawn` micro-batches had been drawn since reset()."""
        shard, left = 0, drawn
        while left >= (n := self.batches_in_shard(shard)):
            left -= n
            shard = (shard + 1) % len(self.files)
        self.drawn = drawn
        self.pos = self._start() + left * self.B * self.T * self.world_size
        self._load(shard)

    def reset(self) -> None:
        self.seek(0)

    def _load(self, shard: int) -> None:
        if shard != self._shard:
            self._tokens = read_shard(self.files[shard])
            if self.vocab_size is not None:
                check_vocab_once(self.files[shard], self._tokens, self.vocab_size)
            self._shard = shard

    # ------------------------------------------------------------ reading
    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert self._tokens is not None
        B, T = self.B, self.T
        buf = torch.from_numpy(self._tokens[self.pos:self.pos + B * T + 1].astype(np.int64))
        x, y = buf[:-1].view(B, T), buf[1:].view(B, T)
        self.drawn += 1
        self.pos += B * T * self.world_size
        if self.pos + B * T * self.world_size + 1 > len(self._tokens):
            self._load((self._shard + 1) % len(self.files))
            self.pos = self._start()
        return x, y

    def state_dict(self) -> dict[str, int]:
        return {"drawn": self.drawn, "world_size": self.world_size, "B": self.B, "T": self.T}
