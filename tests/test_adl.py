"""The Activation Difference Lens readouts against hand computations (probes/diff/adl.py, patchscope.py, steering.py,
adl_readouts.py): δ_j per position and its split halves, the logit lens through the model's own modules, the
Patchscope against a raw forward hook, steering toward (+δ) and away from (−δ) a planted token, the reference's
layer and scale grid."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from probes.diff.adl import DeltaAccumulator, default_layer, lens_tokens, scaled
from probes.diff.patchscope import DEFAULT_PROMPTS, DEFAULT_SCALES, best_scale, patchscope, placeholder_position
from probes.diff.steering import coherent, continuation_nll, sample_steered, steering_search
from workbench.errors import ConfigError


def test_reference_layer_and_scale_grid():
    assert default_layer(30) == 14 and default_layer(2) == 0 and default_layer(18) == 8
    assert len(DEFAULT_SCALES) == 39 and DEFAULT_SCALES[:3] == (0.5, 0.6, 0.7) and DEFAULT_SCALES[15] == 2.0
    assert DEFAULT_SCALES[16:19] == (3.0, 4.0, 5.0) and DEFAULT_SCALES[19] == 10.0 and DEFAULT_SCALES[-1] == 200.0
    assert all(p.endswith("\n?") and p.count(" -> ") == 3 for p in DEFAULT_PROMPTS) and len(DEFAULT_PROMPTS) == 3


def test_delta_per_position_split_halves_and_norm_against_a_hand_loop():
    g = torch.Generator().manual_seed(0)
    k, d = 3, 4
    tuned, base = torch.randn(5, 6, d, generator=g), torch.randn(5, 6, d, generator=g)
    mask = torch.ones(5, 6, dtype=torch.bool)
    mask[1, 2:] = False  # a row of two tokens: counts at positions 0 and 1 only
    mask[3, 5:] = False
    acc = DeltaAccumulator(k, d)
    acc.update(tuned[:2], base[:2], mask[:2])  # rows 0, 1 then 2, 3, 4: numbering continues across batches
    acc.update(tuned[2:], base[2:], mask[2:])
    r = acc.result()
    for j in range(k):
        rows = [i for i in range(5) if mask[i, j]]
        hand = torch.stack([tuned[i, j] - base[i, j] for i in rows]).double().mean(0)
        torch.testing.assert_close(r["delta_by_position"][j], hand, rtol=1e-6, atol=1e-7)
        even = torch.stack([tuned[i, j] - base[i, j] for i in rows if i % 2 == 0]).double().mean(0)
        odd = torch.stack([tuned[i, j] - base[i, j] for i in rows if i % 2 == 1]).double().mean(0)
        assert r["split_half_cosine"][j] == pytest.approx(float(F.cosine_similarity(even, odd, dim=0)), rel=1e-5)
    assert r["n_by_position"] == [5, 5, 4]
    later = [(i, p) for i in range(5) for p in range(k, 6) if mask[i, p]]
    assert r["mean_tuned_norm"] == pytest.approx(sum(float(tuned[i, p].norm()) for i, p in later) / len(later), rel=1e-6)
    assert r["mean_base_norm"] == pytest.approx(sum(float(base[i, p].norm()) for i, p in later) / len(later), rel=1e-6)
    pooled = torch.stack([tuned[i, j] - base[i, j] for i in range(5) for j in range(k) if mask[i, j]]).double().mean(0)
    torch.testing.assert_close(r["delta_pooled"], pooled, rtol=1e-6, atol=1e-7)
    half = DeltaAccumulator(2, d)
    half.update(tuned[:1], base[:1], mask[:1])  # one row: the odd half is empty
    assert half.result()["split_half_cosine"] == [None, None]


def test_scaled_vector():
    v = torch.tensor([3.0, 4.0])
    torch.testing.assert_close(scaled(v, 10.0, 2.0), torch.tensor([12.0, 16.0]))
    assert torch.equal(scaled(torch.zeros(2), 10.0), torch.zeros(2))


def test_logit_lens_of_each_delta_uses_the_models_own_final_norm_and_unembedding(tiny):
    model, _ = tiny
    g = torch.Generator().manual_seed(1)
    for delta in torch.randn(3, model.config.hidden_size, generator=g):
        got = lens_tokens(model, delta, top_k=5, decode=str)
        for sign, key in ((1, "positive"), (-1, "negative")):
            logits = model.lm_head(model.model.norm(sign * delta))
            top = logits.topk(5)
            assert [t["id"] for t in got[key]] == top.indices.tolist()
            torch.testing.assert_close(torch.tensor([t["prob"] for t in got[key]]), logits.softmax(-1)[top.indices])


@pytest.fixture(scope="module")
def tiny():
    from conftest import tiny_llama_with_smollm2_tokenizer

    return tiny_llama_with_smollm2_tokenizer()


def test_patchscope_equals_a_raw_forward_hook(tiny):
    """Each prompt's patched distribution equals a plain ``register_forward_hook`` on the decoder layer that replaces
    the residual at the ``"?"`` position; the readout keeps tokens in every prompt's top-k and averages them."""
    model, tok = tiny
    g = torch.Generator().manual_seed(2)
    delta, layer, norm, scales = torch.randn(model.config.hidden_size, generator=g), 0, 3.0, [0.5, 4.0, 50.0]
    got = patchscope(model, tok, delta, layer, norm, scales, top_k=10, k_each=30, decode=str)
    per_prompt = []
    for prompt in DEFAULT_PROMPTS:
        ids, pos = placeholder_position(tok, prompt)
        assert pos == len(ids) - 1 and tok.decode([ids[pos]]) == "?"
        rows = []
        for s in scales:
            vec = delta / delta.norm() * norm * s

            def hook(module, args, out, vec=vec, pos=pos):
                h = out[0] if isinstance(out, tuple) else out
                h = h.clone()
                h[:, pos] = vec
                return (h, *out[1:]) if isinstance(out, tuple) else h

            handle = model.model.layers[layer].register_forward_hook(hook)
            try:
                with torch.no_grad():
                    rows.append(model(input_ids=torch.tensor([ids])).logits[0, pos].softmax(-1))
            finally:
                handle.remove()
        per_prompt.append(torch.stack(rows))
    probs = torch.stack(per_prompt)  # [prompt, scale, vocab]
    for s_i, row in enumerate(got["by_scale"]):
        keep = set(range(probs.shape[-1]))
        for p in range(len(DEFAULT_PROMPTS)):
            keep &= set(probs[p, s_i].topk(30).indices.tolist())
        mean = probs[:, s_i].mean(0)
        hand = sorted(keep, key=lambda t: -float(mean[t]))[:10]
        assert [t["id"] for t in row["tokens"]] == hand
        torch.testing.assert_close(torch.tensor([t["prob"] for t in row["tokens"]]), mean[hand], rtol=1e-4, atol=1e-7)
    assert got["best_scale"] in scales


