"""Figures of ``studies/own_finetune`` from its ``results.json`` record: held-out answer loss and exact match of base
and tuned per method, and each method's training loss. No ``.show()``, no streamlit."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from workbench import plots


def figures(record: dict[str, Any]) -> dict[str, go.Figure]:
    """name -> Figure, in report order."""
    methods = record["metrics"]["methods"]
    names = list(methods)

    def series(key: str) -> dict[str, list[float]]:
        return {role: [methods[n][role].get(key) or 0.0 for n in names] for role in ("base", "tuned")}

    return {
        "1_answer_loss": plots.grouped_bars(names, series("answer_loss"), "Held-out answer loss, base vs tuned",
                                            "answer loss (nats per answer token)", "method"),
        "2_exact_match": plots.grouped_bars(names, series("exact_match_answer"), "Held-out exact match of the answer (greedy, teacher forced)",
                                            "exact match (fraction of examples)", "method"),
        "3_training_loss": plots.training_curves({n: methods[n]["losses"] for n in names}),
    }
