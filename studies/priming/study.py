"""Knowledge-priming study: does a newly learned fact leak into unrelated contexts, does the keyword's
surprise before learning predict how much, and do stepping stones / ignore-top-k dilute it?

Source: Sun et al. (Google DeepMind), "How new data permeates LLM knowledge and how to dilute it",
arXiv 2504.09522, 2025 — §2 (Outlandish texts; memorization and priming scores), §3 (the keyword's
probability before learning predicts priming; strong priming below ≈1e-3), §5 (stepping-stone
augmentation, ignore-top-k update pruning: priming down 50–95 % with memorization kept).

Protocol (:func:`run`):
1. load the model; per theme, score every candidate keyword by log P(keyword) in a reference text's
   context and keep ``keywords_per_theme`` spanning that range (:func:`~workbench.tasks.priming.spread_by_prior`);
2. generate ``texts_per_keyword`` Outlandish-like texts per keyword (:mod:`workbench.tasks.priming`);
3. per text and per arm, from the same in-memory starting weights (:func:`~workbench.text_learning.fresh_copy`):
   ``standard`` learns the text; ``stepping_stone`` learns its stepping-stone rewrite; ``ignore_top_k``
   learns the text with the largest ``ignore_top_k`` fraction of every update dropped;
4. memorization = P(keyword | the original text's context) after learning; priming = log10 of the mean
   ratio P_after / P_before over the theme's probe prefixes (unrelated subjects);
5. Spearman correlation of log10 P(keyword | its text) before learning with log10 priming (standard arm),
   per-arm means, the median per-text reduction of the priming ratio; a check that the weights after the
   last text are bit-identical to the loaded ones; ``results.json`` and figures.
Same config and seed give the same numbers (everything except ``metrics.timing_s``).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probes.priming import log10_mean_ratio
from studies.common import ShippedConfig, save_results
from studies.priming.figures import figures
from workbench.errors import ConfigError
from workbench.runs import log_progress
from workbench.tasks import priming as pt
from workbench.tasks.priming.logprob import keyword_logprob
from workbench.text_learning import LearnConfig, fresh_copy, learn_text

ARMS = ("standard", "stepping_stone", "ignore_top_k")


@dataclass
class PrimingStudyConfig(ShippedConfig):
    """Settings of the priming study (``configs/{tiny,default,full}.json``).

    Attributes:
        model: model name or path for :func:`workbench.models.load_model`.
        themes: subset of colours, places, jobs, foods.
        keywords_per_theme: keywords kept per theme, spread over the model's prior (from the whole pool).
        texts_per_keyword: learned texts per keyword.
        styles: text styles (``None`` = all of :data:`workbench.tasks.priming.STYLES`).
        learn: :class:`~workbench.text_learning.LearnConfig` fields (steps, lr, optimizer, mode, ...).
        ignore_top_k: fraction of each update the ``ignore_top_k`` arm drops (the paper's k ≈ 8 %).
        arms: which of ``standard``, ``stepping_stone``, ``ignore_top_k`` to run (``standard`` required).
        seed: text sampling and the order of ordinary texts in ``mixed`` mode.

    Raises:
        ConfigError: unknown theme / style / arm, no ``standard`` arm, a bad learn config.
    """

    model: str = "smollm2-135m-instruct"
    themes: list[str] = field(default_factory=lambda: list(pt.KEYWORDS))
    keywords_per_theme: int = 4
    texts_per_keyword: int = 2
    styles: list[str] | None = None
    learn: LearnConfig | dict = field(default_factory=LearnConfig)
    ignore_top_k: float = 0.08
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.learn, dict):
            from workbench.config import config_from_dict

            self.learn = config_from_dict(LearnConfig, self.learn)
        if "standard" not in self.arms or set(self.arms) - set(ARMS):
            raise ConfigError(f"arms must include 'standard' and come from {list(ARMS)}, got {self.arms}")
        if not 0.0 < self.ignore_top_k < 1.0:
            raise ConfigError(f"ignore_top_k must be in (0, 1), got {self.ignore_top_k}")
        # validates themes, styles, counts
        self.text_config(None)
        if not 1 <= self.keywords_per_theme <= min(len(pt.KEYWORDS[t]) for t in self.themes):
            raise ConfigError(f"keywords_per_theme must be in 1..{min(len(pt.KEYWORDS[t]) for t in self.themes)}")

    def text_config(self, keywords: dict[str, list[str]] | None) -> pt.PrimingConfig:
        return pt.PrimingConfig(themes=list(self.themes), keywords=keywords, texts_per_keyword=self.texts_per_keyword,
                                styles=self.styles, seed=self.seed)


def spearman(x: list[float], y: list[float]) -> dict[str, float]:
    """Spearman rank correlation (scipy) with its two-sided p-value; NaN when fewer than 3 points."""
    from scipy.stats import spearmanr

    if len(x) < 3:
        return {"rho": float("nan"), "p": float("nan"), "n": len(x)}
    r = spearmanr(x, y)
    return {"rho": float(r.statistic), "p": float(r.pvalue), "n": len(x)}


def arm_summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean and s.e.m. of log10 priming, mean memorization (in the original text's context, and in the text
    actually learned), and the share of texts memorized (P > 0.5 in the original context)."""
    pr = [r["log10_priming"] for r in rows]
    mem = [r["memorization"] for r in rows]
    return {"n": len(rows), "mean_log10_priming": statistics.fmean(pr), "median_log10_priming": statistics.median(pr),
            "sem_log10_priming": statistics.stdev(pr) / math.sqrt(len(pr)) if len(pr) > 1 else 0.0,
            "mean_memorization": statistics.fmean(mem), "share_memorized": sum(m > 0.5 for m in mem) / len(mem),
            # the keyword in the context of the text actually learned (differs from the original only for stepping stones)
            "mean_memorization_learned_text": statistics.fmean(r.get("memorization_own_rewrite", r["memorization"]) for r in rows)}


def run(cfg: PrimingStudyConfig, out_dir: str | Path, log: Callable[[str], None] = log_progress) -> dict[str, Any]:
    """Run the study; write ``results.json`` and ``figures/*.html`` into ``out_dir``; return the record.

    Raises:
        ModelNotFoundError: the model cannot be loaded.
        NonFiniteLossError: learning a text diverged (lower ``learn.lr``).
    """
    from workbench.models import load_model, weights_hash

    started = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, tok, info = load_model(cfg.model)
    model.eval()
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    hash_before = weights_hash(model)
    ctx = lambda texts: pt.context_ids(tok, texts, info.prepend_bos)  # noqa: E731

    # 1. keywords spanning the model's prior, per theme
    log(f"[1/4] scoring {sum(len(pt.KEYWORDS[t]) for t in cfg.themes)} candidate keywords on {cfg.model}")
    chosen, candidate_priors = {}, {}
    for theme in cfg.themes:
        priors = {}
        for kw in pt.KEYWORDS[theme]:
            ref = pt.make_text(theme, kw, "news", pt.SUBJECTS[theme][0])
            priors[kw] = float(keyword_logprob(model, ctx([ref.context]), pt.keyword_ids(tok, kw), pad_id=pad)[0]) / math.log(10)
        candidate_priors[theme] = priors
        chosen[theme] = pt.spread_by_prior(priors, cfg.keywords_per_theme)
    texts = pt.generate(cfg.text_config(chosen))
    timing = {"select_keywords": time.time() - started}

    # 2. probe log-probabilities before learning (one set per keyword)
    probe_before = {}
    for theme in cfg.themes:
        for kw in chosen[theme]:
            probe_before[kw] = keyword_logprob(model, ctx(pt.PROBES[theme]), pt.keyword_ids(tok, kw), pad_id=pad)
    ordinary = ctx(pt.ORDINARY_TEXTS) if cfg.learn.mode == "mixed" else []

    # 3. learn each text under each arm from the same starting weights
    log(f"[2/4] learning {len(texts)} texts x {len(cfg.arms)} arms ({cfg.learn.steps} steps each)")
    rows: list[dict[str, Any]] = []
    t0 = time.time()
    for i, t in enumerate(texts):
        kw_ids = pt.keyword_ids(tok, t.keyword)
        own = ctx([t.context])
        before = float(keyword_logprob(model, own, kw_ids, pad_id=pad)[0])
        for arm in cfg.arms:
            learn = dataclasses.replace(cfg.learn, ignore_top_k=cfg.ignore_top_k if arm == "ignore_top_k" else 0.0)
            trained_on = t.stepping_stone if arm == "stepping_stone" else t.text
            with fresh_copy(model):
                losses = learn_text(model, ctx([trained_on])[0], learn, ordinary_ids=ordinary, pad_id=pad, seed=cfg.seed + i)
                model.eval()
                after = float(keyword_logprob(model, own, kw_ids, pad_id=pad)[0])
                probes_after = keyword_logprob(model, ctx(pt.PROBES[t.theme]), kw_ids, pad_id=pad)
                row = {"arm": arm, "theme": t.theme, "keyword": t.keyword, "style": t.style, "subject": t.subject, "text": trained_on,
                       "log10_p_before": before / math.log(10), "memorization": math.exp(after), "log10_p_after": after / math.log(10),
                       "log10_probe_prior": float(probe_before[t.keyword].exp().mean().log10()),
                       "log10_priming": log10_mean_ratio(probe_before[t.keyword], probes_after),
                       "first_loss": losses[0], "last_loss": losses[-1]}
                if arm == "stepping_stone":
                    row["memorization_own_rewrite"] = math.exp(float(keyword_logprob(model, ctx([t.stepping_stone_context]), kw_ids, pad_id=pad)[0]))
            rows.append(row)
        log(f"  [{i + 1}/{len(texts)}] {t.theme:8s} {t.keyword:12s} log10 P before {before / math.log(10):6.2f}  "
            + "  ".join(f"{r['arm']}: prime {r['log10_priming']:5.2f} mem {r['memorization']:.2f}" for r in rows[-len(cfg.arms):]))
    timing["learn_and_measure"] = time.time() - t0
    restored = weights_hash(model) == hash_before

    # 4. statistics
    log("[3/4] statistics")
    std = [r for r in rows if r["arm"] == "standard"]
    arms = {a: arm_summary([r for r in rows if r["arm"] == a]) for a in cfg.arms}
    for a in cfg.arms:
        if a == "standard":
            continue
        pair = [(s, r) for s, r in zip(std, [r for r in rows if r["arm"] == a])]
        arms[a]["median_priming_ratio_reduction"] = statistics.median(1.0 - 10 ** (r["log10_priming"] - s["log10_priming"]) for s, r in pair)
        arms[a]["mean_log10_priming_change"] = statistics.fmean(r["log10_priming"] - s["log10_priming"] for s, r in pair)
        arms[a]["memorization_change"] = statistics.fmean(r["memorization"] - s["memorization"] for s, r in pair)
    low = [r["log10_priming"] for r in std if r["log10_p_before"] < -3]
    high = [r["log10_priming"] for r in std if r["log10_p_before"] >= -3]
    metrics = {
        "keywords": chosen, "candidate_log10_priors": candidate_priors, "rows": rows, "arms": arms,
        "spearman_prior_vs_priming": spearman([r["log10_p_before"] for r in std], [r["log10_priming"] for r in std]),
        "spearman_probe_prior_vs_priming": spearman([r["log10_probe_prior"] for r in std], [r["log10_priming"] for r in std]),
        "threshold_1e-3": {"n_below": len(low), "n_above": len(high),
                           "mean_log10_priming_below": statistics.fmean(low) if low else None,
                           "mean_log10_priming_above": statistics.fmean(high) if high else None},
        "weights_restored_exactly": restored,
        "timing_s": {k: round(v, 2) for k, v in timing.items()},
    }
    log("[4/4] writing results.json and figures/")
    return save_results(out_dir, cfg.to_dict(), metrics, {"base": info}, str(next(model.parameters()).device), started, figures)
