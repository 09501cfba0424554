"""The logit-lens agreement (probes/diff/lens.py) and the few-prompt comparison (probes/diff/prompts.py) against
independent references: plain transformers forwards of the tiny random models of tests/conftest.py
(app.latency.tiny) read with raw torch hooks, the final norm and ``lm_head`` called by hand, ``F.kl_div`` and
``F.cosine_similarity``. These tests also kill mutants found by studies/benchmarks/mutation.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from probes.diff.lens import LensStats, lens_agreement
from probes.diff.prompts import compare


@torch.no_grad()
def _hand_run(model, ids):
    """logits ``[B, T, V]``, each decoder layer's output ``[L, B, T, d]`` and each ``o_proj`` input ``[L, B, T, H, dh]``
    of one plain forward, read with raw torch hooks."""
    layers = model.model.layers
    resid, z = [None] * len(layers), [None] * len(layers)
    handles = []
    for l, layer in enumerate(layers):
        handles.append(layer.register_forward_hook(lambda m, a, o, l=l: resid.__setitem__(l, (o[0] if isinstance(o, tuple) else o).clone())))
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(lambda m, a, l=l: z.__setitem__(l, a[0].clone())))
    try:
        logits = model(input_ids=ids).logits
    finally:
        for h in handles:
            h.remove()
    return logits.float(), torch.stack(resid).float(), torch.stack(z).float().unflatten(-1, (model.config.num_attention_heads, -1))


@torch.no_grad()
def _hand_lens(model, resids, final_logits):
    """Per layer: positions whose lens top-1 (final norm, then ``lm_head``) equals the final top-1, and the summed
    KL(P_final ‖ P_lens), one position at a time."""
    agree, kl = torch.zeros(resids.shape[0], dtype=torch.float64), torch.zeros(resids.shape[0], dtype=torch.float64)
    for l in range(resids.shape[0]):
        for i in range(resids.shape[1]):
            lens = model.lm_head(model.model.norm(resids[l, i])).float().log_softmax(-1)
            final = final_logits[i].float().log_softmax(-1)
            agree[l] += float(lens.argmax() == final.argmax())
            kl[l] += float(F.kl_div(lens, final, log_target=True, reduction="sum"))
    return agree, kl


def _sample(tiny_pair, seed, n_rows=2, n_pos=5):  # 2 × 2 × 5 = 20 (layer, position) rows, not d_model (16)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, tiny_pair.base.config.vocab_size, (n_rows, n_pos), generator=g)
    logits, resid, _ = _hand_run(tiny_pair.base, ids)
    return resid.flatten(1, 2), logits.flatten(0, 1)  # [L, n, d], [n, V]


@pytest.mark.parametrize("chunk_rows", [3, 2048])
def test_lens_agreement_counts_and_kl_match_a_position_loop(tiny_pair, chunk_rows):
    """Agreement counts and summed KL per layer equal a loop over positions through the model's own final norm and
    ``lm_head``, whether the (layer, position) rows go through in chunks of 3 or all at once; the last layer reads
    the model's own logits (full agreement, KL 0)."""
    resids, final = _sample(tiny_pair, 0)
    n = resids.shape[1]
    agree, kl = lens_agreement(tiny_pair.base, resids, final, chunk_rows=chunk_rows)
    hand_agree, hand_kl = _hand_lens(tiny_pair.base, resids, final)
    torch.testing.assert_close(agree, hand_agree)
    torch.testing.assert_close(kl, hand_kl, rtol=1e-4, atol=1e-6)
    assert float(agree[-1]) == n and float(kl[-1]) == pytest.approx(0.0, abs=1e-4)
    assert 0 < float(kl[0])  # the first layer's lens is not the final distribution


