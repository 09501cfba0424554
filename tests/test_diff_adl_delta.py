"""probes/diff/adl.py checked against hand-computed references on small hand-made tensors: the reference's ADL layer
for odd depths, the scaling of short δ vectors, δ_j and the pooled δ where a single (row, position) pair counts.
Written to kill mutants found by studies/benchmarks/mutation.py; pure tensor tests, no model."""

from __future__ import annotations

import inspect

import pytest
import torch

from probes.diff.adl import DeltaAccumulator, default_layer, lens_tokens, scaled


def test_default_layer_for_odd_and_even_depths():
    """int(0.5 · (n_layers − 1)) by hand: 1 layer → 0, 3 → 1, 5 → 2, 4 → 1, 31 → 15."""
    assert [default_layer(n) for n in (1, 3, 5, 4, 31)] == [0, 1, 2, 1, 15]


def test_scaled_rescales_a_delta_shorter_than_one_to_the_unit_norm():
    """δ = (0.3, 0.4) has norm 0.5: scale · norm · δ/‖δ‖ = 10 · (0.6, 0.8) with the default scale 1, and 2.5 × that
    with scale 2.5; a zero δ stays zero."""
    d = torch.tensor([0.3, 0.4], dtype=torch.float64)
    torch.testing.assert_close(scaled(d, 10.0), torch.tensor([6.0, 8.0], dtype=torch.float64))
    torch.testing.assert_close(scaled(d, 10.0, 2.5), torch.tensor([15.0, 20.0], dtype=torch.float64))
    assert torch.equal(scaled(torch.zeros(2), 3.0, 2.0), torch.zeros(2))


def test_delta_at_a_position_reached_by_one_row_is_that_rows_difference():
    """Two rows, k = 3: row 0 has 1 token, row 1 has 3; δ_0 is the mean of both rows' differences, δ_1 and δ_2 are
    row 1's own differences (one row each), and n per position is (2, 1, 1)."""
    tuned = torch.tensor([[[1.0, 2.0], [9.0, 9.0], [9.0, 9.0]], [[3.0, 0.0], [1.0, 1.0], [0.0, 4.0]]])
    base = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]], [[1.0, 0.0], [0.5, 0.0], [0.0, 1.0]]])
    mask = torch.tensor([[True, False, False], [True, True, True]])
    acc = DeltaAccumulator(3, 2)
    acc.update(tuned, base, mask)
    r = acc.result()
    want = torch.tensor([[1.5, 1.0], [0.5, 1.0], [0.0, 3.0]], dtype=torch.float64)
    torch.testing.assert_close(r["delta_by_position"], want)
    assert r["n_by_position"] == [2, 1, 1]
    assert r["delta_norm_by_position"] == pytest.approx([(1.5 ** 2 + 1) ** 0.5, (0.25 + 1) ** 0.5, 3.0])
    # pooled over the 4 real (row, position < 3) pairs: ((1, 2) + (2, 0) + (0.5, 1) + (0, 3)) / 4
    torch.testing.assert_close(r["delta_pooled"], torch.tensor([3.5 / 4, 6.0 / 4], dtype=torch.float64))


def test_pooled_delta_of_a_single_token_is_its_difference():
    """One row of one token: the pooled δ (and δ_0) is that token's difference, not a fraction of it; no row is
    longer than k, so the mean norms are nan."""
    acc = DeltaAccumulator(2, 2)
    acc.update(torch.tensor([[[2.0, -1.0]]]), torch.tensor([[[0.5, 1.0]]]), torch.tensor([[True]]))
    r = acc.result()
    torch.testing.assert_close(r["delta_pooled"], torch.tensor([1.5, -2.0], dtype=torch.float64))
    torch.testing.assert_close(r["delta_by_position"][0], torch.tensor([1.5, -2.0], dtype=torch.float64))
    assert r["n_by_position"] == [1, 0] and r["split_half_cosine"] == [None, None]
    assert r["mean_tuned_norm"] != r["mean_tuned_norm"]  # nan


def test_lens_tokens_takes_top_k_from_its_caller():
    """lens_tokens has no top_k default of its own: the readouts' setting is its one home."""
    assert inspect.signature(lens_tokens).parameters["top_k"].default is inspect.Parameter.empty
