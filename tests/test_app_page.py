"""The app's page through Streamlit's testing API (``AppTest``) on tiny saved models, and once on the real default
model: every view renders with the expected figures, and every error path (missing / mismatched model, too long
prompt, missing runs folder, a waiting session) shows in the page with what to do next. The view logic without
Streamlit is in tests/test_app.py; ``tiny_dirs`` is in conftest.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "The apple is in Box F, the key is in Box C. Box C contains the"


# --- the page through Streamlit's testing API ---------------------------------------------------------------
def _app(monkeypatch, base, tuned, runs):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("WORKBENCH_APP_BASE", str(base))
    monkeypatch.setenv("WORKBENCH_APP_TUNED", str(tuned))
    monkeypatch.setenv("WORKBENCH_APP_RUNS", str(runs))
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=120)
    return at.run()


def _figure_count(at) -> int:
    line = [c.value for c in at.caption if c.value.startswith("figures on this page:")]
    assert len(line) == 1
    return int(re.match(r"figures on this page: (\d+)", line[0]).group(1))


#: The page's views (a selector: only the selected view is built and sent).
VIEWS = ["Predictions & logit lens", "Residual stream", "Attention", "Heads & neurons", "Patching", "Method", "Run results", "Dataset diff"]


def _view(at, name: str) -> int:
    """Select the view ``name``; return its figure count (the page's line and the charts sent agree)."""
    at.radio(key="view").set_value(name).run()
    assert not at.exception
    n = _figure_count(at)
    assert n == len(at.get("plotly_chart")), (name, n, len(at.get("plotly_chart")))
    return n


def test_page_renders_every_view(monkeypatch, tiny_dirs):
    base, _, run, _, runs = tiny_dirs
    at = _app(monkeypatch, base, run, runs)
    assert not at.exception and not at.error
    assert _figure_count(at) == len(at.get("plotly_chart")) == 0  # the predictions view: nothing before a prompt
    assert _view(at, "Method") + _view(at, "Run results") == 2 + 7  # method + run results before any prompt
    _view(at, VIEWS[0])
    at.text_area(key="prompt").set_value(PROMPT)
    at.button[0].click().run()
    assert not at.exception and not at.error
    assert "tokens. Next token" in at.success[0].value
    # predictions 4 + residual 4 + attention 2 + heads/neurons 2 + patching 0 (until its button) + LoFiT 2 + run results 7
    # (+ no diff run)
    assert [_view(at, v) for v in VIEWS] == [4, 4, 2, 2, 0, 2, 7, 0]
    marked = []
    for v in ("Attention", "Heads & neurons"):  # LoFiT heads boxed in both
        _view(at, v)
        specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
        marked += [t for spec in specs for t in spec["data"] if t.get("name") == "intervened head"]
    assert len(marked) == 2 and sorted(zip(marked[0]["y"], marked[0]["x"])) == [(0, 1), (1, 0)]
    select = lambda label, i=0: [s for s in at.selectbox if s.label == label][i]  # noqa: E731
    _view(at, "Attention")
    select("Layer").set_value(1).run()  # re-plots from the cached analysis
    assert not at.exception and len(at.get("plotly_chart")) == 2 and "layer 1 head" in " ".join(str(c.proto.spec) for c in at.get("plotly_chart"))
    _view(at, "Heads & neurons")
    select("Position").set_value("mean over positions").run()  # heads & neurons: mean over positions
    assert not at.exception and len(at.get("plotly_chart")) == 2
    assert "mean over positions" in " ".join(str(c.proto.spec) for c in at.get("plotly_chart"))
    _view(at, VIEWS[0])
    at.text_area(key="prompt").set_value("Hello world")  # a shorter prompt: the pickers start again at its last position
    at.button[0].click().run()
    assert not at.exception and not at.error
    picker = select("Position")
    assert len(picker.options) < 10 and picker.value == len(picker.options) - 1


def test_page_refuses_long_prompts(monkeypatch, tiny_dirs):
    base, tuned, _, _, runs = tiny_dirs
    at = _app(monkeypatch, base, tuned, runs)
    at.text_area(key="prompt").set_value("Hello world " * 300)
    at.button[0].click().run()
    assert not at.exception
    assert any("at most 256 tokens" in e.value for e in at.error)


@pytest.mark.parametrize("which", ["mismatched", "missing"])
def test_page_shows_load_errors_in_the_page(monkeypatch, tiny_dirs, tmp_path, which):
    base, _, _, other, runs = tiny_dirs
    at = _app(monkeypatch, base, other if which == "mismatched" else tmp_path / "nowhere", runs)
    assert not at.exception
    errors = " ".join(e.value for e in at.error)
    assert ("cannot be compared" if which == "mismatched" else "Cannot load model") in errors
    assert _view(at, "Run results") == 7  # the run results still show


# --- the real default model ---------------------------------------------------------------------------------
@pytest.mark.real
def test_page_on_the_real_model_with_a_lofit_run_folder(smollm2, monkeypatch, tmp_path):
    """Every view on SmolLM2-135M-Instruct with LoFiT offsets from a run folder (random offsets on three
    heads, so that no training is needed): the page renders, and the numbers obey the intervention."""
    from app.views.analysis import analyse_prompt
    from workbench.methods import save_intervention
    from workbench.methods.lofit import LofitConfig, LofitOffsets
    from workbench.models.tuned import load_pair

    info = smollm2[2]
    heads = [[3, 1], [10, 4], [25, 8]]
    offsets = LofitOffsets(LofitConfig(top_k_heads=3, heads=heads, init_std=0.5), info.to_dict(), generator=torch.Generator().manual_seed(0))
    save_intervention(tmp_path / "runs" / "real-run" / "adapter", offsets, info)
    loaded = load_pair("smollm2-135m-instruct", str(tmp_path / "runs" / "real-run"), "cpu")
    a = analyse_prompt(loaded.pair, "The Eiffel Tower is in the city of")
    assert a.vocab[int(a.top_ids["base"][-1, 0])] == " Paris"
    assert float(a.resid_diff_norm[:3].abs().max()) == 0.0 and float(a.resid_diff_norm[3].min()) > 0  # first offset at layer 3
    assert float(a.head_diff[3, :, 1].min()) > 0 and float(a.head_diff[3, :, [0, 2, 3, 4, 5, 6, 7, 8]].abs().max()) == 0.0
    assert torch.equal(a.lens_top_ids["base"][-1], a.top_ids["base"][a.lens_start :, 0])

    at = _app(monkeypatch, "smollm2-135m-instruct", tmp_path / "runs" / "real-run", tmp_path / "runs")
    assert not at.exception and not at.error
    at.text_area(key="prompt").set_value("The apple is in Box F, the key is in Box C, the coin is in Box A. Box C contains the")
    at.button[0].click().run()
    assert not at.exception and not at.error
    # predictions 4 + residual 4 + attention 2 + heads & neurons 2 + patching 0 + LoFiT 2 (no results.json in this runs folder)
    assert sum(_view(at, v) for v in VIEWS) == 14 and not at.error


# --- the page's error states (issue 13): every error in the page, with what to do next ---------------------
def _texts(at) -> str:
    return " ".join(e.value for kind in ("error", "warning", "info", "success", "caption") for e in getattr(at, kind))


def test_page_missing_runs_folder_says_so_and_keeps_the_selection(monkeypatch, tiny_dirs, tmp_path):
    base, _, run, _, runs = tiny_dirs
    at = _app(monkeypatch, base, "", tmp_path / "no-runs-here")  # no tuned model given, the runs folder does not exist
    assert not at.exception
    errors = " ".join(e.value for e in at.error)
    assert "does not exist" in errors and "no-runs-here" in errors and "workbench quickstart --runs-dir" in errors
    assert "no tuned model:" not in errors.lower()
    assert at.text_area(key="prompt") is not None  # the prompt box stays
    assert "Load a pair" not in _texts(at)

    at = _app(monkeypatch, base, "", runs)  # the newest run folder is picked ...
    assert not at.exception and not at.error and at.selectbox(key="tuned_choice").value == str(run)
    at.text_input(key="runs_dir").set_value(str(tmp_path / "gone")).run()  # ... and kept when the runs folder is mistyped
    assert not at.exception
    assert at.selectbox(key="tuned_choice").value == str(run)
    assert [e.value for e in at.error] and all("does not exist" in e.value for e in at.error)  # the sidebar says so, nothing else fails
    assert _view(at, "Run results") == 0
    assert any("does not exist" in w.value for w in at.warning)  # the run-results view too, instead of "no results.json"
    assert _view(at, "Method") == 2  # the pair is still loaded: its method view draws


def test_page_keeps_results_when_a_prompt_is_refused(monkeypatch, tiny_dirs):
    base, _, run, _, runs = tiny_dirs
    at = _app(monkeypatch, base, run, runs)
    at.text_area(key="prompt").set_value("Hello world " * 300)  # refused before any result exists
    at.button[0].click().run()
    assert not at.exception and any("at most 256 tokens" in e.value for e in at.error)
    text = _texts(at)
    assert "Load a pair" not in text and "The prompt was refused" in text
    at.text_area(key="prompt").set_value(PROMPT)
    at.button[0].click().run()
    assert not at.exception and not at.error and _figure_count(at) == 4  # the predictions view
    at.text_area(key="prompt").set_value("Hello world " * 300)  # refused: the previous results stay, under the error
    at.button[0].click().run()
    assert not at.exception and any("at most 256 tokens" in e.value for e in at.error)
    assert _figure_count(at) == len(at.get("plotly_chart")) == 4 and _view(at, "Residual stream") == 4
    assert any("previous prompt" in i.value for i in at.info) and "Load a pair" not in _texts(at)


def test_page_keeps_the_prompt_box_when_the_pair_fails_to_load(monkeypatch, tiny_dirs, tmp_path):
    base, _, _, _, runs = tiny_dirs
    at = _app(monkeypatch, base, tmp_path / "nowhere", runs)
    assert not at.exception
    errors = " ".join(e.value for e in at.error)
    assert "Cannot load model" in errors and "sidebar" in errors  # the error and what to do next
    at.text_area(key="prompt").set_value(PROMPT)
    at.button[0].click().run()
    assert not at.exception and at.text_area(key="prompt").value == PROMPT
    assert any("once the pair loads" in w.value for w in at.warning)
    assert "No pair is loaded" in _texts(at) and _view(at, "Run results") == 7  # run results still show


def test_page_says_when_it_waits_for_another_sessions_analysis(monkeypatch, tiny_dirs):
    import threading

    import streamlit as st

    from app.views import load as load_view

    base, tuned, _, _, runs = tiny_dirs
    loaded = []
    real = load_view.load_shared_pair
    monkeypatch.setattr(load_view, "load_shared_pair", lambda *a, **k: loaded.append(real(*a, **k)) or loaded[-1])
    st.cache_resource.clear()  # load the pair through the wrapper, to reach its lock
    at = _app(monkeypatch, base, tuned, runs)
    assert not at.exception and len(loaded) == 1
    loaded[0].lock.acquire()  # "another session" is analysing
    threading.Timer(2.0, loaded[0].lock.release).start()
    at.text_area(key="prompt").set_value("Hello app")
    at.button[0].click().run()
    assert not at.exception and not at.error
    waited = [c.value for c in at.caption if c.value.startswith("Waited")]
    assert waited and "another session's analysis" in waited[0] and float(waited[0].split()[1]) > 0
    assert "tokens. Next token" in at.success[0].value
    at.text_area(key="prompt").set_value("Hello app")  # cached: no waiting, no notice
    at.button[0].click().run()
    assert not [c.value for c in at.caption if c.value.startswith("Waited")]
