"""Streamlit view: one-click activation patching for the current pair, prompt and counterfactual; and the export
buttons of the current analysis.

The patching runs :func:`app.views.patching.patch` (the library's :func:`probes.patching.activation_patch`) under the
pair's lock, when the button is pressed; its result is cached per (pair, prompt, counterfactual, tokens, direction,
sites), so reopening the view or changing a control back shows it again without rerunning.
"""

from __future__ import annotations

import time

import streamlit as st

from app import render_lens
from app.views import export
from app.views.analysis import PromptAnalysis
from app.views.patching import (
    DIRECTIONS,
    SITES,
    PatchResult,
    patch,
    patch_figure,
    patch_rows,
)
from workbench.errors import WorkbenchError

WAITING = "Queued: waiting for another session's analysis… (the pair runs one job at a time; yours starts when it is done)"


class _Busy(Exception):
    """The pair's lock is held by another session (raised from the cached function, so never cached)."""


@st.cache_resource(max_entries=16, show_spinner=False)
def _patched(pair_key: str, prompt: str, counterfactual: str, answer_id: int, contrast_id: int, direction: str, sites: str,
             answer: str, contrast: str, _loaded) -> tuple[PatchResult, float]:
    if not _loaded.lock.acquire(blocking=False):
        raise _Busy
    started = time.perf_counter()
    try:
        result = patch(_loaded.pair, prompt, counterfactual, answer_id, contrast_id, direction, sites, answer, contrast)
    finally:
        _loaded.lock.release()
    return result, time.perf_counter() - started


def _run(args: tuple, loaded) -> tuple[PatchResult, float]:
    """The cached patching result; while another session holds the pair's lock, the page says it is queued."""
    notice = None
    while True:
        try:
            out = _patched(*args, loaded)
            break
        except _Busy:
            notice = notice or st.empty()
            notice.info(WAITING)
            with loaded.lock:
                pass
    if notice is not None:
        notice.empty()
    return out


def _done() -> dict:
    return st.session_state.setdefault("patch_done", {})


def patching_tab(loaded, a: PromptAnalysis, counterfactual: str, marked, key: str = "") -> list:
    """The patching controls and, once run, the effect figure and table. Returns the figures drawn."""
    tokens = render_lens.token_inputs(loaded, a, *st.columns(2))
    if tokens is None:
        return []
    answer, contrast, ia, ic = tokens
    c1, c2 = st.columns(2)
    direction = c1.selectbox("Patch direction (target ← source)", list(DIRECTIONS), key="patch_direction",
                             help="base ← tuned: the base model runs the prompt with the chosen activations from the tuned model "
                                  "(cross-model patching); clean ← corrupt: one model runs the prompt with activations from the "
                                  "counterfactual prompt")
    sites = c2.selectbox("Patch each", SITES, index=1, key="patch_sites",
                         help="each site is one patched run of the whole prompt: heads = n_layers × n_heads runs (270 on SmolLM2, "
                              "about 25 CPU-seconds on a 2-core CPU), layers at the last position = n_layers runs (about 3 s), "
                              "layers × positions = n_layers × tokens runs")
    st.caption("Effect = logit difference of the patched run − that of the unpatched target run, at the last position, in nats. "
               f"Counterfactual prompt: {counterfactual[:80]!r}" if counterfactual else
               "Effect = patched − unpatched logit difference at the last position, in nats. Type a counterfactual prompt beside the "
               "prompt (same token count) for the clean ↔ corrupt directions.")
    args = (loaded.key, a.prompt, counterfactual or "", ia, ic, direction, sites, answer, contrast)
    if st.button("Run patching", type="primary", key="patch_run"):
        _done()[args] = True
    if not _done().get(args):
        n_layers, n_heads = a.patterns["base"].shape[:2]
        runs = {SITES[0]: n_layers * n_heads, SITES[1]: n_layers, SITES[2]: n_layers * a.n_pos}[sites]
        st.info(f"Press “Run patching” to patch every site of this kind: {runs} patched runs of the {a.n_pos}-token prompt.")
        return []
    try:
        result, seconds = _run(args, loaded)
    except WorkbenchError as exc:
        _done().pop(args, None)
        st.error(f"Cannot patch: {exc}")
        return []
    fig = patch_figure(result, marked)
    figs = [fig]
    st.plotly_chart(fig, key="patch-fig", config={"displaylogo": False})
    if marked and result.sites == SITES[0]:
        st.caption("Red open squares: the heads the tuned side's intervention acts on.")
    st.caption(f"{result.effects.numel()} sites patched in {seconds:.2f} s (cached).")
    with st.expander("Effects table (largest |effect| first)"):
        st.dataframe(patch_rows(result)[:200], hide_index=True)
    return figs


def export_buttons(a: PromptAnalysis, figs: dict[str, list], loaded=None) -> None:
    """Three download buttons: the analysis's arrays (safetensors), its per-position table (CSV) and this view's figures
    (HTML; ``figs``: view part -> figures, read when clicked, so a fragment rerun's figures are the ones exported); the
    bytes are built only when a button is clicked (deferred data), never on a plain run."""
    tokens = None
    if loaded is not None and st.query_params.get("answer") and st.query_params.get("contrast"):
        try:
            from app.views.lens import resolve_token

            ids = [resolve_token(loaded.pair, a, st.query_params[k]) for k in ("answer", "contrast")]
            tokens = render_lens.tracked(loaded, a, *ids)
        except WorkbenchError:
            tokens = None
    stem = "analysis"
    c1, c2, c3 = st.columns(3)
    c1.download_button("Arrays (safetensors)", lambda: export.safetensors_bytes(a, tokens), f"{stem}.safetensors",
                       "application/octet-stream", on_click="ignore", key="export-st")
    c2.download_button("Per-position table (CSV)", lambda: export.csv_text(export.per_position_rows(a, tokens)), f"{stem}.csv",
                       "text/csv", on_click="ignore", key="export-csv")
    c3.download_button("This view's figures (HTML)", lambda: export.figures_html([f for part in list(figs.values()) for f in part]),
                       f"{stem}-figures.html", "text/html", on_click="ignore", key="export-html", disabled=not any(figs.values()))
