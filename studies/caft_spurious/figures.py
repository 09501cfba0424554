"""Figures of ``studies/caft_spurious`` from its ``results.json`` record: accuracy among the two options and the option
logit difference of every arm, in distribution (cues agree) and out of distribution (cues disagree). No ``.show()``,
no streamlit."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from workbench import plots

ARMS = ("base", "standard", "test_time_only", "caft_pca", "caft_random")


def figures(record: dict[str, Any]) -> dict[str, go.Figure]:
    """name -> Figure, in report order (arms missing from the record are left out)."""
    m = record["metrics"]
    arms = [a for a in ARMS if isinstance(m.get(a), dict)]

    def series(key: str) -> dict[str, list[float]]:
        return {"held-out (cues agree)": [m[a][f"heldout_{key}"] for a in arms],
                "out of distribution (cues disagree)": [m[a][f"ood_{key}"] for a in arms]}

    return {
        "1_accuracy": plots.grouped_bars(arms, series("acc"), "Accuracy among the two options, per arm",
                                         "accuracy (fraction of prompts)", "arm"),
        "2_logit_diff": plots.grouped_bars(arms, series("logit_diff"), "Grammatical option's logit minus the other's, per arm",
                                           "mean logit difference (nats)", "arm"),
    }
