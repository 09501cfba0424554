"""What a train job (:mod:`workbench.train_job`) trains and evaluates on: a registered task's split
(:class:`TaskData`) or your data files' tokenized rows (:class:`FileData`).

Both give the job the same five things: its ``examples`` (training), ``evaluate(model, which)`` (held-out metrics of
the model as it is now), a one-line ``summary`` of those metrics, the ``headline`` metrics ``results.json`` starts
with, and ``check_ids`` (held-out prompts an export is checked on). :func:`read_data` reads and validates a data job's
files before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


def _check_ids(examples: list) -> torch.Tensor:
    """``Int[Tensor, "batch pos"]``: up to 8 held-out prompts of the first one's length (no padding needed)."""
    first = len(examples[0].prompt_ids)
    return torch.tensor([e.prompt_ids for e in examples if len(e.prompt_ids) == first][:8], dtype=torch.long)



@dataclass
class TaskData:
    """A task job's data: the ``split`` of the task registered as ``name`` (``task``: its TaskSpec); train on
    ``split.train``, score ``split.heldout``."""

    name: str
    task: Any
    split: Any
    pad_id: int = 0

    @property
    def source(self) -> str:
        return f"--task {self.name}"

    def examples(self) -> list:
        return self.task.to_examples(self.split)

    def evaluate(self, model: Any, which: str) -> dict[str, Any]:
        return self.task.evaluate(model, self.split, pad_id=self.pad_id)

    def summary(self, metrics: dict[str, Any]) -> str:
        return f"held-out accuracy {metrics['accuracy']:.3f} on {self.name}"

    def headline(self, base: dict[str, Any], tuned: dict[str, Any]) -> dict[str, Any]:
        return {"base_accuracy": base["accuracy"], "tuned_accuracy": tuned["accuracy"]}

    def check_ids(self) -> torch.Tensor:
        return _check_ids(self.task.to_examples(self.split, "heldout"))


@dataclass
class FileData:
    """A data job's data: ``train`` / ``eval`` Examples tokenized from ``path`` (and the eval source), the eval
    rows' ``shape`` and the ``record`` of both sources (:func:`read_data`)."""

    path: str
    train: list
    eval: list
    shape: str
    record: dict[str, Any]
    pad_id: int = 0
    eos_ids: list[int] = field(default_factory=list)

    @property
    def source(self) -> str:
        return f"--data {self.path}"

    def examples(self) -> list:
        return self.train

    def evaluate(self, model: Any, which: str) -> dict[str, Any]:
        from workbench.datafiles.evaluate import evaluate_examples

        return evaluate_examples(model, self.eval, pad_id=self.pad_id, exact_match=self.shape != "text", eos_ids=self.eos_ids,
                                 desc=f"eval {which}")

    def summary(self, r: dict[str, Any]) -> str:
        em = self.shape != "text"
        return (f"held-out answer loss {r['answer_loss']:.3f} nats/token (perplexity {r['perplexity']:.2f})"
                + (f", exact match {r['exact_match_answer']:.3f} (answer + EOS {r['exact_match_answer_eos']:.3f})" if em else ""))

    def headline(self, base: dict[str, Any], tuned: dict[str, Any]) -> dict[str, Any]:
        return {"base_answer_loss": base["answer_loss"], "tuned_answer_loss": tuned["answer_loss"],
                "data": {k: v for k, v in self.record.items() if k != "warnings"}, "warnings": self.record["warnings"]}

    def check_ids(self) -> torch.Tensor:
        return _check_ids(self.eval)



def read_data(cfg: Any) -> tuple[Any, Any, dict[str, Any]]:
    """``(train_rows, eval_rows, data_record)`` of a data job (a :class:`~workbench.train_job.TrainJobConfig` with
    ``data``): both sources read and validated (no model needed)."""
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
