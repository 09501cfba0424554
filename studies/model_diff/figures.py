"""Figures of ``studies/model_diff``: a results record -> plotly Figures, and the self-contained ``report.html``.

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
    return html.escape(s).replace("\n", "↵")


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
    fig.add_bar(y=[repr(r["token"]) for r in up][::-1], x=[r["value"] for r in up][::-1], orientation="h", name="rises")
    fig.add_bar(y=[repr(r["token"]) for r in down][::-1], x=[r["value"] for r in down][::-1], orientation="h", name="falls")
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
    names = ["logit lens of δ (top)", "logit lens of −δ (top)"]
    vals = [_tokens(adl["lens"]["positive"]), _tokens(adl["lens"]["negative"])]
    for j, d in enumerate(adl["lens_by_position"]):
        names.append(f"logit lens of δ at text position {j}")
        vals.append(_tokens(d["positive"], 8))
    ps = adl["patchscope"]
    names.append("Patchscope, unpatched")
    vals.append(_tokens(ps["unpatched"], 8))
    for row in ps["by_scale"]:
        names.append(f"Patchscope, scale {row['scale']:g} × ‖r̄‖")
        vals.append(_tokens(row["top"], 8))
    fig = go.Figure(go.Table(columnwidth=[200, 600], header=dict(values=["readout", "top tokens"]),
                             cells=dict(values=[names, [_esc(v) for v in vals]], align="left")))
    return layout(fig, f"Activation Difference Lens at layer {adl['layer']} (first {adl['positions']} tokens; ‖δ‖ = {adl['delta_norm']:.4g}); "
                       f"Patchscope prompt {ps['prompt']!r}", height=160 + 30 * len(names))


def steering_table(st: dict[str, Any]) -> go.Figure:
    alphas, prompts, texts, nll, ok = [], [], [], [], []
    for row in st["by_alpha"]:
        for g in row["generations"]:
            alphas.append(f"{row['alpha']:g}" + (" ✓ chosen" if row["alpha"] == st["chosen_alpha"] else ""))
            prompts.append(_esc(g["prompt"]))
            texts.append(_esc(g["text"]))
            nll.append(f"{g['nll_nats']:.2f}")
            ok.append("yes" if row["coherent"] else "no")
    fig = go.Figure(go.Table(columnwidth=[70, 160, 460, 70, 70],
                             header=dict(values=["α (× ‖r̄‖)", "prompt", "steered greedy continuation", "base NLL", "coherent"]),
                             cells=dict(values=[alphas, prompts, texts, nll, ok], align="left")))
    return layout(fig, f"ADL steering of the base model at layer {st['layer']} (coherent: NLL ≤ {st['threshold_nats']:.2f} nats and "
                       f"distinct share ≥ {st['min_distinct_fraction']:g}); chosen α = {st['chosen_alpha']}", height=160 + 40 * len(alphas))


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
        "10_adl_steering": steering_table(m["adl"]["steering"]),
    }


def summary(record: dict[str, Any]) -> list[tuple[str, str]]:
    m = record["metrics"]
    models = record["meta_info"]["models"]
    st = m["adl"]["steering"]
    return [("base", models["base"]["id"]), ("tuned", models["tuned"]["id"]),
            ("corpus", f"{m['n_rows']} rows, {m['n_tokens']} tokens, {m['n_batches']} batches"),
            ("mean KL(P_tuned ‖ P_base)", f"{m['kl']['mean_per_token']:.4g} nats/token (max {m['kl']['max']:.4g})"),
            ("NLL base / tuned", f"{m['nll']['base_nats_per_token']:.3f} / {m['nll']['tuned_nats_per_token']:.3f} nats/token"),
            ("ADL layer, ‖δ‖, mean ‖r_base‖", f"{m['adl']['layer']}, {m['adl']['delta_norm']:.4g}, {m['adl']['mean_base_norm']:.4g}"),
            ("steering α chosen", f"{st['chosen_alpha']} ({st['alpha_unit']})"),
            ("wall time", f"{record['run_info']['wall_time_s']:.0f} s")]


def write_report(path: str | Path, record: dict[str, Any]) -> Path:
    """``report.html`` (atomic, plotly inlined once): the summary table then every figure."""
    from workbench.report import write_report as write

    notes = ("Statistics: KL per real position; diff mining = mean over positions of Δp and Δlog p per vocabulary token; "
             "layer and head differences averaged per row then over rows, 95% CI = t-interval over rows; logit lens on "
             "sampled positions; ADL per Minder et al. 2025 (arXiv 2510.13900).")
    return write(path, "Dataset-level diff: base vs tuned", summary(record), list(figures(record).values()), notes)
