"""The diffing benchmark: fine-tune a model on organisms whose objective is known, diff each fine-tune against its base
on unrelated text, and score what every readout reveals — raw and minus a control fine-tune where there is nothing to
find (METHODS.md, "Scoring diffing readouts on fine-tunes with known objectives").

Protocol (:func:`run`), everything written under ``--out`` and resumable (a finished step is not redone):

1. ``data/``: each organism's train / eval JSONL (:mod:`.organisms`; keywords fixed in code before any run);
   ``corpus.jsonl``: the generic corpus (:mod:`.generic_corpus`);
2. ``runs/<organism>-<method>/``: each fine-tune through the same job as ``workbench train <method> --data``
   (:func:`workbench.train_job.run_train_job`), with the method's settings from the config; held-out answer loss of
   base and tuned kept as the fit;
3. ``diffs/<organism>-<method>/``: ``workbench diff`` of base vs that fine-tune over the corpus
   (:func:`studies.dataset_diff.study.run`: KL, diff mining, the ADL per position on the fine-tuned model);
3b. with ``dictionaries`` set: ``dictionaries/<organism>-<method>/``: an activation store over the first
   ``dictionaries.corpus_docs`` documents of the generic corpus and the configured sparse dictionaries
   (:func:`studies.dictionaries.pair_run.run_pair`: crosscoder tuned-only latents after Latent Scaling, difference-SAE
   latents, each with its decoder tokens and max-activating contexts), read as readouts of their own;
4. every readout of every diff scored with the organism's keywords (:mod:`.readouts`, :mod:`.scoring`); the control
   fine-tune's diff (same method) is scored with the same keywords, and each score is reported minus the control's;
5. ``results.json``, ``figures/`` (the heatmap per method) and ``table.md``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studies.common import ShippedConfig, save_results
from workbench.config import PositiveInt, check_fields
from workbench.errors import ConfigError
from workbench.runs import log_progress

STUDY = "diffing_benchmark"
CONTROL = "control"


@dataclass
class BenchmarkConfig(ShippedConfig):
    """The benchmark's settings (``configs/{tiny,default,full}.json``).

    Attributes:
        model: the base model (registry name, model directory or Hugging Face id).
        organisms: organisms fine-tuned (:data:`studies.diffing_benchmark.organisms.ORGANISMS`); must include
            ``"control"``.
        methods: fine-tuning method -> ``{"method_config": ..., "train": ...}`` as ``workbench train --config`` takes.
        n_train, n_eval, data_seed: rows per organism and their seed.
        corpus_docs, corpus_min_words, corpus_seed: the generic corpus (documents, their minimum length, sample seed).
        diff: ``workbench diff`` settings (:class:`studies.dataset_diff.ModelDiffConfig` fields) for every diff.
        top: ranked tokens scored per token readout (hits in the top ``top``, MRR).
        dictionaries: ``null`` (no dictionary readouts) or ``{"corpus_docs": n, "methods": [...], **PairRunSettings
            fields}`` (:class:`studies.dictionaries.pair_run.PairRunSettings`; ``store.layers`` is the ADL layer of the
            diff; ``methods``: the fine-tuning methods whose fine-tunes get dictionaries, default all).

    Raises:
        ConfigError: no control, an unknown organism or method, a non-positive size, or diff settings that
            :class:`~studies.dataset_diff.ModelDiffConfig` refuses — before any model loads.
    """

    model: str = "smollm2-135m-instruct"
    organisms: list[str] = field(default_factory=lambda: ["baker", "false_fact", "trigger", "pirate", "control"])
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    n_train: PositiveInt = 400
    n_eval: PositiveInt = 80
    data_seed: int = 0
    corpus_docs: PositiveInt = 2000
    corpus_min_words: PositiveInt = 30
    corpus_seed: int = 0
    diff: dict[str, Any] = field(default_factory=dict)
    top: PositiveInt = 20
    dictionaries: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        from studies.diffing_benchmark.organisms import get_organism
        from workbench.methods import available_methods

        check_fields(self)
        if CONTROL not in self.organisms or len(set(self.organisms)) != len(self.organisms) or len(self.organisms) < 2:
            raise ConfigError(f"organisms must be distinct, include {CONTROL!r} and one organism more, got {self.organisms}")
        for name in self.organisms:
            get_organism(name)
        if not isinstance(self.methods, dict) or not self.methods:
            raise ConfigError("methods must map at least one fine-tuning method to its settings")
        unknown = set(self.methods) - set(available_methods())
        if unknown:
            raise ConfigError(f"unknown fine-tuning methods {sorted(unknown)}; registered: {available_methods()}")
        self.diff_config("corpus.jsonl", "run")  # diff settings checked now, before any model loads
        if self.dictionaries is not None:
            self.dictionary_settings(0)
            unknown = set(self.dictionary_methods()) - set(self.methods)
            if unknown or not isinstance(self.dictionary_methods(), list):
                raise ConfigError(f"BenchmarkConfig.dictionaries.methods must list methods of the benchmark ({sorted(self.methods)}), "
                                  f"got {self.dictionaries.get('methods')!r}")
        for method in self.methods:
            self.train_config(method, "train.jsonl", "eval.jsonl")

    def diff_config(self, corpus: str, tuned: str) -> Any:
        from studies.dataset_diff import ModelDiffConfig
        from workbench.config import config_from_dict

        return config_from_dict(ModelDiffConfig, {**self.diff, "base": self.model, "tuned": tuned, "data": corpus,
                                                  "max_rows": self.corpus_docs})

    def dictionary_methods(self) -> list[str]:
        """The methods whose fine-tunes get dictionary readouts (none without ``dictionaries``)."""
        if self.dictionaries is None:
            return []
        return self.dictionaries.get("methods", list(self.methods))

    def dictionary_settings(self, layer: int) -> tuple[int, Any]:
        """``(corpus_docs, PairRunSettings)`` of the dictionary readouts at ``layer``.

        Raises:
            ConfigError: no ``corpus_docs`` or more than ``corpus_docs`` of the benchmark, or settings PairRunSettings refuses.
        """
        from studies.dictionaries.pair_run import PairRunSettings
        from workbench.config import config_from_dict

        spec = dict(self.dictionaries or {})
        spec.pop("methods", None)
        n = spec.pop("corpus_docs", None)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= self.corpus_docs:
            raise ConfigError(f"BenchmarkConfig.dictionaries.corpus_docs must be between 1 and corpus_docs={self.corpus_docs}, got {n!r}")
        spec["store"] = {**spec.get("store", {}), "layers": [layer]}
        return n, config_from_dict(PairRunSettings, spec, where="BenchmarkConfig.dictionaries")

    def train_config(self, method: str, train: str, eval_data: str) -> Any:
        from workbench.config import config_from_dict
        from workbench.train_job import TrainJobConfig

        return config_from_dict(TrainJobConfig, {**self.methods[method], "method": method, "model": self.model, "data": train,
                                                 "eval_data": eval_data})


class _Info:
    """The base model's recorded ModelInfo (read back from a diff's results.json) for :func:`save_results`."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.info = info

    def to_dict(self) -> dict[str, Any]:
        return self.info


