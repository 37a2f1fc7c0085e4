"""Per-token NLL: the mean over real target tokens, by hand."""

import math

import torch

from warprl.models import load_policy
from warprl.sft.data import Batch
from warprl.sft.nll import corpus_nll, nll_sum


def hand_nll(model, rows):
    total, n = 0.0, 0
    for r in rows:
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([r])).logits[0].double(), -1)
        for t in range(1, len(r)):
            total -= float(logp[t - 1, r[t]])
            n += 1
    return total / n, n


def test_corpus_nll_equals_a_hand_computation(tiny_policy_dir):
    model, tok = load_policy(str(tiny_policy_dir))
    rows = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    want, n = hand_nll(model, rows)
    for bs in (1, 2, 3):  # padding never counts
        got = corpus_nll(model, rows, tok.pad_token_id, batch_size=bs)
        assert got["tokens"] == n == 4 + 1 + 2
        assert abs(got["nll_per_token"] - want) < 1e-5
        assert abs(got["perplexity"] - math.exp(want)) < 1e-4


def test_nll_sum_ignores_padding(tiny_policy_dir):
    model, _ = load_policy(str(tiny_policy_dir))
    a = nll_sum(model, Batch(torch.tensor([[5, 6, 7]]), torch.tensor([[1, 1, 1]])))
    b = nll_sum(model, Batch(torch.tensor([[5, 6, 7, 0, 0]]), torch.tensor([[1, 1, 1, 0, 0]])))
    assert a[1] == b[1] == 2 and abs(float(a[0]) - float(b[0])) < 1e-5
