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

In Python::

    from workbench.train_job import TrainJobConfig, run_train_job
    run_dir = run_train_job(TrainJobConfig(method="lofit", data="train.jsonl", eval_data="eval.jsonl",
                                           train={"max_steps": 40}))
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from workbench.distributed import is_main_process
from workbench.errors import ConfigError
from workbench.intervention import Intervention
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


def _check_ids(examples: list) -> torch.Tensor:
    """``Int[Tensor, "batch pos"]``: up to 8 held-out prompts of the first one's length (no padding needed)."""
    first = len(examples[0].prompt_ids)
    return torch.tensor([e.prompt_ids for e in examples if len(e.prompt_ids) == first][:8], dtype=torch.long)


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
    from workbench.models import load_model
    from workbench.runs import plan_run, run_folder

    started = time.time()
    checked = check_job(cfg)  # the model name and every data file, before the model loads
    if cfg.data is not None:
        return _run_data_job(cfg, runs_dir, name, log, started, checked)
    task, task_cfg = get_task(cfg.task), cfg.task_settings()  # validated before the model loads
    run_dir = plan_run(runs_dir, name, time.strftime(f"train-{cfg.method}-{cfg.task}-%Y%m%d-%H%M%S"))
    model, tok, info = load_model(cfg.model)
    split = task.generate(tok, task_cfg, prepend_bos=info.prepend_bos)
    with run_folder(run_dir) if is_main_process() else contextlib.nullcontext():
        _train_into(run_dir, cfg, task, split, model, tok, info, started, log)
    return run_dir


def _save_outputs(run_dir: Path, cfg: TrainJobConfig, result: Any, model: Any, tok: Any, info: Any, metrics: dict[str, Any],
                  check_ids: Any, started: float, log) -> None:
    """Write a trained job's artifacts into ``run_dir``: ``adapter/``, what the method's spec saves beyond it
    (:attr:`~workbench.methods.MethodSpec.save_extras`: e.g. a standard peft adapter, the ablation trained under),
    ``exported/`` when ``cfg.export`` (its max |Δlogit| on the prompts ``check_ids()`` returns recorded), then
    ``results.json`` last."""
    from workbench.artifacts import atomic_write_json, results_record, save_intervention
    from workbench.export import export_hf, export_max_logit_diff
    from workbench.methods import get_method
    from workbench.models import load_model

    save_intervention(run_dir / "adapter", result.intervention, info)
    save_extras = get_method(cfg.method).save_extras
    if save_extras is not None:
        save_extras(run_dir, result, model, info)
    metrics.update({"n_trainable_parameters": result.intervention.n_trainable(), "losses": result.train_result.losses,
                    "seconds_per_step": result.train_result.seconds_per_step, "details": _json_details(result.details)})
    if cfg.export:
        clean, _, _ = load_model(cfg.model)  # a plain copy: bridges / peft adapters never touch it
        out = export_hf(clean, result.intervention, run_dir / "exported", tokenizer=tok, model_info=info)
        metrics["export_max_abs_logit_diff"] = export_max_logit_diff(model, result.intervention, out, check_ids())
        log(f"exported to {out} (max |Δlogit| {metrics['export_max_abs_logit_diff']:.2e})")
    atomic_write_json(run_dir / "results.json", results_record(cfg.to_dict(), metrics, {"base": info}, str(model.device), started, time.time()))


def _train_into(run_dir: Path, cfg: TrainJobConfig, task: Any, split: Any, model: Any, tok: Any, info: Any, started: float, log) -> None:
    """The writing part of :func:`run_train_job`: train, evaluate, save into the (created) ``run_dir``."""
    pad_id = tok.pad_token_id or 0
    _train_evaluate_save(run_dir, cfg, model, tok, info, task.to_examples(split), f"--task {cfg.task}",
                         lambda which: task.evaluate(model, split, pad_id=pad_id),
                         lambda r: f"held-out accuracy {r['accuracy']:.3f} on {cfg.task}",
                         lambda base, tuned: {"base_accuracy": base["accuracy"], "tuned_accuracy": tuned["accuracy"]},
                         lambda: _check_ids(task.to_examples(split, "heldout")), started, log)


