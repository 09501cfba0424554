"""``workbench train <method> --task <name> | --data train.jsonl [--eval-data eval.jsonl] --config job.json``.

Fine-tune one method on a task or on your own data, evaluate base and tuned, save.

The job's JSON holds ``model``, ``method_config`` (the method's fields), ``train`` (TrainConfig fields),
``export`` (also write a merged Hugging Face model) and either

* ``task`` (a registered task, see ``workbench tasks``; default ``entity_tracking``) with ``task_config`` (that
  task's settings) -- every registered method trains on every registered task through :mod:`workbench.tasks`;
  ``results.json`` gets ``base_accuracy`` / ``tuned_accuracy`` and the task's other held-out metrics; or
* ``data`` (a JSONL / JSON / CSV / Parquet file, or a hub dataset id; see :mod:`workbench.datafiles`) with
  ``eval_data`` (another source; ``None`` = hold out ``eval_fraction`` of ``data``'s rows, drawn with
  ``split_seed``), ``data_fields`` (column mapping, ``{"prompt_field": "question", ...}``), ``data_shape``
  (force a shape), ``max_length`` (tokens per example) and ``overflow`` (``"truncate"`` / ``"refuse"``).
  ``results.json`` gets ``base`` / ``tuned`` held-out answer loss (nats per answer token), perplexity and exact
  match of the answer tokens (``exact_match_answer``) and of answer + EOS (``exact_match_answer_eos``;
  :mod:`workbench.datafiles.evaluate`), and ``data``: each source's sha256, shape, rows, examples,
  truncated / dropped counts (and the longest row), the train/eval overlap and the training file's repeated rows;
  ``warnings`` lists what the job also said on the console (repeated rows, eval data that is the training file,
  truncated rows).

``task`` and ``data`` together are refused. Output: ``runs/<name>/`` with ``adapter/``, ``results.json``
(also trainable parameters, losses, seconds per step) and, with ``export``, ``exported/``.

The job's steps are one small object, :class:`TrainJob` (``start_job`` checks, loads and builds the data; its
``run`` evaluates the base model, trains, evaluates the tuned model and saves), over what it trains on: a
:class:`TaskData` (a task's split) or a :class:`FileData` (your tokenized rows). A train config with
``eval_every_steps`` also scores the held-out data during training (``results.json``: ``evals``).

In Python::

    from workbench.train_job import TrainJobConfig, run_train_job
    run_dir = run_train_job(TrainJobConfig(method="lofit", data="train.jsonl", eval_data="eval.jsonl",
                                           train={"max_steps": 40}))

A caller that goes on from the trained model (the quickstart study) runs the steps itself::

    job = start_job(cfg, "runs", "my-run")          # nothing written yet
    with run_folder(job.run_dir):
        job.run()                                   # job.model, job.result.intervention, job.metrics stay
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from workbench.distributed import is_main_process
from workbench.errors import ConfigError
from workbench.intervention import Intervention
from workbench.job_data import FileData, TaskData, read_data
from workbench.runs import log_progress
from workbench.tasks import get_task


@dataclass
class TrainJobConfig:
    """One fine-tuning job (see the module docstring).

    Raises:
        ConfigError: an unknown method or task, ``method_config`` / ``train`` values their config classes
            refuse (type, range, unknown keys: the message names the field), or ``task_config`` settings the
            task refuses (unknown keys: the message names the task and its valid keys); ``task`` and ``data``
            together; ``eval_data`` / ``data_fields`` / ``data_shape`` without ``data``; a bad column mapping,
            shape, ``max_length`` (< 2 tokens), ``overflow`` or ``eval_fraction`` (outside (0, 1)). Checked
            here, as data, before any model loads (the data files themselves are read by :func:`run_train_job`).
    """

    method: str = "lofit"
    model: str = "smollm2-135m-instruct"
    method_config: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] | None = None
    task: str | None = None  # None: "entity_tracking" unless ``data`` is given
    task_config: dict[str, Any] = field(default_factory=dict)
    export: bool = False
    data: str | None = None
    eval_data: str | None = None
    data_fields: dict[str, str] = field(default_factory=dict)
    data_shape: str | None = None
    max_length: int = 512
    overflow: str = "truncate"
    eval_fraction: float = 0.1
    split_seed: int = 0

    def __post_init__(self) -> None:
        if self.data is not None:
            self._check_data_fields()
        elif self.task is None:
            self.task = "entity_tracking"
        if self.data is None and (self.eval_data is not None or self.data_fields or self.data_shape is not None):
            raise ConfigError("TrainJobConfig.eval_data / data_fields / data_shape need data (the training file); "
                              "pass --data train.jsonl")
        if self.data is None and not isinstance(self.task, str):
            raise ConfigError(f"task must be a registered task name (e.g. 'entity_tracking'), got {self.task!r}; "
                              "its settings go in task_config")
        from workbench.config import config_from_dict
        from workbench.methods import get_method
        from workbench.train import TrainConfig

        config_from_dict(get_method(self.method).config_cls, self.method_config)
        if self.train is not None:
            config_from_dict(TrainConfig, self.train)
        if self.data is None:
            self.task_settings()

    def _check_data_fields(self) -> None:
        """The data fields as data (no file is read here: :func:`run_train_job` reads them before the model)."""
        from workbench.datafiles import SHAPES, normalise_fields

        if self.task is not None or self.task_config:
            raise ConfigError(f"TrainJobConfig: give either a task (task={self.task!r}) or your data (data={self.data!r}), not both; "
                              "drop --task / \"task\" and \"task_config\" to train on the data file")
        if not isinstance(self.data, str) or not self.data.strip():
            raise ConfigError("TrainJobConfig.data is empty; name a data file (.jsonl, .json, .csv, .parquet) or hub dataset id")
        if self.eval_data is not None and (not isinstance(self.eval_data, str) or not self.eval_data.strip()):
            raise ConfigError("TrainJobConfig.eval_data is empty; name a data file or leave it out to hold out eval_fraction")
        normalise_fields(self.data_fields)
        if isinstance(self.train, dict) and self.train.get("loss") == "dpo":
            raise ConfigError("TrainJobConfig.train.loss 'dpo' needs a rejected answer per example, which data files do not carry "
                              "(prompt/completion, messages or text rows); use loss 'sft' with --data")
        if self.data_shape is not None and self.data_shape not in SHAPES:
            raise ConfigError(f"TrainJobConfig.data_shape must be one of {sorted(SHAPES)} or null (detect), got {self.data_shape!r}")
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 2:
            raise ConfigError(f"TrainJobConfig.max_length must be >= 2 (tokens per example), got {self.max_length}")
        if self.overflow not in ("truncate", "refuse"):
            raise ConfigError(f"TrainJobConfig.overflow must be 'truncate' or 'refuse', got {self.overflow!r}")
        if isinstance(self.eval_fraction, bool) or not isinstance(self.eval_fraction, (int, float)) or not 0 < self.eval_fraction < 1:
            raise ConfigError(f"TrainJobConfig.eval_fraction must be strictly between 0 and 1, got {self.eval_fraction}")

    def task_settings(self) -> Any:
        """The task's validated config (its defaults updated with ``task_config``).

        Raises:
            ConfigError: a data job (no task), or settings the task refuses.
        """
        if self.task is None:
            raise ConfigError("this job trains on a data file (TrainJobConfig.data), not on a task")
        return get_task(self.task).config(**self.task_config)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _json_details(details: dict[str, Any]) -> dict[str, Any]:
    """Method details for results.json: interventions (e.g. an ablation trained under) become their method and config."""
    return {k: {"method": v.method, "config": v.config_dict()} if isinstance(v, Intervention) else v for k, v in details.items()}


def _evaluates_during_training(cfg: TrainJobConfig) -> bool:
    """Whether any train config of the job (``train``, or one nested in ``method_config`` such as LoFiT's
    ``offset``) asks for held-out evaluations during training (``eval_every_steps`` > 0)."""
    def asks(value: Any) -> bool:
        if not isinstance(value, dict):
            return False
        every = value.get("eval_every_steps")
        return (isinstance(every, int) and every > 0) or any(asks(v) for v in value.values())

    return asks(cfg.train) or asks(cfg.method_config)


# --- the job's steps ----------------------------------------------------------------------------------------------
@dataclass
class TrainJob:
    """One job on a loaded model; :meth:`run` takes the steps in order: evaluate the base model (main process
    only), :meth:`train`, evaluate the tuned model, :meth:`save` into ``run_dir``. ``result`` (the
    :class:`~workbench.finetune.FinetuneResult`) and ``metrics`` (what ``results.json`` holds) are filled in as the
    steps run, so a caller can go on from the trained job. Built by :func:`start_job`."""

    cfg: TrainJobConfig
    run_dir: Path
    model: Any
    tok: Any
    info: Any
    data: TaskData | FileData
    started: float = field(default_factory=time.time)
    log: Callable[[str], Any] = log_progress
    result: Any = None
    metrics: dict[str, Any] = field(default_factory=dict)

    def run(self) -> None:
        """Every step, writing into ``run_dir`` (which the caller has created: :func:`workbench.runs.run_folder`)."""
        main = is_main_process()
        if main:
            base = self.data.evaluate(self.model, "base")
            self.log(f"base: {self.data.summary(base)}; training {self.cfg.method} on {len(self.data.examples())} examples")
        self.train()
        if not main:
            return
        with self.result.intervention.attach(self.model):
            tuned = self.data.evaluate(self.model, "tuned")
        self.log(f"tuned: {self.data.summary(tuned)}")
        self.metrics = {**self.data.headline(base, tuned), "base": base, "tuned": tuned}
        self.save()

    def train(self) -> Any:
        """Fine-tune ``cfg.method`` on the data's examples (checkpoints in ``run_dir/train``; held-out evaluations
        during training when a train config asks for them)."""
        from workbench.finetune import finetune

        cfg, run_dir = self.cfg, self.run_dir
        hint = (f"`workbench train {cfg.method} {self.data.source} --config <job.json> --runs-dir {run_dir.parent} --name {run_dir.name}` "
                "after lowering the learning rate in the job JSON (\"train\": {\"lr\": ...}, or the lr of the step that diverged)")
        during = is_main_process() and _evaluates_during_training(cfg)
        self.result = finetune(cfg.method, self.model, self.info, self.data.examples(), cfg.method_config, cfg.train,
                               pad_id=self.tok.pad_token_id or 0, out_dir=run_dir / "train", restart_hint=hint,
                               eval_fn=(lambda: self.data.evaluate(self.model, "during training")) if during else None)
        return self.result

    def save(self) -> None:
        """Write ``adapter/``, what the method's spec saves beyond it (:attr:`~workbench.methods.MethodSpec.save_extras`:
        e.g. a standard peft adapter, the ablation trained under), ``exported/`` when ``cfg.export`` (its max |Δlogit|
        on the data's check prompts recorded), then ``results.json`` last, from ``metrics``."""
        from workbench.artifacts import atomic_write_json, results_record
        from workbench.export import export_hf, export_max_logit_diff
        from workbench.methods import get_method, save_intervention
        from workbench.models import load_model

        cfg, result, run_dir, info = self.cfg, self.result, self.run_dir, self.info
        save_intervention(run_dir / "adapter", result.intervention, info)
        save_extras = get_method(cfg.method).save_extras
        if save_extras is not None:
            save_extras(run_dir, result, self.model, info)
        tr = result.train_result
        self.metrics.update({"n_trainable_parameters": result.intervention.n_trainable(), "losses": tr.losses,
                             "seconds_per_step": tr.seconds_per_step, "details": _json_details(result.details),
                             **({"evals": tr.evals} if tr.evals else {})})
        if cfg.export:
            clean, _, _ = load_model(cfg.model)  # a plain copy: bridges / peft adapters never touch it
            out = export_hf(clean, result.intervention, run_dir / "exported", tokenizer=self.tok, model_info=info)
            self.metrics["export_max_abs_logit_diff"] = export_max_logit_diff(self.model, result.intervention, out, self.data.check_ids())
            self.log(f"exported to {out} (max |Δlogit| {self.metrics['export_max_abs_logit_diff']:.2e})")
        atomic_write_json(run_dir / "results.json", results_record(cfg.to_dict(), self.metrics, {"base": info}, str(self.model.device),
                                                                   self.started, time.time()))


def run_train_job(cfg: TrainJobConfig, runs_dir: str | Path = "runs", name: str | None = None, log=log_progress) -> Path:
    """Run the job; return its run folder ``runs_dir / name``.

    ``name`` is one folder name (see :func:`workbench.runs.check_run_name`); an existing run folder resumes.
    The name and ``runs_dir`` are checked before the model loads (and a data job's files are read and validated
    before that); the run folder is created only after the model has loaded and the task's data was generated
    (the data files tokenized). On failure the folder follows the rule of
    :mod:`workbench.runs`: removed when this job created it and it holds no file, else kept (checkpoints let
    a rerun resume) with ``failed.json`` recording the error.

    Raises:
        ConfigError: a bad run name or an unusable ``runs_dir``, a bad data file (naming file, row and field; see
            :func:`workbench.datafiles.load_rows`) -- all before any model loads -- or a row over ``max_length``
            under ``overflow="refuse"`` (before the run folder exists); and as raised by loading and training,
            like ModelNotFoundError and NonFiniteLossError.
    """
    from workbench.runs import run_folder

    job = start_job(cfg, runs_dir, name, log)
    with run_folder(job.run_dir) if is_main_process() else contextlib.nullcontext():
        job.run()
    return job.run_dir


def start_job(cfg: TrainJobConfig, runs_dir: str | Path = "runs", name: str | None = None, log=log_progress) -> TrainJob:
    """Everything :func:`run_train_job` does before it writes: check the job (:func:`check_job`), the run name and
    ``runs_dir``, load the model, generate the task's split or tokenize the data files. Creates nothing.

    Raises:
        ConfigError, ModelNotFoundError: as :func:`run_train_job`.
    """
    from workbench.models import load_model
    from workbench.runs import plan_run

    started = time.time()
    checked = check_job(cfg)  # the model name and every data file, before the model loads
    if cfg.data is not None:
        return _start_data_job(cfg, runs_dir, name, log, started, checked)
    task, task_cfg = get_task(cfg.task), cfg.task_settings()  # validated before the model loads
    run_dir = plan_run(runs_dir, name, time.strftime(f"train-{cfg.method}-{cfg.task}-%Y%m%d-%H%M%S"))
    model, tok, info = load_model(cfg.model)
    split = task.generate(tok, task_cfg, prepend_bos=info.prepend_bos)
    return TrainJob(cfg, run_dir, model, tok, info, TaskData(cfg.task, task, split, tok.pad_token_id or 0), started, log)


def check_job(cfg: TrainJobConfig) -> tuple[Any, Any, dict[str, Any]] | None:
    """What :func:`run_train_job` checks before any model loads, without loading one (``workbench train
    --processes N`` runs it before any process starts): the model name (:func:`workbench.models.load.check_model_name`)
    and, for a data job, both data sources read and validated. Returns the data job's ``(train_rows, eval_rows,
    data_record)`` (its ``"warnings"``: a training file with repeated rows, eval data that is the training file);
    ``None`` for a task job.

    Raises:
        ConfigError: a bad data file (see :func:`workbench.datafiles.load_rows`).
        ModelNotFoundError, CheckpointError: a model name or folder :func:`~workbench.models.load_model` would refuse.
    """
    from workbench.models.load import check_model_name

    result = read_data(cfg) if cfg.data is not None else None
    check_model_name(cfg.model)
    return result


def _start_data_job(cfg: TrainJobConfig, runs_dir: str | Path, name: str | None, log, started: float, checked: Any) -> TrainJob:
    from workbench.datafiles import encode_rows
    from workbench.models import load_model
    from workbench.runs import plan_run

    train_rows, eval_rows, record = checked  # every file checked before the model loads (check_job)
    stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in Path(cfg.data).stem)[:60] or "data"
    run_dir = plan_run(runs_dir, name, time.strftime(f"train-{cfg.method}-{stem}-%Y%m%d-%H%M%S"))
    log(f"data: {len(train_rows)} train rows ({train_rows.shape}) from {cfg.data}, {len(eval_rows)} eval rows "
        f"({record['eval_source']}); overlap: {record['overlap']['identical_rows']} identical rows, "
        f"{record['overlap']['identical_prompts']} identical prompts")
    for warning in record["warnings"] if is_main_process() else ():
        log(f"warning: {warning}")
    model, tok, info = load_model(cfg.model)
    kw = {"prepend_bos": info.prepend_bos, "max_length": cfg.max_length, "overflow": cfg.overflow}
    train_enc, eval_enc = encode_rows(train_rows, tok, **kw), encode_rows(eval_rows, tok, **kw)
    record["train"].update(train_enc.describe())
    record["eval"].update(eval_enc.describe())
    cut = [f"{enc.n_truncated} of {len(rows)} {which} rows (longest {enc.longest_row_tokens} tokens)"
           for which, enc, rows in (("train", train_enc, train_rows), ("eval", eval_enc, eval_rows)) if enc.n_truncated]
    if cut:
        record["warnings"].append(f"{' and '.join(cut)} are longer than max_length {cfg.max_length} tokens and were truncated "
                                  "(the prompt keeps its tail, the answer its start); raise --max-length, or --overflow refuse to "
                                  "refuse them")
        if is_main_process():
            log(f"warning: {record['warnings'][-1]}")
    eos_ids = [tok.eos_token_id] if getattr(tok, "eos_token_id", None) is not None else []
    data = FileData(cfg.data, train_enc.examples, eval_enc.examples, eval_rows.shape, record, tok.pad_token_id or 0, eos_ids)
    return TrainJob(cfg, run_dir, model, tok, info, data, started, log)
