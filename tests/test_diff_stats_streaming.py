"""probes/diff/stats.py checked against hand-computed references (numpy, scipy.stats.t.ppf, plain loops): the t
quantile, RowMean's mean, sample standard deviation and 95% CI for one, two and several rows and for empty input,
TokenMean's float and per-entry means, and StreamingTopK's threshold and k = 0 / 1. Written to kill mutants found by
studies/benchmarks/mutation.py; pure tensor tests, no model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import t as student

from probes.diff.stats import RowMean, StreamingTopK, TokenMean, t_quantile

EMPTY = {"mean": [], "ci_low": [], "ci_high": [], "std": [], "n_rows": 0}


def test_t_quantile_against_scipy():
    """Two-sided quantile with n − 1 degrees of freedom: 2 samples → t(0.975, 1) ≈ 12.706; nan below 2 samples."""
    assert t_quantile(2) == pytest.approx(student.ppf(0.975, 1)) and t_quantile(2) == pytest.approx(12.7062, rel=1e-4)
    assert t_quantile(10, 0.9) == pytest.approx(student.ppf(0.95, 9))
    assert math.isnan(t_quantile(1)) and math.isnan(t_quantile(0))


@pytest.mark.parametrize("rows", [[[1.0, -2.0], [4.0, 2.0]], [[1.0, 0.0], [2.0, 5.0], [6.0, 1.0]],
                                  [[0.5, 1.5], [2.5, 3.0], [1.0, 1.0], [7.0, -1.0], [3.0, 0.0]]])
def test_row_mean_std_and_ci_against_numpy_and_scipy(rows):
    """Mean, ddof-1 standard deviation (numpy) and mean ± t(0.975, n−1)·s/√n (scipy) of 2, 3 and 5 rows of a
    2-vector statistic, the rows added in two batches."""
    v = np.array(rows)
    rm = RowMean()
    rm.add(torch.tensor(v[:1]))
    rm.add(torch.tensor(v[1:]))
    r = rm.result()
    n = len(v)
    mean, sd = v.mean(0), v.std(0, ddof=1)
    half = student.ppf(0.975, n - 1) * sd / math.sqrt(n)
    assert r["n_rows"] == n
    np.testing.assert_allclose(r["mean"], mean, rtol=1e-12)
    np.testing.assert_allclose(r["std"], sd, rtol=1e-9)
    np.testing.assert_allclose(r["ci_low"], mean - half, rtol=1e-9)
    np.testing.assert_allclose(r["ci_high"], mean + half, rtol=1e-9)


def test_row_mean_of_one_row_has_no_spread():
    """One row: the mean is the row itself; std and CI are nan (no spread can be estimated)."""
    rm = RowMean()
    rm.add(torch.tensor([[3.0, -1.0]]))
    r = rm.result()
    assert r["mean"] == [3.0, -1.0] and r["n_rows"] == 1
    assert all(math.isnan(x) for key in ("std", "ci_low", "ci_high") for x in r[key])


def test_row_mean_of_no_rows_is_empty():
    """No batch, or only batches with zero rows (e.g. all-padding rows filtered out): empty lists and n_rows 0."""
    assert RowMean().result() == EMPTY
    rm = RowMean()
    rm.add(torch.empty(0, 3))
    rm.add(torch.empty(0))
    assert rm.result() == EMPTY


def test_token_mean_float_and_per_entry():
    """Float sums: total / count over every add (6 + 3) / (3 + 1); nan before any data. Per-entry tensor counts: each
    entry's own total / count, also where a count is 1."""
    tm = TokenMean()
    assert math.isnan(tm.mean())
    tm.add(6.0, 3)
    tm.add(3.0, 1)
    assert tm.mean() == pytest.approx(9.0 / 4)
    per = TokenMean(torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    per.add(torch.tensor([3.0, 4.0, 1.0]), torch.tensor([1.0, 2.0, 4.0]))
    assert per.mean() == pytest.approx([3.0, 2.0, 0.25])
    one = TokenMean()
    one.add(torch.tensor(0.7), torch.tensor(1))
    assert one.mean() == pytest.approx(0.7)


def test_streaming_top_k_threshold_is_the_smallest_kept_key():
    """-inf until k items are kept, then the smallest kept key (checked against sorted() of the keys seen)."""
    top = StreamingTopK(3)
    seen = []
    for x in [5.0, 1.0, 3.0, 4.0, 0.5, 6.0, 2.0]:
        top.push(x, None)
        seen.append(x)
        want = sorted(seen, reverse=True)[2] if len(seen) >= 3 else -math.inf
        assert top.threshold() == want
    assert [k for k, _ in top.items()] == sorted(seen, reverse=True)[:3]


def test_streaming_top_one_and_top_zero():
    """k = 1 keeps the single largest key (its threshold is that key); k = 0 keeps nothing."""
    top = StreamingTopK(1)
    for i, x in enumerate([2.0, 7.0, 3.0]):
        top.push(x, i)
    assert top.items() == [(7.0, 1)] and top.threshold() == 7.0
    none = StreamingTopK(0)
    none.push(1.0, "a")
    assert none.items() == []
