"""The app's prompt views as figures: a :class:`~app.views.analysis.PromptAnalysis` -> plotly Figures.

No computation on the models here (that happened once, in :func:`app.views.analysis.analyse_prompt`); these
functions only select and plot, so the app can re-draw them for another position / layer / head
without running the models again. No streamlit.
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from app.views.analysis import ROLES, PromptAnalysis
from workbench import plots


def _pos(a: PromptAnalysis, pos: int) -> int:
    if not -a.n_pos <= pos < a.n_pos:
        raise IndexError(f"position {pos} outside the prompt's {a.n_pos} tokens")
    return pos % a.n_pos


def prediction_table(a: PromptAnalysis, pos: int = -1) -> list[dict]:
    """Rows ``{rank, base token, base p, tuned token, tuned p}`` of the top-k next tokens after ``pos``
    (tokens as Python string literals, so that spaces and newlines show)."""
    pos = _pos(a, pos)
    cols = {role: ([repr(t) for t in a.decode(a.top_ids[role][pos])], [round(p, 4) for p in a.top_probs[role][pos].tolist()]) for role in ROLES}
    return [{"rank": i + 1, **{f"{role} {what}": cols[role][j][i] for role in ROLES for j, what in enumerate(("token", "p"))}}
            for i in range(len(cols["base"][0]))]


def prediction_bars(a: PromptAnalysis, pos: int = -1, top_n: int = 10) -> go.Figure:
    """Both models' top next-token candidates after ``pos`` as bars (one probability scale for both panels)."""
    pos = _pos(a, pos)
    bars = plots.top_k_bars({role: (a.decode(a.top_ids[role][pos][:top_n]), a.top_probs[role][pos][:top_n].tolist()) for role in ROLES},
                            f"Next-token predictions after position {pos} ({a.tokens[pos]!r})")
    bars.update_yaxes(title="next token")  # both panels: every axis titled
    top = max(float(a.top_probs[role][pos][0]) for role in ROLES)
    return bars.update_xaxes(range=[0, min(1.0, top * 1.25) or 1.0])


def prediction_figures(a: PromptAnalysis, pos: int = -1, top_n: int = 10) -> list[go.Figure]:
    """Next-token predictions of both models after ``pos``, per-token KL, the logit lens of both models,
    and (when ``pos`` is inside the lens window) the lens probability of each model's final top-1 token
    per layer at ``pos``; without the lens when the analysis has none (the app's: see :mod:`app.views.lens`)."""
    pos = _pos(a, pos)
    where = f"after position {pos} ({a.tokens[pos]!r})"
    bars = prediction_bars(a, pos, top_n)
    kl = kl_figure(a)
    if a.lens_start >= a.n_pos:  # an analysis without its lens (the app's): the window comes from app.views.lens
        return [bars, kl]
    n_layers = a.lens_top_probs["base"].shape[0]
    window = f"last {a.n_pos - a.lens_start} positions" if a.lens_start else "all positions"
    lens = plots.side_by_side_heatmaps(
        {role: a.lens_top_probs[role].tolist() for role in ROLES}, a.labels()[a.lens_start :], list(range(n_layers)),
        f"Logit lens ({window}): top-1 token and its probability at each layer's hook_resid_post",
        "p(top-1)", text={role: a.decode(a.lens_top_ids[role]) for role in ROLES}, zmin=0.0, zmax=1.0)
    figs = [bars, kl, lens]
    if pos >= a.lens_start:
        final = {f"{role}: p({a.vocab[int(a.top_ids[role][pos][0])]!r})": a.lens_final_prob[role][:, pos - a.lens_start].tolist() for role in ROLES}
        figs.append(plots.layer_lines(final, f"Logit lens {where}: probability of each model's final top-1 token", "probability"))
    return figs


