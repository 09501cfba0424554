"""TuCo study: is the tuning contribution higher on prompts from the fine-tuning distribution?

Source: Nuti, Franzmeyer, Henriques, "TuCo: Measuring the Contribution of Fine-Tuning to Individual
Responses of LLMs", ICML 2025 — §3 (decomposition, Algorithm 1), §5 (scaling the fine-tuning component),
§6 (TuCo is much lower on pre-training-like text than on prompts like the fine-tuning data).

Protocol (:func:`run`):
1. load the base model; generate the entity-tracking task (Prakash et al. 2024), train / held-out split;
2. LoFiT (Yin et al. 2024) on the train split; the tuned model is a deep copy with the offsets merged
   into ``o_proj`` (exact), so TuCo compares two plain models;
3. TuCo per prompt at the last token on the held-out entity-tracking prompts (*in-task*) and on a fixed
   list of general-knowledge / narrative prompts (*unrelated*, from the config); mean ± std and a
   Mann-Whitney U test (two-sided, and one-sided "in-task > unrelated"); also the paper's Algorithm-1
   variant that leaves the embedding out of both sums;
4. α-sweep: held-out accuracy with the fine-tuning component scaled by α;
5. exactness checks (reconstruction of the final residual on every decomposed prompt; α = 0 / 1 against
   the base / tuned logits on all held-out prompts and on the first (padded) batch of unrelated prompts);
6. ``results.json`` (:func:`workbench.artifacts.results_record`) and plotly figures in ``figures/``.
Same config and seed give the same numbers (everything except ``metrics.timing_s``).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from probes.contribution import alpha_forward, decompose, tuned_from_intervention
from studies.common import ShippedConfig, save_results
from studies.tuco.figures import figures
from workbench.errors import ConfigError
from workbench.methods.lofit import LofitConfig
from workbench.runs import log_progress
from workbench.tasks import entity_tracking as et


@dataclass
class TucoStudyConfig(ShippedConfig):
    """Settings of the TuCo study (``configs/{tiny,default,full}.json``).

    Attributes:
        model: model name or path for :func:`workbench.models.load_model`.
        n_boxes, n_train, n_heldout, seed: entity-tracking task (train for LoFiT, held-out = in-task prompts).
        unrelated_prompts: general-knowledge / narrative prompts unlike the fine-tuning data.
        alphas: scales of the fine-tuning component for the α-sweep (0 = base, 1 = tuned).
        batch_size_prompts: prompts per forward pass in evaluation and decomposition.
        lofit: the LoFiT run that makes the tuned model.

    Raises:
        ConfigError: fewer than 2 prompts in a group (no test possible), an empty or non-finite α list,
            or a non-positive batch size.
    """

    model: str = "smollm2-135m-instruct"
    n_boxes: int = 3
    n_train: int = 256
    n_heldout: int = 64
    seed: int = 0
    unrelated_prompts: list[str] = field(default_factory=list)
    alphas: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0, 1.25])
    batch_size_prompts: int = 16
    lofit: LofitConfig | dict = field(default_factory=LofitConfig)

    def __post_init__(self) -> None:
        if isinstance(self.lofit, dict):
            from workbench.config import config_from_dict

            self.lofit = config_from_dict(LofitConfig, self.lofit)
        if self.n_heldout < 2 or len(self.unrelated_prompts) < 2:
            raise ConfigError("TucoStudyConfig needs n_heldout >= 2 and at least 2 unrelated_prompts for the U test")
        if not self.alphas or any(not isinstance(a, (int, float)) or a != a or abs(a) == float("inf") for a in self.alphas):
            raise ConfigError(f"TucoStudyConfig.alphas must be a non-empty list of finite numbers, got {self.alphas!r}")
        if self.batch_size_prompts < 1:
            raise ConfigError(f"TucoStudyConfig.batch_size_prompts must be >= 1, got {self.batch_size_prompts}")
        self.alphas = [float(a) for a in self.alphas]


# --- measurements ---------------------------------------------------------------------------------
def group_stats(values: list[float]) -> dict[str, Any]:
    """Mean, sample std (ddof 1), median, min, max and n of a list of TuCo values."""
    return {"n": len(values), "mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def mann_whitney(in_task: list[float], unrelated: list[float]) -> dict[str, float]:
    """Mann-Whitney U of in-task vs unrelated TuCo: U, two-sided p, one-sided p (in-task > unrelated),
    and the common-language effect size U / (n₁ n₂) = P(in-task > unrelated) (ties count half)."""
    from scipy.stats import mannwhitneyu

    two = mannwhitneyu(in_task, unrelated, alternative="two-sided")
    greater = mannwhitneyu(in_task, unrelated, alternative="greater")
    return {"u": float(two.statistic), "p_two_sided": float(two.pvalue), "p_in_task_greater": float(greater.pvalue),
            "common_language_effect": float(greater.statistic / (len(in_task) * len(unrelated)))}


@torch.no_grad()
def box_metrics(logits_fn: Callable[[torch.Tensor], torch.Tensor], prompts: list[et.BoxPrompt],
                batch_size: int) -> tuple[dict[str, float], torch.Tensor]:
    """Held-out top-1 accuracy, accuracy among the prompt's objects and mean logit difference (nats) of
    the last-position logits that ``logits_fn(input_ids)`` returns; also those logits,
    ``Float[Tensor, "n_prompts d_vocab"]`` in :func:`et.batches` order."""
    totals = {"accuracy": 0.0, "accuracy_among_objects": 0.0, "logit_difference": 0.0}
    kept = []
    for batch in et.batches(prompts, batch_size):
        ids, answers, objects = et.to_tensors(batch)
        logits = logits_fn(ids)[:, -1].float().cpu()
        kept.append(logits)
        totals["accuracy"] += et.accuracy(logits, answers) * len(batch)
        totals["accuracy_among_objects"] += et.accuracy_among_objects(logits, answers, objects) * len(batch)
        totals["logit_difference"] += float(et.logit_difference(logits, answers, objects).sum())
    return {k: v / len(prompts) for k, v in totals.items()}, torch.cat(kept)


def tuco_groups(base, tuned, groups: dict[str, list[tuple[torch.Tensor, torch.Tensor | None]]]) -> dict[str, dict[str, Any]]:
    """For each named group of ``(input_ids, attention_mask)`` batches: TuCo per prompt (with and
    without the embedding component), ‖Σ PTC‖ and ‖Σ FTC‖ per prompt, the mean ‖PTC_c‖, ‖FTC_c‖ per
    component at the last token, and the largest reconstruction error."""
    out = {}
    for name, batches in groups.items():
        t, t_paper, ftc, ptc, sums, err, scale = [], [], [], [], {"ptc": [], "ftc": []}, 0.0, 0.0
        for ids, mask in batches:
            d = decompose(base, tuned, ids, mask)
            err, scale = max(err, d.reconstruction_error()), max(scale, float(d.final_residual.abs().max()))
            t += d.tuco().tolist()
            t_paper += d.tuco(include_embedding=False).tolist()
            ftc.append(d.ftc_norms())
            ptc.append(d.ptc_norms())
            for key, comp in zip(("ptc", "ftc"), d.at_last()):
                sums[key] += comp.sum(0).norm(dim=-1).tolist()
        out[name] = {"tuco": t, "tuco_paper": t_paper, "mean_ftc_norm": torch.cat(ftc, 1).mean(1).tolist(),
                     "mean_ptc_norm": torch.cat(ptc, 1).mean(1).tolist(),
                     "sum_ptc_norm": sums["ptc"], "sum_ftc_norm": sums["ftc"],
                     "reconstruction_max_abs_err": err, "max_abs_final_residual": scale}
    return out


@torch.no_grad()
def end_points(base, tuned, ids: torch.Tensor, mask: torch.Tensor | None) -> dict[str, float]:
    """max |Δlogit| of α = 0 against the base model and α = 1 against the tuned model, all positions."""
    return {
        "alpha0_vs_base_max_abs_logit_diff": float((alpha_forward(base, tuned, ids, 0.0, mask) - base(input_ids=ids, attention_mask=mask).logits).abs().max()),
        "alpha1_vs_tuned_max_abs_logit_diff": float((alpha_forward(base, tuned, ids, 1.0, mask) - tuned(input_ids=ids, attention_mask=mask).logits).abs().max()),
    }


# --- the study ------------------------------------------------------------------------------------
def run(cfg: TucoStudyConfig, out_dir: str | Path, log: Callable[[str], None] = log_progress) -> dict[str, Any]:
    """Run the study; write ``results.json`` and ``figures/*.html`` into ``out_dir``; return the record.

    Raises:
        ModelNotFoundError: the model cannot be loaded.
        NonFiniteLossError: LoFiT training diverged.
    """
    from workbench.data import Example
    from workbench.methods.lofit import train_lofit
    from workbench.models import load_model, weights_hash
    from workbench.pair import ModelPair

    started = time.time()
    timing: dict[str, float] = {}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log(f"[1/6] loading {cfg.model}; entity tracking with {cfg.n_boxes} boxes")
    base, tok, info = load_model(cfg.model)
    split = et.generate(tok, et.EntityTrackingConfig(n_boxes=cfg.n_boxes, n_train=cfg.n_train, n_heldout=cfg.n_heldout,
                                                     seed=cfg.seed), prepend_bos=info.prepend_bos)
    plain = lambda model: (lambda ids: model(input_ids=ids, logits_to_keep=1).logits)  # noqa: E731
    base_metrics, base_logits = box_metrics(plain(base), split.heldout, cfg.batch_size_prompts)
    timing["load_and_base_eval"] = time.time() - started

    log(f"[2/6] LoFiT on {len(split.train)} prompts (base accuracy {base_metrics['accuracy']:.3f})")
    t0 = time.time()
    examples = [Example(p.input_ids, (p.answer_token_id,)) for p in split.train]
    lofit = train_lofit(base, info.to_dict(), examples, cfg.lofit, pad_id=tok.pad_token_id or 0)
    tuned = tuned_from_intervention(base, lofit.offsets)
    tuned_metrics, tuned_logits = box_metrics(plain(tuned), split.heldout, cfg.batch_size_prompts)
    with torch.no_grad():
        ids0, _, _ = et.to_tensors(next(et.batches(split.heldout, cfg.batch_size_prompts)))
        with lofit.offsets.attach(base):
            hooked = base(input_ids=ids0).logits
        merge_err = float((tuned(input_ids=ids0).logits - hooked).abs().max())
    tuned_info = dataclasses.replace(info, id=f"{info.id}+lofit", weight_hash=weights_hash(tuned))
    timing["lofit"] = time.time() - t0
    log(f"      tuned accuracy {tuned_metrics['accuracy']:.3f}; merged vs hooked max |Δlogit| {merge_err:.2e}")

    log(f"[3/6] TuCo on {len(split.heldout)} in-task and {len(cfg.unrelated_prompts)} unrelated prompts")
    t0 = time.time()
    pair = ModelPair(base, tuned, tok, info, tuned_info)
    in_task = [(et.to_tensors(b)[0], None) for b in et.batches(split.heldout, cfg.batch_size_prompts)]
    unrelated = [pair.tokenize(cfg.unrelated_prompts[i : i + cfg.batch_size_prompts])
                 for i in range(0, len(cfg.unrelated_prompts), cfg.batch_size_prompts)]
    groups = tuco_groups(base, tuned, {"in_task": in_task, "unrelated": unrelated})
    tuco_metrics = {
        "in_task": group_stats(groups["in_task"]["tuco"]),
        "unrelated": group_stats(groups["unrelated"]["tuco"]),
        "mann_whitney": mann_whitney(groups["in_task"]["tuco"], groups["unrelated"]["tuco"]),
        **{f"norm_sum_{c}": {**{g: group_stats(groups[g][f"sum_{c}_norm"]) for g in groups},
                             "mann_whitney": mann_whitney(groups["in_task"][f"sum_{c}_norm"], groups["unrelated"][f"sum_{c}_norm"])}
           for c in ("ptc", "ftc")},
        "paper_variant_without_embedding": {
            "in_task": group_stats(groups["in_task"]["tuco_paper"]),
            "unrelated": group_stats(groups["unrelated"]["tuco_paper"]),
            "mann_whitney": mann_whitney(groups["in_task"]["tuco_paper"], groups["unrelated"]["tuco_paper"]),
        },
    }
    components = ["embedding"] + [f"layer {l}" for l in range(info.n_layers)]
    per_component = {"labels": components, **{f"{g}_{k}": groups[g][k] for g in groups for k in ("mean_ftc_norm", "mean_ptc_norm")}}
    timing["tuco"] = time.time() - t0
    t_in, t_un = tuco_metrics["in_task"], tuco_metrics["unrelated"]
    log(f"      TuCo in-task {t_in['mean']:.4f} ± {t_in['std']:.4f}, unrelated {t_un['mean']:.4f} ± {t_un['std']:.4f}, "
        f"U test p (two-sided) {tuco_metrics['mann_whitney']['p_two_sided']:.2e}")

    log(f"[4/6] α-sweep over {cfg.alphas}")
    t0 = time.time()
    sweep = {"alphas": cfg.alphas, "accuracy": [], "accuracy_among_objects": [], "logit_difference": []}
    exact: dict[str, float] = {}
    for alpha in cfg.alphas:
        m, logits = box_metrics(lambda ids, a=alpha: alpha_forward(base, tuned, ids, a, logits_to_keep=1), split.heldout, cfg.batch_size_prompts)
        for k in ("accuracy", "accuracy_among_objects", "logit_difference"):
            sweep[k].append(m[k])
        if alpha in (0.0, 1.0):  # the end points against the plain models' held-out logits
            ref = base_logits if alpha == 0.0 else tuned_logits
            exact[f"in_task_alpha{alpha:g}_vs_{'base' if alpha == 0.0 else 'tuned'}_max_abs_logit_diff"] = float((logits - ref).abs().max())
        log(f"      α={alpha:g}: accuracy {m['accuracy']:.3f}")
    timing["alpha_sweep"] = time.time() - t0

    log("[5/6] exactness checks")
    exact.update({f"unrelated_{k}": v for k, v in end_points(base, tuned, *unrelated[0]).items()})
    for g in groups:
        exact[f"{g}_reconstruction_max_abs_err"] = groups[g]["reconstruction_max_abs_err"]
        exact[f"{g}_max_abs_final_residual"] = groups[g]["max_abs_final_residual"]
    exact["merged_vs_hooked_max_abs_logit_diff"] = merge_err
    metrics = {
        "entity_tracking": {"base": base_metrics, "tuned": tuned_metrics},
        "lofit": {"heads": lofit.heads, "n_trainable_parameters": lofit.offsets.n_trainable(),
                  "select_losses": lofit.select_result.losses if lofit.select_result else [],
                  "offset_losses": lofit.offset_result.losses},
        "tuco": tuco_metrics,
        "per_component": per_component,
        "alpha_sweep": sweep,
        "exactness": exact,
        "n_train_prompts": len(split.train),
        "example_in_task_prompt": split.heldout[0].text,
        "timing_s": timing,
    }
    log("[6/6] writing results.json and figures/")
    record = save_results(out_dir, cfg.to_dict(), metrics, {"base": info, "tuned": tuned_info}, str(base.device), started, figures)
    log(f"      done in {record['run_info']['wall_time_s']:.0f} s -> {out_dir}")
    return record
