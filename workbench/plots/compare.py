"""Side-by-side views (e.g. base | tuned | tuned − base), top-k bars per model and grouped bars."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.plots.style import layout

#: Above this many cells per panel, heatmap cells show no text (hover still does).
_MAX_TEXT_CELLS = 600


def _abs_max(panels: Sequence[Sequence[Sequence[float]]]) -> float:
    return max((abs(v) for p in panels for row in p for v in row), default=0.0) or 1.0


def side_by_side_heatmaps(
    panels: Mapping[str, Sequence[Sequence[float]]],
    x_labels: Sequence[str],
    y_labels: Sequence,
    title: str,
    colorbar: str,
    *,
    diff_panels: Sequence[str] = (),
    diff_colorbar: str = "Δ",
    text: Mapping[str, Sequence[Sequence[str]]] | None = None,
    xaxis: str = "position: token",
    yaxis: str = "layer",
    zmin: float | None = None,
    zmax: float | None = None,
    y_reversed: bool = False,
) -> go.Figure:
    """Heatmaps in one row, e.g. base | tuned | tuned − base, each ``[len(y_labels), len(x_labels)]``.

    Panels not in ``diff_panels`` share one sequential colour axis (``zmin``..``zmax``); the difference
    panels share a diverging one centred at 0 and symmetric. ``text`` (panel -> cell strings) appears on
    hover, and in the cells when a panel has at most 600 cells.
    """
    names = list(panels)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, shared_yaxes=True, horizontal_spacing=0.06)
    diff_max = _abs_max([panels[n] for n in names if n in diff_panels])
    for col, name in enumerate(names, start=1):
        is_diff = name in diff_panels
        cells = text.get(name) if text else None
        show_text = cells is not None and len(x_labels) * len(y_labels) <= _MAX_TEXT_CELLS
        fig.add_trace(go.Heatmap(
            z=panels[name], x=list(x_labels), y=list(y_labels), coloraxis="coloraxis2" if is_diff else "coloraxis",
            text=cells, texttemplate="%{text}" if show_text else None, textfont=dict(size=9),
            hovertemplate=f"{yaxis} %{{y}}<br>{xaxis} %{{x}}<br>value %{{z:.4g}}" + ("<br>%{text}" if cells is not None else "") + f"<extra>{name}</extra>",
        ), row=1, col=col)
        fig.update_xaxes(title=xaxis, row=1, col=col)
    fig.update_yaxes(title=yaxis, row=1, col=1)
    if y_reversed:
        fig.update_yaxes(autorange="reversed")
    seq = [n for n in names if n not in diff_panels]
    bar = lambda title, x: dict(title=dict(text=title, side="right"), x=x, len=0.9, thickness=14)  # noqa: E731
    if seq:
        fig.update_layout(coloraxis=dict(colorscale="Viridis", cmin=zmin, cmax=zmax, colorbar=bar(colorbar, 1.01)))
    if diff_panels:
        fig.update_layout(coloraxis2=dict(colorscale="RdBu", cmid=0, cmin=-diff_max, cmax=diff_max, colorbar=bar(diff_colorbar, 1.1 if seq else 1.01)))
    width_rows = max(len(y_labels), 1)
    return layout(fig, title, height=max(420, min(1100, 18 * width_rows + 160)))


def top_k_bars(panels: Mapping[str, tuple[Sequence[str], Sequence[float]]], title: str, xaxis: str = "probability") -> go.Figure:
    """Horizontal bars, one panel per model: ``{"base": (tokens, probs), "tuned": (...)}``; the most likely
    candidate on top, labelled ``"rank. 'token'"`` (distinct even when two tokens decode alike)."""
    names = list(panels)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.18)
    for col, name in enumerate(names, start=1):
        labels, values = panels[name]
        fig.add_bar(x=list(values)[::-1], y=[f"{i + 1}. {t!r}" for i, t in enumerate(labels)][::-1], orientation="h", name=name,
                    text=[f"{v:.3f}" for v in values][::-1], textposition="outside", row=1, col=col)
        fig.update_xaxes(title=xaxis, range=[0, min(1.0, max(values, default=1.0) * 1.25) or 1.0], row=1, col=col)
    fig.update_layout(showlegend=False)
    return layout(fig, title, height=max(360, 28 * max((len(v[0]) for v in panels.values()), default=1) + 140))


def grouped_bars(labels: Sequence[str], series: Mapping[str, Sequence[float]], title: str, yaxis: str, xaxis: str = "") -> go.Figure:
    """Grouped vertical bars: one group per label, one bar per named series (e.g. base and tuned)."""
    fig = go.Figure()
    for name, values in series.items():
        fig.add_bar(name=name, x=list(labels), y=list(values))
    fig.update_xaxes(title=xaxis, type="category")
    fig.update_yaxes(title=yaxis)
    return layout(fig.update_layout(barmode="group", legend=dict(orientation="h", y=1.08)), title)
