"""PackedSampler: windows are exact slices of the token stream, order is deterministic, resume and rank
sharding reproduce the single-process stream."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from isoflop.errors import IsoflopError
from isoflop.train.data import PackedSampler

TOKENS = np.arange(5_000, dtype=np.uint32)  # token value == its position: every window identifies itself


def draw(sampler: PackedSampler, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [sampler.next_batch() for _ in range(n)]


def test_batches_are_shifted_slices_of_the_stream():
    s = PackedSampler(TOKENS, seq_len=16, batch_size=4, seed=3)
    for x, y in draw(s, 20):
        assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
        for row_x, row_y in zip(x.numpy(), y.numpy()):
            start = int(row_x[0])
            np.testing.assert_array_equal(row_x, TOKENS[start : start + 16])
            np.testing.assert_array_equal(row_y, TOKENS[start + 1 : start + 17])


def test_an_epoch_visits_each_window_once_on_one_grid():
    s = PackedSampler(TOKENS, seq_len=16, batch_size=4, seed=0)
    n = s.steps_per_epoch()
    starts = np.concatenate([s.next_window_starts() for _ in range(n)])
    assert len(set(starts.tolist())) == len(starts) == n * 4
    assert len(set((starts % 16).tolist())) == 1  # one offset per epoch
    assert (len(TOKENS) - 1 - starts[0] % 16) // 16 - len(starts) < 4  # only a partial batch is dropped
    assert s.epoch == 0
    s.next_batch()
    assert s.epoch == 1 and s.pos == 4


def test_same_seed_same_batches_other_seed_different():
    a = draw(PackedSampler(TOKENS, 32, 2, seed=7), 5)
    b = draw(PackedSampler(TOKENS, 32, 2, seed=7), 5)
    c = draw(PackedSampler(TOKENS, 32, 2, seed=8), 5)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(a, c))


@pytest.mark.parametrize("stop", [3, 40, 75])  # mid-epoch, and across the epoch boundary (~78 steps/epoch)
def test_resume_mid_epoch_gives_the_same_batches(stop):
    ref = PackedSampler(TOKENS, 16, 4, seed=1)
    expected = draw(ref, stop + 10)
    first = PackedSampler(TOKENS, 16, 4, seed=1)
    draw(first, stop)
    state = json.loads(json.dumps(first.state_dict()))  # plain ints survive any checkpoint format
    resumed = PackedSampler(TOKENS, 16, 4, seed=1)
    resumed.load_state_dict(state)
    for (x, y), (ex, ey) in zip(draw(resumed, 10), expected[stop:]):
        assert torch.equal(x, ex) and torch.equal(y, ey)


def test_ranks_split_the_single_process_global_batch():
    world, per_rank, steps = 2, 3, 90  # crosses an epoch boundary
    single = draw(PackedSampler(TOKENS, 16, world * per_rank, seed=5), steps)
    ranks = [draw(PackedSampler(TOKENS, 16, per_rank, seed=5, rank=r, world=world), steps) for r in range(world)]
    for step in range(steps):
        joined = torch.cat([ranks[r][step][0] for r in range(world)])
        assert torch.equal(joined, single[step][0])


@pytest.mark.parametrize("world,per_rank", [(1, 2), (2, 1), (2, 3), (3, 2)])
def test_accumulation_and_ranks_use_the_same_windows_per_step(world, per_rank):
    """Every optimizer step draws the same global_batch windows for any split into ranks x micro-batches,
    also at epoch ends (a partial last step is dropped as a whole)."""
    G, steps = 12, 40  # 5000 tokens / seq 16 = ~312 windows: 26 steps per epoch, so step 26 starts epoch 1
    ref = PackedSampler(TOKENS, 16, G, seed=4)
    samplers = [PackedSampler(TOKENS, 16, per_rank, seed=4, rank=r, world=world, global_batch=G) for r in range(world)]
    calls = G // (world * per_rank)
    for step in range(steps):
        expected = set(ref.next_window_starts().tolist())
        got = [w for _ in range(calls) for s in samplers for w in s.next_window_starts().tolist()]
        assert len(got) == G and set(got) == expected, step
    assert ref.epoch == samplers[0].epoch == 1


def test_resume_on_a_different_world_size_keeps_the_global_batch():
    single = draw(PackedSampler(TOKENS, 16, 4, seed=2), 12)
    two = [PackedSampler(TOKENS, 16, 2, seed=2, rank=r, world=2) for r in range(2)]
    for s in two:
        draw(s, 5)
    one = PackedSampler(TOKENS, 16, 4, seed=2)
    one.load_state_dict(two[0].state_dict())
    for (x, _), (ex, _) in zip(draw(one, 7), single[5:]):
        assert torch.equal(x, ex)


def test_bad_arguments_and_foreign_state_are_clear_errors():
    with pytest.raises(IsoflopError, match="fewer than one global batch"):
        PackedSampler(TOKENS[:100], 16, 8, seed=0)
    with pytest.raises(IsoflopError, match="multiple of world"):
        PackedSampler(TOKENS, 16, 2, seed=0, world=2, global_batch=6)
    with pytest.raises(IsoflopError, match="rank"):
        PackedSampler(TOKENS, 16, 2, seed=0, rank=2, world=2)
    state = PackedSampler(TOKENS, 16, 2, seed=0).state_dict()
    with pytest.raises(IsoflopError, match="seq_len"):
        PackedSampler(TOKENS, 32, 2, seed=0).load_state_dict(state)
    with pytest.raises(IsoflopError, match="n_tokens"):
        PackedSampler(TOKENS[:4000], 16, 2, seed=0).load_state_dict(state)
