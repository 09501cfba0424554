"""Steering and its strength search (probes/diff/steering.py) and the readouts' settings (probes/diff/adl_readouts.py)
against independent references: hand-rendered chat prompts, the tokenizer's own ids, hand-counted coherent shares,
and the reference's sizes as README "Dataset-level diff" states them (binary search in [0, 100], 12 steps, 10
samples × 128 tokens, temperature 1.2, 1.5 nats, ≥ 30% distinct, ≥ 75% coherent). Sampling and the NLL are replaced
by stand-ins where a test checks the search itself. These tests also kill mutants found by
studies/benchmarks/mutation.py."""

from __future__ import annotations

import copy
import importlib
import math

import pytest
import torch
from conftest import bos_adding, raw_ids

from probes.diff.steering import (
    continuation_nll,
    encode_prompt,
    sample_steered,
    steering_search,
)

st = importlib.import_module("probes.diff.steering")

TEMPLATE = "{% for m in messages %}<user>{{ m['content'] }}</user>{% endfor %}{% if add_generation_prompt %}<bot>{% endif %}"


@pytest.fixture(scope="module")
def tiny():
    from conftest import tiny_llama_with_smollm2_tokenizer

    model, tok = tiny_llama_with_smollm2_tokenizer()
    tok = copy.deepcopy(tok)
    tok.chat_template = TEMPLATE
    return model, tok


def test_encode_prompt_renders_the_user_turn_with_the_generation_prompt_by_default(tiny):
    """By default a prompt is the template's user turn plus the generation prompt (rendered here by hand), with no
    special token the tokenizer would add; ``chat=False`` (or no template) gives the raw text's ids, BOS first only
    with ``prepend_bos`` and a BOS to put."""
    _, tok = tiny
    chat = raw_ids(tok, "<user>Hi there</user><bot>")
    raw = raw_ids(tok, "Hi there")
    bos = tok.bos_token_id
    assert encode_prompt(tok, "Hi there") == chat
    assert encode_prompt(tok, "Hi there", chat=False) == raw
    assert encode_prompt(tok, "Hi there", chat=False, prepend_bos=True) == [bos] + raw
    adds = bos_adding(tok)
    assert encode_prompt(adds, "Hi there") == chat and encode_prompt(adds, "Hi there", chat=False) == raw
    plain = copy.deepcopy(tok)
    plain.chat_template = None
    assert encode_prompt(plain, "Hi there") == raw
    plain.bos_token = None
    assert plain.bos_token_id is None and encode_prompt(plain, "Hi there", prepend_bos=True) == raw


class _World:
    """Stand-ins for sampling and the NLL: every sample has distinct tokens; its NLL is ``2 + α / 20`` (α the added
    vector's norm with ``ref_norm`` 1), except that the first ``bad`` samples of each steered strength get NLL 9."""

    def __init__(self, monkeypatch, bad: int = 0) -> None:
        self.calls, self.alpha, self.bad = [], 0.0, bad
        monkeypatch.setattr(st, "sample_steered", self.sample)
        monkeypatch.setattr(st, "continuation_nll", self.nll)

    def sample(self, model, tokenizer, prompt_ids, vector, layer, n, max_new, temperature, seed):
        self.alpha = 0.0 if vector is None else float(vector.double().norm())
        self.calls.append({"ids": prompt_ids, "alpha": self.alpha, "n": n, "max_new": max_new, "temperature": temperature})
        return [[5, 6, 7, 8]] * n

    def nll(self, model, prompt_ids, new_ids):
        value = 2.0 + self.alpha / 20
        return [9.0 if self.alpha and i < self.bad else value for i in range(len(new_ids))]


def test_the_default_search_is_the_references(tiny, monkeypatch):
    """With no sizes given: 10 samples of 128 tokens at temperature 1.2 per strength, α = 0 then 12 bisection steps
    of [0, 100] (first midpoint 50), a sample coherent up to 1.5 nats above the unsteered median: NLL 2 + α/20 is
    coherent up to α = 30, so the chosen α is within 100 / 2¹² below 30."""
    model, tok = tiny
    world = _World(monkeypatch)
    out = steering_search(model, tok, torch.ones(model.config.hidden_size), 0, 1.0, ["Hi there"])
    assert [c["alpha"] for c in world.calls[:2]] == pytest.approx([0.0, 50.0])
    assert len(out["by_alpha"]) == len(world.calls) == 13
    assert {(c["n"], c["max_new"], c["temperature"]) for c in world.calls} == {(10, 128, 1.2)}
    assert all(c["ids"] == raw_ids(tok, "<user>Hi there</user><bot>") for c in world.calls)
    assert 30 - 100 / 2 ** 12 <= out["chosen_alpha"] <= 30 and out["reference_nll_nats"] == [2.0]
    assert out["chat_template"] is True
    world.calls.clear()
    plain = steering_search(model, tok, torch.ones(model.config.hidden_size), 0, 1.0, ["Hi there"], chat=False, steps=1)
    assert plain["chat_template"] is False and world.calls[0]["ids"] == raw_ids(tok, "Hi there")


