"""Per-position, per-layer and per-head views: layer on the y axis, positions / heads on the x axis."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from workbench.plots.style import DIVERGING, SEQUENTIAL, layout


def per_position_kl(kl: Sequence[float], tokens: Sequence[str], title: str = "Per-token KL(P_tuned ‖ P_base)") -> go.Figure:
    """Bars of mean KL at each position (nats), labelled with the prompt's tokens."""
    labels = [f"{i}:{t}" for i, t in enumerate(tokens)]
    fig = go.Figure(go.Bar(x=labels, y=list(kl)))
    fig.update_xaxes(title="position: token")
    fig.update_yaxes(title="KL (nats)")
    return layout(fig, title)


def layer_position_heatmap(values: Sequence[Sequence[float]], tokens: Sequence[str], title: str, colorbar: str, diverging: bool = False) -> go.Figure:
    """Heatmap ``[n_layers, pos]`` with layer on y and position on x."""
    labels = [f"{i}:{t}" for i, t in enumerate(tokens)]
    kw = DIVERGING if diverging else SEQUENTIAL
    fig = go.Figure(go.Heatmap(z=values, x=labels, y=list(range(len(values))), colorbar=dict(title=colorbar), **kw))
    fig.update_xaxes(title="position: token")
    fig.update_yaxes(title="layer")
    return layout(fig, title, height=max(420, 18 * len(values)))


def head_heatmap(values: Sequence[Sequence[float]], title: str, colorbar: str, marked: Sequence[Sequence[int]] = (), diverging: bool = False, marked_name: str = "selected head") -> go.Figure:
    """Heatmap ``[n_layers, n_heads]`` (layer on y, head on x); ``marked`` (layer, head) pairs get a box."""
    kw = DIVERGING if diverging else SEQUENTIAL
    n_heads = len(values[0]) if values else 0
    fig = go.Figure(go.Heatmap(z=values, x=list(range(n_heads)), y=list(range(len(values))), colorbar=dict(title=colorbar), **kw))
    if marked:
        fig.add_scatter(x=[h for _, h in marked], y=[l for l, _ in marked], mode="markers", name=marked_name,
                        marker=dict(symbol="square-open", size=14, color="red", line=dict(width=2)))
    fig.update_xaxes(title="head", dtick=1)
    fig.update_yaxes(title="layer")
    fig.update_layout(legend=dict(orientation="h", y=-0.12))
    return layout(fig, title, height=max(460, 18 * len(values)))


def layer_lines(series: dict[str, Sequence[float]], title: str, yaxis: str) -> go.Figure:
    """One line per named series against the layer index."""
    fig = go.Figure()
    for name, ys in series.items():
        fig.add_scatter(x=list(range(len(ys))), y=list(ys), mode="lines+markers", name=name)
    fig.update_xaxes(title="layer")
    fig.update_yaxes(title=yaxis)
    return layout(fig, title)
