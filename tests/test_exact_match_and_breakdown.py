"""Numbers that say what users expect (issue 28, items 3 and 4).

3. Exact match of the answer tokens and of answer + EOS, apart: a model that gives the right answer but does not stop
   after it scores 1 on the first and 0 on the second (hand-built examples on a tiny model); bad ``eos_ids`` are
   refused; the app shows an old run's single ``exact_match`` as the answer + EOS number it was.
4. Accuracy by the queried box's position (first / middle / last) and by number of boxes, with counts: the groups and
   counts on hand-made logits, agreement with :func:`workbench.tasks.entity_tracking.evaluate`, logits kept in prompt
   order across token lengths, and ``workbench quickstart`` writing the breakdown to results.json, the console, the
   report and a figure.
"""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import make_tiny, tiny_llama_with_smollm2_tokenizer
from workbench.data import Example
from workbench.errors import ConfigError
from workbench.tasks import entity_tracking as et
from workbench.tasks.entity_tracking.breakdown import accuracy_breakdown, breakdown_lines, final_logits, query_position


# --- 3. exact match: the answer, and the answer + EOS ---------------------------------------------------------------
@torch.no_grad()
def _greedy(model, prompt: tuple[int, ...], n: int) -> tuple[int, ...]:
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return tuple(ids[len(prompt):])


def test_exact_match_of_the_answer_and_of_answer_plus_eos():
    """Three examples ending with the same "EOS" id E: the model answers and then predicts E (both match); answers right
    but predicts something else after it (answer only); answers wrong (neither)."""
    from workbench.datafiles.evaluate import evaluate_examples

    model, _ = make_tiny(0)
    prompts = [(k, k + 1, k + 2) for k in range(3, 60)]
    chains = {p: _greedy(model, p, 3) for p in prompts}
    stops = next(p for p in prompts if chains[p][2] not in chains[p][:2] and chains[p][2] != 0)
    eos = chains[stops][2]
    talks_on = next(p for p in prompts if chains[p][2] != eos and eos not in chains[p][:2])
    wrong = next(p for p in prompts if p not in (stops, talks_on))
    bad = tuple((t % 63) + 1 for t in chains[wrong][:2])  # each answer token differs from the model's choice
    examples = [Example(stops, (*chains[stops][:2], eos)), Example(talks_on, (*chains[talks_on][:2], eos)), Example(wrong, (*bad, eos))]
    for batch_size in (1, 3):
        got = evaluate_examples(model, examples, pad_id=0, batch_size=batch_size, eos_ids=[eos], progress=False)
        assert got["exact_match_answer"] == pytest.approx(2 / 3) and got["exact_match_answer_eos"] == pytest.approx(1 / 3)
    plain = evaluate_examples(model, examples, pad_id=0, progress=False)  # no eos_ids: every answer token counts
    assert plain["exact_match_answer"] == plain["exact_match_answer_eos"] == pytest.approx(1 / 3)
    assert plain["answer_loss"] == pytest.approx(got["answer_loss"], rel=1e-5)  # the loss always counts EOS


@pytest.mark.parametrize("eos_ids", [None, 2, "2", [-1], [True], [1.5]])
def test_bad_eos_ids_are_refused(eos_ids):
    from workbench.datafiles.evaluate import evaluate_examples

    model, _ = make_tiny(0)
    with pytest.raises(ConfigError, match="eos_ids must be a collection of int token ids"):
        evaluate_examples(model, [Example((1, 2), (3,))], eos_ids=eos_ids, progress=False)


def test_the_app_shows_both_exact_matches_and_an_old_runs_one_for_what_it_was():
    from app.views.runs import NOT_RECORDED, flatten_metrics, upgrade_metrics

    new = {"base": {"answer_loss": 1.0, "exact_match_answer": 0.75, "exact_match_answer_eos": 0.0}}
    assert upgrade_metrics(new) == new
    rows = {r["metric"]: r["value"] for r in flatten_metrics(upgrade_metrics(new))}
    assert rows["base.exact_match_answer"] == 0.75 and rows["base.exact_match_answer_eos"] == 0.0
    old = {"base_answer_loss": 1.0, "base": {"answer_loss": 1.0, "exact_match": 0.0}, "tuned": {"answer_loss": 0.5, "exact_match": None}}
    rows = {r["metric"]: r["value"] for r in flatten_metrics(upgrade_metrics(old))}
    assert rows["base.exact_match_answer_eos"] == 0.0 and rows["base.exact_match_answer"] == NOT_RECORDED
    assert rows["tuned.exact_match_answer"] is None and rows["tuned.exact_match_answer_eos"] is None  # plain text: none
    assert "base.exact_match" not in rows and old["base"] == {"answer_loss": 1.0, "exact_match": 0.0}  # input untouched
    other = {"accuracy": {"lofit": {"arithmetic_exact_match": 0.5}}, "table": [{"exact_match": 1.0, "exact_match_answer": 1.0}]}
    assert upgrade_metrics(other) == other


