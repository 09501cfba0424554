"""Streamlit rendering of the views: each function draws one view and returns how many figures it drew.

The data and figures come from non-streamlit modules (``app.views.analysis*``, ``workbench.plots``), so the
same figures are testable without a browser; this file only lays them out and adds the controls.
"""

from __future__ import annotations

import time

import streamlit as st

from app import render_lens
from app.views import figures as vf
from app.views.analysis import ROLES, PromptAnalysis
from app.views.method import method_views
from app.views.runs import find_results, flatten_metrics, metric_tables, run_figures, upgrade_metrics


def _charts(figs, key: str) -> int:
    for i, fig in enumerate(figs):
        st.plotly_chart(fig, key=f"{key}-{i}", config={"displaylogo": False})
    return len(figs)


MEAN = "mean over positions"


def position_picker(a: PromptAnalysis, key: str, allow_mean: bool = False, container=st) -> int | None:
    """A select box over the prompt's positions (last by default); ``None`` means "mean over positions".
    The widget key includes the prompt, so a new prompt starts again at its last position. The choice is kept
    in the URL (``?pos=…``) and a page opened from such a URL starts there."""
    options = ([MEAN] if allow_mean else []) + list(range(a.n_pos))
    labels = a.labels()
    widget = f"{key}-{hash(a.prompt)}"
    index = len(options) - 1
    wanted = st.query_params.get("pos")  # a shared link (or a reload) opens at the position it was at
    if widget not in st.session_state and wanted is not None:
        index = next((i for i, o in enumerate(options) if str(o).replace(MEAN, "mean") == wanted), index)
    choice = container.selectbox("Position", options, index=index, key=widget, format_func=lambda p: p if p == MEAN else labels[p])
    st.query_params["pos"] = "mean" if choice == MEAN else str(choice)
    return None if choice == MEAN else choice


@st.cache_resource(max_entries=24, show_spinner=False)  # bounded: a 256-token attention figure holds a few MB
def _cached_figures(view: str, pair_key: str, prompt: str, args: tuple, _build):
    """A view's figures for one (pair, prompt, control values), built once: reopening a view, or going back
    to a position already seen, re-sends them without re-plotting (figures are not modified when drawn)."""
    return _build()


def figures_for(view: str, a: PromptAnalysis, key: str, args: tuple, build) -> list:
    """``build()`` cached per ``(view, pair key, prompt, args)``; uncached when there is no pair key."""
    return _cached_figures(view, key, a.prompt, args, build) if key else build()


def predictions_tab(a: PromptAnalysis, key: str = "", loaded=None, sink: dict | None = None) -> list:
    """Predictions after the chosen position and the lens there (a nested fragment: the position picker reruns only that
    part), the per-token KL, then the logit lens over its window, computed after the rest of the view is sent (the lens is
    most of the cost of a fresh prompt). Returns the figures drawn; ``sink`` (view part -> figures) is kept up to date
    for the export, also across fragment reruns."""
    sink = {} if sink is None else sink
    c1, c2 = st.columns(2)
    tokens = render_lens.token_inputs(loaded, a, c1, c2) if loaded is not None else None
    st.caption("Top next-token candidates of both models after the chosen position; KL(P_tuned ‖ P_base) at every position; "
               "the logit lens reads each layer's residual stream through the model's own final norm and unembedding. "
               "Logit differences are logit(answer) − logit(contrast) = log p(answer) − log p(contrast), in nats.")
    figs = _predictions_at(a, key, loaded, tokens, sink)
    kl = figures_for("kl", a, key, (), lambda: [vf.kl_figure(a)])
    _charts(kl, "kl")
    sink["kl"] = kl
    if loaded is None:
        return figs + kl
    start, stop = render_lens.window_picker(a)
    slot = st.empty()
    slot.caption(f"Computing the logit lens over positions {start}–{stop - 1}… ({len(a.prompt)} characters)")
    built: list[float] = []

    def build() -> list:
        t0 = time.perf_counter()
        figs = [vf.lens_window_figure(a, render_lens.window(loaded, a, start, stop))]
        built.append(time.perf_counter() - t0)
        return figs

    lens = figures_for("lens", a, key, (start, stop), build)
    with slot.container():
        _charts(lens, "lens")
        st.caption(f"logit lens over positions {start}–{stop - 1} " + (f"computed in {built[0]:.2f} s" if built else "cached")
                   + f" ({2 * (stop - start) * len(a.resid_post['base'])} rows of the unembedding, both models)")
    sink["lens"] = lens
    return figs + kl + lens


