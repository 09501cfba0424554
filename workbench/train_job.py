"""``workbench train <method> --task <name> --config job.json``: fine-tune one method on a task, evaluate, save.

The job's JSON holds ``model``, ``method_config`` (the method's fields), ``train`` (TrainConfig fields),
``task`` (a registered task, see ``workbench tasks``), ``task_config`` (that task's settings) and
``export`` (also write a merged Hugging Face model). Every registered method trains on every registered
task through :mod:`workbench.tasks`. Output: ``runs/<name>/`` with ``adapter/``, ``results.json``
(``base_accuracy`` / ``tuned_accuracy`` and the task's other held-out metrics of base and tuned under
``base`` / ``tuned``, trainable parameters, seconds per step) and, with ``export``, ``exported/``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from workbench.errors import ConfigError
from workbench.intervention import Intervention
from workbench.tasks import get_task


@dataclass
class TrainJobConfig:
    """One fine-tuning job (see the module docstring).

    Raises:
        ConfigError: an unknown method or task, ``method_config`` / ``train`` values their config classes
            refuse (type, range, unknown keys: the message names the field), or ``task_config`` settings the
            task refuses (unknown keys: the message names the task and its valid keys). Checked here,
            before any model loads.
    """

    method: str = "lofit"
    model: str = "smollm2-135m-instruct"
    method_config: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] | None = None
    task: str = "entity_tracking"
    task_config: dict[str, Any] = field(default_factory=dict)
    export: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.task, str):
            raise ConfigError(f"task must be a registered task name (e.g. 'entity_tracking'), got {self.task!r}; "
                              "its settings go in task_config")
        from workbench.config import config_from_dict
        from workbench.methods import get_method
        from workbench.train import TrainConfig

        config_from_dict(get_method(self.method).config_cls, self.method_config)
        if self.train is not None:
            config_from_dict(TrainConfig, self.train)
        self.task_settings()

    def task_settings(self) -> Any:
        """The task's validated config (its defaults updated with ``task_config``)."""
        return get_task(self.task).config(**self.task_config)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _json_details(details: dict[str, Any]) -> dict[str, Any]:
    """Method details for results.json: interventions (e.g. CAFT's ablation) become their method and config."""
    return {k: {"method": v.method, "config": v.config_dict()} if isinstance(v, Intervention) else v for k, v in details.items()}


def _check_ids(examples: list) -> torch.Tensor:
    """``Int[Tensor, "batch pos"]``: up to 8 held-out prompts of the first one's length (no padding needed)."""
    first = len(examples[0].prompt_ids)
    return torch.tensor([e.prompt_ids for e in examples if len(e.prompt_ids) == first][:8], dtype=torch.long)


def run_train_job(cfg: TrainJobConfig, runs_dir: str | Path = "runs", name: str | None = None, log=print) -> Path:
    """Run the job; return its run folder ``runs_dir / name``.

    ``name`` is one folder name (see :func:`workbench.runs.check_run_name`); an existing run folder resumes.
    The name and ``runs_dir`` are checked before the model loads; the run folder is created only after the
    model has loaded and the task's data was generated. On failure the folder follows the rule of
    :mod:`workbench.runs`: removed when this job created it and it holds no file, else kept (checkpoints let
    a rerun resume) with ``failed.json`` recording the error.

    Raises:
        ConfigError: a bad run name or an unusable ``runs_dir`` (before any model loads), and as raised by
            loading and training, like ModelNotFoundError and NonFiniteLossError.
    """
    from workbench.models import load_model
    from workbench.runs import plan_run, run_folder

    started = time.time()
    task, task_cfg = get_task(cfg.task), cfg.task_settings()  # validated before the model loads
    run_dir = plan_run(runs_dir, name, time.strftime(f"train-{cfg.method}-{cfg.task}-%Y%m%d-%H%M%S"))
    model, tok, info = load_model(cfg.model)
    split = task.generate(tok, task_cfg, prepend_bos=info.prepend_bos)
    with run_folder(run_dir):
        _train_into(run_dir, cfg, task, split, model, tok, info, started, log)
    return run_dir


def _train_into(run_dir: Path, cfg: TrainJobConfig, task: Any, split: Any, model: Any, tok: Any, info: Any, started: float, log) -> None:
    """The writing part of :func:`run_train_job`: train, evaluate, save into the (created) ``run_dir``."""
    from workbench.artifacts import atomic_write_json, results_record, save_intervention
    from workbench.export import export_hf, export_max_logit_diff
    from workbench.finetune import finetune
    from workbench.models import load_model

    pad_id = tok.pad_token_id or 0
    examples = task.to_examples(split)
    base = task.evaluate(model, split, pad_id=pad_id)
    log(f"base held-out accuracy {base['accuracy']:.3f} on {cfg.task}; training {cfg.method}")
    hint = (f"`workbench train {cfg.method} --task {cfg.task} --config <job.json> --runs-dir {run_dir.parent} --name {run_dir.name}` "
            "after lowering the learning rate in the job JSON (\"train\": {\"lr\": ...}, or the lr of the step that diverged)")
    result = finetune(cfg.method, model, info, examples, cfg.method_config, cfg.train, pad_id=pad_id, out_dir=run_dir / "train",
                      restart_hint=hint)
    with result.intervention.attach(model):
        tuned = task.evaluate(model, split, pad_id=pad_id)
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
        metrics["export_max_abs_logit_diff"] = export_max_logit_diff(model, result.intervention, out, _check_ids(task.to_examples(split, "heldout")))
        log(f"exported to {out} (max |Δlogit| {metrics['export_max_abs_logit_diff']:.2e})")
    atomic_write_json(run_dir / "results.json", results_record(cfg.to_dict(), metrics, {"base": info}, str(model.device), started, time.time()))
