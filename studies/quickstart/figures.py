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


def lofit_details(metrics: dict[str, Any]) -> tuple[dict[str, Any], list[float]]:
    """``(details, offset losses)`` of a record's metrics: LoFiT's ``heads``, ``head_scores`` and ``select_losses``, and
    the losses of step 2. Today's records hold the train job's ``details`` and ``losses``; a record written before the
    quickstart ran through the train job (``results/default.json``) holds ``selected_heads``, ``head_scores``,
    ``select_losses`` and ``offset_losses``."""
    if "details" in metrics:
        return metrics["details"], metrics["losses"]
    return ({"heads": metrics["selected_heads"], "head_scores": metrics["head_scores"], "select_losses": metrics["select_losses"]},
            metrics["offset_losses"])


def figures(record: dict[str, Any]) -> dict[str, go.Figure]:
    """The main job's figures from its ``results.json`` record (the train job's metrics and the study's own): name -> Figure, in report order (a record written
    before the accuracy breakdown existed gets no breakdown figure)."""
    m = record["metrics"]
    d, (details, offset_losses) = m["diff"], lofit_details(m)
    tokens = m.get("example_tokens") or [""] * len(d["kl"])
    lofit = {"marked": details["heads"], "marked_name": "LoFiT-selected head"}
    breakdown = {"1_accuracy_breakdown": accuracy_breakdown_bars(m["accuracy_breakdown"])} if m.get("accuracy_breakdown") else {}
    return {
        "1_accuracy": plots.accuracy_bars({role: {k: m[role][k] for k in ("accuracy", "accuracy_among_objects")} for role in ("base", "tuned")}),
        **breakdown,
        "2_training_loss": plots.training_curves({"step 1: scalings (L1)": details["select_losses"], "step 2: offsets": offset_losses}),
        "3_heldout_during_training": plots.eval_curve([{"step": 0, **m["base"]}, *m.get("evals", [])], ["accuracy", "accuracy_among_objects"]),
        "4_kl_per_token": plots.per_position_kl(d["kl"], tokens, title=f"Per-token KL(P_tuned ‖ P_base), mean over {d['n_prompts']} held-out prompts"),
        "5_resid_rel_diff": plots.layer_position_heatmap(d["resid_rel_diff"], tokens, "Residual-stream difference ‖Δ resid_post‖ / ‖resid_post_base‖ per layer and position", "relative difference"),
        "6_head_diff_norm": plots.head_heatmap(d["head_diff_norm"], "Per-head output difference ‖Δ (z_h W_O,h)‖ at the last token (selected heads boxed)", "‖Δ‖ (residual units)", **lofit),
        "7_head_scores": plots.head_heatmap(details["head_scores"], "LoFiT step 1: head scores ‖A_h‖₂", "‖A_h‖₂", **lofit),
    }


def report_figures(record: dict[str, Any]) -> list[go.Figure]:
    """The same figures as a list, in report order (for ``report.html``)."""
    return list(figures(record).values())