def _fit(run_dir: Path) -> dict[str, Any]:
    m = json.loads((run_dir / "results.json").read_text())["metrics"]
    return {"base_answer_loss": m["base"]["answer_loss"], "tuned_answer_loss": m["tuned"]["answer_loss"],
            "train_wall_s": m.get("train_wall_s"), "n_trainable_parameters": m.get("n_trainable_parameters")}


def _dictionaries(cfg: BenchmarkConfig, out: Path, name: str, run_dir: Path, layer: int, log: Callable[[str], None]) -> dict[str, Any]:
    """The dictionary readouts' record of fine-tune ``name`` (made once, then read from ``dictionaries.json``)."""
    folder = out / "dictionaries" / name
    if not (folder / "dictionaries.json").is_file():
        from studies.dictionaries.pair_run import run_pair
        from workbench.models.tuned import load_pair

        n, settings = cfg.dictionary_settings(layer)
        texts = [json.loads(line)["text"] for line in (out / "corpus.jsonl").read_text().splitlines()[:n]]
        log(f"[3/3] sparse dictionaries of {name} over {n} generic documents")
        run_pair(load_pair(cfg.model, str(run_dir)).pair, texts, folder, settings, log=log)
    return json.loads((folder / "dictionaries.json").read_text())


def run(cfg: BenchmarkConfig, out_dir: str | Path, log: Callable[[str], None] = log_progress) -> dict[str, Any]:
    """Run (or resume) the benchmark into ``out_dir``; return the results record (see the module docstring).

    Raises:
        ConfigError: the generic corpus cannot be built (no ``fortunes`` data), or as the train and diff jobs.
    """
    from studies.diffing_benchmark.figures import figures, write_table
    from studies.diffing_benchmark.generic_corpus import write_generic_corpus
    from studies.diffing_benchmark.organisms import get_organism, write_all
    from studies.diffing_benchmark.readouts import score_record
    from studies.diffing_benchmark.scoring import table_rows
    from studies.dataset_diff.study import run as run_diff
    from workbench.train_job import run_train_job

    started = time.time()
    out = Path(out_dir)
    corpus = out / "corpus.jsonl"
    corpus_hash = write_generic_corpus(corpus, cfg.corpus_docs, cfg.corpus_seed, cfg.corpus_min_words)
    manifest = json.loads(write_all(out / "data", cfg.organisms, cfg.n_train, cfg.n_eval, cfg.data_seed).read_text())
    log(f"[1/3] {len(cfg.organisms)} organisms in {out / 'data'}, generic corpus of {cfg.corpus_docs} documents (sha256 {corpus_hash[:12]})")
    timing: dict[str, dict[str, float]] = {}
    fits: dict[str, dict[str, Any]] = {}
    scored: dict[str, dict[str, Any]] = {}
    for method in cfg.methods:
        for org in cfg.organisms:
            name = f"{org}-{method}"
            files = manifest["organisms"][org]["files"]
            run_dir, diff_dir = out / "runs" / name, out / "diffs" / name
            t0 = time.time()
            if not (run_dir / "results.json").is_file():
                log(f"[2/3] fine-tuning {name}")
                tcfg = cfg.train_config(method, str(out / "data" / files["train"]), str(out / "data" / files["eval"]))
                run_train_job(tcfg, out / "runs", name, log=log)
            t1 = time.time()
            if not (diff_dir / "results.json").is_file():
                log(f"[3/3] diffing {name} over the generic corpus")
                run_diff(cfg.diff_config(str(corpus), str(run_dir)), diff_dir, log=log)
            record = json.loads((diff_dir / "results.json").read_text())
            if method in cfg.dictionary_methods():
                record["metrics"]["dictionaries"] = _dictionaries(cfg, out, name, run_dir, record["metrics"]["adl"]["layer"], log)
            timing[name] = {"train_s": t1 - t0, "diff_s": time.time() - t1, **record["metrics"].get("timing_s", {})}
            fits[name] = {**_fit(run_dir), "kl_unrelated_nats_per_token": record["metrics"]["kl"]["mean_per_token"],
                          "split_half_cosine": record["metrics"]["adl"]["split_half_cosine"]}
            scored[name] = record["metrics"]
            base_info, device = record["meta_info"]["models"]["base"], record["meta_info"]["device"]
    strip = lambda s: {k: v for k, v in s.items() if k != "best"}  # noqa: E731  (the label is not a score)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    best: dict[str, Any] = {}
    for org in cfg.organisms:
        if org == CONTROL:
            continue
        keywords = get_organism(org).keywords
        for method in cfg.methods:
            tuned = score_record(scored[f"{org}-{method}"], keywords, cfg.top)
            control = score_record(scored[f"{CONTROL}-{method}"], keywords, cfg.top)
            for readout, score in tuned.items():
                results.setdefault(readout, {}).setdefault(method, {})[org] = {"tuned": strip(score), "control": strip(control[readout])}
                best[f"{readout} | {method} | {org}"] = {"tuned": score["best"], "control": control[readout]["best"]}
    rows = table_rows(results)
    metrics = {"rows": rows, "best_candidate": best, "fit": fits, "timing_s": timing, "corpus_sha256": corpus_hash,
               "organisms": {o: {"keywords": manifest["organisms"][o]["keywords"], "sha256": manifest["organisms"][o]["sha256"]}
                             for o in cfg.organisms},
               "wall_s": time.time() - started}
    record = save_results(out, {**cfg.to_dict(), "study": STUDY}, metrics, {"base": _Info(base_info)}, device, started, figures)
    write_table(out / "table.md", record)
    log(f"      wrote {out / 'results.json'}, {out / 'table.md'} and figures/ in {metrics['wall_s']:.0f} s")
    return record
