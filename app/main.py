"""ft-workbench app: a base and a tuned model side by side on your prompt.

Start it with ``make app``, ``workbench app`` or
``streamlit run app/main.py -- --base smollm2-135m-instruct --tuned runs/<run> --runs-dir runs``
(``WORKBENCH_APP_BASE`` / ``WORKBENCH_APP_TUNED`` / ``WORKBENCH_APP_RUNS`` set the same defaults).

Both models are loaded once per (base, tuned, device) and shared by every browser session
(``st.cache_resource``); each prompt is analysed once (one pass of each model) and cached; the views only
re-plot. The logit lens is computed for a window of positions (default the last 8, adjustable), after the rest of
its view is sent. Only the selected view is built and sent (a selector, not ``st.tabs``, which builds every tab on
every run); each view is a fragment, so its pickers rerun it alone (the position picker of the predictions view
reruns only its own part). The prompt box is a fragment too: committing a box updates its token count without
rerunning the page. The URL holds the view state (prompt, counterfactual, view, position, tracked tokens, lens
window), so a link can be shared and survives a reload. Forward passes of a pair are serialised by its lock,
because a tuned model given as an intervention hooks the base weights it shares; a session whose prompt (or
patching run) waits for that lock is told so.

Every failure is shown in the page with what to do next: a runs folder that does not exist, a model that
cannot be loaded (the prompt box stays, with the typed prompt), a refused prompt (the previous results
stay, under the error).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import streamlit as st

from app import render, render_patch
from app.views import VIEWS, PageView, ViewContext, page_views
from app.views.analysis import MAX_PROMPT_TOKENS, PromptAnalysis, analyse_prompt
from app.views.load import DEFAULT_BASE, SharedPair, load_shared_pair, run_folders, runs_folder_problem
from app.views.method import method_views
from workbench.errors import WorkbenchError
from workbench.models.tuned import available_devices

OTHER = "other: model directory or Hugging Face id…"
WAITING = "Queued: waiting for another session's analysis… (the pair analyses one prompt at a time; yours starts when it is done)"
EXAMPLE_PROMPT = "The apple is in Box F, the key is in Box C, the coin is in Box A. Box C contains the"


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(allow_abbrev=False, add_help=False)
    parser.add_argument("--base", default=os.environ.get("WORKBENCH_APP_BASE", DEFAULT_BASE))
    parser.add_argument("--tuned", default=os.environ.get("WORKBENCH_APP_TUNED"))
    parser.add_argument("--runs-dir", default=os.environ.get("WORKBENCH_APP_RUNS", "runs"))
    return parser.parse_known_args(sys.argv[1:])[0]


@st.cache_resource(max_entries=2, show_spinner="Loading the base and tuned models (once, shared by every session)…")
def get_pair(base: str, tuned: str, device: str) -> SharedPair:
    loaded = load_shared_pair(base, tuned, device)
    with loaded.lock:  # boot both bridges and register their hooks now, not on the first prompt
        analyse_prompt(loaded.pair, "Hello")
    return loaded


class PairBusy(Exception):
    """Another session is running this pair (its lock is held); raised instead of waiting silently, and
    never cached."""


@st.cache_resource(max_entries=8, show_spinner="Running both models on the prompt…")
def get_analysis(pair_key: str, prompt: str, _loaded: SharedPair) -> PromptAnalysis:
    if not _loaded.lock.acquire(blocking=False):
        raise PairBusy
    try:
        return analyse_prompt(_loaded.pair, prompt, lens_positions=0)  # the lens window comes later (app.render_lens)
    finally:
        _loaded.lock.release()


def analyse(loaded: SharedPair, prompt: str) -> tuple[PromptAnalysis | None, str | None]:
    """``(analysis, None)`` or ``(None, message with what to do next)``. While another session's analysis
    holds the pair's lock, the page says so and waits (a cached prompt never waits)."""
    notice, waited = None, 0.0
    while True:
        try:
            analysis = get_analysis(loaded.key, prompt, loaded)
            break
        except PairBusy:
            notice = notice or st.empty()
            notice.info(WAITING)
            started = time.perf_counter()
            with loaded.lock:  # wait for the other session's analysis to finish, then try the cache again
                pass
            waited += time.perf_counter() - started
        except WorkbenchError as exc:
            return None, str(exc)
        except Exception as exc:  # noqa: BLE001 — e.g. an intervention that cannot attach to this model
            return None, (f"Cannot analyse the prompt with this pair ({type(exc).__name__}: {exc}). Try another tuned model in the "
                          "sidebar; if this pair should work, it is a bug: the server's log has the details.")
    if notice is not None:
        notice.caption(f"Waited {waited:.1f} s for another session's analysis (the pair analyses one prompt at a time).")
    return analysis, None