def test_coherent_share_is_the_fraction_of_coherent_samples(tiny, monkeypatch):
    """With 1 of 4 samples of every steered strength incoherent, a strength whose NLL is within the margin has share
    3/4 (coherent at the reference's 75%), one beyond it 0, the unsteered one 4/4."""
    model, tok = tiny
    _World(monkeypatch, bad=1)
    out = steering_search(model, tok, torch.ones(model.config.hidden_size), 0, 1.0, ["Hi there"], steps=3, n_samples=4)
    assert [r["alpha"] for r in out["by_alpha"]] == [0.0, 50.0, 25.0, 37.5]  # NLL 2 + α/20 ≤ 3.5 up to α = 30
    assert [r["coherent_share"] for r in out["by_alpha"]] == [1.0, 0.0, 0.75, 0.0]
    assert [r["coherent"] for r in out["by_alpha"]] == [True, False, True, False] and out["chosen_alpha"] == 25.0


def test_smallest_sizes_and_a_short_delta_are_searched(tiny, monkeypatch):
    """One step, one sample and α_max below 1 are valid; δ shorter than 1 is searched (only its direction counts),
    and a coherent strength below 1 is chosen."""
    model, tok = tiny
    world = _World(monkeypatch)
    delta = torch.full((model.config.hidden_size,), 0.01)
    out = steering_search(model, tok, delta, 0, 1.0, ["Hi there"], steps=1, n_samples=1, alpha_max=0.5)
    assert [c["alpha"] for c in world.calls] == pytest.approx([0.0, 0.25])
    assert out["chosen_alpha"] == pytest.approx(0.25) and out["chosen_samples"]
    from workbench.errors import ConfigError

    for bad in ({"steps": 0}, {"n_samples": 0}, {"alpha_max": 0.0}):
        with pytest.raises(ConfigError, match="steering needs"):
            steering_search(model, tok, delta, 0, 1.0, ["Hi there"], **bad)


def test_samples_report_distinct_fraction_text_without_special_tokens_and_a_finite_median(tiny, monkeypatch):
    """Each sample's distinct fraction is its distinct tokens over its tokens (0 for an empty one), its text leaves
    special tokens out, and the prompt's reference NLL is the median over the unsteered samples with a finite NLL."""
    model, tok = tiny
    words = raw_ids(tok, "Hello world again")
    special = tok.convert_tokens_to_ids("<|im_start|>")
    samples = [[], words[:1] * 4 + words[1:2] * 4, words[:1] + [special] + words[1:]]
    monkeypatch.setattr(st, "sample_steered", lambda *a: samples)
    monkeypatch.setattr(st, "continuation_nll", lambda model, ids, new: [float("nan"), 1.0, 3.0])
    out = steering_search(model, tok, torch.zeros(model.config.hidden_size), 0, 1.0, ["Hi there"], n_samples=3)
    got = out["by_alpha"][0]["samples"]
    assert out["reference_nll_nats"] == [2.0]
    assert [s["distinct_fraction"] for s in got] == [0.0, 2 / 8, 1.0]
    assert [s["text"] for s in got] == ["", tok.decode(samples[1]), "Hello world again"]


def test_continuation_nll_of_only_empty_continuations_is_nan_for_each(tiny):
    """Continuations without a token have no NLL: one ``nan`` each, also when none of them has a token."""
    model, _ = tiny
    got = continuation_nll(model, [5, 6, 7], [[], []])
    assert len(got) == 2 and all(math.isnan(x) for x in got)


