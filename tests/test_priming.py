"""Knowledge priming: probes (tiny model), the text generator, ignore-top-k, the study's configs (fast), and
the tiny study + its notebook on the real model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from probes.priming import log10_mean_ratio
from workbench.text_learning import IgnoreTopK, LearnConfig, fresh_copy, largest_mask, learn_text
from studies.priming.study import PrimingStudyConfig, spearman
from tests.conftest import execute_notebook, make_tiny
from tests.test_notebooks import check_default_section
from workbench.errors import ConfigError, NonFiniteLossError
from workbench.tasks import priming as pt
from workbench.tasks.priming.logprob import keyword_logprob

STUDY_DIR = Path(__file__).resolve().parents[1] / "studies" / "priming"


def test_keyword_logprob_matches_hand_computation():
    model, _ = make_tiny(0)
    contexts, keyword = [[5, 9, 11], [3, 4, 20, 21, 22], [8]], [13, 40]
    got = keyword_logprob(model, contexts, keyword, batch_size=2)  # padded batches of unequal length
    for ctx, value in zip(contexts, got):
        with torch.no_grad():
            logp = model(input_ids=torch.tensor([ctx + keyword])).logits[0].log_softmax(-1)
        want = logp[len(ctx) - 1, 13] + logp[len(ctx), 40]
        assert abs(float(value) - float(want)) < 1e-5
    with pytest.raises(ConfigError):
        keyword_logprob(model, [], keyword)
    with pytest.raises(ConfigError):
        keyword_logprob(model, [[1, 2]], [])


def test_priming_score_is_log10_of_mean_ratio():
    before = torch.tensor([-5.0, -2.0, -9.0])
    assert log10_mean_ratio(before, before) == pytest.approx(0.0, abs=1e-12)
    assert log10_mean_ratio(before, before + math.log(10)) == pytest.approx(1.0)
    after = before + torch.tensor([math.log(1.0), math.log(2.0), math.log(6.0)])
    assert log10_mean_ratio(before, after) == pytest.approx(math.log10(3.0))
    with pytest.raises(ConfigError):
        log10_mean_ratio(before, before[:2])


def test_ignore_top_k_drops_exactly_the_largest_updates():
    w = torch.nn.Parameter(torch.zeros(10))
    opt = IgnoreTopK(torch.optim.SGD([w], lr=1.0), fraction=0.2)
    w.grad = -torch.tensor([1.0, 9.0, 2.0, 3.0, -8.0, 4.0, 5.0, 0.5, 6.0, 7.0])  # update = -lr * grad
    opt.step()
    want = torch.tensor([1.0, 0.0, 2.0, 3.0, 0.0, 4.0, 5.0, 0.5, 6.0, 7.0])  # |9| and |-8| dropped
    assert torch.equal(w.detach(), want) and opt.n_ignored == 2
    # wraps any optimizer (here one with state): kept entries equal the plain optimizer's, the k largest are undone
    a, b = torch.nn.Parameter(torch.zeros(50)), torch.nn.Parameter(torch.zeros(50))
    g = torch.randn(50, generator=torch.Generator().manual_seed(0)) * torch.arange(1, 51)
    plain = torch.optim.SGD([a], lr=0.1, momentum=0.9, weight_decay=0.01)
    wrapped = IgnoreTopK(torch.optim.SGD([b], lr=0.1, momentum=0.9, weight_decay=0.01), fraction=0.1)
    a.grad, b.grad = g.clone(), g.clone()
    plain.step()
    wrapped.step()
    dropped = a.detach().abs().topk(5).indices
    kept = torch.ones(50, dtype=torch.bool)
    kept[dropped] = False
    assert torch.equal(b.detach()[kept], a.detach()[kept]) and torch.equal(b.detach()[dropped], torch.zeros(5))
    assert "momentum_buffer" in str(wrapped.state_dict())
    for bad in (-0.1, 1.0):
        with pytest.raises(ConfigError):
            IgnoreTopK(torch.optim.SGD([w], lr=1.0), fraction=bad)


@pytest.mark.parametrize("n,k", [(300_000, 24_000), (2_000_000, 160_000), (1_000, 80)])
def test_largest_mask_is_exactly_topk(n, k):
    values = torch.randn(n, generator=torch.Generator().manual_seed(n)).abs()
    want = torch.zeros(n, dtype=torch.bool)
    want[values.topk(k).indices] = True
    assert torch.equal(largest_mask(values, k, sample_size=50_000), want)
    skewed = values**8  # a heavy tail moves the k-th value far from the bulk
    want = torch.zeros(n, dtype=torch.bool)
    want[skewed.topk(k).indices] = True
    assert torch.equal(largest_mask(skewed, k, sample_size=50_000, margin=1e-4), want)


def test_learning_lowers_the_loss_and_fresh_copy_restores_bit_for_bit():
    model, _ = make_tiny(0)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    text = [5, 9, 11, 13, 17, 19, 23, 29]
    with fresh_copy(model):
        losses = learn_text(model, text, LearnConfig(steps=6, lr=1e-2))
        assert losses[-1] < losses[0]
        assert any(not torch.equal(v, start[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())
    with fresh_copy(model):
        learn_text(model, text, LearnConfig(steps=3, lr=1e-2, ignore_top_k=0.08, mode="mixed", presentations=2, batch_size=3),
                   ordinary_ids=[[1, 2, 3, 4], [6, 7, 8]])
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())


def test_learning_errors():
    model, _ = make_tiny(0)
    with pytest.raises(ConfigError, match="ordinary texts"):
        learn_text(model, [1, 2, 3], LearnConfig(mode="mixed"))
    with pytest.raises(ConfigError):
        learn_text(model, [1], LearnConfig())
    for bad in ({"steps": 0}, {"optimizer": "lion"}, {"mode": "mixed", "steps": 2, "presentations": 3}, {"ignore_top_k": 1.0}):
        with pytest.raises(ConfigError):
            LearnConfig(**bad)
    with torch.no_grad():
        model.model.embed_tokens.weight[5].fill_(float("nan"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NonFiniteLossError):
        learn_text(model, [5, 6, 7], LearnConfig(steps=2))
    assert all(torch.equal(v, before[k]) or torch.isnan(v).any() for k, v in model.state_dict().items())
    assert torch.equal(model.lm_head.weight, before["lm_head.weight"])  # nothing stepped


def test_texts_end_with_their_keyword_and_are_deterministic():
    cfg = pt.PrimingConfig(themes=["colours", "jobs"], keywords={"colours": ["vermilion", "red"], "jobs": ["cooper"]},
                           texts_per_keyword=3, seed=1)
    texts = pt.generate(cfg)
    assert len(texts) == 9 and texts == pt.generate(cfg) and texts != pt.generate(pt.PrimingConfig(**{**cfg.__dict__, "seed": 2}))
    for t in texts:
        assert t.text == f"{t.context} {t.keyword}." and t.stepping_stone == f"{t.stepping_stone_context} {t.keyword}."
        assert pt.KEYWORDS[t.theme][t.keyword] in t.stepping_stone and t.keyword not in t.context.replace(":", " ").split()
    assert len({(t.style, t.subject) for t in texts if t.keyword == "red"}) == 3
    assert pt.spread_by_prior({"a": -1.0, "b": -5.0, "c": -3.0, "d": -9.0, "e": -2.0}, 3) == ["d", "c", "a"]
    for bad in ({"themes": ["sports"]}, {"styles": ["haiku"]}, {"keywords": {"colours": ["plaid"]}},
                {"keywords": {"colours": []}}, {"texts_per_keyword": 0}, {"texts_per_keyword": 999}):
        with pytest.raises(ConfigError):
            pt.PrimingConfig(**bad)
    with pytest.raises(ConfigError):
        pt.spread_by_prior({"a": 1.0}, 2)


@pytest.mark.parametrize("name", ["tiny", "default", "full"])
def test_shipped_configs_load(name):
    cfg = PrimingStudyConfig.load(name)
    assert "standard" in cfg.arms and cfg.learn.steps >= 1


def test_bad_study_configs_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="no study config"):
        PrimingStudyConfig.load("huge")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"themes": ["colours"], "typo_key": 1}))
    with pytest.raises(ConfigError, match="unknown keys"):
        PrimingStudyConfig.load(bad)
    for kwargs in ({"arms": ["ignore_top_k"]}, {"arms": ["standard", "magic"]}, {"ignore_top_k": 0.0}, {"themes": []},
                   {"keywords_per_theme": 99}, {"learn": {"lr": -1.0}}, {"learn": {"lrate": 1.0}}):
        with pytest.raises(ConfigError):
            PrimingStudyConfig(**kwargs)
    assert spearman([1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0])["rho"] == pytest.approx(-1.0)


def _without_timing(record: dict) -> dict:
    return {k: v for k, v in record["metrics"].items() if k != "timing_s"}


@pytest.mark.real
def test_tiny_study_and_notebook(tmp_path, monkeypatch):
    """The tiny config on the real model end to end, then the notebook (same config and seed) must agree."""
    pytest.importorskip("nbclient")
    from studies.priming import run

    record = run(PrimingStudyConfig.tiny(), tmp_path / "run", log=lambda _msg: None)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    m = saved["metrics"]
    assert m["weights_restored_exactly"] is True
    assert {"run_info", "meta_info", "metrics"} <= saved.keys() and saved["meta_info"]["models"]["base"]["weight_hash"]
    assert len(m["rows"]) == 3 * 3 and set(m["arms"]) == {"standard", "stepping_stone", "ignore_top_k"}
    std = [r for r in m["rows"] if r["arm"] == "standard"]
    priors = [r["log10_p_before"] for r in std]
    assert max(priors) - min(priors) > 2  # keywords spread over the prior (orders of magnitude)
    assert all(0 <= r["memorization"] <= 1 and math.isfinite(r["log10_priming"]) for r in m["rows"])
    assert all(r["last_loss"] < r["first_loss"] for r in m["rows"])
    assert -1 <= m["spearman_prior_vs_priming"]["rho"] <= 1
    for name in ("prior_vs_priming", "remedies"):
        assert 'src="plotly.min.js"' in (tmp_path / "run" / "figures" / f"{name}.html").read_text()
    assert _without_timing(record) == _without_timing(saved)

    nb = execute_notebook(STUDY_DIR / "priming.ipynb", "PRIMING_NOTEBOOK_OUT", tmp_path / "notebook", monkeypatch)
    again = json.loads((tmp_path / "notebook" / "results.json").read_text())
    assert _without_timing(again) == _without_timing(saved)
    check_default_section(nb, "priming")  # the notebook opens with results/default.json, drawn by figures.py