def sidebar(args: argparse.Namespace) -> tuple[str, str, str, str, str | None]:
    st.sidebar.header("Models")
    runs_dir = st.sidebar.text_input("Runs folder", args.runs_dir, key="runs_dir")
    runs_problem = runs_folder_problem(runs_dir)
    if runs_problem:
        st.sidebar.error(runs_problem[:1].upper() + runs_problem[1:] + ".")
    base = st.sidebar.text_input("Base model", args.base, key="base_spec",
                                 help="registry name (smollm2-135m-instruct), model directory, or Hugging Face id")
    # the session's current choice stays an option when the runs folder changes (or stops existing)
    kept = st.session_state.get("tuned_choice")
    found = [str(p) for p in run_folders(runs_dir)]
    options = list(dict.fromkeys([t for t in (args.tuned, *found, kept) if t and t != OTHER])) + [OTHER]
    choice = st.sidebar.selectbox("Tuned model", options, key="tuned_choice",
                                  help="a run folder (its adapter/ on the base weights), or pick the last entry for a model directory / Hugging Face id")
    tuned = st.sidebar.text_input("Tuned model directory or Hugging Face id", key="tuned_other") if choice == OTHER else choice
    devices = available_devices()
    device = st.sidebar.selectbox("Device", devices, key="device", help="GPU when one is present, CPU otherwise")
    st.sidebar.caption(f"Prompts up to {MAX_PROMPT_TOKENS} tokens.")
    return base, tuned or "", device, runs_dir, runs_problem


def load(base: str, tuned: str, device: str, runs_problem: str | None) -> tuple[SharedPair | None, str | None]:
    """``(pair, None)`` or ``(None, message with what to do next)``."""
    if not tuned.strip() and runs_problem:
        return None, (f"{runs_problem[:1].upper() + runs_problem[1:]}; so there is no run folder to use as the tuned model "
                      "(or pick the last entry of “Tuned model” for a model directory or Hugging Face id).")
    try:
        return get_pair(base, tuned, device), None
    except WorkbenchError as exc:
        return None, f"Cannot load the pair: {str(exc).rstrip('.')}. {render.load_hint(exc)}"
    except Exception as exc:  # noqa: BLE001 — the page shows any loading failure instead of a traceback
        return None, (f"Cannot load the pair ({type(exc).__name__}: {exc}). Try another base or tuned model in the sidebar; if this "
                      "pair should load, it is a bug: the server's log has the details.")


def token_count(loaded: SharedPair | None, text: str) -> str:
    """``"29 tokens"`` for ``text`` with the pair's tokenizer (BOS counted when the model prepends one), or why not."""
    if loaded is None:
        return "token count once the pair loads"
    if not text.strip():
        return "empty"
    n = len(loaded.pair.tokenizer(text, add_special_tokens=False)["input_ids"]) + int(bool(loaded.pair.prepend_bos))
    return f"{n} tokens" + (f" — over the limit of {MAX_PROMPT_TOKENS}" if n > MAX_PROMPT_TOKENS else "")


@st.fragment
def prompt_box(loaded: SharedPair | None) -> None:
    """The prompt and its counterfactual (for clean ↔ corrupt patching) with their token counts, updated whenever a box
    is committed (Ctrl+Enter or leaving it: a rerun of this fragment alone), and the Analyse button (a rerun of the page)."""
    shared = st.query_params.get("prompt")  # a link with ?prompt=… (or a reload) analyses that prompt
    if shared and "active_prompt" not in st.session_state:
        st.session_state["active_prompt"] = shared
        st.session_state["active_cf"] = st.query_params.get("cf", "")
    left, right = st.columns([3, 2])
    prompt = left.text_area(f"Prompt (at most {MAX_PROMPT_TOKENS} tokens)", shared or EXAMPLE_PROMPT, key="prompt", height=90)
    cf = right.text_area("Counterfactual prompt (optional, same token count: for clean ↔ corrupt patching)",
                         st.query_params.get("cf", ""), key="cf_prompt", height=90)
    counts = token_count(loaded, prompt)
    if cf.strip():
        counts += f" · counterfactual: {token_count(loaded, cf)}"
    left.caption(f"Prompt: {counts}")
    if st.button("Analyse", type="primary", key="analyse"):
        st.session_state["active_prompt"], st.session_state["active_cf"] = prompt, cf
        st.rerun()


def prompt_section(loaded: SharedPair | None) -> tuple[PromptAnalysis | None, str]:
    """The prompt box (always there, so a typed prompt survives a model that failed to load) and its
    analysis. A refused prompt keeps the previous prompt's results on the page, under the error. Returns the
    analysis to draw and, when there is none, what the empty views should say."""
    prompt_box(loaded)
    active = st.session_state.get("active_prompt")
    if loaded is None:
        if active is not None:
            st.warning("The prompt is kept and will be analysed once the pair loads: fix the model error above first.")
        return None, "No pair is loaded (see the error above): change the base or tuned model in the sidebar to see this view."
    if active is None:
        st.info("Type a prompt and press Analyse.")
        return None, "Type a prompt and press Analyse to see this view."
    started = time.perf_counter()
    analysis, error = analyse(loaded, active)
    if error is None:
        st.session_state["shown_prompt"] = active
        if st.query_params.get("prompt") != active:  # the URL names the analysed prompt (a refused one stays out of it)
            st.query_params["prompt"] = active
            for name in ("pos", "answer", "contrast", "lens"):  # a new prompt starts at its last position and its own tokens
                st.query_params.pop(name, None)
        cf = st.session_state.get("active_cf") or ""
        if cf:
            st.query_params["cf"] = cf
        else:
            st.query_params.pop("cf", None)
        st.success(render.summary_line(analysis) + f" ({time.perf_counter() - started:.2f} s)")
        return analysis, ""
    st.error(error)
    previous = st.session_state.get("shown_prompt")
    if previous is not None and previous != active:
        analysis, _ = analyse(loaded, previous)  # cached: the results the page showed before
        if analysis is not None:
            st.info(f"Still showing the previous prompt's results ({previous[:60]!r}): {render.summary_line(analysis)}")
            return analysis, ""
    return None, "The prompt was refused (see the error above): change it and press Analyse again to see this view."