# --- 4. accuracy by queried box and by number of boxes ----------------------------------------------------------------
def _prompt(q: int, n: int) -> et.BoxPrompt:
    objects = tuple(range(10, 10 + n))
    return et.BoxPrompt(text=f"{q}/{n}", answer=" x", objects=tuple("abcdefg"[:n]), labels=tuple("ABCDEFG"[:n]), query_label="A",
                        query_index=q, n_boxes=n, answer_token_id=objects[q], object_token_ids=objects, query_label_pos=0,
                        query_mention_pos=0, length=7 * n + 4, input_ids=(0,) * (7 * n + 4))


def test_breakdown_by_query_position_and_number_of_boxes():
    prompts = [_prompt(0, 3), _prompt(1, 3), _prompt(2, 3), _prompt(0, 4), _prompt(2, 4), _prompt(3, 4)]
    assert [query_position(p) for p in prompts] == ["first", "middle", "last", "first", "middle", "last"]
    base = torch.zeros(6, 20)
    for i, tok in enumerate([10, 10, 12, 10, 12, 11]):  # right: 0, 2, 3, 4; wrong: 1 (first object), 5 (second)
        base[i, tok] = 1.0
    tuned = base.clone()
    tuned[:, 19] = 2.0  # top-1 over the vocabulary always wrong, among the objects as the base
    b = accuracy_breakdown(prompts, {"base": base, "tuned": tuned})
    assert b["by_query_position"] == [
        {"query_position": "first", "n_prompts": 2, "base_accuracy": 1.0, "base_accuracy_among_objects": 1.0,
         "tuned_accuracy": 0.0, "tuned_accuracy_among_objects": 1.0},
        {"query_position": "middle", "n_prompts": 2, "base_accuracy": 0.5, "base_accuracy_among_objects": 0.5,
         "tuned_accuracy": 0.0, "tuned_accuracy_among_objects": 0.5},
        {"query_position": "last", "n_prompts": 2, "base_accuracy": 0.5, "base_accuracy_among_objects": 0.5,
         "tuned_accuracy": 0.0, "tuned_accuracy_among_objects": 0.5}]
    assert [(r["n_boxes"], r["n_prompts"], r["base_accuracy"]) for r in b["by_n_boxes"]] == [(3, 3, 2 / 3), (4, 3, 2 / 3)]
    for n, row in zip((3, 4), b["by_n_boxes"]):  # the same numbers as the task's own metrics on each group
        idx = [i for i, p in enumerate(prompts) if p.n_boxes == n]
        _, answers, objects = et.to_tensors([prompts[i] for i in idx])
        assert row["base_accuracy"] == pytest.approx(et.accuracy(base[idx], answers))
        assert row["tuned_accuracy_among_objects"] == pytest.approx(et.accuracy_among_objects(tuned[idx], answers, objects))
    lines = breakdown_lines(b)
    assert lines[0] == ("queried box first (2 prompts)", "base 1.000 → tuned 0.000") and lines[-1][0] == "4 boxes (3 prompts)"
    only_last = accuracy_breakdown([_prompt(2, 3)], {"base": base[2:3]})
    assert [r["n_prompts"] for r in only_last["by_query_position"]] == [0, 0, 1] and only_last["by_query_position"][0]["base_accuracy"] is None
    assert breakdown_lines(only_last, ["base"])[0] == ("queried box first (0 prompts)", "base -")


def test_breakdown_refuses_bad_input():
    p = [_prompt(0, 3)]
    with pytest.raises(ConfigError, match="at least one prompt"):
        accuracy_breakdown([], {"base": torch.zeros(0, 20)})
    with pytest.raises(ConfigError, match="at least one model"):
        accuracy_breakdown(p, {})
    with pytest.raises(ConfigError, match=r"logits\['tuned'\] must be a \[n_prompts=1, d_vocab\]"):
        accuracy_breakdown(p, {"base": torch.zeros(1, 20), "tuned": torch.zeros(2, 20)})
    with pytest.raises(ConfigError, match="metric must be one of"):
        breakdown_lines(accuracy_breakdown(p, {"base": torch.zeros(1, 20)}), ["base"], "logit_difference")
    with pytest.raises(ConfigError, match="batch_size"):
        final_logits(make_tiny(0)[0], p, batch_size=0)


