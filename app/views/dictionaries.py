"""The app's sparse-dictionary page: opens what :func:`studies.dictionaries.pair_run.run_pair` wrote (a
``dictionaries.json`` beside its store and dictionaries: the dictionaries study's ``dictionaries/<fine-tune>/`` and the
diffing benchmark's) and shows each crosscoder's or difference SAE's reconstruction, latent classes, Latent Scaling and
top latents (decoder tokens, max-activating contexts, steering); the dictionaries study's figures too. Reads files only:
never imports study code and never runs a model.
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.views import PageView, ViewContext, register_view
from app.views.runs import find_results, run_figures

RECORD = "dictionaries.json"
STUDY = "dictionaries"
_MAX_DEPTH = 6


@dataclass
class DictionaryFolder:
    """One ``dictionaries.json`` and its parsed record (``error`` set when it cannot be read)."""

    path: Path
    record: dict
    error: str = ""

    @property
    def label(self) -> str:
        return f"{self.path.parent.parent.name}/{self.path.parent.name}" if self.path.parent.parent.name else self.path.parent.name


def dictionary_folders(runs_dir: str | os.PathLike) -> list[DictionaryFolder]:
    """Every ``dictionaries.json`` under ``runs_dir`` (at most a few folders deep; stores and checkpoints skipped),
    newest first; an unreadable one is listed with ``error`` set."""
    root = Path(runs_dir).expanduser()
    if not root.is_dir():
        return []
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        if len(Path(dirpath).relative_to(root).parts) >= _MAX_DEPTH:
            dirnames.clear()
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in ("checkpoints", "store"))
        if RECORD in filenames:
            path = Path(dirpath) / RECORD
            try:
                record = json.loads(path.read_text())
                if not isinstance(record, dict) or not isinstance(record.get("dictionaries"), dict):
                    raise ValueError("no 'dictionaries' object")
                found.append(DictionaryFolder(path, record))
            except (OSError, ValueError) as exc:
                found.append(DictionaryFolder(path, {}, f"{type(exc).__name__}: {exc}"))
    return sorted(found, key=lambda f: f.path.stat().st_mtime, reverse=True)


def summary_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per dictionary: kind, size, variance explained, L0, dead latents, tuned-only before / after Latent
    Scaling (crosscoders), training speed."""
    rows = []
    for name, d in record["dictionaries"].items():
        ev, ls = d["evaluation"], d.get("latent_scaling")
        rows.append({"dictionary": name, "kind": d["kind"], "objective": d["config"].get("objective"),
                     "latents": d["config"]["n_latents"],
                     **{f"variance explained ({k})": round(v, 4) for k, v in ev["fraction_variance_explained"].items()},
                     "mean L0": round(ev["mean_l0"], 2), "dead latents": f"{100 * ev['dead_fraction']:.1f}%",
                     "tuned-only (Δ ≥ 0.9)": ls["tuned_only_before"] if ls else None,
                     "after Latent Scaling": ls["tuned_only_after"] if ls else None,
                     "train tokens/s": round(d["training"]["tokens_per_s"])})
    return rows


def latent_rows(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per top latent of one dictionary: Δ, ν_ε, ν_r (crosscoders), activation mass, decoder tokens."""
    out = []
    for row in entry["top_latents"]:
        r = {"latent": row["latent"]}
        for key, label in (("delta", "Δ"), ("nu_error", "ν_ε"), ("nu_reconstruction", "ν_r"), ("mass", "activation mass")):
            if key in row:
                r[label] = round(row[key], 4) if row[key] is not None else None
        r["max activation"] = round(row["max_activation"], 3)
        r["decoder → top tokens"] = " ".join(repr(t) for t in row["top_tokens"])
        out.append(r)
    return out


def context_html(row: dict[str, Any]) -> str:
    """A latent's max-activating contexts as HTML lines, the activating token in bold (text escaped)."""
    lines = []
    for c in row["contexts"]:
        left, _, rest = c.partition("⟦")
        mid, _, right = rest.partition("⟧")
        lines.append(f"{html.escape(left)}<b>{html.escape(mid)}</b>{html.escape(right)}")
    return "<br>".join(lines)


def render(page: Any, runs_dir: str, problem: str | None = None, key: str = "dict") -> int:
    """Draw the page: a folder picker, the dictionaries' summary, one dictionary's latents and contexts, steering, and
    the study's figures. Returns the number of plotly charts drawn."""
    if problem:
        page.warning(problem[:1].upper() + problem[1:] + ".")
        return 0
    folders = dictionary_folders(runs_dir)
    if not folders:
        page.info(f"No sparse dictionaries under {runs_dir!r}. Train some with "
                  f"`python -m studies.dictionaries --config tiny --out {runs_dir}/dictionaries`.")
        return 0
    labels = [f.label + (f" (unreadable: {f.error})" if f.error else "") for f in folders]
    choice = page.selectbox("Dictionaries of", list(range(len(folders))), format_func=lambda i: labels[i], key=f"{key}-folder")
    folder = folders[choice]
    if folder.error:
        page.error(f"{folder.path}: {folder.error}")
        return 0
    rec = folder.record
    page.caption(f"{folder.path.parent}: {rec.get('n_tokens')} tokens at {rec.get('site')} (variance explained is in-sample)")
    page.dataframe(summary_rows(rec), hide_index=True)
    names = list(rec["dictionaries"])
    name = page.selectbox("Dictionary", names, key=f"{key}-dict-{choice}")
    entry = rec["dictionaries"][name]
    what = "tuned-only latents after Latent Scaling" if entry["kind"] == "crosscoder" else "latents by activation mass"
    page.markdown(f"**Top {what}**")
    rows = latent_rows(entry)
    if not rows:
        page.info("No latent to show (no tuned-only latent survived Latent Scaling).")
    else:
        page.dataframe(rows, hide_index=True)
        for row in entry["top_latents"]:
            with page.expander(f"latent {row['latent']}: max-activating contexts"):
                page.html(f"<div>{context_html(row)}</div>")
    for s in entry.get("steering", []):
        by = ", ".join(f"strength {b['strength']:g}: {b['share']:.2f}" for b in s["steered"])
        page.markdown(f"Steering the base model with latent {s['latent']}: keyword share unsteered "
                      f"{s['unsteered']['share']:.2f}; {by}")
    drawn = 0
    study = [r for r in find_results(runs_dir) if r.kind == STUDY and not r.error and folder.path.is_relative_to(r.run_dir)]
    if study:
        figs, notes = run_figures(study[0])
        for note in notes:
            page.warning(note)
        for i, fig in enumerate(figs):
            page.plotly_chart(fig, key=f"{key}-fig-{choice}-{i}", config={"displaylogo": False})
        drawn = len(figs)
    return drawn


def _show(ctx: ViewContext) -> int:
    return render(ctx.page, ctx.runs_dir, ctx.runs_problem)


register_view(PageView("Sparse dictionaries", order=85, needs={"runs_folder"}, render=_show))
