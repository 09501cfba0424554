"""Figures of ``studies/dataset_diff``: a results record -> plotly Figures, and the self-contained ``report.html``.

Conventions of :mod:`workbench.plots`: layer on the y axis, heads on x, units in axis titles. Tables (top-KL
contexts, token lists, ADL readouts, steered text) are plotly tables, so the app shows them from the same
``figures/*.json`` files. No ``.show()``, no streamlit.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from workbench.plots import head_heatmap, layout


def _esc(s: str) -> str:
    """``s`` escaped once for plotly text (table cells, tick labels, titles), newlines shown as ↵.

    Plotly reads its text as a small HTML subset: ``<...>`` is a tag, and of the entities only ``&lt;`` ``&gt;``
    ``&amp;``, a few named ones and numeric ones become characters -- ``&quot;`` stays ``&quot;`` on the page. So
    ``&``, ``<`` and ``>`` are escaped and quotes are left as they are (``quote=False``)."""
    return html.escape(str(s), quote=False).replace("\n", "↵")


def context_html(item: dict[str, Any]) -> str:
    """One top-KL context as HTML: the left context, the highlighted token (after which the next-token
    distributions differ), then the right context (starting with the true next token)."""
    left = "".join(_esc(t) for t in item.get("left_text", []))
    right = "".join(_esc(t) for t in item.get("right_text", []))
    return f"{left}<b><span style='color:#c0392b'>[{_esc(item.get('token_text', ''))}]</span></b>{right}"


def kl_contexts(top: list[dict[str, Any]]) -> go.Figure:
    cols = [[f"{t['kl']:.4g}" for t in top], [f"{t['row']}:{t['pos']}" for t in top], [context_html(t) for t in top],
            [_esc(t.get("base_top1_text", "")) for t in top], [_esc(t.get("tuned_top1_text", "")) for t in top]]
    fig = go.Figure(go.Table(columnwidth=[60, 60, 520, 90, 90],
                             header=dict(values=["KL (nats)", "row:pos", "context ([token] = position read)", "base top-1", "tuned top-1"]),
                             cells=dict(values=cols, align="left")))
    return layout(fig, "Largest per-token KL(P_tuned ‖ P_base) in context", height=120 + 34 * max(len(top), 1))


def kl_by_position(kl: dict[str, Any]) -> go.Figure:
    fig = go.Figure(go.Scatter(x=list(range(len(kl["by_position"]["mean"]))), y=kl["by_position"]["mean"], mode="lines+markers"))
    fig.update_xaxes(title="position in row (tokens)")
    fig.update_yaxes(title="mean KL(P_tuned ‖ P_base) (nats)")
    return layout(fig, f"Per-token KL by position (corpus mean {kl['mean_per_token']:.4g} nats over {kl['n_tokens']} tokens)")


def token_shift(mining: dict[str, Any], key: str = "prob") -> go.Figure:
    up, down = mining[f"rising_by_{key}"], mining[f"falling_by_{key}"]
    fig = go.Figure()
    fig.add_bar(y=[_esc(repr(r["token"])) for r in up][::-1], x=[r["value"] for r in up][::-1], orientation="h", name="rises")
    fig.add_bar(y=[_esc(repr(r["token"])) for r in down][::-1], x=[r["value"] for r in down][::-1], orientation="h", name="falls")
    unit = "mean Δ probability (p_tuned − p_base)" if key == "prob" else "mean Δ log-probability (nats)"
    fig.update_xaxes(title=f"{unit}, over all corpus positions")
    fig.update_yaxes(title="token")
    return layout(fig, f"Diff mining: tokens whose {key} rises / falls most after tuning", height=200 + 16 * (len(up) + len(down)))


def _ci_lines(series: dict[str, dict[str, Any]], title: str, xaxis: str) -> go.Figure:
    fig = go.Figure()
    for name, s in series.items():
        mean = s["mean"]
        fig.add_scatter(x=mean, y=list(range(len(mean))), mode="lines+markers", name=name,
                        error_x=dict(type="data", symmetric=False, array=[h - m for h, m in zip(s["ci_high"], mean)],
                                     arrayminus=[m - lo for m, lo in zip(mean, s["ci_low"])]))
    fig.update_xaxes(title=xaxis)
    fig.update_yaxes(title="layer", dtick=1)
    return layout(fig, title, height=max(420, 18 * len(next(iter(series.values()))["mean"])))


def resid_diff(ld: dict[str, Any]) -> go.Figure:
    n = ld["resid_rel_diff"]["n_rows"]
    return _ci_lines({"‖r_t − r_b‖ / ‖r_b‖": ld["resid_rel_diff"], "1 − cosine(r_t, r_b)": {
        k: [1 - v for v in ld["resid_cosine"][k]] for k in ("mean",)} | {"ci_low": [1 - v for v in ld["resid_cosine"]["ci_high"]],
                                                                         "ci_high": [1 - v for v in ld["resid_cosine"]["ci_low"]]}},
                     f"Residual-stream difference per layer (hook_resid_post; mean over {n} rows, 95% CI over rows)",
                     "relative difference (unitless)")


def lens_agreement(lens: dict[str, Any]) -> go.Figure:
    fig = go.Figure()
    for role in ("base", "tuned"):
        a = lens[role]["top1_agreement"]
        fig.add_scatter(x=a, y=list(range(len(a))), mode="lines+markers", name=f"{role}: top-1 agreement")
    fig.update_xaxes(title="share of positions where the lens top-1 = the final top-1", range=[0, 1.02])
    fig.update_yaxes(title="layer", dtick=1)
    n = lens["base"]["n_positions"]
    return layout(fig, f"Logit-lens agreement with the final prediction ({n} sampled positions)", height=max(420, 18 * len(lens["base"]["top1_agreement"])))


def lens_kl(lens: dict[str, Any]) -> go.Figure:
    fig = go.Figure()
    for role in ("base", "tuned"):
        k = lens[role]["kl_to_final"]
        fig.add_scatter(x=k, y=list(range(len(k))), mode="lines+markers", name=role)
    fig.update_xaxes(title="mean KL(P_final ‖ P_lens) (nats)")
    fig.update_yaxes(title="layer", dtick=1)
    return layout(fig, "Logit lens: KL to the final distribution per layer", height=max(420, 18 * len(lens["base"]["kl_to_final"])))


def _tokens(rows: list[dict[str, Any]], n: int = 12) -> str:
    return " ".join(repr(r["token"]) for r in rows[:n])


def adl_tables(adl: dict[str, Any]) -> go.Figure:
    """One row per readout and position: the logit lens of δ_j and −δ_j, the Patchscope at the rule's scale, and the
    steered samples' first text at the chosen strength; position 0 (the attention sink) first, labelled."""
    names, vals = [], []
    for p in adl["by_position"]:
        j = p["position"]
        tag = f"δ_{j}" + (" (position 0: attention sink)" if j == 0 else "")
        cos = adl["split_half_cosine"][j]
        names.append(f"{tag}, ‖δ‖ = {p['delta_norm']:.3g}, split-half cos = {'n/a' if cos is None else f'{cos:.2f}'}: logit lens")
        vals.append(_tokens(p["lens"]["positive"]))
        names.append(f"{tag}: logit lens of −δ")
        vals.append(_tokens(p["lens"]["negative"]))
        ps = p["patchscope"]
        best = next((r for r in ps["by_scale"] if r["scale"] == ps["best_scale"]), None)
        names.append(f"{tag}: Patchscope at scale {ps['best_scale']:g} × n̄ (rule)")
        vals.append(_tokens(best["tokens"]) if best else "")
        st = p["steering"]
        if st is not None:
            names.append(f"{tag}: steered at α = {st['chosen_alpha']} × n̄ (largest coherent)")
            vals.append(" | ".join(t[:80] for t in st["chosen_samples"][:3]))
    if adl.get("pooled_extra"):
        names.append("pooled δ (labelled extra, not the reference's readout): logit lens")
        vals.append(_tokens(adl["pooled_extra"]["lens"]["positive"]))
    fig = go.Figure(go.Table(columnwidth=[260, 600], header=dict(values=["readout", "top tokens / samples"]),
                             cells=dict(values=[[_esc(n) for n in names], [_esc(v) for v in vals]], align="left")))
    return layout(fig, f"Activation Difference Lens at layer {adl['layer']} on the {adl['read_model']} model "
                       f"(one δ_j per position; n̄ = {adl['mean_tuned_norm']:.4g})", height=160 + 30 * len(names))


