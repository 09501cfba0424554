"""Method comparison: every fine-tuning method and baseline on two tasks, several seeds, one table.

Tasks: entity tracking (held-out accuracy) and the spurious-cue task (in-distribution and
out-of-distribution accuracy). Variants: LoFiT (L1-selected vs random heads), NeFT (low-similarity vs
reversed vs random neurons), CAFT (concept directions vs random directions vs test-time-only ablation),
LoRA (peft) and full fine-tuning. Each run starts from a freshly loaded model; we record accuracy,
trainable parameters, seconds per training step and the peak memory of training.

Sources: LoFiT (Yin et al., NeurIPS 2024), NeFT (Xu et al., COLING 2025), CAFT (Casademunt et al. 2025),
entity tracking (Prakash et al., ICLR 2024); see ``../shared/METHODS.md``.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from studies.common import write_figure_files
from studies.method_comparison.figures import figures
from workbench.errors import ConfigError
from workbench.runs import log_progress

CONFIGS = Path(__file__).parent / "configs"


@dataclass
class StudyConfig:
    """The study's settings (see ``configs/*.json``).

    Attributes:
        model: registry name, HF id or local directory.
        seeds: one run per seed per (task, variant); the seed drives data order and initialisation.
        tasks: registered task name (``workbench tasks``) -> its settings (e.g. ``entity_tracking``:
            EntityTrackingConfig fields; ``spurious_cue``: SpuriousCueConfig fields); the seed is the run's.
        variants: variant name -> ``{"method": registered name, "config": {...}, "train": {...}}``;
            CAFT variants add ``"directions": "pca" | "random"`` and ``"test_time_only": bool``.
        caft_pca: settings of the PCA direction search (``reference_variant`` names the standard
            fine-tuning variant whose tuned model gives the residual differences).

    Raises:
        ConfigError: unregistered tasks or settings a task refuses, or variants whose method is not registered.
    """

    model: str = "smollm2-135m-instruct"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    caft_pca: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from workbench.methods import available_methods
        from workbench.tasks import available_tasks, get_task

        unknown = set(self.tasks) - set(available_tasks())
        if unknown:
            raise ConfigError(f"unknown task(s) {sorted(unknown)}; registered: {available_tasks()}")
        for task_name, settings in self.tasks.items():  # each task checks its settings before any model loads
            get_task(task_name).config(**settings)
        methods = set(available_methods())
        bad = {k: v.get("method") for k, v in self.variants.items() if v.get("method") not in methods}
        if bad:
            raise ConfigError(f"variants with unregistered methods {bad}; registered: {sorted(methods)}")
        for name, spec in self.variants.items():
            extra = set(spec) - {"method", "config", "train", "tasks", "directions", "test_time_only"}
            if extra:
                raise ConfigError(f"variant {name!r}: unknown key(s) {sorted(extra)}; known: method, config, train, tasks, directions, test_time_only")
            if set(spec.get("tasks", [])) - set(self.tasks):
                raise ConfigError(f"variant {name!r} names tasks {spec['tasks']} outside this config's tasks {sorted(self.tasks)}")
            if spec.get("directions", "pca") not in ("pca", "random") or (not _ablates(spec["method"]) and ("directions" in spec or "test_time_only" in spec)):
                raise ConfigError(f"variant {name!r}: 'directions' (pca | random) and 'test_time_only' apply to CAFT variants only")

    @classmethod
    def load(cls, name_or_path: str) -> "StudyConfig":
        """``tiny`` / ``default`` / ``full`` or a path to a JSON file.

        Raises:
            ConfigError: no such config, or one :func:`workbench.config.load_json_config` refuses.
        """
        from workbench.config import load_json_config

        path = CONFIGS / f"{name_or_path}.json" if (CONFIGS / f"{name_or_path}.json").exists() else Path(name_or_path)
        if not path.is_file():
            raise ConfigError(f"no study config {name_or_path!r}; use tiny, default, full or a JSON path")
        return load_json_config(cls, path)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TaskData:
    """A registered task's data for one seed (:mod:`workbench.tasks`): its split, training examples, pad id."""

    name: str
    split: Any
    examples: list
    pad_id: int

    def evaluate(self, model: Any) -> dict[str, float]:
        """The task's held-out metrics under this study's names: ``id_accuracy`` (the task's ``accuracy``)
        and, for a task with an out-of-distribution split, ``ood_accuracy``."""
        from workbench.tasks import get_task

        m = get_task(self.name).evaluate(model, self.split, pad_id=self.pad_id)
        return {"id_accuracy": m["accuracy"], **({"ood_accuracy": m["ood_accuracy"]} if "ood_accuracy" in m else {})}


