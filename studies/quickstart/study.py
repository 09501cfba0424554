"""The quickstart study (the main job): LoFiT on entity tracking through the train job, then a base-vs-tuned report.

``python -m studies.quickstart --config tiny|default|PATH --out runs/quickstart``, ``workbench quickstart`` (its
``--runs-dir`` / ``--name`` make the output folder) and ``make demo`` run, on SmolLM2-135M-Instruct by default:

1. the train job (:mod:`workbench.train_job`, method ``lofit``, task ``entity_tracking``): the task's train / held-out
   split (Prakash et al. 2024, no shared prompt), the base model's held-out metrics, LoFiT (Yin et al. 2024: head
   selection by L1-regularised scalings, then offsets on the top heads, held-out accuracy during training), the tuned
   model's held-out metrics, ``adapter/``;
2. on the trained job: the exactness of merging the offsets into ``o_proj``; both models' accuracies broken down by the
   queried box's position (first / middle / last) and by number of boxes, with counts
   (:mod:`workbench.tasks.entity_tracking.breakdown`: where the tune fails);
3. a base-vs-tuned comparison through TransformerLens bridges (per-token KL, per-layer residual differences, per-head
   output differences with the selected heads marked);
4. ``results.json`` (the job's metrics and these), a self-contained ``report.html`` and ``figures/*.json`` (what the
   app renders) in the output folder. An existing output folder resumes the job from its checkpoints.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from studies.common import ShippedConfig, write_figure_files
from studies.quickstart.figures import figures, lofit_details
from workbench.errors import ConfigError
from workbench.methods.lofit import LofitConfig
from workbench.runs import log_progress
from workbench.tasks import entity_tracking as et
from workbench.tasks.entity_tracking.breakdown import accuracy_breakdown, breakdown_lines, final_logits
from workbench.train import TrainConfig
from workbench.train_job import TrainJob, TrainJobConfig, start_job

STUDY = "quickstart"


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

    def job(self) -> TrainJobConfig:
        """The train job this study runs: ``lofit`` on the ``entity_tracking`` task with these settings."""
        return TrainJobConfig(method="lofit", model=self.model, method_config=dataclasses.asdict(self.lofit), task="entity_tracking",
                              task_config={"n_boxes": self.n_boxes, "n_train": self.n_train, "n_heldout": self.n_heldout, "seed": self.seed})


def run_quickstart(cfg: QuickstartConfig, runs_dir: str | Path = "runs", name: str | None = None, log=log_progress) -> Path:
    """Run the study into ``runs_dir / name`` (default ``quickstart-<time>``) and return that folder
    (``results.json``, ``report.html``, ``figures/``, ``adapter/``, ``train/`` checkpoints).

    ``name`` is one folder name (an existing run folder resumes); it and ``runs_dir`` are checked before the
    model loads, and the run folder is created only once the model has loaded. On failure it follows the
    rule of :mod:`workbench.runs`: removed when this run created it and it holds no file, else kept (the
    LoFiT checkpoints let a rerun resume) with ``failed.json`` recording the error.

    Raises:
        ConfigError: a bad run name or an unusable ``runs_dir`` (before any model loads).
        ModelNotFoundError: the model cannot be loaded (message says what to install / pass).
        NonFiniteLossError: training diverged (checkpoints kept in the run folder).
    """
    from workbench.runs import plan_run

    run_dir = plan_run(runs_dir, name, time.strftime("quickstart-%Y%m%d-%H%M%S"))
    run(cfg, run_dir, log)
    return run_dir


def run(cfg: QuickstartConfig, out_dir: str | Path, log=log_progress) -> dict[str, Any]:
    """The study into ``out_dir`` (``python -m studies.quickstart --out``): the train job, then what the report adds;
    returns the ``results.json`` record."""
    from workbench.runs import run_folder

    out = Path(out_dir).expanduser().resolve()
    log(f"[1/3] the train job: lofit on entity_tracking, {cfg.model}")
    job = start_job(cfg.job(), out.parent, out.name, log=log)
    with run_folder(job.run_dir):
        job.run()
        log("[2/3] merge check, accuracy breakdown, base vs tuned through TransformerLens bridges")
        metrics, tuned_info = _measure(cfg, job, log)
        log(f"[3/3] writing results.json, report.html and figures/ in {job.run_dir}")
        return _write(cfg, job, metrics, tuned_info)


def _measure(cfg: QuickstartConfig, job: TrainJob, log) -> tuple[dict[str, Any], Any]:
    """The job's metrics plus the merge check, the accuracy breakdown and the base-vs-tuned diff; and the tuned
    model's ModelInfo (the base's, with the adapter's hash)."""
    from probes.diff.prompts import compare
    from workbench.pair import ModelPair

    model, tok, info, offsets = job.model, job.tok, job.info, job.result.intervention
    heldout = job.data.split.heldout
    ids = et.to_tensors(heldout[: cfg.n_compare])[0].to(model.device)
    logits = {"base": final_logits(model, heldout)}
    with offsets.attach(model), torch.no_grad():
        logits["tuned"] = final_logits(model, heldout)
        hooked = model(input_ids=ids).logits
    merged = copy.deepcopy(model)
    offsets.merge_into(merged)
    with torch.no_grad():
        merge_max_abs_diff = float((merged(input_ids=ids).logits - hooked).abs().max())
    del merged, hooked
    breakdown = accuracy_breakdown(heldout, logits)
    del logits
    log(f"      merged-into-o_proj max |Δlogit| {merge_max_abs_diff:.2e}")
    for group, values in breakdown_lines(breakdown):
        log(f"      accuracy, {group}: {values}")
    adapter_hash = hashlib.sha256((job.run_dir / "adapter" / "adapter.safetensors").read_bytes()).hexdigest()
    tuned_info = dataclasses.replace(info, id=f"{info.id}+lofit", weight_hash=f"{info.weight_hash}+lofit:sha256:{adapter_hash}")
    diff = compare(ModelPair(model, model, tok, info, tuned_info, tuned_intervention=offsets), ids)
    metrics = {**job.metrics, "accuracy_breakdown": breakdown, "merge_max_abs_logit_diff": merge_max_abs_diff, "diff": diff.to_dict(),
               "n_train_prompts": len(job.data.split.train), "n_heldout_prompts": len(heldout),
               "example_tokens": [tok.decode([t]) for t in heldout[0].input_ids]}
    return metrics, tuned_info


