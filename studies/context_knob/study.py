"""Context-knob study: does fine-tuning for intent-following create a rank-1 knob that also steers the base?

Source: Minder, Du, Stoehr, Monea, Wendler, West, Cotterell, "Controllable Context Sensitivity and the
Knob Behind It", ICLR 2025 — §3 (task, LoRA fine-tuning), §4.1 (layer search), §4.2 (rank-1 DAS
subspace), §4.3 (steering the fine-tuned and the non-fine-tuned model with the same direction), §5
(task accuracy vs how well the intents separate along u).

Protocol (:func:`run`):
1. load the model; keep the facts (:data:`workbench.tasks.intent.FACTS`, optionally some relations) whose
   answer is one token and which the model answers right zero-shot; train / held-out pairs from disjoint
   facts;
2. context / prior / pair accuracy on the held-out pairs before fine-tuning;
3. LoRA (peft, q/k/v/o) with the answer-only loss on the train pairs (both intents); accuracies after;
4. layer search on the tuned model (attention outputs, flipped-intent patching, train pairs);
5. DAS rank-1 direction u at ``hook_resid_post`` of the chosen layer on the tuned model (train pairs);
6. held-out interchange accuracy of u vs a random unit direction vs no interchange, on both models;
7. held-out projections on u for both models (separation: ROC AUC, Cohen's d) and steering ``uᵀh = c``
   on both models with one c grid taken from the tuned model's two intent distributions;
8. ``results.json``, ``u.safetensors`` and plotly figures in ``figures/``.
Same config and seed give the same numbers (everything except ``metrics.timing_s``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studies.common import ShippedConfig, save_results
from studies.context_knob.figures import figures
from workbench.errors import ConfigError
from workbench.runs import log_progress
from workbench.tasks import intent as it


@dataclass
class ContextKnobConfig(ShippedConfig):
    """Settings of the context-knob study (``configs/{tiny,default,full}.json``).

    Attributes:
        model: model name or path for :func:`workbench.models.load_model`.
        seed: drives the split, the counterfactuals, LoRA, DAS and the random direction.
        relations: relations of :data:`~workbench.tasks.intent.RELATIONS` to use (empty = all).
        max_facts: keep at most this many facts after the zero-shot filter (seeded sample; 0 = all).
        heldout_fraction, n_train_contexts, n_heldout_contexts: the split and contexts per fact.
        lora: peft LoRA settings (``r``, ``alpha``, ``target_modules``).
        lora_max_steps, lora_lr, lora_batch_size_prompts: LoRA optimisation.
        search_max_pairs: train pairs used by the layer search (each pair gives 2 patched targets).
        search_threshold, search_relative: the pass criterion (fraction of the full-patch value, or absolute).
        das_layer: layer of u (``null`` = the upper bound of the searched window).
        das_max_pairs, das_max_steps, das_lr, das_batch_size: DAS training.
        steer_points, steer_extend: the c grid (points, widening beyond the projections' range as a fraction).
        batch_size_prompts: prompts per forward pass in evaluation.

    Raises:
        ConfigError: unknown relation, bad fractions / counts, or a negative layer.
    """

    model: str = "smollm2-135m-instruct"
    seed: int = 0
    relations: list[str] = field(default_factory=list)
    max_facts: int = 0
    heldout_fraction: float = 0.4
    n_train_contexts: int = 2
    n_heldout_contexts: int = 1
    lora: dict[str, Any] = field(default_factory=lambda: {"r": 8, "alpha": 16})
    lora_max_steps: int = 50
    lora_lr: float = 1e-3
    lora_batch_size_prompts: int = 8
    search_max_pairs: int = 32
    search_threshold: float = 0.85
    search_relative: bool = True
    das_layer: int | None = None
    das_max_pairs: int = 64
    das_max_steps: int = 100
    das_lr: float = 1e-2
    das_batch_size: int = 16
    steer_points: int = 9
    steer_extend: float = 0.5
    batch_size_prompts: int = 32

    def __post_init__(self) -> None:
        bad = sorted(set(self.relations) - set(it.RELATIONS))
        if bad:
            raise ConfigError(f"unknown relation(s) {bad}; known: {sorted(it.RELATIONS)}")
        if not 0 < self.heldout_fraction < 1:
            raise ConfigError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
        for name in ("n_train_contexts", "n_heldout_contexts", "lora_max_steps", "lora_batch_size_prompts", "search_max_pairs",
                     "das_max_pairs", "das_max_steps", "das_batch_size", "batch_size_prompts"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"ContextKnobConfig.{name} must be an int >= 1, got {getattr(self, name)!r}")
        if self.max_facts < 0 or self.steer_points < 2 or self.steer_extend < 0:
            raise ConfigError("ContextKnobConfig needs max_facts >= 0, steer_points >= 2 and steer_extend >= 0")
        if self.das_layer is not None and (not isinstance(self.das_layer, int) or self.das_layer < 0):
            raise ConfigError(f"das_layer must be null or a layer index >= 0, got {self.das_layer!r}")
        if not (self.lora_lr > 0 and self.das_lr > 0 and 0 < self.search_threshold <= 1):
            raise ConfigError("learning rates must be > 0 and search_threshold in (0, 1]")


def flipped(pairs: list[it.IntentPair]) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]], list[int]]:
    """Both directions of every pair: (targets, sources, source answers) — the context prompt patched from
    the prior prompt (answer: the prior answer) and the prior prompt patched from the context prompt."""
    targets, sources, answers = [], [], []
    for p in pairs:
        for tgt, src in ((p.context, p.prior), (p.prior, p.context)):
            targets.append(tgt.input_ids)
            sources.append(src.input_ids)
            answers.append(src.answer_id)
    return targets, sources, answers


def _facts(cfg: ContextKnobConfig, model, tok, pad_id: int, prepend_bos: bool) -> tuple[list[it.Fact], dict[str, int]]:
    facts = [f for f in it.FACTS if not cfg.relations or f.relation in cfg.relations]
    single, dropped = it.single_token_facts(tok, facts)
    known = it.known_facts(model, tok, single, pad_id=pad_id, prepend_bos=prepend_bos)
    kept = sorted(random.Random(cfg.seed).sample(known, cfg.max_facts), key=known.index) if 0 < cfg.max_facts < len(known) else known
    return kept, {"candidates": len(facts), "multi_token_dropped": len(dropped), "single_token": len(single),
                  "known_zero_shot": len(known), "used": len(kept)}


# --- the study ------------------------------------------------------------------------------------
def run(cfg: ContextKnobConfig, out_dir: str | Path, log: Callable[[str], None] = log_progress) -> dict[str, Any]:
    """Run the study; write ``results.json``, ``u.safetensors`` and ``figures/*.html`` into ``out_dir``.

    Raises:
        ModelNotFoundError: the model cannot be loaded.
        ConfigError: no fact survives the filters, an empty split, or a DAS layer out of range.
        NonFiniteLossError: LoRA or DAS training diverged.
    """
    from probes import subspace as sp
    from probes.layer_search import check_layer, layer_search
    from workbench.artifacts import atomic_save_tensors
    from workbench.finetune import finetune
    from workbench.models import load_model

    started = time.time()
    timing: dict[str, float] = {}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log(f"[1/8] loading {cfg.model}; filtering facts")
    model, tok, info = load_model(cfg.model)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    facts, fact_counts = _facts(cfg, model, tok, pad, info.prepend_bos)
    split = it.generate(tok, facts, heldout_fraction=cfg.heldout_fraction, n_train_contexts=cfg.n_train_contexts,
                        n_heldout_contexts=cfg.n_heldout_contexts, seed=cfg.seed, prepend_bos=info.prepend_bos)
    held = it.flat(split.heldout)
    kw = dict(batch_size=cfg.batch_size_prompts, pad_id=pad)
    log(f"      {fact_counts}; {len(split.train)} train / {len(split.heldout)} held-out pairs")
    timing["load_and_filter"] = time.time() - started

    log("[2/8] accuracies before fine-tuning")
    t0 = time.time()
    before = it.accuracies(split.heldout, it.predict(model, held, **kw))
    log(f"      context {before['context_accuracy']:.3f}, prior {before['prior_accuracy']:.3f}, pair {before['pair_accuracy']:.3f}")

    log(f"[3/8] LoRA {cfg.lora} for {cfg.lora_max_steps} steps")
    examples = it.to_examples(split.train)
    ft = finetune("lora", model, info, examples, dict(cfg.lora),
                  {"max_steps": cfg.lora_max_steps, "lr": cfg.lora_lr, "batch_size_prompts": cfg.lora_batch_size_prompts,
                   "seed": cfg.seed, "checkpoint_every_steps": 0, "progress": False}, pad_id=pad)
    adapter = ft.intervention
    after = it.accuracies(split.heldout, it.predict(model, held, adapter=adapter, **kw))
    train_after = it.accuracies(split.train, it.predict(model, it.flat(split.train), adapter=adapter, **kw))
    timing["lora"] = time.time() - t0
    log(f"      after: context {after['context_accuracy']:.3f}, prior {after['prior_accuracy']:.3f}, pair {after['pair_accuracy']:.3f} "
        f"(loss {ft.train_result.losses[0]:.3f} -> {ft.train_result.losses[-1]:.3f})")

    log("[4/8] layer search on the tuned model (attention outputs, flipped intent, last token)")
    t0 = time.time()
    s_t, s_s, s_a = flipped(split.train[: cfg.search_max_pairs])
    search = layer_search(model, s_t, s_s, s_a, threshold=cfg.search_threshold, relative=cfg.search_relative,
                          adapter=adapter, **kw)
    das_layer = search.hi if cfg.das_layer is None else cfg.das_layer
    check_layer(das_layer, info.n_layers)
    timing["layer_search"] = time.time() - t0
    log(f"      window {search.lo}..{search.hi} (threshold {search.threshold:.3f} of full {search.full_value:.3f}, "
        f"clean {search.clean_value:.3f}); {search.n_evaluations} evaluations, {search.n_forward_passes} forward passes")

    log(f"[5/8] DAS at blocks.{das_layer}.hook_resid_post for {cfg.das_max_steps} steps")
    t0 = time.time()
    d_t, d_s, d_a = flipped(split.train[: cfg.das_max_pairs])
    knob = sp.RankOneSubspace(sp.SubspaceConfig(das_layer, init_seed=cfg.seed), info.to_dict())
    das = sp.fit_das(model, knob, d_t, d_s, d_a, max_steps=cfg.das_max_steps, lr=cfg.das_lr, batch_size=cfg.das_batch_size,
                     seed=cfg.seed, adapter=adapter, pad_id=pad)
    knob.requires_grad_(False)
    rand = sp.RankOneSubspace(sp.SubspaceConfig(das_layer), info.to_dict(), direction=sp.random_direction(info.d_model, cfg.seed + 1))
    timing["das"] = time.time() - t0
    log(f"      DAS loss {das.losses[0]:.3f} -> {das.losses[-1]:.3f}")

    log("[6/8] held-out interchange accuracy (u vs random vs none) on both models")
    t0 = time.time()
    h_t, h_s, h_a = flipped(split.heldout)
    models = {"tuned": adapter, "untuned": None}
    interchange = {name: {which: sp.interchange_accuracy(model, sub, h_t, h_s, h_a, adapter=a, **kw)
                          for which, sub in (("u", knob), ("random", rand), ("none", None))} for name, a in models.items()}
    timing["interchange"] = time.time() - t0
    log(f"      {interchange}")

    log("[7/8] projections, separation and steering on both models")
    t0 = time.time()
    proj = {name: {intent: sp.projections(model, knob, [p.input_ids for p in held if p.intent == intent], adapter=a, **kw).tolist()
                   for intent in it.INTENTS} for name, a in models.items()}
    sep = {name: sp.separation(proj[name]["context"], proj[name]["prior"]) for name in models}
    values = sp.steering_values(proj["tuned"]["context"], proj["tuned"]["prior"], cfg.steer_points, cfg.steer_extend)
    seqs = [p.input_ids for p in held]
    ctx_ids, pri_ids = [p.context_answer_id for p in held], [p.prior_answer_id for p in held]
    steer = {name: sp.steer_rates(model, knob, seqs, ctx_ids, pri_ids, values, adapter=a, **kw) for name, a in models.items()}
    high_is_context = sep["tuned"]["context_mean"] > sep["tuned"]["prior_mean"]
    ends = {name: {"context_rate_at_context_end": s["context_rate"][-1 if high_is_context else 0],
                   "context_rate_at_prior_end": s["context_rate"][0 if high_is_context else -1],
                   "prior_rate_at_context_end": s["prior_rate"][-1 if high_is_context else 0],
                   "prior_rate_at_prior_end": s["prior_rate"][0 if high_is_context else -1]} for name, s in steer.items()}
    timing["steer_and_separation"] = time.time() - t0
    for name in models:
        log(f"      {name}: AUC {sep[name]['auc']:.3f}, d {sep[name]['cohens_d']:.2f}; steering context rate "
            f"{ends[name]['context_rate_at_prior_end']:.3f} (prior end) -> {ends[name]['context_rate_at_context_end']:.3f} (context end)")

    log("[8/8] writing results.json, u.safetensors and figures/")
    atomic_save_tensors(out_dir / "u.safetensors", {"u": knob.u.detach().cpu()}, metadata={"layer": str(das_layer), "hook": "hook_resid_post"})
    metrics = {
        "facts": fact_counts,
        "n_pairs": {"train": len(split.train), "heldout": len(split.heldout)},
        "accuracy": {"before": before, "after": after, "train_after": train_after},
        "lora": {"losses": ft.train_result.losses, "n_trainable_parameters": adapter.n_trainable(),
                 "seconds_per_step": ft.train_result.seconds_per_step},
        "layer_search": search.to_dict(),
        "das": {"layer": das_layer, "losses": das.losses, "n_pairs": len(d_t) // 2},
        "interchange_accuracy": interchange,
        "separation": sep,
        "projections": proj,
        "steering": {"values": values, "high_c_is_context": high_is_context, "curves": steer, "ends": ends},
        "example_prompts": {"context": split.heldout[0].context.text, "prior": split.heldout[0].prior.text},
        "timing_s": timing,
    }
    record = save_results(out_dir, cfg.to_dict(), metrics, {"base": info}, str(model.device), started, figures)
    log(f"      done in {record['run_info']['wall_time_s']:.0f} s -> {out_dir}")
    return record
