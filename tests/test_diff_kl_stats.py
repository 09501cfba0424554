"""probes/diff/kl.py (KLStats) checked against hand-computed references on small hand-made tensors: the token and
per-row means, the mean-by-position curve and where it stops, the histogram against a plain loop over its own
reported edges, the top-k contexts (padding never a candidate, windows clipped to the row, the next-token
probabilities only where a next token exists), and the empty and all-padding edge cases. Written to kill mutants
found by studies/benchmarks/mutation.py; pure tensor tests, no model."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy.stats import t as student

from probes.diff.kl import KLStats

PAD = 9.0  # a garbage KL value at padded positions: real code must never read it
# three rows, right-padded to 4 positions: row 0 has 3 real tokens, row 1 has 2, row 2 is all padding
KL = torch.tensor([[0.5, 0.2, 0.05, PAD],
                   [0.00005, 4.0, PAD, PAD],
                   [PAD, PAD, PAD, PAD]], dtype=torch.float64)
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
IDS = torch.tensor([[10, 11, 12, 0], [20, 21, 0, 0], [0, 0, 0, 0]])
BASE_P = torch.tensor([[0.11, 0.12, 0.13, 0.14], [0.21, 0.22, 0.23, 0.24], [0.0] * 4])
TUNED_P = BASE_P + 0.5


def _stats(top_k=3, window=1, max_positions=6, **kw):
    return KLStats(top_k=top_k, window=window, max_positions=max_positions, **kw)


def _update(s, kl=KL, mask=MASK, ids=IDS, offset=0, p_next=True):
    s.update(kl, mask, ids, offset, ids + 100, ids + 200,
             BASE_P[: len(kl)] if p_next else None, TUNED_P[: len(kl)] if p_next else None)


def _real(kl=KL, mask=MASK):
    """(row, pos, value) of every real token, by a plain loop."""
    return [(r, p, float(kl[r, p])) for r in range(kl.shape[0]) for p in range(kl.shape[1]) if mask[r, p]]


def test_token_mean_row_mean_and_ci_match_a_hand_computation():
    """Token-weighted mean and max over real tokens only; per-row means skip the all-padding row; the 95% CI is
    mean ± t(0.975, n-1)·s/√n with scipy's t quantile."""
    s = _stats()
    _update(s)
    got = s.result()
    vals = [v for _, _, v in _real()]
    assert got["n_tokens"] == 5
    assert got["mean_per_token"] == pytest.approx(sum(vals) / 5)
    assert got["max"] == 4.0
    rows = [(0.5 + 0.2 + 0.05) / 3, (0.00005 + 4.0) / 2]
    mean = sum(rows) / 2
    sd = math.sqrt(sum((x - mean) ** 2 for x in rows) / 1)
    half = student.ppf(0.975, 1) * sd / math.sqrt(2)
    pr = got["per_row"]
    assert pr["n_rows"] == 2
    assert pr["mean"] == pytest.approx(mean) and pr["std"] == pytest.approx(sd)
    assert pr["ci_low"] == pytest.approx(mean - half) and pr["ci_high"] == pytest.approx(mean + half)


def test_by_position_curve_is_the_mean_over_rows_and_stops_at_the_last_real_position():
    """Mean KL at each position over the rows that have a token there, its token count, and no entry past the last
    position any row reaches (max_positions 6 > 3), over two batches."""
    s = _stats()
    _update(s)
    _update(s, KL[:1] * 2, MASK[:1], IDS[:1], offset=3)  # one more row: 3 tokens with twice row 0's values
    got = s.result()["by_position"]
    sums, counts = [0.0] * 3, [0] * 3
    for kl in (KL, KL[:1] * 2):
        for r, p, v in _real(kl, MASK[: len(kl)]):
            sums[p] += v
            counts[p] += 1
    assert counts == [3, 3, 2]
    assert got["n_tokens"] == counts
    assert got["mean"] == pytest.approx([x / n for x, n in zip(sums, counts)])


def test_by_position_curve_of_one_row_counts_a_single_token_per_position():
    """One row of 3 tokens: each position's mean is that token's KL (count 1 divides by 1, not more)."""
    s = _stats()
    _update(s, KL[:1], MASK[:1], IDS[:1])
    got = s.result()["by_position"]
    assert got == {"mean": [0.5, 0.2, 0.05], "n_tokens": [1, 1, 1]}


def test_by_position_curve_is_cut_at_max_positions_when_every_position_is_filled():
    """Rows longer than max_positions: the curve has exactly max_positions entries, every one filled, while the
    token mean still counts every token."""
    kl = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.3, 0.4, 0.5, 0.6]], dtype=torch.float64)
    mask = torch.ones(2, 4, dtype=torch.bool)
    s = _stats(max_positions=3)
    _update(s, kl, mask, IDS[:2])
    got = s.result()
    assert got["by_position"]["n_tokens"] == [2, 2, 2]
    assert got["by_position"]["mean"] == pytest.approx([0.2, 0.3, 0.4])
    assert got["n_tokens"] == 8 and got["mean_per_token"] == pytest.approx(2.8 / 8)