def test_lens_agreement_against_other_final_logits(tiny_pair):
    """With final logits that are not the model's own (another sample's), agreement and KL still follow the loop:
    the final top-1 is read per position, the KL weights by P_final."""
    resids, _ = _sample(tiny_pair, 1)
    _, final = _sample(tiny_pair, 2)
    agree, kl = lens_agreement(tiny_pair.base, resids, final * 3.0, chunk_rows=5)
    hand_agree, hand_kl = _hand_lens(tiny_pair.base, resids, final * 3.0)
    torch.testing.assert_close(agree, hand_agree)
    torch.testing.assert_close(kl, hand_kl, rtol=1e-4, atol=1e-6)


def test_lens_stats_average_over_every_position_of_every_update(tiny_pair):
    """``LensStats`` reports per-layer means over all positions of all updates (a single-position update included;
    an empty one changes nothing), and empty lists before any position."""
    stats = LensStats(2)
    assert stats.result() == {"top1_agreement": [], "kl_to_final": [], "n_positions": 0}
    parts = [_sample(tiny_pair, 3), _sample(tiny_pair, 4, n_rows=1, n_pos=1)]
    for resids, final in parts:
        stats.update(tiny_pair.base, resids, final)
    resids0, final0 = parts[0]
    stats.update(tiny_pair.base, resids0[:, :0], final0[:0])
    hand = [_hand_lens(tiny_pair.base, r, f) for r, f in parts]
    n = sum(r.shape[1] for r, _ in parts)
    got = stats.result()
    assert got["n_positions"] == n == 11
    torch.testing.assert_close(torch.tensor(got["top1_agreement"], dtype=torch.float64), sum(a for a, _ in hand) / n)
    torch.testing.assert_close(torch.tensor(got["kl_to_final"], dtype=torch.float64), sum(k for _, k in hand) / n, rtol=1e-4, atol=1e-7)


def test_compare_matches_plain_forwards_in_batches(tiny_pair):
    """``compare`` on 3 equal-length prompts in batches of 2: per-position KL(P_tuned ‖ P_base), per-layer residual
    difference norm, relative difference (over the mean base norm) and cosine, and per-head output difference at the
    last position, each averaged over prompts, equal plain forwards of both models."""
    g = torch.Generator().manual_seed(6)
    ids = torch.randint(3, tiny_pair.base.config.vocab_size, (3, 5), generator=g)
    lb, rb, zb = _hand_run(tiny_pair.base, ids)
    with tiny_pair.tuned_context():
        lt, rt, zt = _hand_run(tiny_pair.tuned, ids)
    got = compare(tiny_pair, ids, batch_size=2)
    kl = F.kl_div(lb.log_softmax(-1), lt.log_softmax(-1), log_target=True, reduction="none").sum(-1).mean(0)
    diff = (rt - rb).norm(dim=-1).mean(1)  # [L, T]
    close = lambda a, b: torch.testing.assert_close(a.float(), b.float(), rtol=1e-4, atol=1e-6)
    close(got.kl, kl)
    close(got.resid_diff_norm, diff)
    close(got.resid_rel_diff, diff / rb.norm(dim=-1).mean(1))
    close(got.resid_cosine, F.cosine_similarity(rt, rb, dim=-1).mean(1))
    n_heads, d_head = zb.shape[-2:]
    heads = []
    for l in range(rb.shape[0]):
        wb = tiny_pair.base.model.layers[l].self_attn.o_proj.weight.unflatten(-1, (n_heads, d_head))
        wt = tiny_pair.tuned.model.layers[l].self_attn.o_proj.weight.unflatten(-1, (n_heads, d_head))
        ob, ot = torch.einsum("bhd,mhd->bhm", zb[l, :, -1], wb), torch.einsum("bhd,mhd->bhm", zt[l, :, -1], wt)
        heads.append((ot - ob).norm(dim=-1).mean(0))
    close(got.head_diff_norm, torch.stack(heads))
    assert got.n_prompts == 3 and float(rb.norm(dim=-1).mean()) < 1  # base norms below 1: the clamp floor is 1e-12
