"""Figures of ``studies/context_knob``: context-sensitivity knob results -> plotly Figures (Minder et al., ICLR 2025).

``figures(record)`` draws every figure the study writes from its ``results.json`` record. Conventions of
:mod:`workbench.plots`: layer on the y axis, axis titles with units. No ``.show()``, no streamlit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.plots import layout


def separation_histogram(projections: dict[str, dict[str, Sequence[float]]], scores: dict[str, dict[str, float]] | None = None,
                         title: str = "Projection of the last-token residual on u, by intent") -> go.Figure:
    """One row per model (e.g. "tuned", "untuned"): overlaid histograms of ``uᵀh`` for the context-intent and
    prior-intent prompts; ``scores[model]`` (``auc``, ``cohens_d``) goes into the row titles."""
    models = list(projections)
    titles = [f"{m}" + (f" — AUC {scores[m]['auc']:.3f}, Cohen's d {scores[m]['cohens_d']:.2f}" if scores and m in scores else "")
              for m in models]
    fig = make_subplots(rows=len(models), cols=1, shared_xaxes=True, subplot_titles=titles, vertical_spacing=0.12)
    colours = {"context": "#1f77b4", "prior": "#d62728"}
    for row, m in enumerate(models, start=1):
        for intent, values in projections[m].items():
            fig.add_histogram(x=list(values), name=f"{intent} intent", legendgroup=intent, showlegend=row == 1, opacity=0.6,
                              marker_color=colours.get(intent), nbinsx=30, row=row, col=1)
        fig.update_yaxes(title="prompts (count)", row=row, col=1)
    fig.update_layout(barmode="overlay")
    fig.update_xaxes(title="uᵀh at the DAS layer (residual-stream units)", row=len(models), col=1)
    return layout(fig, title, height=220 + 220 * len(models))


def steering_curves(curves: dict[str, dict[str, Sequence[float]]], marks: dict[str, float] | None = None,
                    title: str = "Steering uᵀh = c: how often the answer follows the context") -> go.Figure:
    """Context-following rate (solid) and prior-following rate (dotted) against ``c`` for each model;
    ``marks`` (name -> c, e.g. each intent's mean projection) are drawn as vertical guides."""
    fig = go.Figure()
    for name, c in curves.items():
        fig.add_scatter(x=list(c["values"]), y=list(c["context_rate"]), mode="lines+markers", name=f"{name}: answer = context")
        fig.add_scatter(x=list(c["values"]), y=list(c["prior_rate"]), mode="lines+markers", line=dict(dash="dot"),
                        name=f"{name}: answer = prior")
    for name, x in (marks or {}).items():
        fig.add_vline(x=x, line_dash="dash", line_color="grey", annotation_text=name, annotation_position="top")
    fig.update_xaxes(title="c (value set for uᵀh; residual-stream units)")
    fig.update_yaxes(title="fraction of held-out prompts", range=[0, 1.05])
    fig.update_layout(legend=dict(orientation="h", y=-0.2))
    return layout(fig, title, height=460)


def layer_search_trace(trace: Sequence[dict[str, Any]], n_layers: int, threshold: float,
                       title: str = "Layer search: patched attention-output windows") -> go.Figure:
    """Each evaluated window as a bar spanning its layers (y axis), in evaluation order (x axis), coloured by
    the mean probability of the source answer; windows that pass the threshold are outlined in black."""
    fig = go.Figure()
    xs = [f"{i + 1}: {t['stage']}" for i, t in enumerate(trace)]
    fig.add_bar(x=xs, y=[max(t["hi"] - t["lo"] + 1, 0.1) for t in trace], base=[t["lo"] - 0.5 for t in trace],
                marker=dict(color=[t["value"] for t in trace], colorscale="Viridis", cmin=0,
                            colorbar=dict(title="p(source answer)"),
                            line=dict(color=["black" if t["passed"] else "rgba(0,0,0,0)" for t in trace], width=2)),
                text=[f"{t['value']:.3f}" for t in trace], textposition="outside",
                customdata=[[t["lo"], t["hi"]] for t in trace],
                hovertemplate="layers %{customdata[0]}..%{customdata[1]}<br>p = %{text}<extra></extra>")
    fig.update_yaxes(title="layer (patched window)", range=[-1, n_layers], dtick=max(1, n_layers // 10))
    fig.update_xaxes(title="evaluation (order)")
    return layout(fig, f"{title} (threshold p = {threshold:.3f}; outlined = passes)", height=480)


def figures(record: dict[str, Any]) -> dict[str, Any]:
    """The study's plotly Figures from a results record: name -> Figure."""
    m = record["metrics"]
    sep, st, ls = m["separation"], m["steering"], m["layer_search"]
    marks = {"tuned: context mean": sep["tuned"]["context_mean"], "tuned: prior mean": sep["tuned"]["prior_mean"]}
    return {
        "separation": separation_histogram(m["projections"], sep),
        "steering": steering_curves(st["curves"], marks),
        "layer_search": layer_search_trace(ls["trace"], ls["n_layers"], ls["threshold"]),
    }
