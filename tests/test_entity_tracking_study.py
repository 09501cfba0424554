"""Counterfactuals, the arithmetic task, studies/entity_tracking configs (fast); attribution vs exact patching,
the tiny study end to end and its notebook (real model)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from studies.entity_tracking.__main__ import report
from studies.entity_tracking.figures import figures
from studies.entity_tracking.study import EntityTrackingStudyConfig, run
from tests.conftest import execute_notebook
from tests.test_notebooks import check_default_section
from workbench.errors import ConfigError
from workbench.tasks import arithmetic as ar

STUDY_DIR = Path(__file__).resolve().parents[1] / "studies" / "entity_tracking"


def test_arithmetic_problems_are_right_and_split():
    train, held = ar.problems(ar.ArithmeticConfig(n_train=50, n_heldout=20, seed=3))
    assert len(train) == 50 and len(held) == 20 and not {p for p, _ in train} & {p for p, _ in held}
    for prompt, answer in train + held:
        a, op, b, _ = prompt.split()
        assert int(answer) == (int(a) + int(b) if op == "+" else int(a) - int(b)) >= 0
    assert ar.problems(ar.ArithmeticConfig(n_train=50, n_heldout=20, seed=3)) == (train, held)
    with pytest.raises(ValueError, match="invalid ArithmeticConfig"):
        ar.ArithmeticConfig(n_train=1, n_heldout=1, ops="*")


def test_exact_match_batched_equals_one_problem_at_a_time():
    """Problems grouped by length run in batches; the share must be that of one forward per problem."""
    from tests.conftest import make_tiny
    from workbench.data import Example

    model, _ = make_tiny(1)
    gen = torch.Generator().manual_seed(0)
    examples = []
    for i in range(23):
        prompt = torch.randint(1, 64, (3 + i % 4,), generator=gen).tolist()
        answer = []
        for _ in range(1 + i % 3):  # greedy continuation: a hit, unless one token is changed below
            with torch.no_grad():
                answer.append(int(model(input_ids=torch.tensor([prompt + answer])).logits[0, -1].argmax()))
        if i % 5 == 0:
            answer[-1] = (answer[-1] + 1) % 64
        examples.append(Example(tuple(prompt), tuple(answer)))

    def alone(ex):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([list(ex.prompt_ids) + list(ex.answer_ids)])).logits[0]
        return logits[len(ex.prompt_ids) - 1:-1].argmax(-1).tolist() == list(ex.answer_ids)

    expected = sum(map(alone, examples)) / len(examples)
    assert 0 < expected < 1
    assert ar.exact_match(model, examples) == ar.exact_match(model, examples, max_batch=2) == expected
    with pytest.raises(ConfigError, match="needs examples"):
        ar.exact_match(model, [])


@pytest.mark.parametrize("name", ["tiny", "default", "full"])
def test_shipped_configs_load(name):
    cfg = EntityTrackingStudyConfig.load(name)
    assert "base" in cfg.circuit_models
    EntityTrackingStudyConfig.load(str(STUDY_DIR / "configs" / "qwen.json"))


@pytest.mark.parametrize("change, match", [
    ({"n_patch": 0}, "n_patch must be an integer >= 1"),
    ({"tune": {"x": {"task": "poetry"}}}, "task must be one of"),
    ({"tune": {"x": {"task": "boxes", "method": "full"}}}, "method must be one of"),
    ({"tune": {"x": {"task": "boxes", "n_train": 10}}}, "for arithmetic entries only"),
    ({"tune": {"x": {"task": "arithmetic", "method": "lora", "method_config": {"rank": 4}}}}, "rank"),
    ({"circuit_models": ["boxes"]}, "must include 'base'"),
    ({"dcm_models": ["nope"]}, "unknown model"),
    ({"group_sizes": {"value_fetchers": 2}}, "group_sizes needs"),
    ({"candidates": 1}, "candidates must be at least"),
    ({"dcm": {"stepz": 3}}, "unknown keys"),
    ({"bogus": 1}, "unknown keys"),
])
def test_bad_configs_are_refused(tmp_path, change, match):
    data = {**json.loads((STUDY_DIR / "configs" / "tiny.json").read_text()), **change}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=match):
        EntityTrackingStudyConfig.load(str(path))


# --- real model -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real(smollm2):
    return smollm2  # shared with the whole run (conftest.py): read only


@pytest.mark.real
def test_counterfactuals_line_up_and_name_their_targets(real):
    from workbench.tasks.entity_tracking import counterfactuals as ecf
    from workbench.tasks import entity_tracking as et

    _, tok, _ = real
    prompts = et.generate(tok, et.EntityTrackingConfig(n_boxes=4, n_train=1, n_heldout=12, seed=2)).heldout
    for kind in ecf.KINDS:
        for pair in ecf.make_pairs(tok, prompts, kind, seed=0):
            o, c = pair.original, pair.counterfactual
            assert o.length == c.length and pair.target_id in pair.candidate_ids
            if kind == "random":
                assert pair.target_id == o.answer_token_id
            elif kind == "object":
                assert c.labels == o.labels and c.query_index == o.query_index and not set(c.objects) & set(o.objects)
                assert pair.target_id == c.answer_token_id
            elif kind == "position":
                assert not set(c.labels) & set(o.labels) and c.query_index != o.query_index
                assert pair.target_id == o.object_token_ids[c.query_index]
            else:  # box_label: the cf's query label is one of the original's (not its query), placed elsewhere
                k = o.labels.index(c.query_label)
                assert k != o.query_index and c.query_index != k and pair.target_id == o.object_token_ids[k]
    with pytest.raises(ValueError, match="unknown counterfactual kind"):
        ecf.make_pairs(tok, prompts, "colour")


@pytest.mark.real
def test_attribution_tracks_exact_patching_on_the_real_model(real):
    """Per-head patching at the last token of SmolLM2 (layers 20-29): the attribution estimate correlates with
    exact activation patching."""
    from probes import metrics as pm
    from probes.patch_sites import head_sites
    from probes.patching import activation_patch, attribution_patch
    from workbench.architecture import Dims
    from workbench.tasks.entity_tracking import counterfactuals as ecf
    from workbench.tasks import entity_tracking as et

    model, tok, _ = real
    prompts = et.generate(tok, et.EntityTrackingConfig(n_boxes=3, n_train=1, n_heldout=4, seed=5)).heldout
    clean, answers, objects = et.to_tensors(prompts)
    corrupt = et.to_tensors([p.counterfactual for p in ecf.make_pairs(tok, prompts, "random", seed=5)])[0]
    metric = pm.logit_diff(answers, objects)
    heads = head_sites(Dims.of(model), pos=-1, layers=range(20, 30))
    exact = activation_patch(model, heads, clean, corrupt, metric).mean(1)
    approx = attribution_patch(model, heads, clean, corrupt, metric).mean(1)
    r = float(torch.corrcoef(torch.stack([exact, approx]))[0, 1])
    print(f"attribution vs exact, 90 heads x 4 prompts: Pearson r = {r:.3f}")
    assert r > 0.8


def _without_timing(record: dict) -> dict:
    m = dict(record["metrics"])
    m.pop("timing_s")
    m["tuning"] = {k: v["losses"] for k, v in m["tuning"].items()}
    return m


@pytest.mark.real
def test_tiny_study_and_notebook(tmp_path, monkeypatch, capsys):
    """The tiny config end to end (every stage on SmolLM2), then the notebook must give the same numbers."""
    pytest.importorskip("nbclient")
    record = run(EntityTrackingStudyConfig.tiny(), tmp_path / "run", log=lambda _msg: None)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert {"run_info", "meta_info", "metrics"} <= saved.keys() and saved["meta_info"]["models"]["base"]["weight_hash"]
    m = saved["metrics"]
    assert set(m["accuracy"]) == {"base", "boxes", "arithmetic"}
    assert all(0 <= a["accuracy_among_objects"] <= 1 for a in m["accuracy"].values())
    groups = m["circuits"]["base"]["groups"]
    assert list(groups) == ["value_fetchers", "position_transmitters", "position_detectors", "structure_readers"]
    assert all(len(v) == 2 for v in groups.values())
    assert set(m["circuit_overlap_with_base"]) == {"boxes"}
    for name, f in m["faithfulness"].items():
        assert len(f["random_scores"]) == 2 and f["n_sites"] == len({(g, tuple(h)) for g, hs in groups.items() for h in hs})
    for name, c in m["cmap"].items():
        assert set(c["patched"]) == {*groups, "circuit", "all_heads"}
        assert c["patched"]["all_heads"] == pytest.approx(c["tuned_score"])  # every head from the tuned model = tuned
    for kind in ("object", "position", "box_label"):
        assert len(m["dcm"]["base"]["value_fetchers"][kind]["mask"]) == 2
    assert set(m["dcm"]) == {"base", "boxes"} and set(m["dcm_own_circuit"]) == {"boxes"}
    for model, circuit_of, res in (("boxes", "base", m["dcm"]), ("boxes", "boxes", m["dcm_own_circuit"])):
        heads = [[int(x) for x in re.match(r"blocks\.(\d+)\.attn\.hook_z\[head=(\d+)\]", h).groups()]
                 for h in res[model]["value_fetchers"]["object"]["heads"]]
        assert heads == m["circuits"][circuit_of]["groups"]["value_fetchers"]
    figs = figures(saved)
    assert {"circuit_base", "circuit_boxes", "cmap", "faithfulness"} <= set(figs)
    assert figs["circuit_base"].layout.yaxis.title.text == "layer"
    for name in figs:
        assert 'src="plotly.min.js"' in (tmp_path / "run" / "figures" / f"{name}.html").read_text()
    assert json.loads(json.dumps(record["metrics"]["accuracy"])) == m["accuracy"]
    report(saved)
    printed = capsys.readouterr().out
    assert "DCM on base, base circuit" in printed and "| value_fetchers | " in printed and "CMAP boxes -> base" in printed

    nb = execute_notebook(STUDY_DIR / "entity_tracking.ipynb", "ENTITY_TRACKING_NOTEBOOK_OUT", tmp_path / "notebook", monkeypatch, timeout=600)
    again = json.loads((tmp_path / "notebook" / "results.json").read_text())
    assert _without_timing(again) == _without_timing(saved)
    check_default_section(nb, "entity_tracking")  # the notebook opens with results/default.json, drawn by figures.py
