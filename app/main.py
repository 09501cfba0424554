"""ft-workbench app: a base and a tuned model side by side on your prompt.

Start it with ``make app``, ``workbench app`` or
``streamlit run app/main.py -- --base smollm2-135m-instruct --tuned runs/<run> --runs-dir runs``
(``WORKBENCH_APP_BASE`` / ``WORKBENCH_APP_TUNED`` / ``WORKBENCH_APP_RUNS`` set the same defaults).

Both models are loaded once per (base, tuned, device) and shared by every browser session
(``st.cache_resource``); each prompt is analysed once (one pass of each model) and cached; the views only
re-plot. Forward passes of a pair are serialised by its lock, because a tuned model given as an
intervention hooks the base weights it shares.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import streamlit as st

from app import render
from app.views.analysis import MAX_PROMPT_TOKENS, PromptAnalysis, analyse_prompt
from app.views.load import DEFAULT_BASE, LoadedPair, available_devices, default_tuned, load_pair, run_folders
from workbench.errors import WorkbenchError

OTHER = "other: model directory or Hugging Face id…"
EXAMPLE_PROMPT = "The apple is in Box F, the key is in Box C, the coin is in Box A. Box C contains the"


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(allow_abbrev=False, add_help=False)
    parser.add_argument("--base", default=os.environ.get("WORKBENCH_APP_BASE", DEFAULT_BASE))
    parser.add_argument("--tuned", default=os.environ.get("WORKBENCH_APP_TUNED"))
    parser.add_argument("--runs-dir", default=os.environ.get("WORKBENCH_APP_RUNS", "runs"))
    return parser.parse_known_args(sys.argv[1:])[0]


@st.cache_resource(max_entries=2, show_spinner="Loading the base and tuned models (once, shared by every session)…")
def get_pair(base: str, tuned: str, device: str) -> LoadedPair:
    loaded = load_pair(base, tuned, device)
    with loaded.lock:  # boot both bridges and register their hooks now, not on the first prompt
        analyse_prompt(loaded.pair, "Hello")
    return loaded


@st.cache_resource(max_entries=8, show_spinner="Running both models on the prompt…")
def get_analysis(pair_key: str, prompt: str, _loaded: LoadedPair) -> PromptAnalysis:
    with _loaded.lock:
        return analyse_prompt(_loaded.pair, prompt)


def sidebar(args: argparse.Namespace) -> tuple[str, str, str, str]:
    st.sidebar.header("Models")
    runs_dir = st.sidebar.text_input("Runs folder", args.runs_dir, key="runs_dir")
    base = st.sidebar.text_input("Base model", args.base, key="base_spec",
                                 help="registry name (smollm2-135m-instruct), model directory, or Hugging Face id")
    options = list(dict.fromkeys([t for t in (args.tuned, default_tuned(runs_dir)) if t] + [str(p) for p in run_folders(runs_dir)])) + [OTHER]
    choice = st.sidebar.selectbox("Tuned model", options, key="tuned_choice",
                                  help="a run folder (its adapter/ on the base weights), or pick the last entry for a model directory / Hugging Face id")
    tuned = st.sidebar.text_input("Tuned model directory or Hugging Face id", key="tuned_other") if choice == OTHER else choice
    devices = available_devices()
    device = st.sidebar.selectbox("Device", devices, key="device", help="GPU when one is present, CPU otherwise")
    st.sidebar.caption(f"Prompts up to {MAX_PROMPT_TOKENS} tokens.")
    return base, tuned or "", device, runs_dir


def main() -> None:
    st.set_page_config(page_title="ft-workbench: base vs tuned", layout="wide")
    st.title("Base vs tuned")
    args = _args()
    base, tuned, device, runs_dir = sidebar(args)
    loaded = None
    try:
        loaded = get_pair(base, tuned, device)
        st.caption(loaded.describe())
    except WorkbenchError as exc:
        st.error(f"Cannot load the pair: {exc}")
    except Exception as exc:  # noqa: BLE001 — the page shows any loading failure instead of a traceback
        st.error(f"Cannot load the pair ({type(exc).__name__}): {exc}")

    analysis = None
    if loaded is not None:
        with st.form("prompt_form"):
            prompt = st.text_area(f"Prompt (at most {MAX_PROMPT_TOKENS} tokens)", EXAMPLE_PROMPT, key="prompt", height=90)
            if st.form_submit_button("Analyse", type="primary"):
                st.session_state["active_prompt"] = prompt
        active = st.session_state.get("active_prompt")
        if active is not None:
            started = time.perf_counter()
            try:
                analysis = get_analysis(loaded.key, active, loaded)
            except WorkbenchError as exc:
                st.error(str(exc))
            except Exception as exc:  # noqa: BLE001 — e.g. an intervention that cannot attach to this model
                st.error(f"Cannot analyse the prompt with this pair ({type(exc).__name__}): {exc}")
            if analysis is not None:
                st.success(render.summary_line(analysis) + f" ({time.perf_counter() - started:.2f} s)")
        else:
            st.info("Type a prompt and press Analyse.")

    build_started = time.perf_counter()
    names = ["Predictions & logit lens", "Residual stream", "Attention", "Heads & neurons", "Method", "Run results"]
    tabs = st.tabs(names)
    n_figs, marked = 0, []
    if loaded is not None:
        with tabs[4]:
            try:
                n, marked = render.method_tab(loaded, analysis)
                n_figs += n
            except Exception as exc:  # noqa: BLE001 — an intervention this view cannot read: say so in the page
                st.error(f"Cannot show what the method touched ({type(exc).__name__}): {exc}")
    if analysis is not None:
        with tabs[0]:
            n_figs += render.predictions_tab(analysis)
        with tabs[1]:
            n_figs += render.residual_tab(analysis)
        with tabs[2]:
            n_figs += render.attention_tab(analysis, marked)
        with tabs[3]:
            n_figs += render.heads_tab(analysis, marked)
    else:
        for tab in tabs[:4]:
            tab.info("Load a pair and analyse a prompt to see this view.")
    with tabs[5]:
        n_figs += render.runs_tab(runs_dir)
    # The browser test and the latency benchmark wait for this line, then for this many plotly charts.
    st.caption(f"figures on this page: {n_figs} — built in {time.perf_counter() - build_started:.2f} s"
               + (f" — prompt {analysis.prompt[:40]!r}" if analysis is not None else ""))


main()
