"""The quickstart study (the main job): LoFiT on entity tracking, then a base-vs-tuned comparison report.

``workbench quickstart``, ``python -m studies.quickstart`` (and ``make demo``) run, on SmolLM2-135M-Instruct by default:
1. the entity-tracking task (Prakash et al. 2024), train / held-out split with no shared prompt;
2. the base model's held-out accuracy;
3. LoFiT (Yin et al. 2024): head selection by L1-regularised scalings, then offsets on the top heads;
4. the tuned model's held-out accuracy, and the exactness of merging the offsets into ``o_proj``; both models'
   accuracies broken down by the queried box's position (first / middle / last) and by number of boxes, with counts
   (:mod:`workbench.tasks.entity_tracking.breakdown`: where the tune fails);
5. a base-vs-tuned comparison through TransformerLens bridges (per-token KL, per-layer residual
   differences, per-head output differences with the selected heads marked);
6. ``results.json``, a self-contained ``report.html`` and ``figures/*.json`` (what the app renders) in ``runs/<name>/``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from studies.common import ShippedConfig, write_figure_files
from studies.quickstart.figures import figures
from workbench.data import Example
from workbench.errors import ConfigError
from workbench.finetune import finetune
from workbench.methods.lofit import LofitConfig
from workbench.runs import log_progress
from workbench.tasks import entity_tracking as et
from workbench.tasks.entity_tracking.breakdown import accuracy_breakdown, breakdown_lines, final_logits
from workbench.train import TrainConfig


@dataclass
class QuickstartConfig(ShippedConfig):
    """Settings of the main job (defaults sized for a 2-core CPU: about 4 minutes after the install).

    Raises:
        ConfigError: invalid values (checked here and by the nested configs).
    """

    model: str = "smollm2-135m-instruct"
    n_boxes: int = 3
    n_train: int = 256
    n_heldout: int = 64
    n_compare: int = 32
    seed: int = 0
    lofit: LofitConfig = field(default_factory=lambda: LofitConfig(
        top_k_heads=0.1, l1_lambda=5e-4,
        select=TrainConfig(max_steps=20, lr=5e-3, batch_size_prompts=8, checkpoint_every_steps=10),
        offset=TrainConfig(max_steps=60, lr=1e-2, batch_size_prompts=8, eval_every_steps=20, checkpoint_every_steps=20),
    ))

    def __post_init__(self) -> None:
        if isinstance(self.lofit, dict):
            from workbench.config import config_from_dict

            self.lofit = config_from_dict(LofitConfig, self.lofit)
        if self.n_compare < 1 or self.n_compare > self.n_heldout:
            raise ConfigError(f"QuickstartConfig.n_compare must be in 1..n_heldout ({self.n_heldout}), got {self.n_compare}")


def run_quickstart(cfg: QuickstartConfig, runs_dir: str | Path = "runs", name: str | None = None, log=log_progress) -> Path:
    """Run the main job and return its run folder (``results.json``, ``report.html``, ``figures/``, ``adapter/``).

    ``name`` is one folder name (an existing run folder resumes); it and ``runs_dir`` are checked before the
    model loads, and the run folder is created only once the model has loaded. On failure it follows the
    rule of :mod:`workbench.runs`: removed when this run created it and it holds no file, else kept (the
    LoFiT checkpoints let a rerun resume) with ``failed.json`` recording the error.

    Raises:
        ConfigError: a bad run name or an unusable ``runs_dir`` (before any model loads).
        ModelNotFoundError: the model cannot be loaded (message says what to install / pass).
        NonFiniteLossError: training diverged (checkpoints kept in the run folder).
    """
    from workbench.models import load_model
    from workbench.runs import plan_run, run_folder

    started = time.time()
    run_dir = plan_run(runs_dir, name, time.strftime("quickstart-%Y%m%d-%H%M%S"))
    log(f"[1/6] loading {cfg.model}")
    model, tok, info = load_model(cfg.model)
    split = et.generate(tok, et.EntityTrackingConfig(n_boxes=cfg.n_boxes, n_train=cfg.n_train, n_heldout=cfg.n_heldout, seed=cfg.seed), prepend_bos=info.prepend_bos)
    with run_folder(run_dir):
        _run_into(run_dir, cfg, model, tok, info, split, started, log)
    return run_dir


def _run_into(run_dir: Path, cfg: QuickstartConfig, model, tok, info, split: et.EntityTrackingSplit, started: float, log) -> None:
    """Steps 2-6 of :func:`run_quickstart`, writing into the (created) ``run_dir``."""
    from probes.diff.prompts import compare
    from workbench.artifacts import atomic_write_json, results_record, save_intervention
    from workbench.pair import ModelPair

    log(f"[2/6] evaluating the base model on {len(split.heldout)} held-out prompts")
    base_metrics = et.evaluate(model, split.heldout)
    heldout_logits = {"base": final_logits(model, split.heldout)}
    log(f"      base accuracy {base_metrics['accuracy']:.3f}")
    log("[3/6] LoFiT: step 1 selects heads, step 2 trains offsets")
    examples = [Example(p.input_ids, (p.answer_token_id,)) for p in split.train]
    result = finetune("lofit", model, info, examples, cfg.lofit, pad_id=tok.pad_token_id or 0, out_dir=run_dir / "lofit",
                      eval_fn=lambda: et.evaluate(model, split.heldout))
    offsets, details = result.intervention, result.details
    adapter_dir = save_intervention(run_dir / "adapter", offsets, info)
    log(f"[4/6] evaluating the tuned model ({len(details['heads'])} heads, {offsets.n_trainable()} trainable parameters)")
    with offsets.attach(model):
        tuned_metrics = et.evaluate(model, split.heldout)
        heldout_logits["tuned"] = final_logits(model, split.heldout)
        ids, _, _ = et.to_tensors(split.heldout[: cfg.n_compare])
        hooked_logits = model(input_ids=ids).logits
    merged = copy.deepcopy(model)
    offsets.merge_into(merged)
    with torch.no_grad():
        merge_max_abs_diff = float((merged(input_ids=ids).logits - hooked_logits).abs().max())
    del merged
    log(f"      tuned accuracy {tuned_metrics['accuracy']:.3f}; merged-into-o_proj max |Δlogit| {merge_max_abs_diff:.2e}")
    breakdown = accuracy_breakdown(split.heldout, heldout_logits)
    del heldout_logits
    for group, values in breakdown_lines(breakdown):
        log(f"      accuracy, {group}: {values}")

    log("[5/6] comparing base and tuned through TransformerLens bridges")
    adapter_hash = hashlib.sha256((adapter_dir / "adapter.safetensors").read_bytes()).hexdigest()
    tuned_info = dataclasses.replace(info, id=f"{info.id}+lofit", weight_hash=f"{info.weight_hash}+lofit:sha256:{adapter_hash}")
    pair = ModelPair(model, model, tok, info, tuned_info, tuned_intervention=offsets)
    diff = compare(pair, ids)
    metrics = {
        "base_accuracy": base_metrics["accuracy"],
        "tuned_accuracy": tuned_metrics["accuracy"],
        "base": base_metrics,
        "tuned": tuned_metrics,
        "accuracy_breakdown": breakdown,
        "selected_heads": details["heads"],
        "n_trainable_parameters": offsets.n_trainable(),
        "select_losses": details["select_losses"],
        "offset_losses": result.train_result.losses,
        "evals": result.train_result.evals,
        "seconds_per_step": {"select": details["select_seconds_per_step"], "offset": result.train_result.seconds_per_step},
        "merge_max_abs_logit_diff": merge_max_abs_diff,
        "head_scores": details["head_scores"],
        "diff": diff.to_dict(),
        "n_train_prompts": len(split.train),
        "n_heldout_prompts": len(split.heldout),
        "example_tokens": [tok.decode([t]) for t in split.heldout[0].input_ids],
    }
    log("[6/6] writing results.json, report.html and figures/")
    record = results_record(cfg.to_dict(), metrics, {"base": info, "tuned": tuned_info}, str(model.device), started, time.time())
    atomic_write_json(run_dir / "results.json", record)
    _write_report(run_dir, cfg, record, split.heldout[0])


def _write_report(run_dir: Path, cfg: QuickstartConfig, record: dict, example: et.BoxPrompt) -> None:
    from workbench.report import write_report

    m = record["metrics"]
    info = record["meta_info"]["models"]["base"]
    summary = [
        ("model", f"{info['id']} ({info['weight_hash'][:19]}…)"),
        ("task", f"entity tracking, {cfg.n_boxes} boxes; {m['n_train_prompts']} train / {m['n_heldout_prompts']} held-out prompts"),
        ("held-out accuracy (top-1)", f"base {m['base_accuracy']:.3f} → tuned {m['tuned_accuracy']:.3f}"),
        ("accuracy among objects", f"base {m['base']['accuracy_among_objects']:.3f} → tuned {m['tuned']['accuracy_among_objects']:.3f}"),
        ("mean logit difference (nats)", f"base {m['base']['logit_difference']:.2f} → tuned {m['tuned']['logit_difference']:.2f}"),
        *((f"held-out accuracy, {group}", values) for group, values in breakdown_lines(m.get("accuracy_breakdown", {}))),
        ("LoFiT heads", f"{len(m['selected_heads'])} of {info['n_layers'] * info['n_heads']}; {m['n_trainable_parameters']} trainable parameters"),
        ("merge into o_proj", f"max |Δ logit| {m['merge_max_abs_logit_diff']:.2e}"),
        ("wall time", f"{record['run_info']['wall_time_s']:.0f} s on {record['meta_info']['device']}"),
        ("git commit", f"{record['run_info']['commit']} (dirty: {record['run_info']['dirty']})"),
    ]
    example_text = f"Example prompt: {example.text!r} → {example.answer!r}"
    figs = figures(record)
    write_report(run_dir / "report.html", "ft-workbench: LoFiT on entity tracking, base vs tuned", summary, list(figs.values()), notes=example_text)
    write_figure_files(figs, run_dir / "figures", html=False)  # report.html already holds them for a browser
