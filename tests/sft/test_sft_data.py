"""Packing, length buckets and the fixed micro-batch order of an SFT run."""

import torch

from warprl.sft.data import micro_batches, pack, pad_right


def test_pack_concatenates_and_drops_the_tail():
    blocks = pack([[1, 2, 3], [4, 5], [6, 7, 8, 9]], 4)
    assert blocks.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert pack([[1]], 4).shape == (0, 4)


def test_pad_right_masks_padding():
    b = pad_right([[5, 6, 7], [8]], pad_id=0)
    assert b.input_ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert b.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b.tokens == 2  # targets: 6, 7 (a one-token row predicts nothing)


def rows(n=40):
    g = torch.Generator().manual_seed(0)
    return [torch.randint(3, 50, (int(torch.randint(2, 30, (1,), generator=g)),), generator=g).tolist() for _ in range(n)]


def test_micro_batches_are_a_pure_function_of_the_seed():
    kw = dict(packing=True, max_length=8, batch_size=4, pad_id=0, epochs=2.0)
    a, b = micro_batches(rows(), seed=1, **kw), micro_batches(rows(), seed=1, **kw)
    c = micro_batches(rows(), seed=2, **kw)
    assert all(torch.equal(x.input_ids, y.input_ids) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x.input_ids, y.input_ids) for x, y in zip(a, c, strict=False))


def test_max_tokens_and_epochs_bound_the_run():
    r = rows()
    one = micro_batches(r, packing=True, max_length=8, batch_size=4, pad_id=0, seed=0, epochs=1.0)
    assert len(micro_batches(r, packing=True, max_length=8, batch_size=4, pad_id=0, seed=0, epochs=1.5)) == round(1.5 * len(one))
    capped = micro_batches(r, packing=True, max_length=8, batch_size=4, pad_id=0, seed=0, max_tokens=100)
    assert sum(b.tokens for b in capped) >= 100 > sum(b.tokens for b in capped[:-1])
    # more tokens than one epoch holds: further epochs in a fresh order
    assert len(micro_batches(r, packing=True, max_length=8, batch_size=4, pad_id=0, seed=0, max_tokens=10**4)) > len(one)


def test_buckets_truncate_and_group_similar_lengths():
    r = rows(200)
    batches = micro_batches(r, packing=False, max_length=16, batch_size=4, pad_id=0, seed=0, epochs=1.0)
    assert len(batches) == 50 and all(b.input_ids.shape[1] <= 16 for b in batches)
    seen = sorted(int(m.sum()) for b in batches for m in b.attention_mask)
    assert seen == sorted(min(len(x), 16) for x in r)
    padding = sum(int((1 - b.attention_mask).sum()) for b in batches)
    assert padding < 0.1 * sum(seen)  # sorted pools: little padding
