"""ShardLoader against an independent simulation of the reference DistributedDataLoader, and the
token order the training loop actually trains on (world size, accumulation, batch-0 replay).

Reference loader (reference-trainer.md §1(a)): sorted shards; reset -> shard 0, pos = rank*B*T;
next_batch reads B*T+1 tokens at pos (x = buf[:-1], y = buf[1:]), pos += B*T*W, and if
pos + B*T*W + 1 > len(shard) it moves to the next shard (cyclically) at pos = rank*B*T, dropping
the tail.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import trainer.loop
from tests.trainer_helpers import data_cfg, run_ranks, single_env
from trainer.dist import DistEnv
from trainer.errors import DataError
from trainer.loader import ShardLoader
from trainer.shards import HEADER_INTS, MAGIC, VERSION, read_shard, write_shard
from trainer.tracking import NullTracker


class RefLoader:
    def __init__(self, shards: list[np.ndarray], B: int, T: int, rank: int, world: int):
        self.shards, self.B, self.T, self.rank, self.world = shards, B, T, rank, world
        self.shard, self.pos = 0, rank * B * T

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        B, T, tokens = self.B, self.T, self.shards[self.shard]
        where = (self.shard, self.pos)
        buf = torch.tensor(tokens[self.pos:self.pos + B * T + 1].astype(np.int64))
        self.pos += B * T * self.world
        if self.pos + B * T * self.world + 1 > len(tokens):
            self.shard = (self.shard + 1) % len(self.shards)
            self.pos = self.rank * B * T
        return buf[:-1].view(B, T), buf[1:].view(B, T), *where


def numbered_shards(directory: Path, sizes: list[int]) -> tuple[str, list[np.ndarray]]:
    """Shard i holds i*10000 + 0, 1, 2, ...: every token says where it came from."""
    arrays = [i * 10000 + np.arange(n, dtype=np.int64) for i, n in enumerate(sizes)]
    for i, a in enumerate(arrays):
        write_shard(directory / f"s_{i:02d}.bin", a)
    return str(directory / "s_*.bin"), arrays


@pytest.mark.parametrize("W,B,T", [(1, 2, 8), (2, 2, 8), (4, 1, 16), (3, 2, 5)])
def test_order_equals_the_reference_simulation(tmp_path: Path, W: int, B: int, T: int):
    need = W * B * T + 1
    sizes = [need, 7 * need - 3, 3 * need + B * T, 5 * need]  # the minimum, ragged tails, different sizes
    pattern, arrays = numbered_shards(tmp_path, sizes)
    for rank in range(W):
        ours = ShardLoader(pattern, B=B, T=T, rank=rank, world_size=W)
        ref = RefLoader(arrays, B, T, rank, W)
        for n in range(80):  # several full cycles over the 4 shards
            x, y = ours.next_batch()
            rx, ry, *_ = ref.next_batch()
            assert torch.equal(x, rx) and torch.equal(y, ry), (rank, n)
            assert ours.drawn == n + 1


def test_advance_rule_and_tail_drop_by_hand(tmp_path: Path):
    pattern, _ = numbered_shards(tmp_path, [35, 21])
    loader = ShardLoader(pattern, B=1, T=10, rank=0, world_size=1)
    starts = [int(loader.next_batch()[0][0, 0]) for _ in range(6)]
    # shard 0: 0, 10, 20, then 30 + 10 + 1 > 35 -> tokens 31..34 are never read;
    # shard 1: 0, 10 (reads exactly to its end), then back to shard 0
    assert starts == [0, 10, 20, 10000, 10010, 0]
    assert [loader.batches_in_shard(i) for i in range(2)] == [3, 2]


def test_reference_batches_per_shard_differ_with_world_size(tmp_path: Path):
    """A 100M-token FineWeb shard with B=64, T=1024 (a sparse file of the real size stands in): 1525
    micro-batches on 1 rank. On 8 ranks each rank applies the advance rule to its own position, so
    ranks 0-5 read 190 and ranks 6-7 only 189 (1518, not the 8 x 190 = 1520 of the notes): the
    reference's ranks leave a shard at different steps."""
    path = tmp_path / "fineweb_train_000001.bin"
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[:3] = (MAGIC, VERSION, 100_000_000)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.truncate(HEADER_INTS * 4 + 2 * 100_000_000)
    one = ShardLoader(str(path), B=64, T=1024, rank=0, world_size=1)
    eight = [ShardLoader(str(path), B=64, T=1024, rank=r, world_size=8) for r in range(8)]
    assert one.batches_in_shard(0) == 1525
    assert [ld.batches_in_shard(0) for ld in eight] == [190] * 6 + [189] * 2
    # the same count by drawing (positions only: the sparse shard reads as zeros)
    assert all(_draws_until_next_shard(ld) == n for ld, n in zip(eight[5:], [190, 189, 189]))


