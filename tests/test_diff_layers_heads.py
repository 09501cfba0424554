"""probes/diff/layers.py checked against hand-computed references on small hand-made tensors: layer-index checking,
per-head output norms against explicit ``W_O^h z_h`` products (any number of row dimensions, norms below 1), and
LayerStats' per-row means, t-intervals and token-weighted base head norm over padded batches of a one-layer model.
Written to kill mutants found by studies/benchmarks/mutation.py; pure tensor tests, no model."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import t as student

from probes.diff.layers import LayerStats, check_layer, head_diff_norm
from workbench.errors import ConfigError

N_HEADS, D_HEAD, D_MODEL = 2, 3, 4


def _head_out(z, w):
    """Per-head outputs W_O^h z_h by a plain loop over heads: z [..., H, dh], w [d_model, H*dh] -> [..., H, d_model]."""
    return torch.stack([z[..., h, :] @ w[:, h * D_HEAD:(h + 1) * D_HEAD].T for h in range(N_HEADS)], -2)


def test_check_layer_maps_negative_indices_and_names_the_valid_range():
    """Negative layers count from the end (-1 is the last of 4 = 3); out-of-range layers are refused with the range
    a 4-layer model really has (0..3, -1..-4)."""
    assert [check_layer(x, 4) for x in (0, 2, 3, -1, -4)] == [0, 2, 3, 3, 0]
    for bad in (4, -5):
        with pytest.raises(ConfigError) as e:
            check_layer(bad, 4, "adl layer")
        assert str(e.value) == f"adl layer {bad} does not exist: the model has layers 0..3 (or -1..-4)"


@pytest.mark.parametrize("rows", [(5,), (2, 3), (1, 2, 2)])
def test_head_norms_match_explicit_head_outputs(rows):
    """‖W_t^h z_t,h − W_b^h z_b,h‖ and ‖W_b^h z_b,h‖ against explicit products, for 1, 2 and 3 row dimensions, with
    the same W_O object, an equal copy and a changed W_O; small activations so every norm is below 1."""
    g = torch.Generator().manual_seed(0)
    zt = 0.05 * torch.randn(*rows, N_HEADS, D_HEAD, generator=g, dtype=torch.float64)
    zb = 0.05 * torch.randn(*rows, N_HEADS, D_HEAD, generator=g, dtype=torch.float64)
    wb = torch.randn(D_MODEL, N_HEADS * D_HEAD, generator=g, dtype=torch.float64)
    for wt in (wb, wb.clone(), wb + 0.3 * torch.randn(D_MODEL, N_HEADS * D_HEAD, generator=g, dtype=torch.float64)):
        d, b = head_diff_norm(zt, zb, wt, wb)
        ref_b = _head_out(zb, wb).norm(dim=-1)
        assert float(ref_b.max()) < 1.0
        torch.testing.assert_close(d.double(), (_head_out(zt, wt) - _head_out(zb, wb)).norm(dim=-1), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(b.double(), ref_b, rtol=1e-4, atol=1e-6)
    d, _ = head_diff_norm(zb, zb, wb, wb.clone())
    assert float(d.abs().max()) < 1e-6  # identical heads: no difference


def _batch(seed, lengths, pos=4):
    g = torch.Generator().manual_seed(seed)
    n = len(lengths)
    mask = torch.tensor([[p < k for p in range(pos)] for k in lengths])
    rt, rb = torch.randn(n, pos, D_MODEL, generator=g), torch.randn(n, pos, D_MODEL, generator=g)
    zt, zb = 0.1 * torch.randn(n, pos, N_HEADS, D_HEAD, generator=g), 0.1 * torch.randn(n, pos, N_HEADS, D_HEAD, generator=g)
    return mask, rt, rb, zt, zb


def test_layer_stats_of_a_one_layer_model_match_a_hand_loop():
    """Two right-padded batches (one row all padding) through a one-layer LayerStats: per-row means over real
    positions of the relative residual difference, the cosine and the head difference norm, their mean and 95%
    t-interval over rows (scipy's t quantile), and the base head norm averaged over every real token."""
    g = torch.Generator().manual_seed(9)
    wt, wb = torch.randn(D_MODEL, N_HEADS * D_HEAD, generator=g), torch.randn(D_MODEL, N_HEADS * D_HEAD, generator=g)
    stats = LayerStats(1, N_HEADS)
    rel, cos, head, base_sum, n_tok = [], [], [], torch.zeros(N_HEADS, dtype=torch.float64), 0
    for seed, lengths in ((1, [4, 2, 0]), (2, [3])):
        mask, rt, rb, zt, zb = _batch(seed, lengths)
        stats.start_batch()
        stats.add_resid(0, rt, rb, mask)
        stats.add_heads(0, zt, zb, wt, wb, mask)
        stats.end_batch(mask)
        for r, k in enumerate(lengths):
            if k == 0:
                continue
            t, b = rt[r, :k].double(), rb[r, :k].double()
            rel.append(float(((t - b).norm(dim=-1) / b.norm(dim=-1)).mean()))
            cos.append(float(((t * b).sum(-1) / (t.norm(dim=-1) * b.norm(dim=-1))).mean()))
            ot, ob = _head_out(zt[r, :k].double(), wt.double()), _head_out(zb[r, :k].double(), wb.double())
            head.append((ot - ob).norm(dim=-1).mean(0))
            base_sum += ob.norm(dim=-1).sum(0)
            n_tok += k
    got = stats.result()
    q = student.ppf(0.975, len(rel) - 1)
    for key, vals in (("resid_rel_diff", [[v] for v in rel]), ("resid_cosine", [[v] for v in cos]),
                      ("head_diff_norm", [[h.tolist()] for h in head])):
        v = torch.tensor(vals, dtype=torch.float64)
        mean, half = v.mean(0), q * v.std(0) / math.sqrt(len(v))
        r = got[key]
        assert r["n_rows"] == 3
        torch.testing.assert_close(torch.tensor(r["mean"], dtype=torch.float64), mean, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(torch.tensor(r["ci_low"], dtype=torch.float64), mean - half, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(torch.tensor(r["ci_high"], dtype=torch.float64), mean + half, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(torch.tensor(got["head_base_norm_mean"], dtype=torch.float64), (base_sum / n_tok)[None],
                               rtol=1e-4, atol=1e-6)
