"""The intent task and studies/context_knob: configs, task rules and plots (fast); the tiny config end to
end + its notebook (real model)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import plotly.graph_objects as go
import pytest
import torch
from torch import nn

from studies.context_knob.figures import layer_search_trace, separation_histogram, steering_curves
from studies.context_knob.study import ContextKnobConfig, flipped, run
from tests.conftest import execute_notebook
from tests.test_notebooks import check_default_section
from workbench.errors import ConfigError
from workbench.tasks import intent as it

STUDY_DIR = Path(__file__).resolve().parents[1] / "studies" / "context_knob"


class WordTokenizer:
    """A stand-in tokenizer: one id per word piece (" Paris", ".", "\\n"), words in ``split`` take two ids."""

    bos_token_id = 1

    def __init__(self, split=()):
        self.vocab: dict[str, int] = {}
        self.split = set(split)

    def _id(self, piece: str) -> int:
        return self.vocab.setdefault(piece, 2 + len(self.vocab))

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        ids = []
        for piece in re.findall(r" ?\w+|[^\w ]", text):
            ids += [self._id(piece + "#a"), self._id(piece + "#b")] if piece.strip() in self.split else [self._id(piece)]
        return {"input_ids": ids}


class Always(nn.Module):
    """A stand-in model whose top-1 is always ``token``."""

    def __init__(self, token: int, vocab: int = 4096):
        super().__init__()
        self.token, self.vocab = token, vocab
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, logits_to_keep=0):
        n = len(logits_to_keep) if isinstance(logits_to_keep, torch.Tensor) else input_ids.shape[1]
        logits = torch.zeros(input_ids.shape[0], n, self.vocab)
        logits[..., self.token] = 1.0
        return type("Out", (), {"logits": logits})()


FACTS = [it.Fact("capital", c, a) for c, a in [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"),
                                                  ("Germany", "Berlin"), ("Peru", "Lima")]] + \
        [it.Fact("language", c, a) for c, a in [("France", "French"), ("Japan", "Japanese"), ("Italy", "Italian")]]


# --- the intent task ------------------------------------------------------------------------------
def test_fact_list_is_large_and_well_formed():
    assert len(it.FACTS) >= 150 and len({f.relation for f in it.FACTS}) >= 5
    assert all(f.relation in it.RELATIONS and f.answer and " " not in f.answer for f in it.FACTS)
    assert set(it.INSTRUCTIONS) == set(it.INTENTS) == {"context", "prior"}


def test_single_token_filter_drops_or_raises():
    tok = WordTokenizer(split={"Lima"})
    kept, dropped = it.single_token_facts(tok, FACTS + FACTS[:2])  # duplicates are kept once
    assert [f.answer for f in dropped] == ["Lima"] and len(kept) == len(FACTS) - 1
    with pytest.raises(ConfigError, match="not single tokens"):
        it.single_token_facts(tok, FACTS, on_multi="raise")
    with pytest.raises(ConfigError, match="empty"):
        it.single_token_facts(tok, [])
    with pytest.raises(ConfigError, match="no fact"):
        it.single_token_facts(WordTokenizer(split={"Paris"}), FACTS[:1])
    with pytest.raises(ConfigError, match="unknown relation"):
        it.single_token_facts(tok, [it.Fact("weather", "Paris", "rain")])


def test_zero_shot_filter_keeps_known_facts():
    tok = WordTokenizer()
    paris = tok(" Paris")["input_ids"][0]
    assert it.known_facts(Always(paris), tok, FACTS) == [FACTS[0]]
    with pytest.raises(ConfigError, match="none of the"):
        it.known_facts(Always(paris + 1000), tok, FACTS)
    with pytest.raises(ConfigError, match="empty"):
        it.known_facts(Always(paris), tok, [])
    with pytest.raises(ConfigError, match="multi-token"):
        it.known_facts(Always(paris), WordTokenizer(split={"Paris"}), FACTS)


def test_pairs_splits_and_metrics():
    tok = WordTokenizer()
    split = it.generate(tok, FACTS, heldout_fraction=0.34, n_train_contexts=2, seed=3)
    assert not set(split.train_facts) & set(split.heldout_facts)
    assert set(split.train_facts) | set(split.heldout_facts) == set(FACTS)
    assert {p.context.fact for p in split.train} == set(split.train_facts)
    for pair in split.train + split.heldout:
        c, p = pair.context, pair.prior
        assert (c.intent, p.intent) == ("context", "prior") and c.fact == p.fact and c.counterfactual == p.counterfactual
        assert c.counterfactual != c.fact.answer and c.context_answer_id != c.prior_answer_id
        assert c.answer_id == c.context_answer_id and p.answer_id == p.prior_answer_id
        assert c.input_ids[-len(tok(c.fact.query)["input_ids"]):] == p.input_ids[-len(tok(p.fact.query)["input_ids"]):]
        assert it.INSTRUCTIONS["context"] in c.text and f"Context: {c.fact.statement(c.counterfactual)}" in p.text
    again = it.generate(tok, FACTS, heldout_fraction=0.34, n_train_contexts=2, seed=3)
    assert [p.context.text for p in again.train] == [p.context.text for p in split.train]
    pairs = split.heldout
    truth = torch.tensor([q.answer_id for q in it.flat(pairs)])
    assert it.accuracies(pairs, truth)["pair_accuracy"] == 1.0
    ctx_only = torch.tensor([pair.context.context_answer_id for pair in pairs for _ in range(2)])
    acc = it.accuracies(pairs, ctx_only)
    assert (acc["context_accuracy"], acc["prior_accuracy"], acc["pair_accuracy"], acc["prior_prompt_gives_context"]) == (1.0, 0.0, 0.0, 1.0)
    ex = it.to_examples(pairs)
    assert len(ex) == 2 * len(pairs) and ex[1].answer_ids == (pairs[0].prior.prior_answer_id,)
    t, s, a = flipped(pairs)
    assert t[0] == s[1] == pairs[0].context.input_ids and a[:2] == [pairs[0].prior.prior_answer_id, pairs[0].context.context_answer_id]


def test_empty_splits_are_refused():
    tok = WordTokenizer()
    with pytest.raises(ConfigError, match="empty split"):
        it.split_facts(FACTS[:1], 0.4, 0)
    with pytest.raises(ConfigError, match="empty fact list"):
        it.generate(tok, [], seed=0)
    with pytest.raises(ConfigError, match="heldout_fraction"):
        it.split_facts(FACTS, 1.0, 0)
    with pytest.raises(ConfigError, match="2 distinct answers"):
        it.make_pairs(tok, [it.Fact("capital", "France", "Paris")])


# --- the study's config and plots -----------------------------------------------------------------
@pytest.mark.parametrize("name", ["tiny", "default", "full"])
def test_shipped_configs_load(name):
    cfg = ContextKnobConfig.load(name)
    assert cfg.lora["r"] == 8 and cfg.lora["alpha"] == 16 and cfg.lora_batch_size_prompts == 8
    assert cfg.to_dict()["das_max_steps"] >= 1 and cfg.steer_points >= 2


def test_bad_configs_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="no study config"):
        ContextKnobConfig.load("huge")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"seed": 0, "typo_key": 1}))
    with pytest.raises(ConfigError, match="unknown keys"):
        ContextKnobConfig.load(bad)
    for kwargs in ({"relations": ["weather"]}, {"heldout_fraction": 0.0}, {"lora_max_steps": 0}, {"das_batch_size": 1.5},
                   {"steer_points": 1}, {"das_layer": -1}, {"search_threshold": 1.5}, {"max_facts": -1}, {"das_lr": 0.0}):
        with pytest.raises(ConfigError):
            ContextKnobConfig(**kwargs)


def test_plots_return_figures():
    proj = {"tuned": {"context": [1.0, 2.0, 3.0], "prior": [-1.0, 0.0]}, "untuned": {"context": [0.5, 0.1], "prior": [0.2, 0.3]}}
    curves = {"tuned": {"values": [-1, 0, 1], "context_rate": [0.1, 0.5, 0.9], "prior_rate": [0.8, 0.4, 0.1]}}
    trace = [{"stage": "clean", "lo": 0, "hi": -1, "value": 0.1, "passed": False},
             {"stage": "full", "lo": 0, "hi": 3, "value": 0.9, "passed": True}]
    figs = [separation_histogram(proj, {"tuned": {"auc": 1.0, "cohens_d": 3.0}}),
            steering_curves(curves, {"mean": 0.0}), layer_search_trace(trace, 4, 0.7)]
    assert all(isinstance(f, go.Figure) for f in figs)
    assert [len(f.data) for f in figs] == [4, 2, 1]
    assert figs[2].layout.yaxis.title.text.startswith("layer")


# --- end to end on the real model -----------------------------------------------------------------
def _without_timing(record: dict) -> dict:
    return {k: v for k, v in record["metrics"].items() if k not in ("timing_s", "lora")} | {
        "lora_losses": record["metrics"]["lora"]["losses"]}


@pytest.mark.real
def test_tiny_study_and_notebook(tmp_path, monkeypatch):
    """The tiny config end to end, then the notebook (same config, same seed) must give the same numbers."""
    pytest.importorskip("nbclient")

    record = run(ContextKnobConfig.tiny(), tmp_path / "run", log=lambda _msg: None)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert {"run_info", "meta_info", "metrics"} <= saved.keys() and saved["run_info"]["config"]["relations"] == ["capital"]
    m = saved["metrics"]
    assert m["accuracy"]["after"] == record["metrics"]["accuracy"]["after"]
    assert m["facts"]["known_zero_shot"] >= m["facts"]["used"] == 6 and m["n_pairs"] == {"train": 3, "heldout": 3}
    for when in ("before", "after"):
        a = m["accuracy"][when]
        assert 0 <= a["pair_accuracy"] <= min(a["context_accuracy"], a["prior_accuracy"]) <= 1
    ls = m["layer_search"]
    assert 0 <= ls["lo"] <= ls["hi"] < ls["n_layers"] == 30 and m["das"]["layer"] == ls["hi"]
    assert ls["n_forward_passes"] <= 1 + 2 + 2 * 5  # log2(30) < 5; one batch per evaluation here
    assert len(m["das"]["losses"]) == 3
    for model in ("tuned", "untuned"):
        assert set(m["interchange_accuracy"][model]) == {"u", "random", "none"}
        assert 0 <= m["separation"][model]["auc"] <= 1
        assert len(m["steering"]["curves"][model]["context_rate"]) == len(m["steering"]["values"]) == 3
    from workbench.artifacts import load_tensors

    u = load_tensors(tmp_path / "run" / "u.safetensors")["u"]
    assert u.shape == (576,) and abs(float(u.norm()) - 1) < 1e-5
    for name in ("separation", "steering", "layer_search"):
        assert 'src="plotly.min.js"' in (tmp_path / "run" / "figures" / f"{name}.html").read_text()

    nb = execute_notebook(STUDY_DIR / "context_knob.ipynb", "CONTEXT_KNOB_NOTEBOOK_OUT", tmp_path / "notebook", monkeypatch)
    again = json.loads((tmp_path / "notebook" / "results.json").read_text())
    assert _without_timing(again) == _without_timing(saved)
    check_default_section(nb, "context_knob")  # the notebook opens with results/default.json, drawn by figures.py