def main() -> None:
    st.set_page_config(page_title="ft-workbench: base vs tuned", layout="wide")
    st.title("Base vs tuned")
    args = _args()
    base, tuned, device, runs_dir, runs_problem = sidebar(args)
    loaded, load_error = load(base, tuned, device, runs_problem)
    if loaded is not None:
        st.caption(loaded.describe())
    else:
        st.error(load_error)
    analysis, empty_note = prompt_section(loaded)

    view = view_selector()
    marked = marked_heads(loaded) if loaded is not None and "marked_heads" in VIEWS.get(view).needs else []
    show_view(view, loaded, analysis, empty_note, runs_dir, runs_problem, marked)


def view_selector() -> str:
    """The view picker over the registered views (:func:`app.views.page_views`, in their order). Only the selected
    one is built and sent (a selector, not st.tabs, which would build every tab's content on every run); each is a
    fragment, so its own controls rerun only it. The choice is kept in the URL (``?view=…``), so a link opens the
    same view."""
    names = [v.name for v in page_views()]
    if "view" not in st.session_state:
        wanted = st.query_params.get("view")
        st.session_state["view"] = wanted if wanted in names else names[0]
    view = st.radio("View", names, horizontal=True, key="view", label_visibility="collapsed")
    st.query_params["view"] = view
    return view


@st.cache_resource(max_entries=4, show_spinner=False)
def _marked_heads(pair_key: str, _loaded: SharedPair) -> list[list[int]]:
    if _loaded.intervention is None:  # a tuned model: no heads to mark (and no weight-change view to compute)
        return []
    return [h for v in method_views(_loaded) for h in v.marked_heads]


def marked_heads(loaded: SharedPair) -> list[list[int]]:
    """The heads the method intervenes on (boxed in the attention and heads views), once per pair."""
    try:
        return _marked_heads(loaded.key, loaded)
    except Exception:  # noqa: BLE001 — the method view reports an unreadable intervention; here: nothing to mark
        return []


def view_context(spec: PageView, loaded: SharedPair | None, analysis: PromptAnalysis | None, runs_dir: str,
                 runs_problem: str | None, marked: list[list[int]]) -> ViewContext:
    """What the view ``spec`` declared it needs, on this page (:class:`app.views.ViewContext`); an exporting view
    gets the session's figure sink, emptied (view part -> figures, read when "HTML" is clicked)."""
    ctx = ViewContext(st)
    if spec.needs & {"pair", "prompt"}:
        ctx.loaded, ctx.analysis, ctx.key = loaded, analysis, loaded.key if loaded is not None else ""
        ctx.counterfactual = st.session_state.get("active_cf") or ""
    if "marked_heads" in spec.needs:
        ctx.marked = marked
    if "runs_folder" in spec.needs:
        ctx.runs_dir, ctx.runs_problem = runs_dir, runs_problem
    if spec.exports:
        ctx.sink = st.session_state.setdefault("export_figures", {})
        ctx.sink.clear()
    return ctx


@st.fragment
def show_view(view: str, loaded: SharedPair | None, analysis: PromptAnalysis | None, empty_note: str, runs_dir: str,
              runs_problem: str | None, marked: list[list[int]]) -> int:
    """Build and send the selected view only (a fragment: its position / layer / head pickers rerun this
    function alone, not the page). A view that needs a pair or a prompt the page does not have says what to do."""
    build_started = time.perf_counter()
    spec = VIEWS.get(view)
    n_figs = 0
    if not spec.ready(loaded, analysis):
        st.info(empty_note)
    else:
        ctx = view_context(spec, loaded, analysis, runs_dir, runs_problem, marked)
        drawn = spec.render(ctx)
        n_figs = drawn if isinstance(drawn, int) else len(drawn)
        if spec.exports:
            if not ctx.sink:  # the views that do not fill it themselves
                ctx.sink["view"] = drawn
            with st.expander("Export this analysis"):
                render_patch.export_buttons(analysis, ctx.sink, loaded)
    # The browser test and the latency benchmark wait for this line, then for this many plotly charts.
    st.caption(f"figures on this page: {n_figs} — view {view!r} — built in {time.perf_counter() - build_started:.2f} s"
               + (f" — prompt {analysis.prompt[:40]!r} ({len(analysis.prompt)} characters)" if analysis is not None else ""))
    return n_figs

main()
