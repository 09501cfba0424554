"""The Patchscope readout (probes/diff/patchscope.py) against independent references: the tokenizer's own ids of the
prompt, a plain ``register_forward_hook`` on the tiny random Llama of tests/conftest.py, and hand-sorted top-k lists.
These tests also kill mutants found by studies/benchmarks/mutation.py (the BOS default, the placeholder at index 0,
the readout's documented sizes: top-20 of the tokens in every prompt's top-100, README "Dataset-level diff")."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import bos_adding, raw_ids

from probes.diff.patchscope import patched_probs, patchscope, placeholder_position
from workbench.errors import ConfigError

PROMPT = "man -> man\n1135 -> 1135\nhello -> hello\n?"


@pytest.fixture(scope="module")
def tiny():
    from conftest import tiny_llama_with_smollm2_tokenizer

    return tiny_llama_with_smollm2_tokenizer()


def test_placeholder_position_adds_bos_only_when_asked(tiny):
    """Without ``prepend_bos`` the ids are exactly the tokenizer's ids of the prompt and the position is its last
    token ("?"); with it, the tokenizer's BOS comes first and the position moves by one; a tokenizer without a BOS
    adds nothing."""
    _, tok = tiny
    raw = raw_ids(tok, PROMPT)
    assert tok.bos_token_id is not None and raw[0] != tok.bos_token_id
    assert placeholder_position(tok, PROMPT) == (raw, len(raw) - 1)
    assert placeholder_position(tok, PROMPT, prepend_bos=True) == ([tok.bos_token_id] + raw, len(raw))
    no_bos = copy.deepcopy(tok)
    no_bos.bos_token = None
    assert no_bos.bos_token_id is None
    assert placeholder_position(no_bos, PROMPT, prepend_bos=True) == (raw, len(raw) - 1)


def test_placeholder_position_of_a_bos_adding_tokenizer_adds_no_special_tokens(tiny):
    """A tokenizer that adds its BOS by itself still gives the prompt's plain ids (and the BOS exactly once with
    ``prepend_bos``): BOS is the caller's choice, never the tokenizer's."""
    _, tok = tiny
    raw = raw_ids(tok, PROMPT)
    adds = bos_adding(tok)
    assert placeholder_position(adds, PROMPT) == (raw, len(raw) - 1)
    assert placeholder_position(adds, PROMPT, prepend_bos=True) == ([tok.bos_token_id] + raw, len(raw))


def test_placeholder_at_the_start_of_the_prompt_is_found(tiny):
    """A placeholder at character 0 is a placeholder (``rfind`` returns 0, not "missing"): its token is position 0."""
    _, tok = tiny
    assert placeholder_position(tok, "?") == (raw_ids(tok, "?"), 0)
    ids, pos = placeholder_position(tok, "? is the question")
    assert pos == 0 and ids == raw_ids(tok, "? is the question")
    with pytest.raises(ConfigError, match="no placeholder"):
        placeholder_position(tok, "no question mark here")


def _hand_probs(model, ids, pos, layer, vector=None):
    """Next-token probabilities at ``pos`` from a plain forward, the decoder layer's output at ``pos`` replaced by
    ``vector`` (``None``: unpatched)."""
    def hook(module, args, out):
        h = (out[0] if isinstance(out, tuple) else out).clone()
        h[:, pos] = vector
        return (h, *out[1:]) if isinstance(out, tuple) else h

    handle = model.model.layers[layer].register_forward_hook(hook) if vector is not None else None
    try:
        with torch.no_grad():
            return model(input_ids=torch.tensor([ids])).logits[0, pos].float().softmax(-1)
    finally:
        if handle is not None:
            handle.remove()


def test_default_readout_reads_the_prompt_without_bos_and_keeps_twenty_tokens(tiny):
    """With the defaults, one prompt, two scales: the unpatched readout is the 20 most probable tokens of a plain
    forward of the prompt's own ids (no BOS), and each scale's the 20 most probable with the residual at "?" replaced
    by ``s · n̄ · δ/‖δ‖``."""
    model, tok = tiny
    g = torch.Generator().manual_seed(3)
    delta = torch.randn(model.config.hidden_size, generator=g)
    ids = raw_ids(tok, PROMPT)
    pos, layer, norm, scales = len(ids) - 1, 0, 2.0, [1.5, 4.0]
    got = patchscope(model, tok, delta, layer, norm, scales, [PROMPT], decode=str)
    plain = _hand_probs(model, ids, pos, layer)
    patched = [_hand_probs(model, ids, pos, layer, delta / delta.norm() * norm * s) for s in scales]
    assert [r["scale"] for r in got["by_scale"]] == scales
    for row, probs in ((got["unpatched"], plain), *((r["tokens"], p) for r, p in zip(got["by_scale"], patched))):
        order = sorted(range(len(probs)), key=lambda t: -float(probs[t]))[:20]
        assert [t["id"] for t in row] == order
        torch.testing.assert_close(torch.tensor([t["prob"] for t in row]), probs[order], rtol=1e-4, atol=1e-8)


def test_patched_probs_has_one_row_per_vector_and_a_last_unpatched_row(tiny):
    """``patched_probs`` returns ``n + 1`` rows: row i is the plain forward with the residual at ``pos`` replaced by
    vector i, the last row the unpatched forward."""
    model, tok = tiny
    g = torch.Generator().manual_seed(4)
    ids = raw_ids(tok, PROMPT)
    pos, layer = len(ids) - 1, 1
    vectors = torch.randn(2, model.config.hidden_size, generator=g) * 3
    got = patched_probs(model, ids, pos, layer, vectors)
    assert got.shape == (3, model.config.vocab_size)
    hand = torch.stack([_hand_probs(model, ids, pos, layer, v) for v in vectors] + [_hand_probs(model, ids, pos, layer)])
    torch.testing.assert_close(got, hand, rtol=1e-4, atol=1e-7)


def test_tokens_are_kept_only_from_each_prompts_top_hundred(tiny):
    """The per-prompt cut is the top-100 (README): with one prompt and room for every kept token, the readout is
    exactly the plain forward's 100 most probable tokens, in order; ``k_each`` is reported as 100."""
    model, tok = tiny
    ids = raw_ids(tok, PROMPT)
    got = patchscope(model, tok, torch.ones(model.config.hidden_size), 0, 1.0, [1.0], [PROMPT], top_k=1000, decode=str)
    probs = _hand_probs(model, ids, len(ids) - 1, 0)
    order = sorted(range(len(probs)), key=lambda t: -float(probs[t]))[:100]
    assert got["k_each"] == 100 and [t["id"] for t in got["unpatched"]] == order


