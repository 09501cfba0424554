"""The diffing benchmark's figures (one heatmap of score minus control per fine-tuning method, and the fit of each
fine-tune) and its markdown table (``table.md``, the README's table)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from studies.diffing_benchmark.scoring import heatmap, markdown_table
from workbench.artifacts import atomic_write_bytes
from workbench.plots import layout


def fit_figure(fit: dict[str, dict[str, Any]]) -> go.Figure:
    """Held-out answer loss of base and tuned per fine-tune, and the KL on the unrelated corpus (the fit each
    comparison is made at)."""
    names = list(fit)
    fig = go.Figure([go.Bar(name="base held-out loss", x=names, y=[fit[n]["base_answer_loss"] for n in names]),
                     go.Bar(name="tuned held-out loss", x=names, y=[fit[n]["tuned_answer_loss"] for n in names]),
                     go.Bar(name="KL on unrelated text", x=names, y=[fit[n]["kl_unrelated_nats_per_token"] for n in names])])
    fig.update_yaxes(title_text="nats/token")
    return layout(fig, "Fit of each fine-tune: held-out answer loss (base → tuned) and mean KL(tuned ‖ base) on the generic corpus")


def figures(record: dict[str, Any]) -> dict[str, go.Figure]:
    """name -> Figure, in reading order."""
    m = record["metrics"]
    methods = list(dict.fromkeys(r["method"] for r in m["rows"]))
    out = {f"01_heatmap_{meth}": heatmap(m["rows"], method=meth) for meth in methods}
    out["02_fit"] = fit_figure(m["fit"])
    return out


def table_text(record: dict[str, Any]) -> str:
    """The benchmark table (readout × method × organism, raw and minus control) and the fit table, in markdown."""
    m = record["metrics"]
    lines = [markdown_table(m["rows"]), "", "| fine-tune | held-out loss base → tuned (nats/token) | KL on unrelated text (nats/token) |",
             "|---|---:|---:|"]
    for name, f in m["fit"].items():
        lines.append(f"| {name} | {f['base_answer_loss']:.3f} → {f['tuned_answer_loss']:.3f} | {f['kl_unrelated_nats_per_token']:.4f} |")
    return "\n".join(lines) + "\n"


def write_table(path: str | Path, record: dict[str, Any]) -> Path:
    """Write :func:`table_text` to ``path`` atomically."""
    return atomic_write_bytes(Path(path), table_text(record).encode())