def make_task(name: str, settings: dict[str, Any], tok: Any, info: Any, seed: int) -> TaskData:
    """Generate a registered task's data for one seed (the seed also changes the sampled prompts).

    Raises:
        ConfigError: unknown task or settings it refuses.
    """
    from workbench.tasks import get_task

    task = get_task(name)
    split = task.generate(tok, task.config(**settings), prepend_bos=info.prepend_bos, seed=seed)
    return TaskData(name, split, task.to_examples(split), tok.pad_token_id or 0)


def run_variant(variant: str, spec: dict[str, Any], task: TaskData, model: Any, info: Any, seed: int, caft_dirs: dict | None) -> dict[str, Any]:
    """Train one variant on a fresh model and evaluate it (with its intervention attached, CAFT without)."""
    from workbench.finetune import finetune
    from workbench.measure import peak_memory

    train = {**spec.get("train", {}), "seed": seed, "progress": False}
    config = copy.deepcopy(spec.get("config", {}))
    if "seed" in _fields(spec["method"]):
        config.setdefault("seed", seed)
    if _ablates(spec["method"]):
        config = {**config, **{k: v for k, v in (caft_dirs or {}).items() if k != "reference"}}
    if spec.get("test_time_only"):
        # The baseline of Casademunt et al. 2025: the *standard* fine-tuned model (the reference variant),
        # with the same directions ablated at evaluation only.
        from workbench.config import config_from_dict
        from workbench.methods.caft import CaftConfig, load_directions

        ablation = load_directions(config_from_dict(CaftConfig, config), info.to_dict())  # bases from directions_file
        reference = (caft_dirs or {}).get("reference")
        if reference is None:
            raise ConfigError("a test_time_only CAFT variant needs the reference fine-tuned model (caft_pca.reference_variant)")
        ref_model, ref_inter = reference  # the model it was trained on (peft adapters stay with their model)
        with ref_inter.attach(ref_model), ablation.attach(ref_model):
            metrics = task.evaluate(ref_model)
        return {**metrics, "n_trainable": 0, "seconds_per_step": 0.0, "peak_train_mib": 0.0, "train_losses": []}
    with peak_memory(model.device) as mem:
        result = finetune(spec["method"], model, info, task.examples, config, train, pad_id=task.pad_id)
    attach = result.details.get("evaluate_with") or result.intervention
    with attach.attach(model):
        metrics = task.evaluate(model)
    return {**metrics, "n_trainable": result.intervention.n_trainable(), "seconds_per_step": result.train_result.seconds_per_step,
            "peak_train_mib": mem.delta_mib, "train_losses": result.train_result.losses}

CAFT_PCA_DEFAULTS: dict[str, Any] = {
    "reference_variant": "full", "layers": [6, 12, 18, 24], "n_components": 20, "top_n": 2,
    "n_pca_prompts": 64, "n_concept_prompts": 64, "concept_at": "words",
}


