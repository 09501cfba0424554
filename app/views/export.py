"""Export of the current analysis (no streamlit): its arrays as safetensors and CSV, its figures as one HTML file.

The app offers these through ``st.download_button`` with deferred data (the bytes are built when the button is
clicked, not on every run).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

import plotly.graph_objects as go
import plotly.io as pio
from safetensors.torch import save
from torch import Tensor

from app.views.analysis import ROLES, PromptAnalysis


def analysis_tensors(a: PromptAnalysis, tracked: dict[str, Tensor] | None = None, window=None) -> dict[str, Tensor]:
    """Every array of the analysis by name (``base.resid_post`` ``[n_layers, pos, d_model]``, ``kl`` ``[pos]`` …, see
    :class:`~app.views.analysis.PromptAnalysis` for shapes and units), plus the tracked tokens' lens logits
    ``<role>.tracked_logits`` ``[n_layers, pos, 2]`` and the logit-lens window ``<role>.lens_top_ids`` /
    ``lens_top_probs`` / ``lens_final_prob`` ``[n_layers, w]`` when given."""
    out = {"input_ids": a.input_ids, "kl": a.kl, "resid_diff_norm": a.resid_diff_norm, "resid_rel_diff": a.resid_rel_diff,
           "resid_cosine": a.resid_cosine, "head_diff": a.head_diff}
    for role in ROLES:
        for name, d in (("top_ids", a.top_ids), ("top_probs", a.top_probs), ("resid_post", a.resid_post), ("attn_pattern", a.patterns),
                        ("mlp_post", a.mlp_post)):
            out[f"{role}.{name}"] = d[role]
        if tracked is not None:
            out[f"{role}.tracked_logits"] = tracked[role]
        if window is not None:
            out[f"{role}.lens_top_ids"], out[f"{role}.lens_top_probs"] = window.top_ids[role], window.top_probs[role]
            out[f"{role}.lens_final_prob"] = window.final_prob[role]
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def safetensors_bytes(a: PromptAnalysis, tracked=None, window=None) -> bytes:
    """:func:`analysis_tensors` as a safetensors file (metadata: the prompt and the lens window)."""
    meta = {"prompt": a.prompt, "tokens": "\u241f".join(a.tokens)}
    if window is not None:
        meta["lens_window"] = f"{window.start}..{window.stop - 1}"
    return save(analysis_tensors(a, tracked, window), metadata=meta)


def per_position_rows(a: PromptAnalysis, tracked: dict[str, Tensor] | None = None) -> list[dict]:
    """One row per position: token, both models' top-1 next token and its probability, KL (nats), the last layer's
    ‖Δ resid_post‖, and (with ``tracked``) each model's logit difference answer − contrast (nats)."""
    rows = []
    for p in range(a.n_pos):
        row = {"position": p, "token": a.tokens[p], "kl_nats": float(a.kl[p])}
        for role in ROLES:
            row[f"{role}_top1"] = a.vocab[int(a.top_ids[role][p, 0])]
            row[f"{role}_p_top1"] = float(a.top_probs[role][p, 0])
            if tracked is not None:
                row[f"{role}_logit_diff_nats"] = float(tracked[role][-1, p, 0] - tracked[role][-1, p, 1])
        row["resid_diff_norm_last_layer"] = float(a.resid_diff_norm[-1, p])
        rows.append(row)
    return rows


def csv_text(rows: Sequence[dict]) -> str:
    """Rows of dicts as CSV text (header from the first row)."""
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def figures_html(figs: Sequence[go.Figure], title: str = "ft-workbench figures") -> str:
    """The figures in one self-contained HTML page (plotly.js embedded once, so it opens offline)."""
    parts = [pio.to_html(f, full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(figs)]
    return f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title></head><body>{''.join(parts)}</body></html>"