def test_final_logits_keep_prompt_order_and_agree_with_evaluate():
    model, tok = tiny_llama_with_smollm2_tokenizer()
    prompts = et.generate(tok, et.EntityTrackingConfig(n_boxes=(3, 4), n_train=1, n_heldout=10, seed=3)).heldout
    assert len({p.length for p in prompts}) == 2  # two token lengths, interleaved
    logits = final_logits(model, prompts, batch_size=3)
    with torch.no_grad():
        one_by_one = torch.cat([model(input_ids=torch.tensor([p.input_ids])).logits[:, -1] for p in prompts])
    torch.testing.assert_close(logits, one_by_one, atol=1e-5, rtol=1e-5)
    b = accuracy_breakdown(prompts, {"m": logits})
    expected = et.evaluate(model, prompts)
    for table in ("by_query_position", "by_n_boxes"):
        rows = [r for r in b[table] if r["n_prompts"]]
        assert sum(r["n_prompts"] for r in rows) == len(prompts)
        for metric in ("accuracy", "accuracy_among_objects"):
            mean = sum(r[f"m_{metric}"] * r["n_prompts"] for r in rows) / len(prompts)
            assert mean == pytest.approx(expected[metric])


def test_quickstart_reports_where_the_tune_fails(tmp_path):
    """``workbench quickstart`` on a tiny model: the breakdown in results.json (counts add up to the held-out prompts),
    on stdout, in report.html and as a figure file for the app; a record from before the breakdown still draws."""
    from app.cli import app
    from app.latency.tiny import quickstart_like_record
    from studies.quickstart.figures import figures

    model, tok = tiny_llama_with_smollm2_tokenizer()
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    select, offset = ({"max_steps": n, "batch_size_prompts": 4, "progress": False} for n in (1, 2))
    (tmp_path / "qs.json").write_text(json.dumps({"model": str(tmp_path / "tiny"), "n_train": 16, "n_heldout": 12, "n_compare": 4,
                                                  "lofit": {"top_k_heads": 2, "select": select, "offset": offset}}))
    result = CliRunner().invoke(app, ["quickstart", "--config", str(tmp_path / "qs.json"), "--runs-dir", str(tmp_path / "runs"),
                                      "--name", "qs"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "qs"
    m = json.loads((run / "results.json").read_text())["metrics"]
    b = m["accuracy_breakdown"]
    assert [r["query_position"] for r in b["by_query_position"]] == ["first", "middle", "last"]
    assert sum(r["n_prompts"] for r in b["by_query_position"]) == 12 and b["by_n_boxes"][0]["n_boxes"] == 3
    assert b["by_n_boxes"][0]["n_prompts"] == 12
    assert b["by_n_boxes"][0]["tuned_accuracy"] == pytest.approx(m["tuned"]["accuracy"])
    assert b["by_n_boxes"][0]["base_accuracy_among_objects"] == pytest.approx(m["base"]["accuracy_among_objects"])
    assert "where the tune works and where it fails" in result.stdout and "queried box: middle" in result.stdout
    report = (run / "report.html").read_text()
    for group, values in breakdown_lines(b):
        assert f"held-out accuracy, {group}" in report and values in report
    fig = json.loads((run / "figures" / "1_accuracy_breakdown.json").read_text())
    rows = [r for r in b["by_query_position"] if r["n_prompts"]]
    assert [bar["name"] for bar in fig["data"]] == ["base", "tuned"]
    assert fig["data"][1]["x"][: len(rows)] == [f"queried box {r['query_position']} ({r['n_prompts']} prompts)" for r in rows]
    assert fig["data"][1]["y"][: len(rows)] == [r["tuned_accuracy"] for r in rows]
    old = figures(quickstart_like_record())  # written before the breakdown existed
    assert "1_accuracy_breakdown" not in old and len(old) == 7


def test_entity_tracking_study_figure_of_the_breakdown():
    from studies.entity_tracking.figures import breakdown_bars

    prompts = [_prompt(0, 3), _prompt(1, 3), _prompt(1, 3)]
    logits = torch.zeros(3, 20)
    logits[:, 11] = 1.0
    fig = breakdown_bars(accuracy_breakdown(prompts, {"base": logits, "lofit": logits}), ["base", "lofit"])
    assert [bar.name for bar in fig.data] == ["base", "lofit"]
    assert list(fig.data[0].x) == ["first (1 prompts)", "middle (2 prompts)"] and list(fig.data[1].y) == [0.0, 1.0]
