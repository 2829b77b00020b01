"""EpochShuffle: the training order, plain and length-grouped (trainer.group_by_length)."""

import numpy as np
import pytest

from dora.checkpoint import EpochShuffle


def padded_tokens(order, lengths, bs):
    return sum(
        max(lengths[i] for i in order[k : k + bs]) * len(order[k : k + bs]) for k in range(0, len(order), bs)
    )


@pytest.mark.parametrize("n", [1000, 1003])
def test_grouped_order_is_a_permutation_with_far_less_padding(n):
    lengths = np.random.default_rng(0).integers(5, 200, n).tolist()
    bs = 16
    plain = list(EpochShuffle(n, seed=3))
    grouped = list(EpochShuffle(n, seed=3, lengths=lengths, batch_size=bs))
    assert sorted(grouped) == list(range(n))
    assert padded_tokens(grouped, lengths, bs) < 0.7 * padded_tokens(plain, lengths, bs)
    # the short batch (n % bs items) is the last one, so every other batch is full and aligned
    if n % bs:
        tail = grouped[-(n % bs) :]
        assert len(set(tail)) == n % bs


def test_grouped_order_depends_on_seed_and_epoch_only():
    lengths = list(range(300))
    a = EpochShuffle(300, seed=1, lengths=lengths, batch_size=8)
    b = EpochShuffle(300, seed=1, lengths=lengths, batch_size=8)
    first = list(a)
    assert first == list(b)  # pure function of (seed, epoch): exact resume needs nothing else
    a.epoch = 2
    assert list(a) != first
    assert list(EpochShuffle(300, seed=2, lengths=lengths, batch_size=8)) != first


def test_grouped_batches_are_not_sorted_globally():
    # the batch order is shuffled: lengths do not fall steadily through the epoch
    n, bs = 1600, 16
    lengths = np.random.default_rng(1).integers(1, 500, n)
    order = np.array(list(EpochShuffle(n, seed=0, lengths=lengths, batch_size=bs)))
    batch_max = lengths[order].reshape(-1, bs).max(1)
    assert not np.all(np.diff(batch_max) <= 0)
    assert abs(np.corrcoef(np.arange(len(batch_max)), batch_max)[0, 1]) < 0.5


def test_lengths_must_match():
    with pytest.raises(ValueError, match="lengths"):
        EpochShuffle(10, seed=0, lengths=[1, 2, 3])
