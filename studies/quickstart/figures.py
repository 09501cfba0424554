"""Figures of the quickstart study (the main job): drawn from its ``results.json`` record with the shared
:mod:`workbench.plots` functions. ``report.html`` shows them in this order; ``figures/<name>.json`` (the
files the app renders) carry a number in front of the name to keep it."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from workbench import plots


def accuracy_breakdown_bars(breakdown: dict[str, Any], roles: tuple[str, ...] = ("base", "tuned")) -> go.Figure:
    """Top-1 held-out accuracy of each role per group of an accuracy breakdown
    (:func:`workbench.tasks.entity_tracking.breakdown.accuracy_breakdown`): by the queried box's position, then by
    number of boxes; each group labelled with its number of prompts (groups without prompts left out)."""
    values: dict[str, dict[str, float]] = {role: {} for role in roles}
    for key, label in (("by_query_position", "queried box {} ({} prompts)"), ("by_n_boxes", "{} boxes ({} prompts)")):
        for row in breakdown.get(key, []):
            if row["n_prompts"]:
                name = label.format(row.get("query_position", row.get("n_boxes")), row["n_prompts"])
                for role in roles:
                    values[role][name] = row[f"{role}_accuracy"]
    fig = plots.accuracy_bars(values, "Held-out accuracy (top-1) by the queried box's position and by number of boxes")
    return fig.update_xaxes(title="prompts grouped by the queried box's position in the context / by number of boxes")


def figures(record: dict[str, Any]) -> dict[str, go.Figure]:
    """The main job's figures from its ``results.json`` record: name -> Figure, in report order (a record written
    before the accuracy breakdown existed gets no breakdown figure)."""
    m = record["metrics"]
    d = m["diff"]
    tokens = m.get("example_tokens") or [""] * len(d["kl"])
    lofit = dict(marked=m["selected_heads"], marked_name="LoFiT-selected head")
    breakdown = {"1_accuracy_breakdown": accuracy_breakdown_bars(m["accuracy_breakdown"])} if m.get("accuracy_breakdown") else {}
    return {
        "1_accuracy": plots.accuracy_bars({role: {k: m[role][k] for k in ("accuracy", "accuracy_among_objects")} for role in ("base", "tuned")}),
        **breakdown,
        "2_training_loss": plots.training_curves({"step 1: scalings (L1)": m["select_losses"], "step 2: offsets": m["offset_losses"]}),
        "3_heldout_during_training": plots.eval_curve([{"step": 0, **m["base"]}, *m["evals"]], ["accuracy", "accuracy_among_objects"]),
        "4_kl_per_token": plots.per_position_kl(d["kl"], tokens, title=f"Per-token KL(P_tuned ‖ P_base), mean over {d['n_prompts']} held-out prompts"),
        "5_resid_rel_diff": plots.layer_position_heatmap(d["resid_rel_diff"], tokens, "Residual-stream difference ‖Δ resid_post‖ / ‖resid_post_base‖ per layer and position", "relative difference"),
        "6_head_diff_norm": plots.head_heatmap(d["head_diff_norm"], "Per-head output difference ‖Δ (z_h W_O,h)‖ at the last token (selected heads boxed)", "‖Δ‖ (residual units)", **lofit),
        "7_head_scores": plots.head_heatmap(m["head_scores"], "LoFiT step 1: head scores ‖A_h‖₂", "‖A_h‖₂", **lofit),
    }


def report_figures(record: dict[str, Any]) -> list[go.Figure]:
    """The same figures as a list, in report order (for ``report.html``)."""
    return list(figures(record).values())