def test_best_scale_rule_on_hand_made_rows():
    rows = [{"scale": 1.0, "novel_mass": 0.1}, {"scale": 2.0, "novel_mass": 0.4}, {"scale": 3.0, "novel_mass": 0.4}]
    assert best_scale(rows) == 2.0 and best_scale([]) is None


def test_patchscope_refuses_a_prompt_without_placeholder(tiny):
    model, tok = tiny
    with pytest.raises(ConfigError, match="placeholder"):
        patchscope(model, tok, torch.ones(model.config.hidden_size), 0, 1.0, [1.0], prompts=["no question mark"])


def _planted(tiny, token: str):
    """A copy of the tiny model whose unembedding row of ``token`` is 100× longer than it was, and that row's direction:
    added at large strength to the last layer's output (read after the final RMSNorm), it makes ``token`` the next
    token; subtracted, it makes it the least likely."""
    import copy

    model, tok = tiny
    model = copy.deepcopy(model)
    tid = tok(token, add_special_tokens=False)["input_ids"]
    assert len(tid) == 1
    with torch.no_grad():
        model.lm_head.weight[tid[0]] *= 100
    return model, tok, tid[0], model.lm_head.weight[tid[0]].detach().clone()


def test_steering_moves_generation_toward_the_planted_token_with_plus_delta_and_away_with_minus(tiny):
    model, tok, tid, direction = _planted(tiny, " bread")
    ids = tok("Tell me about yourself.", add_special_tokens=False)["input_ids"]
    layer = model.config.num_hidden_layers - 1
    count = lambda seqs: sum(s.count(tid) for s in seqs)  # noqa: E731
    plain = sample_steered(model, tok, ids, None, layer, 4, 6, 1.0, seed=0)
    plus = sample_steered(model, tok, ids, scaled(direction, 1.0, 200.0), layer, 4, 6, 1.0, seed=0)
    minus = sample_steered(model, tok, ids, scaled(-direction, 1.0, 200.0), layer, 4, 6, 1.0, seed=0)
    assert count(plus) >= 20 and count(plus) > count(plain) and count(minus) == 0
    assert sample_steered(model, tok, ids, None, layer, 4, 6, 1.0, seed=0) == plain  # seeded: reproducible


