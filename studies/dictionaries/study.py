"""Sparse dictionaries and edge attribution on real fine-tunes: what did fine-tuning add, found without supervision
(crosscoders, difference SAEs) and at edge level (EAP, EAP-IG).

Sources (METHODS.md): Lindsey et al. 2024 "Sparse crosscoders"; Minder, Dumas, Juang, Chugtai, Nanda 2025 (arXiv
2504.02922, Latent Scaling); Bussmann, Leask, Nanda 2024 (BatchTopK); Syed, Rager, Conmy 2023 (EAP); Hanna, Pezzelle,
Belinkov 2024 (EAP-IG).

Protocol (:func:`run`), everything written under ``--out`` and resumable (a finished step is not redone):

1. ``corpus.jsonl``: the generic corpus (Debian fortunes, :mod:`studies.diffing_benchmark.generic_corpus`);
2. ``runs/<fine-tune>/``: each fine-tune through the same job as ``workbench train`` (:func:`workbench.train_job.
   run_train_job`) — the narrow-domain data of ``studies/own_finetune`` with LoRA, and entity tracking with LoFiT;
3. ``dictionaries/<fine-tune>/``: an activation store of base and tuned at the middle layer over the generic corpus
   plus ``finetune_rows`` held-out rows of the fine-tune's own data (:mod:`studies.dictionaries.pair_run`), then each
   configured dictionary (L1 crosscoder, BatchTopK crosscoder, difference SAE) trained on it and read: variance
   explained, dead latents, latent classes by relative decoder norm, Latent Scaling, the top tuned-only latents'
   decoder tokens and max-activating contexts, steering the base model with them (keyword hit rate vs unsteered);
4. ``edges/``: EAP and EAP-IG on entity tracking for base and the entity-tracking fine-tune, both against exact edge
   patching on a sample of edges, faithfulness curves against size-matched random circuits, edges gained / lost;
5. ``results.json``, ``figures/`` and ``table.md``.
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

STUDY = "dictionaries"


@dataclass
class DictionariesConfig(ShippedConfig):
    """The study's settings (``configs/{tiny,default,full}.json``).

    Attributes:
        model: the base model (registry name, model directory or Hugging Face id).
        finetunes: name -> ``workbench train`` job settings (:class:`workbench.train_job.TrainJobConfig` fields but
            ``model``; data paths relative to the repository root).
        keywords: fine-tune name -> organism of :mod:`studies.diffing_benchmark.organisms` whose keywords score
            that fine-tune's latents and steered generations (fine-tunes without one are not keyword-scored).
        corpus_docs, corpus_min_words, corpus_seed: the generic corpus (documents, minimum words, sample seed).
        finetune_rows: held-out rows of each fine-tune's own data added to its store's corpus (0 = generic only).
        store: :class:`probes.dictionaries.StoreSettings` fields but ``layers`` (``layer`` picks it; ``null`` = the
            middle layer, as the ADL).
        dictionaries: name -> ``{"kind": "crosscoder" | "diff_sae", **DictionaryConfig fields but d_model}``.
        train: ``steps``, ``batch_tokens``, ``lr``, ``seed`` of every dictionary's training.
        views: sizes of the latent views (see :mod:`studies.dictionaries.pair_run`).
        edges: the edge-attribution part (``finetune``: which fine-tune; ``null`` skips it).

    Raises:
        ConfigError: an unknown key, a bad size, a fine-tune job or dictionary config its reader refuses, an unknown
            organism — before any model loads.
    """

    model: str = "smollm2-135m-instruct"
    finetunes: dict[str, dict[str, Any]] = field(default_factory=dict)
    keywords: dict[str, str] = field(default_factory=dict)
    corpus_docs: PositiveInt = 1200
    corpus_min_words: PositiveInt = 30
    corpus_seed: int = 0
    finetune_rows: int = 0
    layer: int | None = None
    store: dict[str, Any] = field(default_factory=dict)
    dictionaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    views: dict[str, Any] = field(default_factory=dict)
    edges: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        from studies.diffing_benchmark.organisms import get_organism

        check_fields(self)
        if not self.finetunes:
            raise ConfigError("DictionariesConfig.finetunes must name at least one fine-tune")
        if self.finetune_rows < 0:
            raise ConfigError(f"DictionariesConfig.finetune_rows must be >= 0, got {self.finetune_rows}")
        for name in self.finetunes:
            self.train_config(name)
        for name, organism in self.keywords.items():
            if name not in self.finetunes:
                raise ConfigError(f"DictionariesConfig.keywords names {name!r}, which is not a fine-tune; fine-tunes: {sorted(self.finetunes)}")
            get_organism(organism)
        self.pair_settings(layer=0)  # store, dictionary, training and view settings checked now
        if self.edges is not None:
            from studies.dictionaries.edges import EdgesSettings
            from workbench.config import config_from_dict

            e = config_from_dict(EdgesSettings, self.edges, where="DictionariesConfig.edges")
            if e.finetune not in self.finetunes:
                raise ConfigError(f"DictionariesConfig.edges.finetune {e.finetune!r} is not a fine-tune; fine-tunes: {sorted(self.finetunes)}")

    def train_config(self, name: str) -> Any:
        from workbench.config import config_from_dict
        from workbench.train_job import TrainJobConfig

        spec = self.finetunes[name]
        if not isinstance(spec, dict) or "model" in spec:
            raise ConfigError(f"DictionariesConfig.finetunes[{name!r}] must be a train job's settings without 'model', got {spec!r}")
        return config_from_dict(TrainJobConfig, {**spec, "model": self.model}, where=f"DictionariesConfig.finetunes[{name!r}]")

    def pair_settings(self, layer: int) -> Any:
        """The per-fine-tune settings (:class:`studies.dictionaries.pair_run.PairRunSettings`) at ``layer``."""
        from studies.dictionaries.pair_run import PairRunSettings
        from workbench.config import config_from_dict

        return config_from_dict(PairRunSettings, {"store": {**self.store, "layers": [layer]}, "dictionaries": self.dictionaries,
                                                  "train": self.train, "views": self.views}, where="DictionariesConfig")


def _finetune_texts(job: Any, n: int, tokenizer: Any) -> list[str]:
    """Up to ``n`` rows of the fine-tune's held-out data as texts (its eval file; a task's held-out prompts + answers)."""
    if n == 0:
        return []
    if job.data is not None:
        from workbench.datafiles import corpus_texts

        return corpus_texts(job.eval_data or job.data, tokenizer, limit=n)
    from workbench.tasks import get_task

    task = get_task(job.task)
    split = task.generate_fn(tokenizer, job.task_settings(), False)
    examples = task.examples_fn(split.heldout[:n])
    return [tokenizer.decode(list(e.prompt_ids) + list(e.answer_ids), skip_special_tokens=True) for e in examples]


def run(cfg: DictionariesConfig, out_dir: str | Path, log: Callable[[str], None] = log_progress) -> dict[str, Any]:
    """Run (or resume) the study into ``out_dir``; return the results record (see the module docstring).

    Raises:
        ConfigError: no generic corpus (``fortunes`` not installed), or as the train job, the store and the dictionaries.
    """
    from probes.diff.adl import default_layer
    from studies.dictionaries.edges import EdgesSettings, run_edges
    from studies.dictionaries.figures import figures, write_table
    from studies.dictionaries.pair_run import run_pair
    from studies.diffing_benchmark.generic_corpus import write_generic_corpus
    from workbench.config import config_from_dict
    from workbench.models.tuned import load_pair
    from workbench.train_job import run_train_job

    started = time.time()
    out = Path(out_dir)
    corpus_path = out / "corpus.jsonl"
    corpus_hash = write_generic_corpus(corpus_path, cfg.corpus_docs, cfg.corpus_seed, cfg.corpus_min_words)
    generic = [json.loads(line)["text"] for line in corpus_path.read_text().splitlines()]
    log(f"[1/4] generic corpus: {len(generic)} documents (sha256 {corpus_hash[:12]})")
    per_finetune: dict[str, Any] = {}
    base_info = device = None
    for name in cfg.finetunes:
        job = cfg.train_config(name)
        run_dir = out / "runs" / name
        if not (run_dir / "results.json").is_file():
            log(f"[2/4] fine-tuning {name} ({job.method})")
            run_train_job(job, out / "runs", name, log=log)
        loaded = load_pair(cfg.model, str(run_dir))
        pair = loaded.pair
        layer = cfg.layer if cfg.layer is not None else default_layer(pair.base_info.n_layers)
        texts = generic + _finetune_texts(job, cfg.finetune_rows, pair.tokenizer)
        keywords = None
        if name in cfg.keywords:
            from studies.diffing_benchmark.organisms import get_organism

            keywords = list(get_organism(cfg.keywords[name]).keywords)
        log(f"[3/4] dictionaries of {name} at layer {layer} over {len(texts)} texts")
        per_finetune[name] = run_pair(pair, texts, out / "dictionaries" / name, cfg.pair_settings(layer), keywords=keywords, log=log)
        per_finetune[name]["fit"] = json.loads((run_dir / "results.json").read_text())["metrics"].get("tuned")
        base_info, device = pair.base_info, str(next(pair.base.parameters()).device)
    edges = None
    if cfg.edges is not None:
        e = config_from_dict(EdgesSettings, cfg.edges, where="DictionariesConfig.edges")
        log(f"[4/4] edge attribution (EAP, EAP-IG) on entity tracking: base vs {e.finetune}")
        edges = run_edges(cfg.model, str(out / "runs" / e.finetune), e, out / "edges", log=log)
    metrics = {"finetunes": per_finetune, "edges": edges, "corpus_sha256": corpus_hash, "wall_s": time.time() - started}
    record = save_results(out, {**cfg.to_dict(), "study": STUDY}, metrics, {"base": base_info}, device or "cpu", started, figures)
    write_table(out / "table.md", record)
    log(f"      wrote {out / 'results.json'}, {out / 'table.md'} and figures/ in {metrics['wall_s']:.0f} s")
    return record