def steering_table(adl: dict[str, Any]) -> go.Figure:
    """Every strength the search tried, per position: α, the share of coherent samples, one sample."""
    pos, alphas, share, sample = [], [], [], []
    for p in adl["by_position"]:
        st = p["steering"]
        for row in (st or {}).get("by_alpha", []):
            pos.append(str(p["position"]))
            alphas.append(f"{row['alpha']:.4g}" + (" ✓ chosen" if row["alpha"] == st["chosen_alpha"] else ""))
            share.append(f"{row['coherent_share']:.0%}")
            sample.append(_esc(row["samples"][0]["text"][:160]) if row["samples"] else "")
    fig = go.Figure(go.Table(columnwidth=[60, 90, 80, 560], header=dict(values=["position", "α (× n̄)", "coherent", "first sample"]),
                             cells=dict(values=[pos, alphas, share, sample], align="left")))
    rule = next((p["steering"]["rule"] for p in adl["by_position"] if p["steering"]), "")
    return layout(fig, f"ADL steering search on the {adl['read_model']} model ({_esc(rule)})", height=160 + 40 * max(len(pos), 1))


def figures(record: dict[str, Any]) -> dict[str, go.Figure]:
    """The study's figures from a results record: name -> Figure (names sort in reading order)."""
    m = record["metrics"]
    ld = m["layer_diff"]
    n = ld["head_diff_norm"]["n_rows"]
    return {
        "01_kl_contexts": kl_contexts(m["kl"]["top"]),
        "02_kl_by_position": kl_by_position(m["kl"]),
        "03_token_shift_prob": token_shift(m["mining"], "prob"),
        "04_token_shift_logprob": token_shift(m["mining"], "logprob"),
        "05_resid_diff": resid_diff(ld),
        "06_head_diff": head_heatmap(ld["head_diff_norm"]["mean"], f"Head output difference ‖Δ(W_O^h z_h)‖₂, mean over {n} rows",
                                     "residual units"),
        "07_lens_agreement": lens_agreement(m["logit_lens"]),
        "08_lens_kl": lens_kl(m["logit_lens"]),
        "09_adl_readouts": adl_tables(m["adl"]),
        "10_adl_steering": steering_table(m["adl"]),
    }


