"""Streamlit rendering of the views: each function draws one view and returns how many figures it drew.

The data and figures come from non-streamlit modules (``app.views.analysis*``, ``workbench.plots``), so the
same figures are testable without a browser; this file only lays them out and adds the controls.
"""

from __future__ import annotations

import streamlit as st

from app.views import figures as vf
from app.views.analysis import ROLES, PromptAnalysis
from app.views.method import method_views
from app.views.runs import find_results, flatten_metrics, metric_tables, run_figures


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


def predictions_tab(a: PromptAnalysis, key: str = "") -> int:
    pos = position_picker(a, "pos_predictions")
    st.caption("Top next-token candidates of both models after the chosen position; KL(P_tuned ‖ P_base) at every position; "
               "the logit lens reads each layer's residual stream through the model's own final norm and unembedding.")
    st.dataframe(vf.prediction_table(a, pos), hide_index=True)
    return _charts(figures_for("pred", a, key, (pos,), lambda: vf.prediction_figures(a, pos)), "pred")


def residual_tab(a: PromptAnalysis, key: str = "") -> int:
    st.caption("hook_resid_post of every layer, tuned − base, at every position (same tokens through both models).")
    return _charts(figures_for("resid", a, key, (), lambda: vf.residual_figures(a)), "resid")


def attention_tab(a: PromptAnalysis, marked, key: str = "") -> int:
    n_layers, n_heads = a.patterns["base"].shape[:2]
    change = vf.attention_change(a)
    best = int(change.flatten().argmax())
    c1, c2 = st.columns(2)
    layer = c1.selectbox("Layer", list(range(n_layers)), index=best // n_heads, key=f"attn_layer-{hash(a.prompt)}")
    head = c2.selectbox("Head", list(range(n_heads)), index=best % n_heads, key=f"attn_head-{hash(a.prompt)}")
    st.caption(f"Defaults to the head whose pattern changed most (layer {best // n_heads}, head {best % n_heads}).")
    marks = tuple(map(tuple, marked))
    return _charts(figures_for("attn", a, key, (layer, head, marks), lambda: vf.attention_figures(a, layer, head, marked)), "attn")


def heads_tab(a: PromptAnalysis, marked, key: str = "") -> int:
    pos = position_picker(a, "pos_heads", allow_mean=True)
    st.caption("Each head's write to the residual stream, z_h W_O,h (each model with its own W_O), and the MLP neurons "
               "(mlp.hook_post) whose activation changed most.")
    marks = tuple(map(tuple, marked))
    return _charts(figures_for("heads", a, key, (pos, marks), lambda: vf.head_neuron_figures(a, pos, marked)), "heads")


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
    metrics = result.record.get("metrics", {})
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