def test_kept_tokens_and_novel_mass_match_a_hand_readout_over_three_prompts(tiny):
    """Three prompts, two scales: per scale, the tokens in every prompt's top-``k_each`` ranked by their probability
    averaged over prompts (at most ``top_k``, and only kept ones: never more than ``k_each``), and the novel
    mass (kept probability outside every prompt's unpatched top-20)."""
    from probes.diff.patchscope import DEFAULT_PROMPTS

    model, tok = tiny
    g = torch.Generator().manual_seed(5)
    delta, layer, norm, scales = torch.randn(model.config.hidden_size, generator=g), 0, 2.0, [0.5, 8.0, 40.0]
    hand = []
    for prompt in DEFAULT_PROMPTS:
        ids = raw_ids(tok, prompt)
        rows = [_hand_probs(model, ids, len(ids) - 1, layer, delta / delta.norm() * norm * s) for s in scales]
        hand.append(torch.stack(rows + [_hand_probs(model, ids, len(ids) - 1, layer)]))
    plain = set().union(*(set(p[-1].topk(20).indices.tolist()) for p in hand))
    for k_each, top_k in ((40, 40), (40, 10), (5, 20)):
        got = patchscope(model, tok, delta, layer, norm, scales, decode=str, k_each=k_each, top_k=top_k)
        novel = []
        for s_i, row in enumerate(got["by_scale"]):
            keep = set.intersection(*(set(p[s_i].topk(k_each).indices.tolist()) for p in hand))
            mean = sum(p[s_i] for p in hand) / len(hand)
            order = sorted(keep, key=lambda t: -float(mean[t]))[:top_k]
            assert [t["id"] for t in row["tokens"]] == order and len(order) <= min(top_k, k_each)
            novel.append(sum(float(mean[t]) for t in order if t not in plain))
            assert row["novel_mass"] == pytest.approx(novel[-1], rel=1e-4, abs=1e-9)


def test_patching_the_residual_with_itself_has_the_mass_beyond_the_unpatched_top_twenty_as_novel(tiny):
    """δ = the prompt's own residual at "?" and s · n̄ = ‖δ‖ put back what was there: the patched readout is the
    unpatched distribution, and its novel mass is the probability of its ranks 21 … 100 (top-100 kept, the unpatched
    top-20 left out)."""
    model, tok = tiny
    ids = raw_ids(tok, PROMPT)
    pos, layer, seen = len(ids) - 1, 0, []
    handle = model.model.layers[layer].register_forward_hook(lambda m, a, o: seen.append((o[0] if isinstance(o, tuple) else o)[0, pos].clone()))
    try:
        probs = _hand_probs(model, ids, pos, layer)
    finally:
        handle.remove()
    h = seen[0]
    got = patchscope(model, tok, h, layer, 1.0, [float(h.norm())], [PROMPT], top_k=100, decode=str)
    ranked = probs.sort(descending=True).values
    assert got["by_scale"][0]["novel_mass"] == pytest.approx(float(ranked[20:100].sum()), rel=1e-4)


def test_no_prompt_or_no_scale_is_a_config_error(tiny):
    """An empty prompt list or an empty scale list is refused with a ConfigError, each on its own."""
    model, tok = tiny
    delta = torch.ones(model.config.hidden_size)
    with pytest.raises(ConfigError, match="at least one prompt and one scale"):
        patchscope(model, tok, delta, 0, 1.0, [1.0], [])
    with pytest.raises(ConfigError, match="at least one prompt and one scale"):
        patchscope(model, tok, delta, 0, 1.0, [], [PROMPT])
