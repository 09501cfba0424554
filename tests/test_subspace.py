"""probes/subspace.py on tiny random Llamas: interchange, steering, projections, layer search, errors."""

from __future__ import annotations

import math

import pytest
import torch

from probes.layer_search import last_token_acts, layer_search, patched_answer_prob
from probes.subspace import (
    RankOneSubspace, SubspaceConfig, fit_das, interchange_accuracy, projections, random_direction, separation, steer_rates,
    steering_values,
)
from workbench.data import final_position_logits as last_logits, right_pad as pad_batch
from workbench.errors import ConfigError
from workbench.hooked import hook_count

# right-padded batches of different lengths: the last token differs per row
TARGETS = [[5, 9, 12, 3, 40], [7, 8, 9], [11, 22, 33, 44, 55, 60], [3, 4, 5, 6]]
SOURCES = [[5, 9, 12, 3, 2, 40], [7, 1, 9], [11, 22, 33, 44, 61, 55, 60], [3, 6, 4, 5, 6]]  # same last tokens
ANSWERS = [7, 13, 21, 30]


def _last_resid(model, seqs, layer):
    """Hand-written reader: the decoder layer's output at each row's last token (one row at a time, unpadded)."""
    out = []
    for s in seqs:
        got = {}
        h = model.model.layers[layer].register_forward_hook(lambda _m, _a, o: got.setdefault("h", o[0] if isinstance(o, tuple) else o))
        with torch.no_grad():
            model(input_ids=torch.tensor([s]))
        h.remove()
        out.append(got["h"][0, -1].clone())
    return torch.stack(out)


def _subspace(info, layer=1, seed=3):
    return RankOneSubspace(SubspaceConfig(layer=layer, init_seed=seed), info.to_dict())


