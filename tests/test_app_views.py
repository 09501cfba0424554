"""The app builds and sends only what the user looks at (issue 15): only the selected view is built, a control
change rebuilds only its view, the prompt is analysed once whatever the views opened; the chunked logit lens
equals the full one and never holds ``[n_layers, pos, d_vocab]`` scores; a session whose prompt waits for the
pair's lock is told it is queued."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "The apple is in Box F, the key is in Box C. Box C contains the"
VIEWS = ["Predictions & logit lens", "Residual stream", "Attention", "Heads & neurons", "Patching", "Method", "Run results", "Dataset diff"]
TABS = {"predictions_tab": VIEWS[0], "residual_tab": VIEWS[1], "attention_tab": VIEWS[2], "heads_tab": VIEWS[3], "method_tab": VIEWS[5],
        "runs_tab": VIEWS[6]}


def _open_app(monkeypatch, tiny_run):
    """The app's main page on the tiny pair (fresh resource cache), after its first run."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    st.cache_resource.clear()
    base, run, runs = tiny_run
    monkeypatch.setenv("WORKBENCH_APP_BASE", str(base))
    monkeypatch.setenv("WORKBENCH_APP_TUNED", str(run))
    monkeypatch.setenv("WORKBENCH_APP_RUNS", str(runs))
    return AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=120).run()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from app.latency.tiny import save_tiny, save_tiny_run, write_quickstart_like_results

    root = tmp_path_factory.mktemp("views")
    base = save_tiny(root / "base")
    run = write_quickstart_like_results(save_tiny_run(root / "runs" / "tiny-run", base))
    return base, run, root / "runs"


@pytest.fixture
def counted(monkeypatch, tiny_run):
    """An AppTest of the page on the tiny LoFiT run, with every view builder and the analysis counted."""

    from app import render
    from app.views import analysis

    calls: Counter = Counter()
    for name, view in TABS.items():
        real = getattr(render, name)
        monkeypatch.setattr(render, name, lambda *a, _real=real, _view=view, **k: calls.update([_view]) or _real(*a, **k))
    real_analyse = analysis.analyse_prompt
    monkeypatch.setattr(analysis, "analyse_prompt", lambda pair, prompt, *a, **k: calls.update([f"analyse {prompt}"]) or real_analyse(pair, prompt, *a, **k))
    at = _open_app(monkeypatch, tiny_run)
    assert not at.exception and not at.error
    return at, calls


def _built(calls: Counter) -> dict:
    return {k: v for k, v in calls.items() if k in VIEWS and v}


def test_only_the_selected_view_is_built_and_the_prompt_analysed_once(counted):
    at, calls = counted
    calls.clear()
    at.text_area(key="prompt").set_value(PROMPT)
    at.button[0].click().run()
    assert not at.exception and not at.error
    assert _built(calls) == {VIEWS[0]: 1} and calls[f"analyse {PROMPT}"] == 1
    assert len(at.get("plotly_chart")) == 4  # the predictions view's figures only
    for view in VIEWS[1:]:  # each view is built when opened, from the same (cached) analysis
        calls.clear()
        at.radio(key="view").set_value(view).run()
        assert not at.exception and not at.error
        assert _built(calls) == ({view: 1} if view in TABS.values() else {}), view
    assert calls[f"analyse {PROMPT}"] == 0
    assert at.query_params["view"] == [VIEWS[-1]] or at.query_params["view"] == VIEWS[-1]  # the view is in the URL


def test_a_control_change_rebuilds_only_its_view(counted):
    at, calls = counted
    at.text_area(key="prompt").set_value(PROMPT)
    at.button[0].click().run()
    at.radio(key="view").set_value("Heads & neurons").run()
    calls.clear()
    picker = next(s for s in at.selectbox if s.label == "Position")
    picker.set_value(2).run()
    assert not at.exception and not at.error
    assert _built(calls) == {"Heads & neurons": 1} and not calls[f"analyse {PROMPT}"]
    assert "at position 2" in " ".join(str(c.proto.spec) for c in at.get("plotly_chart"))