def residual_figures(a: PromptAnalysis) -> list[go.Figure]:
    """Per-layer residual-stream difference across positions: ‖Δ resid_post‖ and cosine(base, tuned)."""
    norm = plots.layer_position_heatmap(a.resid_diff_norm.tolist(), a.tokens, "‖resid_post_tuned − resid_post_base‖₂ per layer and position",
                                        "‖Δ‖ (residual units)")
    rel = plots.layer_position_heatmap(a.resid_rel_diff.tolist(), a.tokens, "Relative difference ‖Δ resid_post‖ / ‖resid_post_base‖", "relative")
    cos = plots.layer_position_heatmap(a.resid_cosine.tolist(), a.tokens, "cosine(resid_post_base, resid_post_tuned) per layer and position",
                                       "cosine")  # sequential: the values sit near 1, a scale centred at 0 would hide them
    return [norm, rel, cos]


def attention_change(a: PromptAnalysis) -> torch.Tensor:
    """``[n_layers, n_heads]`` max over (query, key) of |pattern_tuned − pattern_base| (probability)."""
    return (a.patterns["tuned"].float() - a.patterns["base"].float()).abs().amax(dim=(-2, -1))


def attention_figures(a: PromptAnalysis, layer: int, head: int, marked: Sequence[Sequence[int]] = ()) -> list[go.Figure]:
    """Attention pattern of (``layer``, ``head``) for base and tuned and their difference, plus a layer ×
    head overview of how much each pattern changed (``marked`` heads boxed).

    Raises:
        IndexError: ``layer`` or ``head`` outside the model.
    """
    n_layers, n_heads = a.patterns["base"].shape[:2]
    if not (0 <= layer < n_layers and 0 <= head < n_heads):
        raise IndexError(f"layer {layer}, head {head} outside the model ({n_layers} layers × {n_heads} heads)")
    base, tuned = (a.patterns[role][layer, head].float() for role in ROLES)
    labels = a.labels()
    pattern = plots.side_by_side_heatmaps(
        {"base": base.tolist(), "tuned": tuned.tolist(), "tuned − base": (tuned - base).tolist()}, labels, labels,
        f"Attention pattern, layer {layer} head {head} (row: query position, column: key position)", "attention probability",
        diff_panels=("tuned − base",), diff_colorbar="Δ probability", xaxis="key position", yaxis="query position", zmin=0.0, zmax=1.0, y_reversed=True)
    overview = plots.head_heatmap(attention_change(a).tolist(), "Largest change of each head's attention pattern, max |Δ attention probability|",
                                  "max |Δ p|", marked=marked, marked_name="intervened head")
    return [pattern, overview]


def head_neuron_figures(a: PromptAnalysis, pos: int | None = -1, marked: Sequence[Sequence[int]] = ()) -> list[go.Figure]:
    """Per-head output difference ‖Δ(z_h W_O,h)‖ (layer × head) at ``pos`` and the most changed MLP
    neurons at ``pos`` (``pos=None``: head differences and neuron changes averaged over positions)."""
    if pos is None:
        heads, where = a.head_diff.mean(1), "mean over positions"
        ranking = a.neurons_all
        delta_name = "mean |Δ|"
    else:
        pos = _pos(a, pos)
        heads, where = a.head_diff[:, pos], f"at position {pos} ({a.tokens[pos]!r})"
        ranking = a.neurons_at[pos]
        delta_name = "tuned − base"
    head_fig = plots.head_heatmap(heads.tolist(), f"Per-head output difference ‖Δ (z_h W_O,h)‖ {where}", "‖Δ‖ (residual units)",
                                  marked=marked, marked_name="intervened head")
    labels = [f"L{l}.N{n}" for l, n in zip(ranking.layer, ranking.neuron)]
    neuron_fig = plots.grouped_bars(labels, {"base": ranking.base, "tuned": ranking.tuned, delta_name: ranking.delta},
                                        f"Top {len(labels)} changed MLP neurons (mlp.hook_post) {where}", "activation", "layer.neuron")
    return [head_fig, neuron_fig]


