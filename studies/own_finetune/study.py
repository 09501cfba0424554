"""Fine-tuning on your own data, end to end: does a small fine-tune learn a narrow persona the base model does not have?

``python -m studies.own_finetune --config tiny|default|PATH --out runs/own_finetune`` trains each configured method
(default: LoRA and LoFiT) on the sourdough-baker data set (``data/train.jsonl``, 400 prompt/completion rows written by
``make_data.py``) through the train job (:mod:`workbench.train_job`, a data job, as ``workbench train <method> --data
... --eval-data ...``), one run folder per method under ``--out``, and evaluates base and tuned on ``data/eval.jsonl``
(80 rows, no question shared with training): held-out answer loss (nats per answer token), perplexity and exact match
(answer alone, and answer + EOS). ``results.json`` holds every method's numbers, training losses and the data record
(sha256, rows, overlap); ``figures/`` the answer loss and exact match per method and the training curves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studies.common import ShippedConfig, save_results
from workbench.errors import ConfigError
from workbench.runs import log_progress
from workbench.train_job import TrainJobConfig

STUDY = "own_finetune"
DATA = Path(__file__).resolve().parent / "data"


@dataclass
class OwnFinetuneConfig(ShippedConfig):
    """Settings of the study.

    Attributes:
        methods: method name -> its job settings, ``{"method_config": {...}, "train": {...}}`` (an entry is also a
            valid ``workbench train <method> --config`` JSON).
        data, eval_data: the training and held-out files (``None``: the shipped ``data/train.jsonl`` /
            ``data/eval.jsonl``).
        max_length: most tokens per example (longer rows are truncated).

    Raises:
        ConfigError: no method, an entry with keys other than ``method_config`` / ``train``, or a method or
            settings the train job refuses (checked here, before any model loads).
    """

    model: str = "smollm2-135m-instruct"
    methods: dict[str, dict[str, Any]] = field(default_factory=lambda: {"lora": {"method_config": {"r": 8, "alpha": 16}}})
    data: str | None = None
    eval_data: str | None = None
    max_length: int = 512

    def __post_init__(self) -> None:
        if not self.methods:
            raise ConfigError("OwnFinetuneConfig.methods is empty; name at least one method (e.g. \"lora\")")
        for name, settings in self.methods.items():
            extra = sorted(set(settings) - {"method_config", "train"}) if isinstance(settings, dict) else None
            if extra is None or extra:
                raise ConfigError(f"OwnFinetuneConfig.methods[{name!r}] takes method_config and train only, got {settings!r}")
        self.jobs()  # every job validated as data

    def jobs(self) -> dict[str, TrainJobConfig]:
        """One data job per method, on the data files."""
        data = self.data or str(DATA / "train.jsonl")
        eval_data = self.eval_data or str(DATA / "eval.jsonl")
        return {name: TrainJobConfig(method=name, model=self.model, method_config=dict(s.get("method_config") or {}), train=s.get("train"),
                                     data=data, eval_data=eval_data, max_length=self.max_length)
                for name, s in self.methods.items()}


def run(cfg: OwnFinetuneConfig, out_dir: str | Path, log=log_progress) -> dict[str, Any]:
    """Train and evaluate every method into ``out_dir/<method>/`` (an existing one resumes); write ``results.json`` and
    ``figures/`` in ``out_dir``; return the record."""
    from studies.own_finetune.figures import figures
    from workbench.runs import run_folder
    from workbench.train_job import start_job

    out, started = Path(out_dir), time.time()
    metrics: dict[str, Any] = {"methods": {}}
    info = device = None
    for name, job_cfg in cfg.jobs().items():
        log(f"[{name}] training on {job_cfg.data}, evaluating on {job_cfg.eval_data}")
        job = start_job(job_cfg, out, name, log=log)
        with run_folder(job.run_dir):
            job.run()
        m = job.metrics
        metrics["methods"][name] = {"base": m["base"], "tuned": m["tuned"], "n_trainable_parameters": m["n_trainable_parameters"],
                                    "losses": m["losses"], "seconds_per_step": m["seconds_per_step"]}
        metrics["data"], metrics["warnings"] = m["data"], m["warnings"]
        info, device = job.info, str(job.model.device)
        del job  # one model in memory at a time
    return save_results(out, {**cfg.to_dict(), "study": STUDY}, metrics, {"base": info}, device, started, figures)