def summary(record: dict[str, Any]) -> list[tuple[str, str]]:
    m = record["metrics"]
    models = record["meta_info"]["models"]
    adl = m["adl"]
    chosen = {p["position"]: p["steering"]["chosen_alpha"] for p in adl["by_position"] if p["steering"]}
    return [("base", models["base"]["id"]), ("tuned", models["tuned"]["id"]),
            ("corpus", f"{m['n_rows']} rows, {m['n_tokens']} tokens, {m['n_batches']} batches"),
            ("mean KL(P_tuned ‖ P_base)", f"{m['kl']['mean_per_token']:.4g} nats/token (max {m['kl']['max']:.4g})"),
            ("NLL base / tuned", f"{m['nll']['base_nats_per_token']:.3f} / {m['nll']['tuned_nats_per_token']:.3f} nats/token"),
            ("ADL layer, ‖δ_j‖ per position, n̄", f"{adl['layer']}, {', '.join(f'{x:.3g}' for x in adl['delta_norm_by_position'])}, "
                                                    f"{adl['mean_tuned_norm']:.4g}"),
            ("ADL split-half cosine per position", ", ".join("n/a" if c is None else f"{c:.2f}" for c in adl["split_half_cosine"])),
            ("steering α chosen per position (× n̄)", ", ".join(f"{j}: {a}" for j, a in chosen.items())),
            *[("warning", w) for w in m.get("warnings", [])],
            ("wall time", f"{record['run_info']['wall_time_s']:.0f} s")]


def write_report(path: str | Path, record: dict[str, Any]) -> Path:
    """``report.html`` (atomic, plotly inlined once): the summary table then every figure."""
    from workbench.report import write_report as write

    notes = ("Statistics: KL per real position; diff mining = mean over positions of Δp and Δlog p per vocabulary token; "
             "layer and head differences averaged per row then over rows, 95% CI = t-interval over rows; logit lens on "
             "sampled positions; ADL per Minder et al. 2025 (arXiv 2510.13900).")
    return write(path, "Dataset-level diff: base vs tuned", summary(record), list(figures(record).values()), notes)
