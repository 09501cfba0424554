"""The dataset diff as a study and a command (``workbench diff``, ``studies/dataset_diff``) and in the app's "Dataset diff"
page, on tiny models; the real-model tiny config (``real``). Statistics against hand computations:
``tests/test_dataset_diff_corpus.py``; the ADL readouts: ``tests/test_adl.py``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from test_dataset_diff_corpus import TEXTS, dirs  # noqa: F401  (the module-scoped tiny models)

ROOT = Path(__file__).resolve().parents[1]


# --- the study, the command and the app page --------------------------------------------------------------------------
def test_workbench_diff_writes_results_report_and_figures(dirs, tmp_path):
    from typer.testing import CliRunner

    from app.cli import app
    from app.views.diff import context_lines, diff_runs, summary_rows

    base, tuned, *_ = dirs
    data = tmp_path / "corpus.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    runs = tmp_path / "runs"
    cfg = tmp_path / "small.json"
    cfg.write_text(json.dumps({"steering_steps": 1, "steering_samples": 2, "steering_max_new_tokens": 4, "patchscope_scales": [1.0],
                               "steering_prompts": ["Hello"], "steering_positions": [1]}))
    result = CliRunner().invoke(app, ["diff", str(base), str(tuned), "--data", str(data), "--runs-dir", str(runs), "--name", "d",
                                      "--config", str(cfg), "--batch-size", "2", "--max-length", "16", "--layer", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    run = runs / "d"
    assert (run / "results.json").is_file() and (run / "report.html").is_file()
    assert len(list((run / "figures").glob("*.json"))) == 10
    record = json.loads((run / "results.json").read_text())
    assert record["run_info"]["config"]["study"] == "dataset_diff" and record["metrics"]["adl"]["layer"] == 0
    assert record["metrics"]["n_rows"] == len(TEXTS) and record["metrics"]["kl"]["mean_per_token"] > 0
    assert "<html>" in (run / "report.html").read_text()[:200].lower() or "<!doctype html>" in (run / "report.html").read_text()[:50].lower()
    found = diff_runs(runs)
    assert [r.run_dir for r in found] == [run]
    assert any(r["metric"].startswith("mean KL") for r in summary_rows(found[0].record))
    assert len(context_lines(found[0].record)) == len(record["metrics"]["kl"]["top"]) and "<mark>" in context_lines(found[0].record)[0]
    bad = CliRunner().invoke(app, ["diff", str(base), str(tuned), "--data", str(data), "--runs-dir", str(runs), "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "outside the runs folder" in bad.output and "Traceback" not in bad.output


def test_app_diff_page_draws_the_run(dirs, tmp_path):
    """The page object is passed in (no streamlit needed): a stub page records what is drawn."""
    from app.views import diff as view
    from studies.dataset_diff import ModelDiffConfig, run
    from workbench.config import config_from_dict
    from workbench.models.tuned import load_pair

    base, tuned, *_ = dirs
    cfg = config_from_dict(ModelDiffConfig, {"base": str(base), "tuned": str(tuned), "texts": TEXTS[:2], "steering_steps": 1,
                                             "steering_samples": 1, "steering_max_new_tokens": 2, "patchscope_scales": [1.0],
                                             "steering_prompts": ["Hi"], "steering_positions": [1]})
    run(cfg, tmp_path / "runs" / "one", pair=load_pair(str(base), str(tuned), "cpu").pair, log=lambda s: None)

    class Page:
        def __init__(self):
            self.calls = []

        def __getattr__(self, name):
            return lambda *a, **k: (self.calls.append(name), 0)[1] if name != "expander" else self

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    page = Page()
    assert view.render(page, str(tmp_path / "runs")) == 10
    assert page.calls.count("plotly_chart") == 10 and "html" in page.calls
    empty = Page()
    assert view.render(empty, str(tmp_path / "nothing")) == 0 and "info" in empty.calls


@pytest.mark.real
def test_real_model_tiny_config(tmp_path):
    """``configs/tiny.json`` on SmolLM2 (base = tuned, so every difference is exactly zero), end to end."""
    from studies.dataset_diff import ModelDiffConfig, run

    record = run(ModelDiffConfig.tiny(), tmp_path / "tiny", log=lambda s: None)
    m = record["metrics"]
    assert m["n_rows"] == 4 and m["kl"]["mean_per_token"] == 0.0 and max(m["adl"]["delta_norm_by_position"]) == 0.0
    assert m["adl"]["by_position"][1]["steering"]["chosen_alpha"] is None  # δ = 0: nothing to steer with
    assert m["adl"]["layer"] == 14 and m["logit_lens"]["base"]["top1_agreement"][-1] == 1.0
    assert 1.0 < m["nll"]["base_nats_per_token"] < 8.0  # real text under a real model
    assert (tmp_path / "tiny" / "report.html").is_file()


def test_the_app_page_opens_a_diff_run(dirs, tmp_path, monkeypatch):
    """The real Streamlit page (``AppTest``): the "Dataset diff" view lists the run and draws its 10 figures."""
    import re

    from streamlit.testing.v1 import AppTest

    from studies.dataset_diff import ModelDiffConfig, run
    from workbench.config import config_from_dict
    from workbench.models.tuned import load_pair

    base, tuned, *_ = dirs
    cfg = config_from_dict(ModelDiffConfig, {"base": str(base), "tuned": str(tuned), "texts": TEXTS[:2], "steering_steps": 1,
                                             "steering_samples": 1, "steering_max_new_tokens": 2, "patchscope_scales": [1.0],
                                             "steering_prompts": ["Hi"], "steering_positions": [1]})
    runs = tmp_path / "runs"
    run(cfg, runs / "my-diff", pair=load_pair(str(base), str(tuned), "cpu").pair, log=lambda s: None)
    monkeypatch.setenv("WORKBENCH_APP_BASE", str(base))
    monkeypatch.setenv("WORKBENCH_APP_TUNED", str(tuned))
    monkeypatch.setenv("WORKBENCH_APP_RUNS", str(runs))
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=120).run()
    at.radio(key="view").set_value("Dataset diff").run()
    assert not at.exception and not at.error
    line = [c.value for c in at.caption if c.value.startswith("figures on this page:")]
    assert int(re.match(r"figures on this page: (\d+)", line[0]).group(1)) == len(at.get("plotly_chart")) == 10
    assert "my-diff" in " ".join(str(s.value) for s in at.selectbox if s.label == "Diff run") or any(
        "my-diff" in c.value for c in at.caption)
    assert any("<mark>" in m.value for m in at.get("html"))




def test_app_diff_page_shows_a_benchmark_table(tmp_path):
    """A diffing-benchmark folder under the runs folder: its table rows and figures (heatmap, fit) are drawn."""
    from app.views import diff as view
    from studies.common import save_results
    from studies.diffing_benchmark.figures import figures
    from studies.diffing_benchmark.scoring import table_rows

    scores = {"diff mining Δlog p": {"lora": {"baker": {"tuned": {"hits": 7, "mrr": 1.0, "n": 20},
                                                       "control": {"hits": 1, "mrr": 0.25, "n": 20}}}}}
    metrics = {"rows": table_rows(scores), "fit": {"baker-lora": {"base_answer_loss": 4.1, "tuned_answer_loss": 0.3,
                                                                  "kl_unrelated_nats_per_token": 0.9}}}

    class Info:
        def to_dict(self):
            return {"id": "tiny"}

    save_results(tmp_path / "runs" / "bench", {"study": "diffing_benchmark"}, metrics, {"base": Info()}, "cpu", time.time(), figures)

    class Page:
        def __init__(self):
            self.calls = []

        def __getattr__(self, name):
            return lambda *a, **k: (self.calls.append((name, a)), 0)[1]

    page = Page()
    assert view.render(page, str(tmp_path / "runs")) == 2
    frames = [a[0] for name, a in page.calls if name == "dataframe"]
    assert frames[0][0] == {"readout": "diff mining Δlog p", "method": "lora", "organism": "baker", "metric": "hits",
                            "tuned": 7, "control": 1, "delta": 6}
