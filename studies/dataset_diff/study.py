"""Dataset-level model diff: what changed between a base and a tuned model, measured over a whole corpus.

Sources: per-token KL, residual and head-output differences and the logit lens as in METHODS.md ("Dataset-level
model diffing"); diff mining and the Activation Difference Lens from Minder et al., "Narrow Finetuning Leaves
Clearly Readable Traces in Activation Differences", arXiv 2510.13900 (2025), §3.

Protocol (:func:`run`):
1. validate the config and read the corpus rows (:func:`workbench.datafiles.load_rows`) — before any model loads;
2. load the pair (:func:`workbench.models.tuned.load_pair`) unless one is passed; check the ADL layer;
3. one streaming pass over the corpus (:func:`probes.diff.diff_corpus`): one forward of each model per batch;
4. ADL readouts of each position's δ_j (mean tuned − base residual at ``layer``, positions ``0 … adl_positions−1``):
   logit lens, Patchscope and steering search on the fine-tuned model, the reference's defaults
   (:func:`probes.diff.adl_readouts`; every departure is named in :mod:`probes.diff.patchscope` and
   :mod:`probes.diff.steering`);
5. ``results.json``, ``figures/*.json|html`` and ``report.html`` (each written atomically).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probes.diff.adl_readouts import AdlSettings
from probes.diff.corpus import DiffSettings
from studies.common import ShippedConfig, save_results
from workbench.config import PositiveInt, check_fields
from workbench.errors import ConfigError
from workbench.runs import log_progress

STUDY = "dataset_diff"


@dataclass
class ModelDiffConfig(ShippedConfig, AdlSettings, DiffSettings):
    """Settings of ``workbench diff`` / ``python -m studies.dataset_diff`` (``configs/{tiny,default}.json``).

    Attributes:
        base, tuned: model specs for :func:`workbench.models.tuned.load_pair` (tuned: run folder, adapter, peft
            adapter, model directory, registry name or Hugging Face id).
        data: corpus file (JSONL / JSON / CSV / Parquet, rows of ``text``, ``prompt``+``completion`` or ``messages``).
        texts: the corpus inline, used when ``data`` is empty (tests, small configs).
        fields: column mapping for ``data`` (:func:`workbench.datafiles.load_rows`).
        max_rows: rows read from the corpus (the first ones).
        batch_size, max_length, layer, adl_positions, top_k_contexts, context_window, top_k_tokens,
        lens_token_stride, chunk_positions: the streaming pass's settings, inherited from
            :class:`probes.diff.DiffSettings` (rows per forward pass, tokens per row, ADL layer — ``null``:
            ``int(0.5 · (n_layers − 1))`` — positions with one δ_j each, sizes of the top-KL view and diff-mining
            lists, the logit lens's token stride).
        read_model, patchscope_*, steering_*, coherence_margin_nats, min_distinct_fraction, min_coherent_share,
        steering_positions, seed: the ADL readouts' settings, inherited from :class:`probes.diff.AdlSettings`
            (defaults = the reference's; the shipped configs shrink the steering search for a CPU).
        device: ``"cpu"`` / ``"cuda"`` (``null``: the first available).

    Raises:
        ConfigError: neither ``data`` nor ``texts``, both, a non-positive size, a negative count, or a bad ADL
            setting (:class:`probes.diff.AdlSettings`).
    """

    base: str = "smollm2-135m-instruct"
    tuned: str = ""
    data: str = ""
    texts: list[str] = field(default_factory=list)
    fields: dict[str, str] | None = None
    max_rows: PositiveInt = 2000
    device: str | None = None

    def __post_init__(self) -> None:
        if not self.tuned.strip():
            raise ConfigError("ModelDiffConfig.tuned is empty: give the tuned model (run folder, adapter, model directory or id)")
        if bool(self.data.strip()) == bool(self.texts):
            raise ConfigError("ModelDiffConfig needs exactly one corpus: `data` (a file) or `texts` (a list), got "
                              + ("both" if self.texts else "neither"))
        if self.texts and not any(isinstance(t, str) and t.strip() for t in self.texts):
            raise ConfigError("ModelDiffConfig.texts is empty: no text with a character in it")
        check_fields(self)  # every declared type and range, the inherited settings' included
        DiffSettings.__post_init__(self)  # the streaming settings this config inherits
        try:
            AdlSettings.__post_init__(self)  # the readouts' settings
        except ConfigError as exc:
            raise ConfigError(str(exc) if str(exc).startswith("ModelDiffConfig.") else f"ModelDiffConfig.{exc}") from None
        if self.steering_positions is not None and any(j >= self.adl_positions for j in self.steering_positions):
            raise ConfigError(f"ModelDiffConfig.steering_positions {self.steering_positions} reach past adl_positions={self.adl_positions}")


def n_layers_hint(base: str) -> int | None:
    """The base model's layer count from its ``config.json`` without loading weights (registry name already in
    the cache, or a model directory); ``None`` when it cannot be read cheaply."""
    from workbench.models import REGISTRY

    candidates = [Path(base).expanduser() / "config.json"]
    if base in REGISTRY:
        from workbench.models import cache_root

        candidates.append(cache_root() / "models" / base / "config.json")
    for path in candidates:
        try:
            c = json.loads(path.read_text())
            c = c.get("text_config", c)
            return int(c["num_hidden_layers"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def check_before_load(cfg: ModelDiffConfig) -> Any:
    """Everything that can be refused before a model loads: the corpus rows (read and validated) and the layer
    index (against the base's ``config.json`` when it is readable). Returns the rows (or the inline texts).

    Raises:
        ConfigError: an unreadable or empty corpus, a layer the base model does not have.
    """
    from probes.diff.layers import check_layer

    if cfg.data.strip():
        from workbench.datafiles import load_rows

        corpus = load_rows(cfg.data, fields=cfg.fields, limit=cfg.max_rows)
        if len(corpus) == 0:
            raise ConfigError(f"the corpus {cfg.data!r} has no rows")
    else:
        corpus = [t for t in cfg.texts if isinstance(t, str)][: cfg.max_rows]
    if cfg.layer is not None:
        n = n_layers_hint(cfg.base)
        if n is not None:
            check_layer(cfg.layer, n, "--layer")
    return corpus


def corpus_text_list(corpus: Any, tokenizer: Any) -> list[str]:
    """Texts of the corpus rows (chat rows through the tokenizer's chat template)."""
    if isinstance(corpus, list):
        return corpus
    from workbench.datafiles import corpus_texts

    return corpus_texts(corpus, tokenizer)


def run(cfg: ModelDiffConfig, out_dir: str | Path, pair: Any = None, log: Callable[[str], None] = log_progress,
        corpus: Any = None) -> dict[str, Any]:
    """Run the diff; write ``results.json``, ``figures/`` and ``report.html`` into ``out_dir``; return the record.

    Args:
        pair: an already loaded :class:`~workbench.pair.ModelPair` (else ``cfg.base`` / ``cfg.tuned`` are loaded).
        corpus: what :func:`check_before_load` returned (else it is called here, still before any model loads).

    Raises:
        ConfigError: as :func:`check_before_load`, an empty corpus after tokenization, a bad layer.
        ModelNotFoundError, MismatchError, CheckpointError: as :func:`workbench.models.tuned.load_pair`.
    """
    from probes.diff import AdlSettings, adl_readouts, diff_corpus
    from studies.dataset_diff.figures import figures, write_report

    started = time.time()
    timing: dict[str, float] = {}
    corpus = check_before_load(cfg) if corpus is None else corpus
    settings = DiffSettings(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(DiffSettings)})
    adl_settings = AdlSettings(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(AdlSettings)})
    tuned_kind, load_warnings = "given", []
    if pair is None:
        from workbench.models.tuned import load_pair

        log(f"[1/4] loading base {cfg.base} and tuned {cfg.tuned}")
        loaded = load_pair(cfg.base, cfg.tuned, device=cfg.device)
        pair, tuned_kind = loaded.pair, loaded.tuned_kind
        for warning in loaded.warnings:  # e.g. a peft adapter made for another base model: said, and recorded below
            log(f"      warning: {warning}")
        load_warnings = list(loaded.warnings)
    timing["load_s"] = time.time() - started
    texts = corpus_text_list(corpus, pair.tokenizer)
    out_dir = Path(out_dir)

    log(f"[2/4] streaming {len(texts)} rows in batches of {cfg.batch_size} (one forward of each model per batch)")
    t0 = time.time()
    diff = diff_corpus(pair, texts, settings)
    timing["stream_s"] = time.time() - t0
    m = diff.metrics
    log(f"      mean KL {m['kl']['mean_per_token']:.4g} nats/token over {m['n_tokens']} tokens; "
        f"base NLL {m['nll']['base_nats_per_token']:.3f}, tuned NLL {m['nll']['tuned_nats_per_token']:.3f} nats/token")

    norms = ", ".join(f"{x:.3g}" for x in m["adl"]["delta_norm_by_position"])
    log(f"[3/4] Activation Difference Lens at layer {diff.layer} on the {cfg.read_model} model (‖δ_j‖ = {norms}; "
        f"n̄ = {diff.mean_tuned_norm:.4g})")
    t0 = time.time()
    adl = dict(m["adl"])
    adl.update(adl_readouts(pair, diff.delta_by_position, diff.layer, diff.mean_tuned_norm, adl_settings, pooled=diff.delta_pooled,
                            top_k=cfg.top_k_tokens, log=log))
    m["adl"] = adl
    timing["adl_s"] = time.time() - t0
    m["timing_s"] = timing
    m["tuned_kind"] = tuned_kind
    m["warnings"] = load_warnings
    m["tokens_per_s_stream"] = m["n_tokens"] / max(timing["stream_s"], 1e-9)

    log(f"[4/4] writing {out_dir}/results.json, figures/ and report.html")
    device = str(next(pair.base.parameters()).device)
    record = save_results(out_dir, {**cfg.to_dict(), "study": STUDY}, m, {"base": pair.base_info, "tuned": pair.tuned_info},
                          device, started, figures)
    write_report(out_dir / "report.html", record)
    chosen = [p["steering"]["chosen_alpha"] if p["steering"] else None for p in adl["by_position"]]
    log(f"      done in {record['run_info']['wall_time_s']:.0f} s; steering α chosen per position: {chosen}")
    return record


def plan_and_run(cfg: ModelDiffConfig, runs_dir: str | Path, name: str | None, out: str | Path | None = None,
                 load: Callable[[ModelDiffConfig], Any] | None = None, log: Callable[[str], None] = log_progress) -> Path:
    """The ``workbench diff`` job: check the run folder (``runs_dir / name``, or ``out`` which must lie inside
    ``runs_dir``) and the corpus and layer, then load (``load(cfg)`` returns a ModelPair, default
    :func:`workbench.models.tuned.load_pair`), run inside :func:`workbench.runs.run_folder`; return the folder.

    Raises:
        ConfigError: a bad run name or folder, ``out`` outside ``runs_dir``, ``out`` with ``name``, a bad corpus or
            layer — all before any model loads.
    """
    import datetime as dt

    from workbench.runs import check_output_dir, plan_run, run_folder

    if out is not None:
        if name is not None:
            raise ConfigError("pass either --out or --name, not both (--name makes the folder <runs-dir>/<name>)")
        root, target = Path(runs_dir).expanduser().resolve(), Path(out).expanduser().resolve()
        if target == root or root not in target.parents:
            raise ConfigError(f"--out {str(out)!r} is outside the runs folder {str(runs_dir)!r} (the app lists runs from there); "
                              "pass a folder inside it, set --runs-dir to a folder that holds it, or use --name")
        run_dir = check_output_dir(out, "--out")
    else:
        run_dir = plan_run(runs_dir, name, f"diff-{dt.datetime.now():%Y%m%d-%H%M%S}")
    corpus = check_before_load(cfg)
    with run_folder(run_dir):
        pair = load(cfg) if load is not None else None
        run(cfg, run_dir, pair=pair, log=log, corpus=corpus)
    return run_dir
