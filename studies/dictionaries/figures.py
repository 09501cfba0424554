"""The dictionaries study's figures (read from ``results.json`` only) and its markdown table (``table.md``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from workbench.artifacts import atomic_write_bytes
from workbench.plots import layout


def _dicts(record: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(ft, name, d) for ft, r in record["metrics"]["finetunes"].items() for name, d in r["dictionaries"].items()]


def variance_figure(record: dict[str, Any]) -> go.Figure:
    """Fraction of variance explained per stream, one bar group per fine-tune × dictionary."""
    rows = _dicts(record)
    labels = [f"{ft} / {name}" for ft, name, _ in rows]
    streams = sorted({s for _, _, d in rows for s in d["evaluation"]["fraction_variance_explained"]})
    fig = go.Figure([go.Bar(name=s, x=labels, y=[d["evaluation"]["fraction_variance_explained"].get(s) for _, _, d in rows])
                     for s in streams])
    fig.update_yaxes(title_text="fraction of variance explained", range=[0, 1])
    return layout(fig, "Reconstruction: fraction of variance explained per stream (in-sample)")


def latent_scaling_figure(record: dict[str, Any]) -> go.Figure:
    """Share of live latents classed tuned-only by decoder norm, before and after Latent Scaling, per crosscoder."""
    rows = [(f"{ft} / {name}", d["latent_scaling"]) for ft, name, d in _dicts(record) if "latent_scaling" in d]
    fig = go.Figure([go.Bar(name="tuned-only by Δ ≥ 0.9", x=[r[0] for r in rows], y=[r[1]["fraction_before"] for r in rows]),
                     go.Bar(name="… and after Latent Scaling", x=[r[0] for r in rows], y=[r[1]["fraction_after"] for r in rows])])
    fig.update_yaxes(title_text="fraction of live latents")
    return layout(fig, "Crosscoder tuned-only latents before and after Latent Scaling")


def delta_figure(record: dict[str, Any]) -> go.Figure:
    """Histogram of the relative decoder norm Δ of live latents, one line per crosscoder."""
    fig = go.Figure()
    for ft, name, d in _dicts(record):
        if "delta_histogram" in d:
            h = d["delta_histogram"]
            fig.add_trace(go.Scatter(x=[(i + 0.5) / len(h) for i in range(len(h))], y=h, mode="lines+markers", name=f"{ft} / {name}"))
    fig.update_xaxes(title_text="Δ = ‖d_tuned‖ / (‖d_base‖ + ‖d_tuned‖)  (0 base-only, 0.5 shared, 1 tuned-only)")
    fig.update_yaxes(title_text="live latents", type="log")
    return layout(fig, "Relative decoder norm of crosscoder latents")


def faithfulness_figure(record: dict[str, Any]) -> go.Figure:
    """Faithfulness curves (share of the clean − corrupt gap recovered vs edges kept), EAP-IG top edges vs random."""
    fig = go.Figure()
    edges = record["metrics"].get("edges") or {}
    for model, c in (edges.get("faithfulness") or {}).items():
        fig.add_trace(go.Scatter(x=c["sizes"], y=c["top"], mode="lines+markers", name=f"{model}: top edges by |EAP-IG|"))
        fig.add_trace(go.Scatter(x=c["sizes"], y=c["random_mean"], mode="lines", line={"dash": "dot"}, name=f"{model}: random edges (mean)"))
    fig.update_xaxes(title_text="edges kept", type="log")
    fig.update_yaxes(title_text="fraction of the logit-difference gap recovered")
    return layout(fig, "Edge circuits on entity tracking: faithfulness")


def figures(record: dict[str, Any]) -> dict[str, go.Figure]:
    """name -> Figure, in reading order."""
    out = {"01_variance_explained": variance_figure(record), "02_latent_scaling": latent_scaling_figure(record),
           "03_delta_histogram": delta_figure(record)}
    if record["metrics"].get("edges"):
        out["04_faithfulness"] = faithfulness_figure(record)
    return out


def _pct(x: Any) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def table_text(record: dict[str, Any]) -> str:
    """The measured tables in markdown: dictionaries per fine-tune, their top latents, steering, edges."""
    lines = ["| fine-tune | dictionary | latents | variance explained | L0 | dead | tuned-only (Δ ≥ 0.9) → after Latent Scaling | train tokens/s |",
             "|---|---|---:|---|---:|---:|---|---:|"]
    for ft, name, d in _dicts(record):
        ev = d["evaluation"]
        fve = ", ".join(f"{k} {v:.3f}" for k, v in ev["fraction_variance_explained"].items())
        ls = d.get("latent_scaling")
        lsx = f"{ls['tuned_only_before']} ({_pct(ls['fraction_before'])}) → {ls['tuned_only_after']} ({_pct(ls['fraction_after'])})" if ls else "–"
        lines.append(f"| {ft} | {name} | {d['config']['n_latents']} | {fve} | {ev['mean_l0']:.1f} | {_pct(ev['dead_fraction'])} | {lsx} | "
                     f"{d['training']['tokens_per_s']:.0f} |")
    lines += ["", "| fine-tune | dictionary | latent | Δ / ν_ε / ν_r | decoder → top tokens | top context |", "|---|---|---:|---|---|---|"]
    for ft, name, d in _dicts(record):
        for row in d["top_latents"][:3]:
            nu = f"{row['delta']:.2f} / {row['nu_error']:.2f} / {row['nu_reconstruction']:.2f}" if "delta" in row else "–"
            ctx = (row["contexts"][0] if row["contexts"] else "").replace("|", "\\|").replace("\n", " ")
            toks = " ".join(repr(t) for t in row["top_tokens"][:6]).replace("|", "\\|")
            lines.append(f"| {ft} | {name} | {row['latent']} | {nu} | {toks} | {ctx} |")
    steer = [(ft, name, s) for ft, name, d in _dicts(record) for s in d.get("steering", [])]
    if steer:
        lines += ["", "| fine-tune | dictionary | latent | keyword share unsteered | steered (strength: share) |", "|---|---|---:|---:|---|"]
        for ft, name, s in steer:
            by = ", ".join(f"{b['strength']:g}: {b['share']:.2f}" for b in s["steered"])
            lines.append(f"| {ft} | {name} | {s['latent']} | {s['unsteered']['share']:.2f} | {by} |")
    e = record["metrics"].get("edges")
    if e:
        lines += ["", "| model | edges | Pearson EAP vs exact | Pearson EAP-IG vs exact | Spearman EAP vs exact | Spearman EAP-IG vs exact |",
                  "|---|---:|---:|---:|---:|---:|"]
        for model, c in e["correlation"].items():
            lines.append(f"| {model} | {c['n_edges']} | {c['eap']['pearson']:.3f} | {c['eap_ig']['pearson']:.3f} | "
                         f"{c['eap']['spearman']:.3f} | {c['eap_ig']['spearman']:.3f} |")
        cmp_ = e.get("comparison") or {}
        if cmp_:
            lines += ["", f"Top-{cmp_['top_n']} edges by |EAP-IG|: {cmp_['n_shared']} shared, {cmp_['n_gained']} gained and "
                          f"{cmp_['n_lost']} lost by the fine-tune."]
    return "\n".join(lines) + "\n"


def write_table(path: str | Path, record: dict[str, Any]) -> Path:
    """Write :func:`table_text` to ``path`` atomically."""
    return atomic_write_bytes(Path(path), table_text(record).encode())