def _draws_until_next_shard(loader: ShardLoader) -> int:
    n = 0
    while True:
        loader.next_batch()
        n += 1
        if loader.pos == loader.rank * loader.B * loader.T:
            return n


@pytest.mark.parametrize("W,rank", [(1, 0), (2, 1), (3, 2)])
def test_seek_equals_drawing(tmp_path: Path, W: int, rank: int):
    pattern, _ = numbered_shards(tmp_path, [W * 16 + 1, W * 40 + 7, W * 24 + 3])
    loader = ShardLoader(pattern, B=2, T=8, rank=rank, world_size=W)
    drawn = [loader.next_batch() for _ in range(40)]
    for n in range(40):
        loader.seek(n)
        assert loader.drawn == n
        x, y = loader.next_batch()
        assert torch.equal(x, drawn[n][0]) and torch.equal(y, drawn[n][1]), n
    loader.reset()
    assert torch.equal(loader.next_batch()[0], drawn[0][0])


# ---------------------------------------------------------------- errors
def test_shard_smaller_than_one_global_micro_batch_names_the_file(tmp_path: Path):
    write_shard(tmp_path / "a_00.bin", np.zeros(2 * 4 * 8 + 1, dtype=np.int64))  # exactly enough: fine
    write_shard(tmp_path / "a_01.bin", np.zeros(2 * 4 * 8, dtype=np.int64))  # one token short
    with pytest.raises(DataError) as e:
        ShardLoader(str(tmp_path / "a_*.bin"), B=4, T=8, rank=0, world_size=2, field="train_files")
    msg = str(e.value)
    assert str(tmp_path / "a_01.bin") in msg and "a_00.bin" not in msg
    assert "64 tokens" in msg and "2 ranks x 4 x 8 + 1 = 65" in msg and "train_files" in msg
    ShardLoader(str(tmp_path / "a_00.bin"), B=4, T=8, rank=1, world_size=2)


def test_token_id_beyond_vocab_names_the_file(tmp_path: Path):
    write_shard(tmp_path / "v_00.bin", np.full(100, 63, dtype=np.int64))
    bad = np.zeros(100, dtype=np.int64)
    bad[57] = 64
    write_shard(tmp_path / "v_01.bin", bad)
    # the bad shard first: the constructor (the trainer's preflight) reports it
    write_shard(tmp_path / "w_00.bin", bad)
    with pytest.raises(DataError, match=r"w_00\.bin: token id 64 >= vocab_size=64; set vocab_size=128"):
        ShardLoader(str(tmp_path / "w_*.bin"), B=2, T=8, rank=0, world_size=1, vocab_size=64)
    # a later bad shard: reported when the loader reaches it (next_batch or seek)
    loader = ShardLoader(str(tmp_path / "v_*.bin"), B=2, T=8, rank=0, world_size=1, vocab_size=64)
    with pytest.raises(DataError, match=r"v_01\.bin: token id 64 >= vocab_size=64"):
        for _ in range(10):
            loader.next_batch()
    with pytest.raises(DataError, match=r"v_01\.bin"):
        ShardLoader(str(tmp_path / "v_*.bin"), B=2, T=8, rank=0, world_size=1, vocab_size=64).seek(6)