@st.fragment
def _predictions_at(a: PromptAnalysis, key: str, loaded, tokens, sink: dict) -> list:
    """The position picker, the prediction table and the figures at that position (a fragment of its own)."""
    pos = position_picker(a, "pos_predictions")
    st.table(vf.prediction_table(a, pos))  # static HTML: 10 rows need no interactive grid (lighter to draw)

    def at_position() -> list:
        figs = [vf.prediction_bars(a, pos)]
        if loaded is not None:
            own = render_lens.own_top1_at(loaded, a, pos)
            if tokens is None:
                figs.append(vf.lens_at_figure(a, pos, own))
            else:
                answer, contrast, ia, ic = tokens
                figs.append(vf.lens_at_figure(a, pos, own, render_lens.tracked(loaded, a, ia, ic), answer, contrast))
        return figs

    figs = figures_for("pred", a, key, (pos, tokens), at_position)
    _charts(figs, "pred")
    sink["pred"] = figs
    return figs


def residual_tab(a: PromptAnalysis, key: str = "", loaded=None) -> list:
    st.caption("hook_resid_post of every layer, tuned − base, at every position (same tokens through both models); and the tracked "
               "tokens' logit difference through the logit lens at every layer and position (nats).")
    figs = figures_for("resid", a, key, (), lambda: vf.residual_figures(a))
    if loaded is not None:
        c1, c2 = st.columns(2)
        tokens = render_lens.token_inputs(loaded, a, c1, c2)
        if tokens is not None:
            answer, contrast, ia, ic = tokens
            figs = figs + figures_for("resid-tracked", a, key, (ia, ic),
                                      lambda: [vf.logit_diff_figure(a, render_lens.tracked(loaded, a, ia, ic), answer, contrast)])
    _charts(figs, "resid")
    return figs


BOXES = ("Red open squares: the heads the tuned side's intervention acts on (e.g. LoFiT's selected heads, whose offsets add to "
         "their outputs); none when the tuned side is a separately trained model.")