def test_interchange_equals_hand_written_hook(tiny):
    model, info = tiny
    sub = _subspace(info)
    u = sub.u.detach()
    hs = _last_resid(model, SOURCES, 1)
    expected = []
    for i, s in enumerate(TARGETS):  # unpadded, one prompt at a time, a plain PyTorch hook
        def hook(_m, _a, o, i=i):
            h = o[0] if isinstance(o, tuple) else o
            h = h.clone()
            ht = h[0, -1]
            h[0, -1] = ht - u * (u @ ht) + u * (u @ hs[i])
            return (h, *o[1:]) if isinstance(o, tuple) else h
        handle = model.model.layers[1].register_forward_hook(hook)
        with torch.no_grad():
            expected.append(model(input_ids=torch.tensor([s])).logits[0, -1])
        handle.remove()
    ids, mask, last = pad_batch(TARGETS, 0)
    with torch.no_grad(), sub.attach(model), sub.interchanging(hs, last):
        got = last_logits(model, ids, mask, last)
    torch.testing.assert_close(got, torch.stack(expected), atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # outside interchanging() the attached hook is the identity
        plain = last_logits(model, ids, mask, last)
        with sub.attach(model):
            torch.testing.assert_close(last_logits(model, ids, mask, last), plain, atol=0, rtol=0)


def _after_hook(model, sub, seqs, mode_ctx):
    """The residual at the site *after* the subspace hook (a reader registered after it sees its output)."""
    from workbench.hooked import add_hook
    from workbench.sites import Site

    ids, mask, last = pad_batch(seqs, 0)
    seen = {}
    with torch.no_grad(), sub.attach(model), mode_ctx(last):
        h = add_hook(model, Site(sub.config.layer, "hook_resid_post"), lambda a: seen.__setitem__("h", a.clone()))
        try:
            model(input_ids=ids, attention_mask=mask)
        finally:
            h.remove()
    return seen["h"], last


def test_fitted_u_interchange_copies_the_source_projection(tiny):
    model, info = tiny
    sub = _subspace(info, seed=0)
    before = sub.weight.detach().clone()
    result = fit_das(model, sub, TARGETS, SOURCES, ANSWERS, max_steps=40, lr=0.1, batch_size=4, seed=0)
    assert not torch.equal(before, sub.weight.detach())
    assert sum(result.losses[-5:]) < sum(result.losses[:5])  # the fit moves towards the source answers
    assert math.isclose(float(sub.u.detach().norm()), 1.0, rel_tol=1e-6)
    assert all(not p.grad is not None for p in model.parameters())  # only u was differentiated
    hs = _last_resid(model, SOURCES, 1)
    h, last = _after_hook(model, sub, TARGETS, lambda last: sub.interchanging(hs, last))
    u = sub.u.detach()
    rows = torch.arange(len(TARGETS))
    torch.testing.assert_close(h[rows, last] @ u, hs @ u, atol=1e-5, rtol=1e-5)
    ht = _last_resid(model, TARGETS, 1)  # the orthogonal complement keeps the target's value
    torch.testing.assert_close(h[rows, last] - (h[rows, last] @ u)[:, None] * u, ht - (ht @ u)[:, None] * u, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("c", [-7.5, 0.0, 3.25, 40.0])
def test_steering_sets_the_projection_exactly(tiny, c):
    model, info = tiny
    sub = _subspace(info, layer=0)
    clean, _ = _after_hook(model, RankOneSubspace(SubspaceConfig(0), info.to_dict()), TARGETS, lambda last: torch.no_grad())
    h, last = _after_hook(model, sub, TARGETS, lambda last: sub.steering(c, last))
    rows = torch.arange(len(TARGETS))
    u = sub.u.detach()
    torch.testing.assert_close(h[rows, last] @ u, torch.full((len(TARGETS),), c), atol=1e-5 * max(1.0, abs(c)), rtol=1e-6)
    keep = torch.ones(h.shape[:2], dtype=torch.bool)
    keep[rows, last] = False  # every other position is untouched
    torch.testing.assert_close(h[keep], clean[keep], atol=0, rtol=0)


def test_no_hook_remains(tiny):
    model, info = tiny
    sub = _subspace(info)
    n0 = hook_count(model)
    with sub.attach(model):
        assert hook_count(model) == n0 + 1
    assert hook_count(model) == n0
    with pytest.raises(RuntimeError, match="boom"), sub.attach(model):
        raise RuntimeError("boom")
    assert hook_count(model) == n0
    layer_search(model, TARGETS, SOURCES, ANSWERS, batch_size=3)
    steer_rates(model, sub, TARGETS, ANSWERS, ANSWERS, [0.0, 1.0], batch_size=3)
    projections(model, sub, TARGETS)
    interchange_accuracy(model, sub, TARGETS, SOURCES, ANSWERS)
    assert hook_count(model) == n0


def _deep_tiny(n_layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(n_layers)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=n_layers, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=64, attn_implementation="eager", pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("n_layers", [2, 8, 32, 64])
def test_layer_search_uses_log_many_forward_passes(n_layers):
    model = _deep_tiny(n_layers)
    calls = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        res = layer_search(model, TARGETS, SOURCES, ANSWERS, batch_size=len(TARGETS))
    finally:
        handle.remove()
    bound = 1 + 2 + 2 * math.ceil(math.log2(n_layers))  # cache sources + clean + full + two binary searches
    assert len(calls) == res.n_forward_passes <= bound
    assert res.n_evaluations == len(res.trace) and 0 <= res.lo <= res.hi < n_layers
    window = next(t for t in res.trace if (t["lo"], t["hi"]) == (res.lo, res.hi))
    assert window["passed"] and window["value"] >= res.threshold == pytest.approx(0.85 * res.full_value)
    # the full patch reproduces the source run's last-token residual, hence the source's own probability
    ids, mask, last = pad_batch(SOURCES, 0)
    with torch.no_grad():
        own = last_logits(model, ids, mask, last).softmax(-1)[torch.arange(4), torch.tensor(ANSWERS)].mean()
    assert res.full_value == pytest.approx(float(own), abs=1e-5)
    if n_layers >= 8:  # pass counts grow like log2(n_layers), batches multiply them
        res2 = layer_search(model, TARGETS, SOURCES, ANSWERS, batch_size=2)
        assert res2.n_forward_passes == 2 * res.n_forward_passes


def test_layer_search_absolute_threshold_and_patch_metric(tiny):
    model, _ = tiny
    acts = last_token_acts(model, SOURCES, "hook_attn_out", [0, 1])
    clean = patched_answer_prob(model, TARGETS, acts, ANSWERS, [])
    res = layer_search(model, TARGETS, SOURCES, ANSWERS, threshold=1e-9, relative=False)
    assert res.threshold_mode == "absolute" and res.threshold == 1e-9 and res.clean_value == pytest.approx(clean)
    with pytest.raises(ConfigError, match="absolute threshold"):
        layer_search(model, TARGETS, SOURCES, ANSWERS, threshold=0.999, relative=False)


def test_interchange_accuracy_and_random_direction(tiny):
    model, info = tiny
    r = random_direction(info.d_model, 0)
    assert r.shape == (info.d_model,) and math.isclose(float(r.norm()), 1.0, rel_tol=1e-6)
    assert torch.equal(r, random_direction(info.d_model, 0)) and not torch.equal(r, random_direction(info.d_model, 1))
    sub = RankOneSubspace(SubspaceConfig(1), info.to_dict(), direction=r * 3)
    torch.testing.assert_close(sub.u.detach(), r)
    for s in (sub, None):
        acc = interchange_accuracy(model, s, TARGETS, SOURCES, ANSWERS, batch_size=3)
        assert 0.0 <= acc <= 1.0


def test_projections_separation_and_steering_grid(tiny):
    model, info = tiny
    sub = _subspace(info)
    p = projections(model, sub, TARGETS, batch_size=3)
    torch.testing.assert_close(p, _last_resid(model, TARGETS, 1) @ sub.u.detach(), atol=1e-5, rtol=1e-5)
    s = separation([3.0, 4.0, 5.0], [0.0, 1.0, 2.0])
    assert s["auc"] == 1.0 and s["cohens_d"] == pytest.approx(3.0)
    assert separation([0.0, 1.0], [3.0, 4.0])["auc_sign_free"] == 1.0
    assert steering_values([0.0, 1.0], [2.0], n_points=5, extend=0.5) == [-1.0, 0.0, 1.0, 2.0, 3.0]
    rates = steer_rates(model, sub, TARGETS, ANSWERS, [1, 2, 3, 4], [-1.0, 1.0])
    assert rates["values"] == [-1.0, 1.0] and len(rates["context_rate"]) == len(rates["prior_rate"]) == 2


def test_clear_errors(tiny):
    model, info = tiny
    dims = info.to_dict()
    for layer in (2, -1, 10):
        with pytest.raises(ConfigError, match="out of range"):
            RankOneSubspace(SubspaceConfig(layer), dims)
    with pytest.raises(ConfigError, match="out of range"):
        last_token_acts(model, TARGETS, "hook_resid_post", [2])
    with pytest.raises(ConfigError, match="width"):
        RankOneSubspace(SubspaceConfig(0), dims, direction=torch.ones(info.d_model + 1))
    sub = _subspace(info)
    with pytest.raises(ConfigError, match="width"):
        sub.set_direction(torch.ones(3, info.d_model))
    with pytest.raises(ConfigError, match="non-zero"):
        sub.set_direction(torch.zeros(info.d_model))
    for bad in (float("nan"), float("inf"), -float("inf"), "1"):
        with pytest.raises(ConfigError, match="finite"):
            with sub.steering(bad):
                pass
        with pytest.raises(ConfigError, match="finite"):
            steer_rates(model, sub, TARGETS, ANSWERS, ANSWERS, [0.0, bad])
    with pytest.raises(ConfigError, match="source must be"):
        with sub.interchanging(torch.zeros(4, info.d_model + 1)):
            pass
    with pytest.raises(ConfigError, match="threshold"):
        layer_search(model, TARGETS, SOURCES, ANSWERS, threshold=1.5)
    with pytest.raises(ConfigError, match="as many"):
        layer_search(model, TARGETS, SOURCES[:2], ANSWERS)
    with pytest.raises(ConfigError):
        steering_values([], [1.0])
    with pytest.raises(ConfigError):
        fit_das(model, sub, TARGETS, SOURCES, ANSWERS, max_steps=0)