@pytest.fixture(scope="module")
def eos_planted(tiny):
    """A copy of the tiny model whose end-of-sequence unembedding row is 100× longer, and that row's direction: added
    at strength 200 to the last layer's output it makes EOS the next token."""
    model, tok = tiny
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.lm_head.weight[tok.eos_token_id] *= 100
    return model, tok, model.lm_head.weight[tok.eos_token_id].detach().clone()


@torch.no_grad()
def test_samples_come_from_the_whole_distribution_and_end_at_eos(tiny, eos_planted):
    """Unsteered samples of the tiny model are drawn from the whole next-token distribution (not greedy, not a top-k
    cut: first tokens rank far below the top 50 of a plain forward) and run the full length without EOS; steered
    toward a planted EOS every sample ends at its first EOS, which is not kept."""
    model, tok = tiny
    ids = raw_ids(tok, "Tell me about yourself.")
    layer = model.config.num_hidden_layers - 1
    plain = sample_steered(model, tok, ids, None, layer, 6, 4, 1.0, seed=0)
    order = model(input_ids=torch.tensor([ids])).logits[0, -1].argsort(descending=True).tolist()
    ranks = [order.index(s[0]) for s in plain]
    assert all(len(s) == 4 and tok.eos_token_id not in s for s in plain)
    assert len({tuple(s) for s in plain}) == 6 and min(ranks) > 50
    planted, _, direction = eos_planted
    steered = sample_steered(planted, tok, ids, direction / direction.norm() * 200, layer, 6, 4, 1.0, seed=0)
    assert steered == [[]] * 6


def test_adl_readouts_default_settings_are_the_references_sizes(monkeypatch):
    """``adl_readouts`` without settings reads the tuned model and steers every position with the reference's sizes:
    α in [0, 100], 12 steps, 10 samples of 128 tokens at temperature 1.2, 1.5 nats, 30% distinct, 75% coherent,
    and lists 20 tokens per readout."""
    import contextlib
    import types

    ar = importlib.import_module("probes.diff.adl_readouts")

    seen = []
    monkeypatch.setattr(ar, "lens_tokens", lambda model, delta, top_k, decode: {"model": model, "top_k": top_k})
    monkeypatch.setattr(ar, "patchscope", lambda model, tok, delta, layer, ref_norm, scales, prompts, **kw: {"top_k": kw["top_k"]})
    monkeypatch.setattr(ar, "steering_search", lambda model, tok, delta, layer, ref_norm, prompts, **kw: seen.append(kw) or kw)
    pair = types.SimpleNamespace(base="base", tuned="tuned", tokenizer=None, prepend_bos=False,
                                 tuned_context=contextlib.nullcontext)
    out = ar.adl_readouts(pair, torch.ones(2, 4), 0, 1.0)
    assert [e["lens"] for e in out["by_position"]] == [{"model": "tuned", "top_k": 20}] * 2
    assert [e["patchscope"]["top_k"] for e in out["by_position"]] == [20, 20] and len(seen) == 2
    want = {"alpha_max": 100.0, "steps": 12, "n_samples": 10, "max_new_tokens": 128, "temperature": 1.2, "margin_nats": 1.5,
            "min_distinct": 0.3, "min_coherent_share": 0.75}
    assert {k: seen[0][k] for k in want} == want
    assert out["sink"]["position"] == 0 and out["pooled_extra"] is None
    lines = []
    settings = ar.AdlSettings(read_model="base", steering_positions=[1])
    out = ar.adl_readouts(pair, torch.ones(3, 4), 0, 1.0, settings, pooled=torch.ones(4), log=lines.append)
    assert [e["steering"] is not None for e in out["by_position"]] == [False, True, False]
    assert out["sink"]["position"] == 0 and out["pooled_extra"]["lens"] == {"model": "base", "top_k": 20}
    assert [line.endswith(", steering") for line in lines] == [False, True, False] and "position 2" in lines[2]


@pytest.mark.parametrize("field", ["patchscope_prompts", "steering_prompts"])
@pytest.mark.parametrize("value", [[], ["  "], "Hi?", ["Hi?", 3]])
def test_adl_settings_refuse_empty_blank_or_non_text_prompts(field, value):
    """Prompt lists must be non-empty lists of texts with a non-blank character: an empty list, a blank text, a bare
    string and a non-text item are each refused with a ConfigError naming the field."""
    from probes.diff.adl_readouts import AdlSettings
    from workbench.errors import ConfigError

    with pytest.raises(ConfigError, match=field):
        AdlSettings(**{field: value})