def kl_figure(a: PromptAnalysis) -> go.Figure:
    """Per-token KL(P_tuned ‖ P_base) of the next-token distributions (nats) at every position."""
    return plots.per_position_kl(a.kl.tolist(), a.tokens, title="Per-token KL(P_tuned ‖ P_base) of the next-token distributions")


def lens_window_figure(a: PromptAnalysis, w) -> go.Figure:
    """The logit lens over the window ``w`` (a :class:`~app.views.lens.LensWindow`): base | tuned, top-1 token per
    (layer, position) as text, its probability as colour (one 0–1 scale for both panels, shared layer axis)."""
    n_layers = w.top_probs["base"].shape[0]
    decode = lambda ids: [[w.vocab[int(t)] for t in row] for row in ids]
    return plots.side_by_side_heatmaps(
        {role: w.top_probs[role].tolist() for role in ROLES}, a.labels()[w.start : w.stop], list(range(n_layers)),
        f"Logit lens, positions {w.start}–{w.stop - 1} of {a.n_pos}: top-1 token and its probability at each layer's hook_resid_post",
        "p(top-1)", text={role: decode(w.top_ids[role]) for role in ROLES}, zmin=0.0, zmax=1.0)


def lens_at_figure(a: PromptAnalysis, pos: int, own: dict, tracked: dict | None = None, answer: str = "", contrast: str = "") -> go.Figure:
    """Per layer at ``pos``, one figure: the lens probability each model gives its own final top-1 token (``own``: role
    -> ``[n_layers]``, from :func:`app.views.lens.lens_at`) and, with ``tracked`` (role -> ``[n_layers, pos, 2]`` from
    :func:`app.views.lens.tracked_logits`), the lens logit difference ``logit(answer) − logit(contrast)`` in nats beside it
    (one figure with two panels: a single chart to draw)."""
    pos = _pos(a, pos)
    where = f"after position {pos} ({a.tokens[pos]!r})"
    titles = ["probability of each model's final top-1 token"] + ([f"logit({answer!r}) − logit({contrast!r})"] if tracked is not None else [])
    fig = make_subplots(rows=1, cols=len(titles), subplot_titles=titles, horizontal_spacing=0.12)
    layers = list(range(len(next(iter(own.values())))))
    for role in ROLES:
        fig.add_scatter(x=layers, y=own[role].tolist(), mode="lines+markers", name=f"{role}: p({a.vocab[int(a.top_ids[role][pos][0])]!r})",
                        row=1, col=1)
    fig.update_yaxes(title="probability", range=[0, 1.02], row=1, col=1)
    if tracked is not None:
        for role in ROLES:
            fig.add_scatter(x=layers, y=(tracked[role][:, pos, 0] - tracked[role][:, pos, 1]).tolist(), mode="lines+markers",
                            name=f"{role}: logit difference", row=1, col=2)
        fig.update_yaxes(title="logit difference (nats)", zeroline=True, zerolinecolor="grey", row=1, col=2)
    fig.update_xaxes(title="layer")
    fig.update_layout(legend={"orientation": "h", "y": -0.2})
    return plots.style.layout(fig, f"Logit lens {where}")


def logit_diff_figure(a: PromptAnalysis, tracked: dict, answer: str, contrast: str) -> go.Figure:
    """Layer × position heatmaps of the lens logit difference ``logit(answer) − logit(contrast)`` (nats): base | tuned |
    tuned − base, one layer axis, the same positions on every panel, one diverging scale for all three."""
    diff = {role: (tracked[role][..., 0] - tracked[role][..., 1]) for role in ROLES}
    panels = {"base": diff["base"].tolist(), "tuned": diff["tuned"].tolist(), "tuned − base": (diff["tuned"] - diff["base"]).tolist()}
    n_layers = diff["base"].shape[0]
    return plots.side_by_side_heatmaps(panels, a.labels(), list(range(n_layers)),
                                       f"Logit lens: logit({answer!r}) − logit({contrast!r}) at each layer and position",
                                       "nats", diff_panels=tuple(panels), diff_colorbar="logit difference (nats)")
