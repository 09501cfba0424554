"""probes/diff/mining.py (TokenShift) checked against hand-computed references: per-token mean Δprob and Δlog-prob
by plain loops over the real positions of padded chunks, the rising / falling rankings by sorting those loop values,
top-1 gains and losses counted by hand (padding never counts), precomputed sums, the empty case and top_k limits.
Written to kill mutants found by studies/benchmarks/mutation.py; pure tensor tests, no model."""

from __future__ import annotations

import math

import pytest
import torch

from probes.diff.mining import TokenShift

V = 5
MASK = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
# hand-made top-1 tokens: real changes (0,1) 0→1, (0,2) 3→1, (1,0) 4→2; the padded (1,1) 2→3 must not count
BASE_TOP1 = torch.tensor([[0, 0, 3], [4, 2, 0]])
TUNED_TOP1 = torch.tensor([[0, 1, 1], [2, 3, 0]])
GAINED, LOST = {1: 2, 2: 1}, {0: 1, 3: 1, 4: 1}


def _logprobs(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, V, generator=g, dtype=torch.float64).log_softmax(-1)


def _loop_means(lt, lb, mask):
    """(mean Δprob, mean Δlog-prob) per token by a plain loop over the real positions."""
    dp, dlp, n = [0.0] * V, [0.0] * V, 0
    for r in range(mask.shape[0]):
        for p in range(mask.shape[1]):
            if mask[r, p]:
                n += 1
                for v in range(V):
                    a, b = float(lt[r, p, v]), float(lb[r, p, v])
                    dp[v] += math.exp(a) - math.exp(b)
                    dlp[v] += a - b
    return [x / n for x in dp], [x / n for x in dlp], n


def _ranking(values, largest, k):
    order = sorted(range(V), key=lambda v: values[v], reverse=largest)[:k]
    return [(v, f"t{v}", values[v]) for v in order]


def _rows(rows):
    return [(r["id"], r["token"], r["value"]) for r in rows]


def _check(got, dp, dlp, k):
    for key, values, largest in (("rising_by_prob", dp, True), ("falling_by_prob", dp, False),
                                 ("rising_by_logprob", dlp, True), ("falling_by_logprob", dlp, False)):
        want = _ranking(values, largest, k)
        assert [r[:2] for r in _rows(got[key])] == [w[:2] for w in want], key
        assert [r[2] for r in _rows(got[key])] == pytest.approx([w[2] for w in want], rel=1e-9, abs=1e-12), key


def test_update_in_chunks_matches_plain_loops():
    """Two chunks of rows through update(): per-token means over the 4 real positions (padding, whose log-probs are
    garbage, left out), the top-3 rising / falling tokens by each statistic, top-1 gains and losses."""
    lt, lb = _logprobs(0), _logprobs(1)
    dp, dlp, n = _loop_means(lt, lb, MASK)
    assert len(set(dp)) == V and len(set(dlp)) == V  # no ties: the rankings are unique
    s = TokenShift(V)
    for rows in (slice(0, 1), slice(1, 2)):
        s.update(lt[rows], lb[rows], MASK[rows], BASE_TOP1[rows], TUNED_TOP1[rows])
    got = s.result(3, decode=lambda i: f"t{i}")
    assert got["n_positions"] == n == 4
    _check(got, dp, dlp, 3)
    assert {r["id"]: r["value"] for r in got["top1_gained"]} == GAINED
    assert {r["id"]: r["value"] for r in got["top1_lost"]} == LOST
    assert [r["value"] for r in got["top1_gained"]] == [2.0, 1.0]
    assert got["n_top1_changed"] == 3
    mdp, mdlp = s.means()
    torch.testing.assert_close(mdp, torch.tensor(dp, dtype=torch.float64))
    torch.testing.assert_close(mdlp, torch.tensor(dlp, dtype=torch.float64))


def test_add_sums_counts_positions_and_top1_changes():
    """Sums taken elsewhere over n positions: the means divide by n (the number of top-1 entries given), and only
    positions whose top-1 differs count as gained / lost."""
    lt, lb = _logprobs(2), _logprobs(3)
    dp, dlp, n = _loop_means(lt, lb, MASK)
    rt, rb = lt[MASK], lb[MASK]
    s = TokenShift(V)
    s.add_sums(rt[:2].exp().sum(0) - rb[:2].exp().sum(0), (rt[:2] - rb[:2]).sum(0), BASE_TOP1[MASK][:2], TUNED_TOP1[MASK][:2])
    s.add_sums(rt[2:].exp().sum(0) - rb[2:].exp().sum(0), (rt[2:] - rb[2:]).sum(0), BASE_TOP1[MASK][2:], TUNED_TOP1[MASK][2:])
    got = s.result(V, decode=lambda i: f"t{i}")
    assert got["n_positions"] == n == 4
    _check(got, dp, dlp, V)
    assert {r["id"]: r["value"] for r in got["top1_gained"]} == GAINED
    assert {r["id"]: r["value"] for r in got["top1_lost"]} == LOST
    assert got["n_top1_changed"] == 3


def test_no_positions_and_top_k_limits():
    """Before any data the means are zero (not nan), nothing gained or lost; top_k above the vocabulary lists every
    token once, top_k 0 lists none; without decode the token text is str(id)."""
    s = TokenShift(V)
    got = s.result(10)
    assert got["n_positions"] == 0 and got["n_top1_changed"] == 0
    assert got["top1_gained"] == [] and got["top1_lost"] == []
    assert torch.equal(s.means()[0], torch.zeros(V, dtype=torch.float64))
    assert sorted(r["id"] for r in got["rising_by_prob"]) == list(range(V))
    assert all(r["value"] == 0.0 and r["token"] == str(r["id"]) for r in got["falling_by_logprob"])
    empty = s.result(0)
    assert all(empty[k] == [] for k in ("rising_by_prob", "falling_by_prob", "rising_by_logprob", "falling_by_logprob"))


def test_one_position_means_are_its_own_differences():
    """A single position: the mean Δprob / Δlog-prob of each token is that position's own difference."""
    lt, lb = _logprobs(4)[0, 0], _logprobs(5)[0, 0]
    s = TokenShift(V)
    s.add_sums(lt.exp() - lb.exp(), lt - lb, torch.tensor([1]), torch.tensor([1]))
    dp, dlp = s.means()
    torch.testing.assert_close(dp, torch.tensor([math.exp(a) - math.exp(b) for a, b in zip(lt.tolist(), lb.tolist())], dtype=torch.float64))
    torch.testing.assert_close(dlp, torch.tensor([a - b for a, b in zip(lt.tolist(), lb.tolist())], dtype=torch.float64))
    assert s.result(1)["n_top1_changed"] == 0


def test_result_takes_top_k_from_its_caller():
    """result() has no top_k default of its own: DiffSettings.top_k_tokens is its one home."""
    with pytest.raises(TypeError):
        TokenShift(V).result()