def _write(cfg: QuickstartConfig, job: TrainJob, metrics: dict[str, Any], tuned_info: Any) -> dict[str, Any]:
    from workbench.artifacts import atomic_write_json, results_record

    record = results_record({**cfg.to_dict(), "study": STUDY}, metrics, {"base": job.info, "tuned": tuned_info}, str(job.model.device),
                            job.started, time.time())
    atomic_write_json(job.run_dir / "results.json", record)
    _write_report(job.run_dir, cfg, record, job.data.split.heldout[0])
    return record


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
        ("LoFiT heads", f"{len(lofit_details(m)[0]['heads'])} of {info['n_layers'] * info['n_heads']}; {m['n_trainable_parameters']} trainable parameters"),
        ("merge into o_proj", f"max |Δ logit| {m['merge_max_abs_logit_diff']:.2e}"),
        ("wall time", f"{record['run_info']['wall_time_s']:.0f} s on {record['meta_info']['device']}"),
        ("git commit", f"{record['run_info']['commit']} (dirty: {record['run_info']['dirty']})"),
    ]
    example_text = f"Example prompt: {example.text!r} → {example.answer!r}"
    figs = figures(record)
    write_report(run_dir / "report.html", "ft-workbench: LoFiT on entity tracking, base vs tuned", summary, list(figs.values()), notes=example_text)
    write_figure_files(figs, run_dir / "figures", html=False)  # report.html already holds them for a browser