def test_continuation_nll_is_a_hand_cross_entropy(tiny):
    model, tok = tiny
    prompt, news = [5, 6, 7], [[8, 9], [10], []]
    got = continuation_nll(model, prompt, news)
    for new, value in zip(news[:2], got[:2]):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + new])).logits[0]
        hand = F.cross_entropy(logits[len(prompt) - 1 : -1], torch.tensor(new))
        assert value == pytest.approx(float(hand), rel=1e-5)
    assert got[2] != got[2]  # nan for an empty continuation


def test_coherence_rule():
    assert coherent(2.0, 0.5, 1.0, 1.5, 0.3) and not coherent(2.6, 0.5, 1.0, 1.5, 0.3)
    assert not coherent(2.0, 0.2, 1.0, 1.5, 0.3) and not coherent(float("nan"), 1.0, 1.0, 1.5, 0.3)


def test_steering_search_bisects_to_the_largest_coherent_strength(tiny, monkeypatch):
    """With coherence decided by the strength alone (a stand-in judge: coherent iff α ≤ 37), 8 bisection steps in
    [0, 100] end within 100 / 2⁸ below 37; δ = 0 chooses nothing."""
    import probes.diff.steering as st

    model, tok, _, direction = _planted(tiny, " bread")
    seen = []

    def fake_sample(model, tokenizer, prompt_ids, vector, layer, n, max_new, temperature, seed):
        alpha = 0.0 if vector is None else float(vector.norm())
        seen.append(alpha)
        return [[1, 2, 3]] * n if alpha <= 37 else [[4] * 6] * n  # a one-token loop: not coherent

    monkeypatch.setattr(st, "sample_steered", fake_sample)
    out = steering_search(model, tok, direction, 1, 1.0, ["Hi"], steps=8, n_samples=2, max_new_tokens=3, chat=False)
    assert 37 - 100 / 2 ** 8 <= out["chosen_alpha"] <= 37 and len(out["by_alpha"]) == 9 and seen[0] == 0.0
    assert out["chosen_samples"] and out["by_alpha"][0]["alpha"] == 0.0
    none = steering_search(model, tok, torch.zeros_like(direction), 1, 1.0, ["Hi"], steps=8, n_samples=2, max_new_tokens=3, chat=False)
    assert none["chosen_alpha"] is None and len(none["by_alpha"]) == 1
    with pytest.raises(ConfigError, match="steering needs"):
        steering_search(model, tok, direction, 1, 1.0, [], steps=1)