def attention_tab(a: PromptAnalysis, marked, key: str = "") -> list:
    n_layers, n_heads = a.patterns["base"].shape[:2]
    change = vf.attention_change(a)
    best = int(change.flatten().argmax())
    c1, c2 = st.columns(2)
    layer = c1.selectbox("Layer", list(range(n_layers)), index=best // n_heads, key=f"attn_layer-{hash(a.prompt)}")
    head = c2.selectbox("Head", list(range(n_heads)), index=best % n_heads, key=f"attn_head-{hash(a.prompt)}")
    st.caption(f"Defaults to the head whose pattern changed most (layer {best // n_heads}, head {best % n_heads}).")
    if marked:
        st.caption(BOXES)
    marks = tuple(map(tuple, marked))
    figs = figures_for("attn", a, key, (layer, head, marks), lambda: vf.attention_figures(a, layer, head, marked))
    _charts(figs, "attn")
    return figs


def heads_tab(a: PromptAnalysis, marked, key: str = "") -> list:
    pos = position_picker(a, "pos_heads", allow_mean=True)
    st.caption("Each head's write to the residual stream, z_h W_O,h (each model with its own W_O), and the MLP neurons "
               "(mlp.hook_post) whose activation changed most.")
    if marked:
        st.caption(BOXES)
    marks = tuple(map(tuple, marked))
    figs = figures_for("heads", a, key, (pos, marks), lambda: vf.head_neuron_figures(a, pos, marked))
    _charts(figs, "heads")
    return figs


def method_tab(loaded, a: PromptAnalysis | None) -> tuple[int, list[list[int]]]:
    """Draw what the method touched; return the number of figures and the heads to mark elsewhere."""
    slot = st.container()  # the position picker goes here, above the views, if any view needs it
    pos = st.session_state.get(f"pos_method-{hash(a.prompt)}", -1) if a is not None else -1
    views = method_views(loaded, a, pos)
    if a is not None and any(v.uses_position for v in views):
        position_picker(a, "pos_method", container=slot)
    n, marked = 0, []
    for i, view in enumerate(views):
        marked += view.marked_heads
        st.subheader(view.title)
        st.write(view.summary)
        n += _charts(view.figures, f"method{i}")
        if view.table:
            with st.expander(f"Table ({len(view.table)} rows)"):
                st.dataframe(view.table, hide_index=True)
    return n, marked


def runs_tab(runs_dir: str, problem: str | None = None) -> int:
    if problem:  # the folder does not exist or is not one: say that, not "no results"
        st.warning(problem[:1].upper() + problem[1:] + ".")
        return 0
    results = find_results(runs_dir)
    if not results:
        st.info(f"No results.json under {runs_dir!r}. Run `make demo` (or a study) to create one.")
        return 0
    labels = [r.label for r in results]
    choice = st.selectbox("Result", list(range(len(results))), format_func=lambda i: labels[i], key="run_result")
    result = results[choice]
    st.caption(str(result.path))
    if result.error:
        st.error(f"{result.path} could not be read: {result.error}. Rerun the job or study that wrote it (an interrupted run leaves "
                 "no results.json, so this one was edited or damaged afterwards), or pick another result above.")
        return 0
    figs, notes = run_figures(result)
    for note in notes:
        st.warning(note)
    n = _charts(figs, f"run-{choice}")
    metrics = upgrade_metrics(result.record.get("metrics", {}))  # an old data job's one exact match, named for what it was
    with st.expander("Metrics", expanded=not figs):
        st.dataframe(flatten_metrics(metrics), hide_index=True)
        for name, rows in metric_tables(metrics).items():
            st.caption(name)
            st.dataframe(rows, hide_index=True)
    with st.expander("Run info"):
        st.json(result.record.get("run_info", {}), expanded=False)
    return n


def load_hint(exc: Exception) -> str:
    """What to do next after a pair failed to load with ``exc`` (a :class:`~workbench.errors.WorkbenchError`)."""
    from workbench.errors import CheckpointError, MismatchError, ModelNotFoundError

    if isinstance(exc, ModelNotFoundError):
        return ("Check the base and tuned entries in the sidebar: a registry name (`workbench models` lists them), a run folder, "
                "a saved model directory or a Hugging Face id that is reachable or cached.")
    if isinstance(exc, MismatchError):
        return "Pick a tuned model fine-tuned from this base (or change the base model) in the sidebar."
    if isinstance(exc, CheckpointError):
        return "The saved files are damaged or incomplete: rerun the job that wrote them, or pick another run folder in the sidebar."
    return "Change the base or tuned model in the sidebar."


def summary_line(a: PromptAnalysis) -> str:
    top = {role: a.vocab[int(a.top_ids[role][-1][0])] for role in ROLES}
    return (f"{a.n_pos} tokens. Next token — base: {top['base']!r} (p {float(a.top_probs['base'][-1][0]):.3f}), "
            f"tuned: {top['tuned']!r} (p {float(a.top_probs['tuned'][-1][0]):.3f}); KL at the last position {float(a.kl[-1]):.3f} nats.")