def test_views_are_fragments():
    """Each view is drawn by one ``st.fragment`` (``show_view``): in the browser its own pickers rerun it alone,
    not the prompt box, the analysis or the other views (AppTest always reruns the whole script)."""
    import ast

    tree = ast.parse((ROOT / "app" / "main.py").read_text())
    [fn] = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "show_view"]
    assert any(ast.unparse(d) == "st.fragment" for d in fn.decorator_list)
    calls = {ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert "st.tabs" not in calls  # tabs would build every view on every run


def test_queued_session_is_told_while_the_lock_is_held(monkeypatch, tiny_run):
    """While another session holds the pair's lock, the page says it is queued, then how long it waited."""
    from streamlit.delta_generator import DeltaGenerator

    from app.views import load as load_view

    loaded = []
    real = load_view.load_shared_pair
    monkeypatch.setattr(load_view, "load_shared_pair", lambda *a, **k: loaded.append(real(*a, **k)) or loaded[-1])
    at = _open_app(monkeypatch, tiny_run)
    assert len(loaded) == 1
    seen = []
    real_info = DeltaGenerator.info

    def spy(self, body, *a, **k):  # the notice is replaced by the "Waited" caption when the wait ends: record it when shown
        seen.append(str(body))
        return real_info(self, body, *a, **k)

    monkeypatch.setattr(DeltaGenerator, "info", spy)
    loaded[0].lock.acquire()
    threading.Timer(1.5, loaded[0].lock.release).start()
    at.text_area(key="prompt").set_value("Hello queue")
    at.button[0].click().run()
    assert not at.exception and not at.error
    assert any(s.startswith("Queued") and "another session's analysis" in s for s in seen), seen
    assert any(c.value.startswith("Waited") for c in at.caption)


# --- the chunked logit lens (probes.logit_lens) ----------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(tiny_run):
    from workbench.models import load_model

    model, _, info = load_model(tiny_run[0], device="cpu")
    return model, info


@pytest.mark.parametrize("rows_per_chunk", [1, 7, 10_000])
def test_chunked_lens_equals_the_full_lens(tiny_model, rows_per_chunk):
    from probes.logit_lens import chunked_logit_lens, full_logit_lens

    model, info = tiny_model
    g = torch.Generator().manual_seed(0)
    resid = torch.randn(info.n_layers, 9, info.d_model, generator=g) * 3
    target = torch.randint(0, info.d_vocab, (9,), generator=g)
    full = full_logit_lens(model, resid, target, k=5)
    chunked = chunked_logit_lens(model, resid, target, k=5, rows_per_chunk=rows_per_chunk)
    assert chunked.top_ids.shape == (info.n_layers, 9, 5)
    assert torch.equal(chunked.top_ids, full.top_ids)
    torch.testing.assert_close(chunked.top_probs, full.top_probs)
    torch.testing.assert_close(chunked.target_prob, full.target_prob)
    # and the app's lens (top-1) is the same numbers
    from app.views.analysis import logit_lens

    ids, _, final = logit_lens(model, resid, target, rows_per_chunk=rows_per_chunk)
    assert torch.equal(ids, full.top_ids[..., 0])
    torch.testing.assert_close(final, full.target_prob)


def test_chunked_lens_never_holds_layers_by_positions_by_vocabulary(tiny_model):
    """Peak memory: the largest vocabulary-sized tensor is one chunk's ``[rows_per_chunk, d_vocab]`` scores
    (the unembedding's outputs, watched by a hook; the softmax of a chunk has the same size), never
    ``[n_layers, pos, d_vocab]``; and the process's peak allocation stays far below the full lens's."""
    from probes.logit_lens import chunked_logit_lens, full_logit_lens
    from workbench.architecture import unembedding

    model, info = tiny_model
    n_pos, chunk = 64, 16
    resid = torch.randn(info.n_layers, n_pos, info.d_model)
    sizes: list[int] = []
    handle = unembedding(model).register_forward_hook(lambda m, i, o: sizes.append(o.numel()))
    try:
        chunked_logit_lens(model, resid, k=3, rows_per_chunk=chunk)
        chunked_max, sizes[:] = max(sizes), []
        full_logit_lens(model, resid, k=3)
        full_max = max(sizes)
    finally:
        handle.remove()
    assert chunked_max == chunk * info.d_vocab
    assert full_max == info.n_layers * n_pos * info.d_vocab > 4 * chunked_max
    # the allocator's view: peak bytes allocated while each runs (torch's CPU profiler)
    from torch.profiler import ProfilerActivity, profile

    def peak(fn) -> int:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        return max((e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0), default=0)

    chunked_peak = peak(lambda: chunked_logit_lens(model, resid, k=3, rows_per_chunk=chunk))
    full_peak = peak(lambda: full_logit_lens(model, resid, k=3))
    assert chunked_peak <= 4 * chunk * info.d_vocab * 4  # a few chunk-sized fp32 buffers at most
    assert full_peak >= info.n_layers * n_pos * info.d_vocab * 4


def test_view_state_is_in_the_url_and_a_shared_link_opens_it(monkeypatch, tiny_run):
    """``?prompt=…&view=…&pos=…``: the page keeps its state in the URL, and a page opened from such a link
    (a shared link, or a reload) analyses that prompt and shows that view at that position."""
    from streamlit.testing.v1 import AppTest

    at = _open_app(monkeypatch, tiny_run)
    at.text_area(key="prompt").set_value(PROMPT)
    at.button[0].click().run()
    at.radio(key="view").set_value("Heads & neurons").run()
    next(s for s in at.selectbox if s.label == "Position").set_value(3).run()
    one = lambda v: v[0] if isinstance(v, list) else v
    state = {k: one(at.query_params[k]) for k in ("prompt", "view", "pos")}
    assert state == {"prompt": PROMPT, "view": "Heads & neurons", "pos": "3"}

    shared = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=120)
    shared.query_params.update(state)
    shared.run()
    assert not shared.exception and not shared.error
    assert shared.radio(key="view").value == "Heads & neurons" and shared.text_area(key="prompt").value == PROMPT
    assert next(s for s in shared.selectbox if s.label == "Position").value == 3
    assert "at position 3" in " ".join(str(c.proto.spec) for c in shared.get("plotly_chart"))


def test_a_refused_prompt_stays_out_of_the_url(monkeypatch, tiny_run):

    at = _open_app(monkeypatch, tiny_run)
    at.text_area(key="prompt").set_value(PROMPT)
    at.button[0].click().run()
    at.text_area(key="prompt").set_value("Hello world " * 300)
    at.button[0].click().run()
    assert any("at most 256 tokens" in e.value for e in at.error)
    one = lambda v: v[0] if isinstance(v, list) else v
    assert one(at.query_params["prompt"]) == PROMPT  # the link still opens the results on the page
