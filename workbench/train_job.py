"""``workbench train <method> --config job.json``: fine-tune one method on a task, evaluate, save.

The job's JSON holds ``model``, ``method_config`` (the method's fields), ``train`` (TrainConfig fields),
``task`` (EntityTrackingConfig fields) and ``export`` (also write a merged Hugging Face model). Output:
``runs/<name>/`` with ``adapter/``, ``results.json`` (held-out accuracy of base and tuned, trainable
parameters, seconds per step) and, with ``export``, ``exported/``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from workbench.errors import ConfigError
from workbench.intervention import Intervention
from workbench.tasks import entity_tracking as et
from workbench.train import Example


@dataclass
class TrainJobConfig:
    """One fine-tuning job (see the module docstring).

    Raises:
        ConfigError: unknown keys in ``task``.
    """

    method: str = "lofit"
    model: str = "smollm2-135m-instruct"
    method_config: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] | None = None
    task: dict[str, Any] = field(default_factory=lambda: {"n_boxes": 3, "n_train": 256, "n_heldout": 64, "seed": 0})
    export: bool = False

    def __post_init__(self) -> None:
        unknown = set(self.task) - {"n_boxes", "n_train", "n_heldout", "seed", "objects", "labels"}
        if unknown:
            raise ConfigError(f"unknown task key(s) {sorted(unknown)} (entity tracking takes n_boxes, n_train, n_heldout, seed, objects, labels)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _json_details(details: dict[str, Any]) -> dict[str, Any]:
    """Method details for results.json: interventions (e.g. CAFT's ablation) become their method and config."""
    return {k: {"method": v.method, "config": v.config_dict()} if isinstance(v, Intervention) else v for k, v in details.items()}


def run_train_job(cfg: TrainJobConfig, runs_dir: str | Path = "runs", name: str | None = None, log=print) -> Path:
    """Run the job; return its run folder.

    Raises:
        ModelNotFoundError, ConfigError, NonFiniteLossError: as raised by loading and training.
    """
    from workbench.artifacts import atomic_write_json, results_record, save_intervention
    from workbench.export import export_hf, export_max_logit_diff
    from workbench.finetune import finetune
    from workbench.models import load_model

    started = time.time()
    run_dir = Path(runs_dir) / (name or time.strftime(f"train-{cfg.method}-%Y%m%d-%H%M%S"))
    model, tok, info = load_model(cfg.model)
    split = et.generate(tok, et.EntityTrackingConfig(**cfg.task), prepend_bos=info.prepend_bos)
    examples = [Example(p.input_ids, (p.answer_token_id,)) for p in split.train]
    base = et.evaluate(model, split.heldout)
    log(f"base held-out accuracy {base['accuracy']:.3f}; training {cfg.method}")
    result = finetune(cfg.method, model, info, examples, cfg.method_config, cfg.train, pad_id=tok.pad_token_id or 0, out_dir=run_dir / "train")
    with result.intervention.attach(model):
        tuned = et.evaluate(model, split.heldout)
    log(f"tuned held-out accuracy {tuned['accuracy']:.3f}")
    save_intervention(run_dir / "adapter", result.intervention, info)
    if isinstance(result.details.get("ablation"), Intervention):  # CAFT: keep the directions trained under
        save_intervention(run_dir / "ablation", result.details["ablation"], info)
    metrics = {"base_accuracy": base["accuracy"], "tuned_accuracy": tuned["accuracy"], "base": base, "tuned": tuned,
               "n_trainable_parameters": result.intervention.n_trainable(), "losses": result.train_result.losses,
               "seconds_per_step": result.train_result.seconds_per_step, "details": _json_details(result.details)}
    if cfg.export:
        clean, _, _ = load_model(cfg.model)  # a plain copy: bridges / peft adapters never touch it
        out = export_hf(clean, result.intervention, run_dir / "exported", tokenizer=tok, model_info=info)
        ids, _, _ = et.to_tensors(split.heldout[:8])
        metrics["export_max_abs_logit_diff"] = export_max_logit_diff(model, result.intervention, out, ids)
        log(f"exported to {out} (max |Δlogit| {metrics['export_max_abs_logit_diff']:.2e})")
    atomic_write_json(run_dir / "results.json", results_record(cfg.to_dict(), metrics, {"base": info}, str(model.device), started, time.time()))
    return run_dir
