"""Figures of ``studies/entity_tracking``: circuit-patching results -> plotly Figures (Prakash et al., ICLR 2024).

``figures(record)`` draws every figure the study writes from its ``results.json`` record. Conventions of
:mod:`workbench.plots`: layer on the y axis, heads on x, a diverging scale centred at 0, axis titles with units.
No ``.show()``, no streamlit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.plots import layout


def group_heatmaps(scores: dict[str, Sequence[Sequence[float]]], selected: dict[str, Sequence[Sequence[int]]],
                   title: str, unit: str = "Δ logit difference (nats)") -> go.Figure:
    """One heatmap per head group: path-patching effect per (layer, head) (blank = not patched), selected heads
    marked with an x."""
    groups = list(scores)
    fig = make_subplots(rows=1, cols=len(groups), subplot_titles=[g.replace("_", " ") for g in groups],
                        shared_yaxes=True, horizontal_spacing=0.03)
    finite = [abs(v) for g in groups for row in scores[g] for v in row if v is not None and v == v]
    vmax = max(finite, default=1.0) or 1.0
    for col, g in enumerate(groups, start=1):
        z = [[None if v is None or v != v else v for v in row] for row in scores[g]]
        fig.add_heatmap(z=z, zmin=-vmax, zmax=vmax, colorscale="RdBu", zmid=0, showscale=col == len(groups),
                        colorbar=dict(title=unit), row=1, col=col,
                        hovertemplate="layer %{y}, head %{x}: %{z:.3f}<extra></extra>")
        pts = selected.get(g, [])
        fig.add_scatter(x=[h for _, h in pts], y=[layer for layer, _ in pts], mode="markers", showlegend=False,
                        marker=dict(symbol="x", color="black", size=8), row=1, col=col)
        fig.update_xaxes(title="head", row=1, col=col)
    fig.update_yaxes(title="layer", row=1, col=1)
    n_layers = len(next(iter(scores.values()), []))
    return layout(fig, title, height=max(420, 18 * n_layers + 160))


def cmap_bars(results: dict[str, dict], title: str = "CMAP tuned → base: accuracy with a group patched in") -> go.Figure:
    """Grouped bars: for each tuned model, the base's accuracy with each head group taken from it, beside the
    base and tuned accuracies (dashed lines per tuned model)."""
    fig = go.Figure()
    for name, r in results.items():
        groups = list(r["patched"])
        fig.add_bar(x=groups, y=[r["patched"][g] for g in groups], name=f"{name}: base + group from {name}",
                    text=[f"{r['recovered'][g]:.0%}" if r["recovered"][g] is not None else "" for g in groups])
        fig.add_hline(y=r["tuned_score"], line_dash="dash", annotation_text=f"{name} {r['tuned_score']:.2f}")
    if results:
        fig.add_hline(y=next(iter(results.values()))["base_score"], line_dash="dot", annotation_text="base")
    fig.update_layout(barmode="group", yaxis_title="accuracy among the prompt's objects (share)",
                      xaxis_title="patched head group (bar label: share of the gap recovered)")
    return layout(fig, title)


def faithfulness_bars(results: dict[str, dict], title: str = "Faithfulness of the base circuit (mean ablation)") -> go.Figure:
    """Per model: circuit faithfulness beside the mean (± std) of size-matched random circuits."""
    import statistics

    models = list(results)
    rand = [[v for v in results[m]["random_faithfulness"] if v is not None] for m in models]
    fig = go.Figure()
    fig.add_bar(x=models, y=[results[m]["faithfulness"] for m in models], name="circuit")
    fig.add_bar(x=models, y=[statistics.fmean(r) if r else 0 for r in rand], name="random circuits (mean)",
                error_y=dict(type="data", array=[statistics.pstdev(r) if len(r) > 1 else 0 for r in rand]))
    fig.update_layout(barmode="group", yaxis_title="faithfulness (circuit accuracy ÷ model accuracy)", xaxis_title="model")
    return layout(fig, title)


def attribution_scatter(exact: Sequence[float], attribution: Sequence[float], r: float, title: str) -> go.Figure:
    """Exact activation patching vs attribution patching per head (mean effect over prompts)."""
    fig = go.Figure(go.Scatter(x=list(exact), y=list(attribution), mode="markers", marker=dict(size=5)))
    fig.update_layout(xaxis_title="exact activation patching (Δ logit difference, nats)",
                      yaxis_title="attribution patching estimate (nats)")
    return layout(fig, f"{title} — Pearson r = {r:.3f}")


def breakdown_bars(breakdown: dict[str, Any], models: Sequence[str],
                   title: str = "Accuracy among the prompt's objects by the queried box's position") -> go.Figure:
    """Grouped bars per model: accuracy among the prompt's objects for each queried-box position (first / middle /
    last), each labelled with its number of eval prompts (positions without prompts left out)."""
    rows = [r for r in breakdown["by_query_position"] if r["n_prompts"]]
    labels = [f"{r['query_position']} ({r['n_prompts']} prompts)" for r in rows]
    fig = go.Figure()
    for name in models:
        values = [r[f"{name}_accuracy_among_objects"] for r in rows]
        fig.add_bar(x=labels, y=values, name=name, text=[f"{v:.2f}" for v in values], textposition="outside")
    fig.update_layout(barmode="group", yaxis_title="accuracy among the prompt's objects (share)", yaxis_range=[0, 1.1],
                      xaxis_title="queried box's position in the context")
    return layout(fig, title)


def figures(record: dict[str, Any]) -> dict[str, Any]:
    """Per-group head heatmaps (one per circuit model), accuracy by queried-box position (records that have it), CMAP
    bars, faithfulness bars, attribution scatter."""
    m = record["metrics"]
    figs = {f"circuit_{name}": group_heatmaps(c["scores"], c["groups"], f"Path patching, {name} model: effect of each "
                                                  "head on its group's receivers")
            for name, c in m["circuits"].items()}
    if m.get("accuracy_breakdown"):
        figs["accuracy_by_query_position"] = breakdown_bars(m["accuracy_breakdown"], list(m["accuracy"]))
    if m["cmap"]:
        figs["cmap"] = cmap_bars(m["cmap"])
    figs["faithfulness"] = faithfulness_bars(m["faithfulness"])
    if m["attribution_vs_exact"]:
        a = m["attribution_vs_exact"]
        figs["attribution_vs_exact"] = attribution_scatter(a["exact"], a["attribution"], a["pearson_r"],
                                                              "Per-head patching at the last token (base)")
    return figs
