"""Streamlit controls and cached computations for the logit lens and the tracked tokens (answer vs contrast).

The numbers come from :mod:`app.views.lens` (no streamlit); this module caches them per (pair, prompt, control
values) in ``st.cache_resource`` and draws the controls, whose values live in the URL (``?answer=…&contrast=…&lens=a-b``)
so a shared link or a reload opens the same view. The readouts run under the pair's lock, the tuned side's under its
intervention (which may change the final norm or the unembedding); a session that waits for the lock is told so.
"""

from __future__ import annotations

import streamlit as st
import torch

from app.views.analysis import ROLES, PromptAnalysis
from app.views.lens import (
    LENS_WINDOW,
    LensWindow,
    default_tokens,
    lens_at,
    lens_window,
    resolve_token,
    tracked_logits,
    window_bounds,
)
from workbench.errors import WorkbenchError

WAITING = ("Queued: waiting for another session's analysis… (the pair runs one job at a time; yours starts when it is "
           "done)")


class _Busy(Exception):
    """The pair's lock is held by another session (raised inside a cached function, so never cached)."""


def _locked(loaded, fn, *args):
    """``fn(*args)`` under the pair's lock, taken without waiting (raises :class:`_Busy` instead)."""
    if not loaded.lock.acquire(blocking=False):
        raise _Busy
    try:
        return fn(*args)
    finally:
        loaded.lock.release()


@st.cache_resource(max_entries=16, show_spinner=False)
def _window(pair_key: str, prompt: str, start: int, stop: int, _loaded, _a: PromptAnalysis) -> LensWindow:
    return _locked(_loaded, lens_window, _loaded.pair, _a, start, stop)


def _own(pair, a: PromptAnalysis, pos: int) -> dict:
    ids = torch.tensor([int(a.top_ids[role][pos][0]) for role in ROLES])
    probs = lens_at(pair, a, pos, ids)
    return {role: probs[role][:, i] for i, role in enumerate(ROLES)}


@st.cache_resource(max_entries=64, show_spinner=False)
def _own_at(pair_key: str, prompt: str, pos: int, _loaded, _a: PromptAnalysis) -> dict:
    return _locked(_loaded, _own, _loaded.pair, _a, pos)


@st.cache_resource(max_entries=32, show_spinner=False)
def _tracked(pair_key: str, prompt: str, answer_id: int, contrast_id: int, _loaded, _a: PromptAnalysis) -> dict:
    return _locked(_loaded, tracked_logits, _loaded.pair, _a, torch.tensor([answer_id, contrast_id]))


def _queued(cached, *args):
    """``cached(*args)``; while another session holds the pair's lock, the page says this one is queued, then waits."""
    notice = None
    while True:
        try:
            out = cached(*args)
            break
        except _Busy:
            notice = notice or st.empty()
            notice.info(WAITING)
            loaded = args[-2]
            with loaded.lock:
                pass
    if notice is not None:
        notice.empty()
    return out


def window(loaded, a: PromptAnalysis, start: int, stop: int) -> LensWindow:
    """The lens over positions ``start .. stop - 1``, cached per (pair, prompt, window)."""
    return _queued(_window, loaded.key, a.prompt, start, stop, loaded, a)


def own_top1_at(loaded, a: PromptAnalysis, pos: int) -> dict:
    """role -> ``[n_layers]`` lens probability of that model's final top-1 token at ``pos``, cached."""
    return _queued(_own_at, loaded.key, a.prompt, pos % a.n_pos, loaded, a)


def tracked(loaded, a: PromptAnalysis, answer_id: int, contrast_id: int) -> dict:
    """role -> ``[n_layers, pos, 2]`` lens logits of (answer, contrast), cached."""
    return _queued(_tracked, loaded.key, a.prompt, answer_id, contrast_id, loaded, a)


def _url_param(name: str, value: str) -> None:
    if st.query_params.get(name) != value:
        st.query_params[name] = value


def token_inputs(loaded, a: PromptAnalysis, left=st, right=st) -> tuple[str, str, int, int] | None:
    """Two text boxes, the answer and the contrast token (one token each; defaults: the base model's top-1 at the
    last position and the tuned model's, or the base's second candidate); kept in the URL. Returns
    ``(answer, contrast, answer_id, contrast_id)``, or ``None`` after showing what is wrong with a box."""
    defaults = default_tokens(a)
    values = []
    for box, name, label, default in ((left, "answer", "Answer token", defaults[0]), (right, "contrast", "Contrast token", defaults[1])):
        initial = st.query_params.get(name, a.vocab[default])
        text = box.text_input(label, initial, key=f"{name}-{hash(a.prompt)}",
                              help="one token, leading space included (e.g. ' Paris'); tracked through the logit lens of every layer")
        values.append(text)
    try:
        ids = [resolve_token(loaded.pair, a, t, prefer=d) for t, d in zip(values, defaults)]
    except WorkbenchError as exc:
        st.error(f"Cannot track these tokens: {exc}.")
        return None
    _url_param("answer", values[0])
    _url_param("contrast", values[1])
    return values[0], values[1], ids[0], ids[1]


def window_picker(a: PromptAnalysis, container=st) -> tuple[int, int]:
    """A range slider over the prompt's positions choosing the logit-lens window (default: the last
    :data:`~app.views.lens.LENS_WINDOW`); kept in the URL as ``?lens=start-stop`` (inclusive). Returns ``(start, stop)``
    with ``stop`` exclusive."""
    start, stop = window_bounds(a.n_pos, None, LENS_WINDOW)
    wanted = st.query_params.get("lens")
    if wanted:
        try:
            lo, hi = (int(x) for x in wanted.split("-"))
            if 0 <= lo <= hi < a.n_pos:
                start, stop = lo, hi + 1
        except ValueError:
            pass
    if a.n_pos == 1:
        return 0, 1
    lo, hi = container.slider("Logit-lens window (positions)", 0, a.n_pos - 1, (start, stop - 1), key=f"lens-{hash(a.prompt)}",
                              help=f"the lens costs n_layers × positions × d_model × d_vocab multiply-adds per model; the default is the "
                                   f"last {LENS_WINDOW} positions")
    _url_param("lens", f"{lo}-{hi}")
    return lo, hi + 1