def find_caft_directions(cfg: StudyConfig, task_name: str, task: TaskData, tok: Any, seed: int, out_dir: Path, log=log_progress) -> dict[str, Any]:
    """CAFT's directions for one (task, seed), following Casademunt et al. 2025, §3.1 and §5.

    1. Standard fine-tuning: the reference variant (``caft_pca.reference_variant``, by default full
       fine-tuning with the table's settings) trained from the untouched weights with this seed.
    2. PCA of tuned − base residual differences at ``hook_resid_post`` of ``caft_pca.layers`` on the last
       token of ``n_pca_prompts`` training prompts (:func:`~workbench.methods.caft.pca_directions`).
    3. Per layer, the ``top_n`` components that best separate the concept (noun gender) on concept-labelled
       prompts whose nouns the task never uses, read at the noun and pronoun (``concept_at="words"``) or
       the last token (:func:`~workbench.methods.caft.choose_concept_components`); the random baseline
       draws the same number of directions per layer.

    Both bases are written with :func:`~workbench.methods.caft.save_directions` under ``out_dir`` and
    returned as CaftConfig fields (``{"pca": {...}, "random": {...}}``, ``"choice"`` with the scores), plus
    ``"reference"``: ``(model, intervention)`` of the reference (for the test-time-only baseline).

    Raises:
        ConfigError: a task without concept prompts (only ``spurious_cue`` has a concept to ablate), an
            unknown reference variant or ``caft_pca`` key.
    """
    from workbench.finetune import finetune
    from workbench.methods.caft import (
        CaftIntervention,
        choose_concept_components,
        pca_directions,
        random_directions,
        save_directions,
    )
    from workbench.models import load_model
    from workbench.tasks import spurious_cue as sc

    settings = {**CAFT_PCA_DEFAULTS, **cfg.caft_pca}
    unknown = set(settings) - set(CAFT_PCA_DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown caft_pca key(s) {sorted(unknown)}; known: {sorted(CAFT_PCA_DEFAULTS)}")
    if task_name != "spurious_cue":
        raise ConfigError(f"CAFT variants need a concept to ablate; task {task_name!r} has none (restrict them with \"tasks\": [\"spurious_cue\"])")
    ref_name = settings["reference_variant"]
    if ref_name not in cfg.variants or _ablates(cfg.variants[ref_name]["method"]):
        raise ConfigError(f"caft_pca.reference_variant {ref_name!r} must name a non-CAFT variant of this config")
    ref = cfg.variants[ref_name]
    model, _, info = load_model(cfg.model)
    ref_config = copy.deepcopy(ref.get("config", {}))
    if "seed" in _fields(ref["method"]):
        ref_config.setdefault("seed", seed)
    reference = model, finetune(ref["method"], model, info, task.examples, ref_config, {**ref.get("train", {}), "seed": seed, "progress": False},
                         pad_id=task.pad_id).intervention
    layers = [int(l) for l in settings["layers"]]
    split = task.split
    prompts = [p.input_ids for p in split.train[: settings["n_pca_prompts"]]]
    pca = pca_directions(model, model, prompts, None, layers, settings["n_components"], tuned_intervention=reference[1], pad_id=task.pad_id)
    concept = sc.concept_cue_prompts(tok, task_nouns=cfg.tasks[task_name].get("nouns", "kinship"), n=settings["n_concept_prompts"], seed=seed,
                                     design=cfg.tasks[task_name].get("design", "judgement"))
    c_ids, c_labels = [p.input_ids for p in concept], [int(p.noun_gender == "female") for p in concept]
    c_pos = None if settings["concept_at"] == "last" else [[p.noun_pos, p.pronoun_pos] for p in concept]
    chosen, choice = {}, {}
    for layer in layers:
        c = choose_concept_components(pca[layer], model, layer, c_ids, c_labels, settings["top_n"], positions=c_pos, seed=seed)
        chosen[layer] = pca[layer].components[c.indices]
        choice[layer] = {"indices": c.indices, "auc": [round(float(c.scores[i]), 3) for i in c.indices],
                         "explained_variance_ratio": [round(float(pca[layer].explained_variance_ratio[i]), 4) for i in c.indices]}
    log(f"{task_name:16s} seed {seed} CAFT components (layer: indices, AUC) {({l: (v['indices'], v['auc']) for l, v in choice.items()})}")
    dims = info.dims
    rand = {l: random_directions(dims.d_model, settings["top_n"], seed=seed * 1000 + l) for l in layers}
    out_dir.mkdir(parents=True, exist_ok=True)
    pca_fields = save_directions(CaftIntervention.from_directions(chosen, dims, source=f"pca top{settings['top_n']} by concept AUC"),
                                 out_dir / f"{task_name}_seed{seed}_pca.safetensors")
    rand_fields = save_directions(CaftIntervention.from_directions(rand, dims, source=f"random seed={seed}"),
                                  out_dir / f"{task_name}_seed{seed}_random.safetensors")
    return {"pca": pca_fields, "random": rand_fields, "choice": choice, "reference": reference}


def _ablates(method: str | None) -> bool:
    """Whether a variant's method trains under an ablation of directions this study finds (its config takes a
    ``directions_file``, as CAFT's does): such variants get the study's directions (``caft_pca``)."""
    return method is not None and "directions_file" in _fields(method)


def _fields(method: str) -> set[str]:
    import dataclasses

    from workbench.methods import get_method

    return {f.name for f in dataclasses.fields(get_method(method).config_cls)}


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± std over seeds for each (task, variant)."""
    rows = []
    keys = sorted({(r["task"], r["variant"]) for r in runs}, key=lambda k: (k[0], [r["variant"] for r in runs].index(k[1])))
    for task, variant in keys:
        group = [r for r in runs if r["task"] == task and r["variant"] == variant]
        row = {"task": task, "variant": variant, "method": group[0]["method"], "n_seeds": len(group)}
        for metric in ("id_accuracy", "ood_accuracy", "n_trainable", "seconds_per_step", "peak_train_mib"):
            vals = [r[metric] for r in group if metric in r]
            if vals:
                row[metric] = float(np.mean(vals))
                row[f"{metric}_std"] = float(np.std(vals))
        rows.append(row)
    return rows


def run(cfg: StudyConfig, out_dir: str | Path, log=log_progress) -> dict[str, Any]:
    """Run every (task, seed, variant); write ``runs.json`` after each run (a rerun skips finished
    runs), then ``results.json``, ``table.md`` and figures. Returns the results record."""
    from workbench.artifacts import atomic_write_json, read_json, results_record
    from workbench.models import load_model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    partial = out / "runs.json"
    # A rerun keeps finished runs whose (model, task settings, variant spec) are unchanged.
    specs = {(t, v): _spec_key(cfg, t, v) for t in cfg.tasks for v in [*cfg.variants, "base"]}
    runs = [r for r in (read_json(partial)["runs"] if partial.exists() else []) if specs.get((r["task"], r["variant"])) == r.get("spec")]
    done = {(r["task"], r["variant"], r["seed"]) for r in runs}
    info = None
    for seed in cfg.seeds:  # seed-major, so that an interrupted run has every variant at the first seeds
        for task_name, settings in cfg.tasks.items():
            model, tok, info = load_model(cfg.model)
            task = make_task(task_name, settings, tok, info, seed)
            if (task_name, "base", seed) not in done:
                runs.append({"task": task_name, "variant": "base", "method": "none", "seed": seed, **task.evaluate(model), "n_trainable": 0,
                             "spec": specs[(task_name, "base")]})
            caft_dirs = None
            for variant, spec in cfg.variants.items():
                if (task_name, variant, seed) in done or task_name not in spec.get("tasks", [task_name]):
                    continue
                if _ablates(spec["method"]) and caft_dirs is None:
                    caft_dirs = find_caft_directions(cfg, task_name, task, tok, seed, out / "caft_directions", log)
                t0 = time.perf_counter()
                model, _, info = load_model(cfg.model)  # every variant starts from the untouched weights
                dirs = {**caft_dirs[spec.get("directions", "pca")], "reference": caft_dirs["reference"]} if _ablates(spec["method"]) else None
                row = run_variant(variant, spec, task, model, info, seed, dirs)
                if _ablates(spec["method"]) and spec.get("directions", "pca") == "pca":
                    row["caft_components"] = caft_dirs["choice"]
                runs.append({"task": task_name, "variant": variant, "method": spec["method"], "seed": seed, **row,
                             "wall_time_s": time.perf_counter() - t0, "spec": specs[(task_name, variant)]})
                log(f"{task_name:16s} seed {seed} {variant:16s} id {row['id_accuracy']:.3f}"
                    + (f" ood {row['ood_accuracy']:.3f}" if "ood_accuracy" in row else "") + f" ({runs[-1]['wall_time_s']:.0f} s)")
                atomic_write_json(partial, {"config": cfg.to_dict(), "runs": runs})
    atomic_write_json(partial, {"config": cfg.to_dict(), "runs": runs})
    table = summarise(runs)
    record = results_record(cfg.to_dict(), {"table": table, "runs": runs}, {"base": info} if info else {}, "cpu" if info is None else str(model.device), started, time.time())
    atomic_write_json(out / "results.json", record)
    (out / "table.md").write_text(markdown_table(table))
    write_figure_files(figures(record), out / "figures")
    return record


def _spec_key(cfg: StudyConfig, task: str, variant: str) -> str:
    spec = {"model": cfg.model, "task": cfg.tasks[task], "variant": cfg.variants.get(variant, "base")}
    if _ablates(cfg.variants.get(variant, {}).get("method")):
        spec["caft_pca"] = cfg.caft_pca
    return json.dumps(spec, sort_keys=True)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The summary table as markdown (mean ± std over seeds)."""
    fmt = lambda r, k, d=3: f"{r[k]:.{d}f} ± {r[k + '_std']:.{d}f}" if k in r else "–"  # noqa: E731
    lines = ["| task | variant | method | held-out acc | OOD acc | trainable params | s/step | peak train MiB |",
             "|---|---|---|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['variant']} | {r['method']} | {fmt(r, 'id_accuracy')} | {fmt(r, 'ood_accuracy')} | "
                     f"{int(r.get('n_trainable', 0)):,} | {r.get('seconds_per_step', 0):.2f} | {r.get('peak_train_mib', 0):.0f} |")
    return "\n".join(lines) + "\n"