# ---------------------------------------------------------------- what the loop trains on
def _capture_training(cfg, env: DistEnv) -> list[torch.Tensor]:
    """Train with `cfg` and return the input ids of every training forward, in order."""
    seen: list[torch.Tensor] = []
    real_build = trainer.loop.build_model

    def build(cfg_, device):
        model = real_build(cfg_, device)
        model.transformer.wte.register_forward_pre_hook(
            lambda mod, args: seen.append(args[0].clone()) if torch.is_grad_enabled() else None)
        return model

    trainer.loop.build_model = build
    try:
        summary = trainer.loop.train(cfg, NullTracker(), env=env)
    finally:
        trainer.loop.build_model = real_build
    assert summary.status == "FINISHED"
    return seen


def _chunk_ids(xs: list[torch.Tensor], tokens: np.ndarray, BT: int) -> list[int]:
    """Which B*T-token chunk of shard 0 each micro-batch is (chunk c starts at c*B*T)."""
    chunks = torch.from_numpy(tokens[: (len(tokens) // BT) * BT].astype(np.int64)).view(-1, BT)
    out = []
    for x in xs:
        hit = (chunks == x.flatten()).all(dim=1).nonzero().flatten().tolist()
        assert len(hit) == 1
        out.append(hit[0])
    return out


def _capture_two_ranks(rank: int, world: int, cfgs: list) -> list[list[torch.Tensor]]:
    env = DistEnv(rank=rank, local_rank=rank, world_size=world, device=torch.device("cpu"))
    return [_capture_training(c, env) for c in cfgs]


@pytest.fixture(scope="module")
def trained_order(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Chunk ids trained per step: W=1 with accumulation 2 and W=2 with accumulation 1, both with
    and without the reference's batch-0 replay. Global batch 8 sequences of 32 tokens, B=4."""
    tmp = tmp_path_factory.mktemp("order")
    cfgs = {replay: data_cfg(tmp / f"r{int(replay)}", num_iterations=3, replay_first_batch=replay)
            for replay in (False, True)}
    tokens = read_shard(sorted(Path(tmp / "r0" / "data").glob("train_*.bin"))[0])
    BT = 4 * 32
    out: dict = {}
    for replay, cfg in cfgs.items():
        ids = _chunk_ids(_capture_training(cfg.override({"out_dir": str(tmp / f"w1-{replay}")}), single_env()),
                         tokens, BT)
        out[1, replay] = [ids[i:i + 2] for i in range(0, len(ids), 2)]  # accumulation 2: two per step
    two = run_ranks(_capture_two_ranks, [cfgs[False].override({"out_dir": str(tmp / "w2-0")}),
                                         cfgs[True].override({"out_dir": str(tmp / "w2-1")})], tmp=tmp)
    for i, replay in enumerate((False, True)):
        per_rank = [_chunk_ids(two[r][i], tokens, BT) for r in range(2)]
        out[2, replay] = [list(step) for step in zip(*per_rank)]  # [rank 0's chunk, rank 1's chunk] per step
    return out


def test_plain_order_is_the_same_per_global_step_for_1x2_and_2x1(trained_order: dict):
    assert trained_order[1, False] == [[0, 1], [2, 3], [4, 5]]  # W=1: micro-batches 1, 2 of each step
    assert trained_order[2, False] == [[0, 1], [2, 3], [4, 5]]  # W=2: [rank 0, rank 1] of each step


def test_replayed_batch_zero_lands_differently_on_1x2_and_2x1(trained_order: dict):
    # one rank, accumulation 2: batch 0 is pending before the reset and drawn again after it, so
    # step 1 trains chunk 0 twice and every later step is shifted by one chunk
    assert trained_order[1, True] == [[0, 0], [1, 2], [3, 4]]
    # two ranks: each rank's first micro-batch repeats, so global step 1 is trained twice
    assert trained_order[2, True] == [[0, 1], [0, 1], [2, 3]]


def test_order_across_world_sizes_at_a_shard_boundary(tmp_path: Path):
    """Without replay, 2 ranks x accumulation 1 read the same chunks per global step as 1 rank x
    accumulation 2 - until a shard boundary. There each rank applies the advance rule to its own
    position: rank 1 leaves shard 0 one micro-batch before rank 0, so global step 10 mixes shard 0
    and shard 1 and chunk 152 of shard 0 is never read on 2 ranks (1 rank reads it)."""
    B, T = 2, 4
    pattern, _ = numbered_shards(tmp_path, [10 * 2 * B * T + 5, 400])  # 165 tokens, then 400
    one = ShardLoader(pattern, B=B, T=T, rank=0, world_size=1)
    two = [ShardLoader(pattern, B=B, T=T, rank=r, world_size=2) for r in range(2)]
    steps_one = [[int(one.next_batch()[0][0, 0]) for _ in range(2)] for _ in range(12)]
    steps_two = [[int(ld.next_batch()[0][0, 0]) for ld in two] for _ in range(12)]
    assert steps_one[:10] == [[16 * s, 16 * s + 8] for s in range(10)]  # 20 chunks of shard 0
    assert steps_one[10:] == [[10000, 10008], [10016, 10024]]
    assert steps_two[:9] == steps_one[:9]
    assert steps_two[9:] == [[144, 10008], [10000, 10024], [10016, 10040]]


# ---------------------------------------------------------------- the vocabulary check, once per shard
def test_a_bad_id_anywhere_in_a_large_shard_is_caught_by_the_preflight(tmp_path: Path):
    """The scan reads the whole shard: one id >= vocab_size as the very last of 2M tokens still fails."""
    from trainer.build import preflight

    tokens = np.random.default_rng(0).integers(0, 50257, 2_000_000, dtype=np.int64)
    write_shard(tmp_path / "data" / "good_val_000.bin", tokens[:100_000])
    tokens[-1] = 50304
    write_shard(tmp_path / "data" / "bad_train_000.bin", tokens)
    cfg = data_cfg(tmp_path, vocab=50304).override({"train_files": str(tmp_path / "data" / "bad_train_*.bin"),
                                                   "val_files": str(tmp_path / "data" / "good_val_*.bin")})
    for _ in range(2):  # a failed check is not remembered: asked again, it fails again
        with pytest.raises(DataError, match=r"bad_train_000\.bin: token id 50304 >= vocab_size=50304"):
            preflight(cfg, single_env())


def test_the_loaders_do_not_rescan_what_the_preflight_checked_but_a_rewritten_shard_is_checked_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import trainer.shards
    from trainer.build import build_loaders, preflight

    scans: list[str] = []
    real = trainer.shards.check_vocab
    monkeypatch.setattr(trainer.shards, "check_vocab", lambda path, *a: (scans.append(Path(path).name), real(path, *a)))
    cfg = data_cfg(tmp_path)
    geo = preflight(cfg, single_env())
    assert sorted(scans) == ["train_000.bin", "val_000.bin"]  # the first shard of each set, as before
    build_loaders(cfg, single_env(), geo)  # what train() does next: no second scan
    ShardLoader(cfg.data.train_files, B=4, T=32, rank=0, world_size=1, vocab_size=128)  # another vocab: scanned
    assert sorted(scans) == ["train_000.bin", "train_000.bin", "val_000.bin"]
    bad = np.zeros(3000, dtype=np.int64)
    bad[-1] = 64
    write_shard(tmp_path / "data" / "train_000.bin", bad)  # regenerated in place: new file, same name
    with pytest.raises(DataError, match=r"train_000\.bin: token id 64 >= vocab_size=64"):
        preflight(cfg, single_env())