def _train_evaluate_save(run_dir: Path, cfg: TrainJobConfig, model: Any, tok: Any, info: Any, examples: list, source: str,
                         evaluate: Any, summary: Any, headline: Any, check_ids: Any, started: float, log) -> None:
    """Task and data jobs alike: evaluate the base (``evaluate("base")``, main process only), train on ``examples``,
    evaluate the tuned model, then :func:`_save_outputs` with ``headline(base, tuned)`` metrics first."""
    from workbench.finetune import finetune

    main = is_main_process()
    if main:
        base = evaluate("base")
        log(f"base: {summary(base)}; training {cfg.method} on {len(examples)} examples")
    hint = (f"`workbench train {cfg.method} {source} --config <job.json> --runs-dir {run_dir.parent} --name {run_dir.name}` "
            "after lowering the learning rate in the job JSON (\"train\": {\"lr\": ...}, or the lr of the step that diverged)")
    result = finetune(cfg.method, model, info, examples, cfg.method_config, cfg.train, pad_id=tok.pad_token_id or 0,
                      out_dir=run_dir / "train", restart_hint=hint)
    if not main:
        return
    with result.intervention.attach(model):
        tuned = evaluate("tuned")
    log(f"tuned: {summary(tuned)}")
    metrics = {**headline(base, tuned), "base": base, "tuned": tuned}
    _save_outputs(run_dir, cfg, result, model, tok, info, metrics, check_ids, started, log)


# --- your own data ------------------------------------------------------------------------------------------------
def _read_data(cfg: TrainJobConfig) -> tuple[Any, Any, dict[str, Any]]:
    """``(train_rows, eval_rows, data_record)``: both sources read and validated (no model needed)."""
    from workbench.datafiles import load_rows
    from workbench.datafiles.split import hold_out, overlap, row_key

    rows = load_rows(cfg.data, fields=cfg.data_fields, shape=cfg.data_shape)
    n_duplicates = len(rows) - len({row_key(r) for r in rows.rows})
    repeated = f"{cfg.data}: {n_duplicates} of {len(rows)} rows repeat an earlier row (every field equal)"
    warnings = [f"{repeated}; they are trained on as often as they occur"] if n_duplicates else []
    if cfg.eval_data is not None:
        train_rows, eval_rows = rows, load_rows(cfg.eval_data, fields=cfg.data_fields, shape=cfg.data_shape)
        record = {"eval_source": "file"}
        if train_rows.sha256 == eval_rows.sha256:
            same = (f"is the training file itself ({cfg.data})" if Path(cfg.eval_data).resolve() == Path(cfg.data).resolve()
                    else f"({cfg.eval_data}) has the content of the training file ({cfg.data})")
            warnings.append(f"the eval data {same}: the held-out metrics are measured on the rows trained on, not on held-out rows")
    else:
        train_rows, eval_rows = hold_out(rows, cfg.eval_fraction, cfg.split_seed)
        record = {"eval_source": "held_out", "eval_fraction": cfg.eval_fraction, "split_seed": cfg.split_seed}
    record.update({"train": train_rows.describe(), "eval": eval_rows.describe(), "overlap": overlap(train_rows, eval_rows),
                   "duplicate_train_file_rows": n_duplicates, "max_length": cfg.max_length, "overflow": cfg.overflow,
                   "warnings": warnings})
    return train_rows, eval_rows, record


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

    result = _read_data(cfg) if cfg.data is not None else None
    check_model_name(cfg.model)
    return result


def _run_data_job(cfg: TrainJobConfig, runs_dir: str | Path, name: str | None, log, started: float, checked: Any) -> Path:
    from workbench.datafiles import encode_rows
    from workbench.models import load_model
    from workbench.runs import plan_run, run_folder

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
    with run_folder(run_dir) if is_main_process() else contextlib.nullcontext():
        _train_data_into(run_dir, cfg, train_enc.examples, eval_enc.examples, eval_rows.shape, record, model, tok, info, started, log)
    return run_dir


def _train_data_into(run_dir: Path, cfg: TrainJobConfig, train_ex: list, eval_ex: list, shape: str, record: dict[str, Any],
                     model: Any, tok: Any, info: Any, started: float, log) -> None:
    """The writing part of a data job: evaluate base, train, evaluate tuned, save into ``run_dir``."""
    from workbench.datafiles.evaluate import evaluate_examples

    pad_id = tok.pad_token_id or 0
    em = shape != "text"
    eos_ids = [tok.eos_token_id] if getattr(tok, "eos_token_id", None) is not None else []

    def summary(r: dict[str, Any]) -> str:
        return (f"held-out answer loss {r['answer_loss']:.3f} nats/token (perplexity {r['perplexity']:.2f})"
                + (f", exact match {r['exact_match_answer']:.3f} (answer + EOS {r['exact_match_answer_eos']:.3f})" if em else ""))

    _train_evaluate_save(run_dir, cfg, model, tok, info, train_ex, f"--data {cfg.data}",
                         lambda which: evaluate_examples(model, eval_ex, pad_id=pad_id, exact_match=em, eos_ids=eos_ids,
                                                         desc=f"eval {which}"),
                         summary, lambda base, tuned: {"base_answer_loss": base["answer_loss"], "tuned_answer_loss": tuned["answer_loss"],
                                                       "data": {k: v for k, v in record.items() if k != "warnings"},
                                                       "warnings": record["warnings"]}, lambda: _check_ids(eval_ex), started, log)