def test_histogram_counts_match_a_loop_over_the_reported_edges():
    """Each count is the number of real KL values v with previous edge < v <= upper edge (last bin open), checked
    with a plain loop over the edges the result reports, for the default edges and for custom ones."""
    vals = [0.0, 5e-5, 1e-4, 5e-4, 0.005, 0.02, 0.05, 0.1, 0.2, 0.5, 2.0, 3.5, 10.0]
    kl = torch.tensor([vals, [PAD] * len(vals)], dtype=torch.float64)
    mask = torch.tensor([[True] * len(vals), [False] * len(vals)])
    ids = torch.zeros(2, len(vals), dtype=torch.long)
    for kw in ({}, {"bins": (0.01, 1.0)}):
        s = _stats(**kw)
        _update(s, kl, mask, ids, p_next=False)
        h = s.result()["histogram"]
        edges = h["upper_edges_nats"]
        assert edges[-1] == math.inf and all(a < b for a, b in itertools.pairwise(edges))
        lows = [-math.inf] + edges[:-1]
        expected = [sum(lo < v <= hi for v in vals) for lo, hi in zip(lows, edges)]
        assert h["counts"] == expected
        assert sum(h["counts"]) == len(vals)
    assert len(_stats().result()["histogram"]["counts"]) == 9  # 8 default edges + the open bin, before any data


def test_top_contexts_skip_padding_and_clip_windows_to_the_row():
    """Top-3 (row, pos) pairs by KL, largest first, never a padded position (whose KL is larger than every real one);
    windows of 1 token each side, clipped at the row start and at the row's last real token."""
    s = _stats(top_k=3, window=1)
    _update(s, offset=7)
    top = s.result()["top"]
    assert [(t["row"], t["pos"], t["kl"]) for t in top] == [(8, 1, 4.0), (7, 0, 0.5), (7, 1, 0.2)]
    a, b, c = top
    assert (a["left"], a["token"], a["right"]) == ([20], 21, [])  # row 1 = [20, 21]: left reaches position 0
    assert (b["left"], b["token"], b["right"]) == ([], 10, [11])
    assert (c["left"], c["token"], c["right"]) == ([10], 11, [12])
    assert (a["base_top1"], a["tuned_top1"]) == (121, 221)


def test_next_token_probabilities_only_where_a_next_token_exists():
    """base_p_next / tuned_p_next are reported for a position followed by a real token (also the second-to-last
    one) and left out for a row's last real token; without them no such key appears."""
    s = _stats(top_k=3, window=1)
    _update(s)
    a, b, c = s.result()["top"]
    assert "base_p_next" not in a and "tuned_p_next" not in a  # row 1, pos 1: its last real token
    assert (b["base_p_next"], b["tuned_p_next"]) == pytest.approx((0.11, 0.61))
    assert (c["base_p_next"], c["tuned_p_next"]) == pytest.approx((0.12, 0.62))  # row 0, pos 1 (of 3 tokens)
    s = _stats(top_k=3, window=1)
    _update(s, p_next=False)
    assert all("base_p_next" not in t and "tuned_p_next" not in t for t in s.result()["top"])


def test_top_one_keeps_the_largest_and_top_zero_keeps_none():
    """top_k=1 keeps exactly the largest real position (also across batches); top_k=0 keeps nothing."""
    s = _stats(top_k=1)
    _update(s, KL[:1], MASK[:1], IDS[:1])
    assert [(t["row"], t["pos"]) for t in s.result()["top"]] == [(0, 0)]
    _update(s, offset=1)
    assert [(t["row"], t["pos"], t["kl"]) for t in s.result()["top"]] == [(2, 1, 4.0)]
    s = _stats(top_k=0)
    _update(s)
    assert s.result()["top"] == []


def test_all_padding_and_no_data_give_empty_results():
    """A batch with no real token (and no batch at all) leaves an empty curve, an empty top list, zero counts."""
    for batches in ((), ((KL[2:], MASK[2:], IDS[2:]),)):
        s = _stats()
        for kl, mask, ids in batches:
            _update(s, kl, mask, ids)
        got = s.result()
        assert got["by_position"] == {"mean": [], "n_tokens": []}
        assert got["top"] == [] and got["n_tokens"] == 0 and got["max"] == 0.0
        assert got["histogram"]["counts"] == [0] * 9 and got["per_row"]["n_rows"] == 0


def test_settings_are_required_keywords():
    """top_k, window and max_positions come from DiffSettings (their one home): KLStats has no defaults for them."""
    with pytest.raises(TypeError):
        KLStats()
    with pytest.raises(TypeError):
        KLStats(3, 1, 6)
