"""Entity-tracking base-vs-tuned study: is the same circuit doing the task, and where does the gain come from?

Source: Prakash, Rott Shaham, Haklay, Belinkov, Bau, "Fine-Tuning Enhances Existing Mechanisms: A Case Study
on Entity Tracking", ICLR 2024 — §2 (task, models), §3 (circuit by path patching, faithfulness), §4 (DCM),
§5 (CMAP).

Protocol (:func:`run`):
1. load the base model; generate equal-length box prompts (``n_boxes``) and split them into train / eval /
   patch / mean / DCM sets;
2. tune: each entry of ``tune`` trains LoFiT offsets on every attention head, or peft LoRA (base weights frozen
   either way), on its ``task`` (``"boxes"`` = the task itself, ``"arithmetic"`` = a different skill, Goat's
   role — Goat is LLaMA-7B tuned with LoRA on arithmetic);
3. accuracy among the prompt's objects of every model on the eval prompts (arithmetic exact match too), also broken
   down by the queried box's position (first / middle / last) and by number of boxes, with counts
   (``metrics.accuracy_breakdown``, :mod:`workbench.tasks.entity_tracking.breakdown`);
4. attribution vs exact activation patching per head on the base (last token): Pearson r;
5. the circuit (four groups, :mod:`studies.entity_tracking.circuit`) of every model in ``circuit_models``;
6. faithfulness of the base circuit on every model (position-wise mean ablation), vs random circuits;
7. CMAP tuned → base for each group and the whole circuit;
8. DCM on each group of the base circuit for the object / position / box-label desiderata, on every model in
   ``dcm_models`` (``metrics.dcm``); a tuned model whose own circuit was found also gets DCM on its own groups
   (``metrics.dcm_own_circuit``);
9. ``results.json`` and plotly figures in ``figures/``.
Same config and seed give the same numbers (everything except ``metrics.timing_s``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from studies.common import ShippedConfig, save_results
from studies.entity_tracking.figures import figures
from workbench.config import NonNegativeInt, PositiveInt, check_fields, config_from_dict
from workbench.errors import ConfigError
from workbench.runs import log_progress

TUNE_TASKS = ("boxes", "arithmetic")
TUNE_METHODS = ("lofit", "lora")
DESIDERATA = ("object", "position", "box_label")


@dataclass
class EntityTrackingStudyConfig(ShippedConfig):
    """Settings (``configs/{tiny,default,full}.json``).

    Attributes:
        model: name or path for :func:`workbench.models.load_model`.
        n_boxes: boxes per prompt (3–7); all prompts then share one token length.
        n_train, n_eval, n_patch, n_mean, n_dcm: prompts for tuning, accuracy / faithfulness / CMAP, path
            patching, position-wise means, DCM (half trains the masks, half evaluates).
        tune: tuned-model name -> ``{"task": "boxes"|"arithmetic", "max_steps", "lr", "batch_size_prompts"}`` and
            optionally ``"method"``: ``"lofit"`` (default: offset vectors on every head's output) or ``"lora"``
            (peft LoRA, as Goat was tuned), with ``"method_config"`` passed to that method's config; arithmetic
            entries may set their own ``"n_train"`` problems (boxes entries use the shared ``n_train`` prompts).
        group_sizes: heads kept per group (value_fetchers, position_transmitters, position_detectors,
            structure_readers).
        candidates: senders per group pre-ranked by attribution patching before path patching (``null`` = all).
        circuit_models: models whose circuit is found ("base" and/or tuned names).
        n_random: size-matched random circuits for faithfulness.
        dcm: ``{"steps", "lr", "lam", "batch_size"}``; dcm_models: models DCM runs on.
        exact_vs_attribution: measure attribution against exact activation patching on the base.
        max_batch: sequences per patched forward pass.

    Raises:
        ConfigError: unknown tune task / model names, bad counts, a missing group size.
    """

    model: str = "smollm2-135m-instruct"
    seed: int = 0
    n_boxes: int = 3
    n_train: PositiveInt = 160
    n_eval: PositiveInt = 64
    n_patch: PositiveInt = 12
    n_mean: PositiveInt = 64
    n_dcm: PositiveInt = 32
    tune: dict = field(default_factory=lambda: {
        "boxes": {"task": "boxes", "max_steps": 40, "lr": 0.003, "batch_size_prompts": 8},
        "arithmetic": {"task": "arithmetic", "max_steps": 40, "lr": 0.003, "batch_size_prompts": 8}})
    group_sizes: dict = field(default_factory=lambda: {"value_fetchers": 8, "position_transmitters": 8,
                                                       "position_detectors": 8, "structure_readers": 8})
    candidates: int | None = 60
    circuit_models: list = field(default_factory=lambda: ["base", "boxes"])
    n_random: NonNegativeInt = 10
    dcm: dict = field(default_factory=lambda: {"steps": 30, "lr": 0.1, "lam": 0.01, "batch_size": 8})
    dcm_models: list = field(default_factory=lambda: ["base", "boxes"])
    exact_vs_attribution: bool = True
    max_batch: PositiveInt = 256

    def __post_init__(self) -> None:
        from studies.entity_tracking.circuit import GROUPS
        from workbench.config import config_from_dict
        from workbench.methods import get_method

        check_fields(self)
        if self.n_dcm < 2:
            raise ConfigError("n_dcm must be >= 2 (half trains the DCM masks, half evaluates them)")
        for name, spec in self.tune.items():
            if not isinstance(spec, dict) or not isinstance(spec.get("method_config", {}), dict):
                raise ConfigError(f"tune[{name!r}] must be an object such as {{\"task\": \"boxes\", \"max_steps\": 40, "
                                  f"\"lr\": 0.003}} (method_config an object too), got {spec!r}")
            unknown = set(spec) - {"task", "max_steps", "lr", "batch_size_prompts", "method", "method_config", "n_train"}
            if unknown or spec.get("task") not in TUNE_TASKS:
                raise ConfigError(f"tune[{name!r}]: task must be one of {TUNE_TASKS}, keys task/max_steps/lr/"
                                  f"batch_size_prompts/method/method_config/n_train (unknown: {sorted(unknown)})")
            if "n_train" in spec and (spec["task"] != "arithmetic" or isinstance(spec["n_train"], bool)
                                      or not isinstance(spec["n_train"], int) or spec["n_train"] < 1):
                raise ConfigError(f"tune[{name!r}]: n_train is a positive int, for arithmetic entries only "
                                  "(boxes entries train on the shared n_train prompts)")
            if spec.get("method", "lofit") not in TUNE_METHODS:
                raise ConfigError(f"tune[{name!r}]: method must be one of {TUNE_METHODS}, got {spec['method']!r}")
            config_from_dict(get_method(spec.get("method", "lofit")).config_cls, dict(spec.get("method_config", {})))
        models = {"base", *self.tune}
        for key in ("circuit_models", "dcm_models"):
            bad = set(getattr(self, key)) - models
            if bad:
                raise ConfigError(f"{key}: unknown model(s) {sorted(bad)}; known: {sorted(models)}")
        if "base" not in self.circuit_models:
            raise ConfigError("circuit_models must include 'base' (faithfulness, CMAP and DCM use the base circuit)")
        if set(self.group_sizes) != set(GROUPS) or any(int(v) < 1 for v in self.group_sizes.values()):
            raise ConfigError(f"group_sizes needs a positive size for each of {GROUPS}")
        if self.candidates is not None and self.candidates < max(self.group_sizes.values()):
            raise ConfigError("candidates must be at least the largest group size (or null for all heads)")
        unknown = set(self.dcm) - {"steps", "lr", "lam", "batch_size"}
        if unknown:
            raise ConfigError(f"dcm: unknown keys {sorted(unknown)}")


def _tune(name: str, spec: dict, model, tok, info, train_prompts, cfg, log) -> tuple[Any, dict]:
    from workbench.data import Example
    from workbench.finetune import finetune
    from workbench.methods import get_method
    from workbench.tasks import arithmetic as ar

    extra: dict[str, Any] = {}
    if spec["task"] == "boxes":
        examples = [Example(p.input_ids, (p.answer_token_id,)) for p in train_prompts]
    else:
        train, held = ar.problems(ar.ArithmeticConfig(n_train=spec.get("n_train", cfg.n_train), n_heldout=64, seed=cfg.seed))
        examples = ar.to_examples(tok, train, info.prepend_bos)
        extra["heldout"] = ar.to_examples(tok, held, info.prepend_bos)
    method = spec.get("method", "lofit")
    n_all = info.n_layers * info.n_heads
    # a method that selects heads gets all of them (no selection), starting at zero; the entry's method_config wins
    every_head = {"top_k_heads": n_all, "head_selection": "random", "init_std": 0.0}
    own = {f.name for f in dataclasses.fields(get_method(method).config_cls)}
    method_cfg = {**(every_head if set(every_head) <= own else {}), **spec.get("method_config", {})}
    train = {"max_steps": spec["max_steps"], "lr": spec["lr"], "batch_size_prompts": spec["batch_size_prompts"],
             "seed": cfg.seed, "checkpoint_every_steps": 0, "progress": False}
    ft = finetune(method, model, info, examples, method_cfg, train, pad_id=tok.pad_token_id or 0)
    what = f"{method} {method_cfg}"
    log(f"      {name}: {what}, {spec['task']}, loss {ft.train_result.losses[0]:.3f} -> "
        f"{ft.train_result.losses[-1]:.3f} ({ft.wall_time_s:.0f} s)")
    return ft.intervention, {"losses": ft.train_result.losses, "wall_time_s": ft.wall_time_s, **extra}


def run(cfg: EntityTrackingStudyConfig, out_dir: str | Path, log: Callable[[str], None] = log_progress) -> dict[str, Any]:
    """Run the study; write ``results.json`` and ``figures/*.html`` into ``out_dir``.

    Raises:
        ModelNotFoundError: the model cannot be loaded. ConfigError: too few regular prompts for the tokenizer.
        NonFiniteLossError: tuning diverged.
    """
    from probes import metrics as pm
    from probes.circuits import cmap, faithfulness
    from probes.dcm import DCMConfig, DCMTask, dcm_many
    from probes.patch_sites import Side, head_sites
    from probes.patching import activation_patch, attribution_patch, mean_activations
    from studies.entity_tracking.circuit import GROUP_POS, find_circuit
    from workbench.architecture import Dims
    from workbench.hooked import module_hooks
    from workbench.models import load_model
    from workbench.tasks import arithmetic as ar
    from workbench.tasks import entity_tracking as et
    from workbench.tasks.entity_tracking import breakdown
    from workbench.tasks.entity_tracking import counterfactuals as ecf

    started = time.time()
    timing: dict[str, float] = {}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    log(f"[1/8] loading {cfg.model}; {cfg.n_boxes}-box prompts")
    model, tok, info = load_model(cfg.model)
    model.requires_grad_(False)
    sizes = [cfg.n_eval, cfg.n_patch, cfg.n_mean, cfg.n_dcm]
    try:
        split = et.generate(tok, et.EntityTrackingConfig(n_boxes=cfg.n_boxes, n_train=cfg.n_train, n_heldout=sum(sizes),
                                                         seed=cfg.seed), prepend_bos=info.prepend_bos)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    parts, i = [], 0
    for n in sizes:
        parts.append(split.heldout[i:i + n])
        i += n
    eval_p, patch_p, mean_p, dcm_p = parts
    dims = Dims.of(model)

    log(f"[2/8] tuning {list(cfg.tune)}")
    t0 = time.time()
    sides: dict[str, Side] = {"base": Side(model)}
    tune_info: dict[str, Any] = {}
    for name, spec in cfg.tune.items():
        inter, tune_info[name] = _tune(name, spec, model, tok, info, split.train, cfg, log)
        inter.requires_grad_(False)
        sides[name] = Side(model, lambda inter=inter: inter.attach(model))
    timing["tune"] = time.time() - t0

    log("[3/8] accuracy among the prompt's objects")
    ids, ans, objs = et.to_tensors(eval_p)
    eval_pos = {"query_label": torch.tensor([p.query_label_pos for p in eval_p])}
    acc_metric = pm.accuracy(ans, objs)
    ld_metric = pm.logit_diff(ans, objs)
    accuracy: dict[str, Any] = {}
    final: dict[str, torch.Tensor] = {}  # each model's final-position logits on the eval prompts, reused by 6 and 7
    held = next((t["heldout"] for t in tune_info.values() if "heldout" in t), None)
    for name, side in sides.items():
        with torch.no_grad(), side.context():
            logits = final[name] = model(input_ids=ids, logits_to_keep=1).logits[:, -1].float()
        accuracy[name] = {"accuracy_among_objects": float(acc_metric(logits).mean()),
                          "logit_difference": float(ld_metric(logits).mean())}
        if held is not None:
            with side.context():
                accuracy[name]["arithmetic_exact_match"] = ar.exact_match(model, held)
        log(f"      {name}: {accuracy[name]}")
    accuracy_breakdown = breakdown.accuracy_breakdown(eval_p, final)
    for group, values in breakdown.breakdown_lines(accuracy_breakdown, list(final), "accuracy_among_objects"):
        log(f"      accuracy among objects, {group}: {values}")

    clean, p_ans, p_objs = et.to_tensors(patch_p)
    corrupt = et.to_tensors([c.counterfactual for c in ecf.make_pairs(tok, patch_p, "random", seed=cfg.seed)])[0]
    positions = {"query_label": torch.tensor([p.query_label_pos for p in patch_p])}
    metric = pm.logit_diff(p_ans, p_objs)
    comparison: dict[str, Any] = {}
    if cfg.exact_vs_attribution:
        log("[4/8] attribution vs exact activation patching, every head at the last token (base)")
        t0 = time.time()
        heads = head_sites(dims, pos=-1)
        calls = [0]
        with module_hooks(pre=[(model, lambda *_: calls.__setitem__(0, calls[0] + 1))]):  # counts forward passes
            exact = activation_patch(sides["base"], heads, clean, corrupt, metric, max_batch=cfg.max_batch).mean(1)
        t_exact = time.time() - t0
        t0 = time.time()
        attr = attribution_patch(sides["base"], heads, clean, corrupt, metric).mean(1)
        t_attr = time.time() - t0
        r = float(torch.corrcoef(torch.stack([exact, attr]))[0, 1])
        comparison = {"pearson_r": r, "exact_s": t_exact, "attribution_s": t_attr, "exact_forward_passes": calls[0],
                      "n_heads_patched": len(heads), "n_prompts": int(clean.shape[0]), "max_batch": cfg.max_batch,
                      "exact": exact.tolist(), "attribution": attr.tolist()}
        log(f"      Pearson r = {r:.3f} over {len(heads)} heads; exact {t_exact:.0f} s in {calls[0]} forward passes, "
            f"attribution {t_attr:.1f} s")
        timing["exact_vs_attribution"] = t_exact + t_attr

    log(f"[5/8] circuits by path patching on {cfg.circuit_models}")
    t0 = time.time()
    circuits = {}
    for name in cfg.circuit_models:
        log(f"    {name}:")
        circuits[name] = find_circuit(sides[name], clean, corrupt, metric, positions, cfg.group_sizes,
                                      candidates=cfg.candidates, max_batch=cfg.max_batch, log=log)
    base_circuit = circuits["base"]
    overlap = {name: _overlap(base_circuit, c) for name, c in circuits.items() if name != "base"}
    timing["circuits"] = time.time() - t0

    log("[6/8] faithfulness of the base circuit (position-wise mean ablation) vs random circuits")
    t0 = time.time()
    mean_ids = et.to_tensors(mean_p)[0]
    z_names = [f"blocks.{layer}.attn.hook_z" for layer in range(dims.n_layers)]
    faith = {}
    for name, side in sides.items():
        means = mean_activations(side, mean_ids, z_names)
        faith[name] = faithfulness(side, base_circuit.sites(), ids, acc_metric, means, n_random=cfg.n_random,
                                   seed=cfg.seed, positions=eval_pos, max_batch=cfg.max_batch,
                                   model_logits=final[name]).to_dict()
        log(f"      {name}: model {faith[name]['model_score']:.3f}, circuit {faith[name]['circuit_score']:.3f} "
            f"(faithfulness {faith[name]['faithfulness']}); random circuits {_mean(faith[name]['random_scores']):.3f}")
    timing["faithfulness"] = time.time() - t0

    log("[7/8] CMAP tuned -> base per group")
    t0 = time.time()
    groups = {**base_circuit.groups, "circuit": base_circuit.sites(), "all_heads": head_sites(dims)}
    cmap_res = {}
    for name in cfg.tune:
        res = cmap(sides["base"], sides[name], groups, ids, acc_metric, positions=eval_pos, max_batch=cfg.max_batch,
                   base_logits=final["base"])
        cmap_res[name] = res.to_dict()
        log(f"      {name}: base {res.base_score:.3f} -> tuned {res.tuned_score:.3f}; "
            + ", ".join(f"{g} {v:.3f}" for g, v in res.patched.items()))
    timing["cmap"] = time.time() - t0

    log(f"[8/8] DCM on each circuit group, desiderata {DESIDERATA}, on {cfg.dcm_models}")
    t0 = time.time()
    dcm_cfg = config_from_dict(DCMConfig, {"seed": cfg.seed, **cfg.dcm}, where="EntityTrackingStudyConfig.dcm")
    dcm_res: dict[str, Any] = {}
    dcm_own: dict[str, Any] = {}
    pairs = {kind: ecf.make_pairs(tok, dcm_p, kind, seed=cfg.seed) for kind in DESIDERATA}
    data = {}
    for kind, ps in pairs.items():
        data[kind] = (et.to_tensors([p.original for p in ps])[0], et.to_tensors([p.counterfactual for p in ps])[0],
                      torch.tensor([p.target_id for p in ps]), torch.tensor([p.candidate_ids for p in ps]),
                      {"query_label": torch.tensor([p.original.query_label_pos for p in ps])})
    runs = [(name, "base", dcm_res) for name in cfg.dcm_models]
    runs += [(name, name, dcm_own) for name in cfg.dcm_models if name != "base" and name in circuits]
    for name in dict.fromkeys(r[0] for r in runs):  # one batched training run per model: all circuits, desiderata, groups
        keys = [(circuit_of, into, kind, group) for n, circuit_of, into in runs if n == name for kind in DESIDERATA
                for group in circuits[circuit_of].groups]
        tasks = [DCMTask(circuits[c].groups[g], *data[k]) for c, _, k, g in keys]
        for (_, into, kind, group), r in zip(keys, dcm_many(sides[name], tasks, dcm_cfg)):
            into.setdefault(name, {}).setdefault(group, {})[kind] = {**r.to_dict(), "n_selected": len(r.selected)}
        for n, circuit_of, into in runs:
            if n != name:
                continue
            for kind in DESIDERATA:
                log(f"      {name} ({circuit_of} circuit) / {kind}: " + ", ".join(
                    f"{g} {v[kind]['n_selected']}/{len(circuits[circuit_of].groups[g])} heads, acc {v[kind]['accuracy']:.2f}"
                    for g, v in into[name].items()))
    timing["dcm"] = time.time() - t0

    metrics = {"accuracy": accuracy, "accuracy_breakdown": accuracy_breakdown, "tuning": {n: {k: v for k, v in t.items() if k != "heldout"} for n, t in tune_info.items()},
               "attribution_vs_exact": comparison, "circuits": {n: c.to_dict() for n, c in circuits.items()},
               "circuit_overlap_with_base": overlap, "faithfulness": faith, "cmap": cmap_res, "dcm": dcm_res,
               "dcm_own_circuit": dcm_own,
               "group_positions": GROUP_POS, "timing_s": timing}
    models = {"base": info}
    record = save_results(out_dir, cfg.to_dict(), metrics, models, str(model.device), started, figures)
    log(f"done in {time.time() - started:.0f} s -> {out_dir / 'results.json'}")
    return record


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _overlap(a, b) -> dict[str, float]:
    """Jaccard overlap of (layer, head) sets per group and overall."""
    def jac(x, y):
        x, y = {(s.layer, s.head) for s in x}, {(s.layer, s.head) for s in y}
        return len(x & y) / len(x | y) if x | y else float("nan")
    return {**{g: jac(a.groups[g], b.groups[g]) for g in a.groups}, "circuit": jac(a.sites(), b.sites())}
