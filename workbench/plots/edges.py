"""Edge attribution views: an edge-score heatmap (receiver × sender) and faithfulness curves.

Plain lists and dicts in, plotly Figures out (no probes import: the library floor is below ``probes``). Receivers are
in forward order on the y axis (layer 0 at the bottom, the logits on top, as layer axes run elsewhere), senders in
forward order on the x axis; signed scores use the diverging scale centred at 0 (:data:`~workbench.plots.style.DIVERGING`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from workbench.plots.style import DIVERGING, layout


def edge_heatmap(values: Sequence[Sequence[float]], senders: Sequence[str], receivers: Sequence[str], title: str,
                 colorbar: str, mask: Sequence[Sequence[bool]] | None = None) -> go.Figure:
    """Heatmap ``[len(receivers), len(senders)]`` of edge scores (e.g. tuned − base, in nats of logit difference).

    ``mask[r][s]`` False (no such edge: the sender runs after the receiver) leaves the cell blank.
    """
    z = [[v if mask is None or mask[r][s] else None for s, v in enumerate(row)] for r, row in enumerate(values)]
    m = max((abs(v) for row in z for v in row if v is not None), default=0.0) or 1.0
    fig = go.Figure(go.Heatmap(z=z, x=list(senders), y=list(receivers), zmin=-m, zmax=m, colorbar=dict(title=colorbar),
                               hovertemplate="%{x} → %{y}<br>%{z:.4g}<extra></extra>", **DIVERGING))
    fig.update_xaxes(title="sender (embed, heads a{layer}.h{head}, MLPs m{layer})", type="category")
    fig.update_yaxes(title="receiver (layer order)", type="category")
    return layout(fig, title, height=max(460, min(1400, 12 * len(receivers) + 200)))


def faithfulness_curves(curves: Mapping[str, Mapping[str, Any]], title: str, log_x: bool = True) -> go.Figure:
    """One line per named curve (``{"n_edges": [...], "recovered": [...], "random_mean": [...], "random_std": [...]}``,
    e.g. ``FaithfulnessCurve.to_dict()``): the top-n edges' fraction of the clean − corrupt gap recovered, and dashed
    random edge sets of the same sizes (mean ± std as error bars). ``log_x`` draws n on a log axis (n = 0 left out)."""
    fig = go.Figure()
    for name, c in curves.items():
        pts = [(n, r) for n, r in zip(c["n_edges"], c["recovered"]) if not (log_x and n == 0)]
        fig.add_scatter(x=[n for n, _ in pts], y=[r for _, r in pts], mode="lines+markers", name=f"{name}: top-n edges")
        if c.get("random_mean") and any(v is not None for v in c["random_mean"]):
            rnd = [(n, m, s) for n, m, s in zip(c["n_edges"], c["random_mean"], c["random_std"]) if not (log_x and n == 0)]
            fig.add_scatter(x=[n for n, _, _ in rnd], y=[m for _, m, _ in rnd], mode="lines+markers",
                            line=dict(dash="dash"), name=f"{name}: random edges",
                            error_y=dict(type="data", array=[s or 0.0 for _, _, s in rnd], visible=True))
    fig.add_hline(y=1.0, line=dict(color="grey", dash="dot"))
    fig.add_hline(y=0.0, line=dict(color="grey", dash="dot"))
    fig.update_xaxes(title="edges kept (n)", type="log" if log_x else "linear")
    fig.update_yaxes(title="fraction of the clean − corrupt gap recovered")
    return layout(fig.update_layout(legend=dict(orientation="h", y=-0.2)), title, height=460)
