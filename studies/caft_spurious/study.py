"""CAFT on the spurious-cue task with the real SmolLM2: a study of CAFT's arms (not part of the test suite).

``python -m studies.caft_spurious --config default --out runs/caft_spurious`` runs, on the same data and seed:

1. the base model;
2. standard fine-tuning (``"inner": "lofit"``: LoFiT offsets on 10% of heads; or any registered method,
   e.g. ``"inner": "full"``);
3. PCA of tuned − base residual differences at ``layers`` on training answer positions, components
   chosen automatically with gender-labelled prompts (nouns disjoint from the task's), read at the noun
   and pronoun (``"concept_at": "words"``) or the last token (``"last"``);
4. the test-time-only baseline (ablate those components on the standard model at evaluation);
5. CAFT: the same fine-tuning from the base with the chosen components ablated, evaluated without
   (``with_ablation``: the same model evaluated with the ablation still on, a diagnostic);
6. CAFT with random directions (same count per layer).

Writes ``results.json`` (the workbench results record) with in-distribution (``heldout``) and
out-of-distribution (``ood``) accuracy among the two options for each arm, ``figures/`` (``figures.py``), plus the
trained inner adapters and ablations per arm. Defaults take ~3 min (LoFiT) / ~4 min (full) on 2 idle CPU cores;
``--config tiny`` is a smoke run (2 steps, 8 prompts per set).
Source of the protocol:
Casademunt et al., arXiv 2507.16795, 2025, §5 (toy spurious-cue tasks, baselines).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from studies.common import ShippedConfig, save_results
from workbench.methods.caft.directions import choose_concept_components, pca_directions, random_directions
from workbench.methods.caft.intervention import CaftIntervention
from workbench.methods.caft.trainer import evaluate_with_ablation, train_caft
from workbench.methods import get_method, save_intervention
from workbench.tasks import spurious_cue as sc
from workbench.train import TrainConfig


@dataclass
class CheckConfig(ShippedConfig):
    """Settings of the study (``configs/default.json`` holds these defaults)."""

    inner: str = "lofit"  # any registered method, e.g. "lofit" | "full"
    steps: int = 40
    select_steps: int = 10
    lr: float = 2e-2
    batch_size_prompts: int = 8
    layers: list[int] = field(default_factory=lambda: [6, 12, 18, 24])
    n_components: int = 20
    top_n: int = 2
    n_pca_prompts: int = 64
    n_eval: int = 64
    nouns: str = "kinship"
    design: str = "judgement"
    concept_at: str = "words"  # read concept prompts at the noun and pronoun ("words") or the last token ("last")
    seed: int = 0


def _log(msg: str, t0: float) -> None:
    print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", flush=True)


def run(cfg: CheckConfig, out_dir: str | Path) -> dict[str, Any]:
    from workbench.models import load_model

    out_dir = Path(out_dir)
    started, t0 = time.time(), time.perf_counter()
    model, tok, info = load_model("smollm2-135m-instruct")
    dims, pad = info.dims, tok.pad_token_id
    split = sc.generate(tok, sc.SpuriousCueConfig(n_train=256, n_heldout=cfg.n_eval, n_ood=cfg.n_eval, nouns=cfg.nouns, design=cfg.design, seed=cfg.seed))
    examples = sc.to_examples(split.train)

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        h, o = sc.evaluate(m, split.heldout), sc.evaluate(m, split.ood)
        return {"heldout_acc": h["accuracy"], "ood_acc": o["accuracy"], "heldout_logit_diff": h["logit_diff"], "ood_logit_diff": o["logit_diff"]}

    def finetune(ablation: CaftIntervention | None) -> tuple[Any, dict[str, Any]]:
        """Fine-tune from the base (the inner method keeps the base weights untouched outside ``attach``)."""
        tcfg = TrainConfig(max_steps=cfg.steps, lr=cfg.lr, batch_size_prompts=cfg.batch_size_prompts, seed=cfg.seed, progress=False)
        # an inner method with a head-selection step (its config has ``top_k_heads`` and ``select``) selects 10 % of
        # the heads in ``select_steps`` steps; any other runs with its config's defaults
        inner_cls = get_method(cfg.inner).config_cls
        method_cfg = None
        if {"top_k_heads", "select"} <= {f.name for f in fields(inner_cls)}:
            method_cfg = inner_cls(top_k_heads=0.1, select=TrainConfig(max_steps=cfg.select_steps, lr=5e-3, batch_size_prompts=cfg.batch_size_prompts, seed=cfg.seed, progress=False))
        r = train_caft(model, dims, examples, ablation, train_method=cfg.inner, method_config=method_cfg, train_cfg=tcfg, pad_id=pad)
        return r.inner, {"first_loss": r.result.losses[0], "last_loss": r.result.losses[-1], "seconds_per_step": r.result.seconds_per_step}

    def eval_tuned(inner: Any) -> dict[str, float]:
        with inner.attach(model):
            return evaluate(model)

    metrics: dict[str, Any] = {}
    metrics["base"] = evaluate(model)
    _log(f"base {metrics['base']}", t0)
    inner, stats = finetune(None)
    metrics["standard"] = {**eval_tuned(inner), **stats}
    save_intervention(out_dir / "standard" / "inner", inner, info)
    _log(f"standard {metrics['standard']}", t0)

    prompts = [p.input_ids for p in split.train[: cfg.n_pca_prompts]]
    pca = pca_directions(model, model, prompts, None, cfg.layers, cfg.n_components, tuned_intervention=inner, pad_id=pad)
    concept = sc.concept_cue_prompts(tok, task_nouns=cfg.nouns, n=64, seed=cfg.seed, design=cfg.design)
    c_ids, c_labels = [p.input_ids for p in concept], [int(p.noun_gender == "female") for p in concept]
    c_pos = None if cfg.concept_at == "last" else [[p.noun_pos, p.pronoun_pos] for p in concept]
    chosen, choice_info = {}, {}
    for layer in cfg.layers:
        choice = choose_concept_components(pca[layer], model, layer, c_ids, c_labels, cfg.top_n, positions=c_pos)
        chosen[layer] = pca[layer].components[choice.indices]
        choice_info[layer] = {"indices": choice.indices, "auc": [round(float(choice.scores[i]), 3) for i in choice.indices],
                              "auc_all": [round(float(s), 3) for s in choice.scores],
                              "explained_variance_ratio": [round(float(v), 4) for v in pca[layer].explained_variance_ratio]}
    metrics["pca_choice"] = choice_info
    _log(f"chosen components {({l: (v['indices'], v['auc']) for l, v in choice_info.items()})}", t0)
    ablation = CaftIntervention.from_directions(chosen, dims, source=f"pca auto top{cfg.top_n}")

    metrics["test_time_only"] = evaluate_with_ablation(model, ablation, lambda: eval_tuned(inner))
    _log(f"test-time-only {metrics['test_time_only']}", t0)

    def caft_arm(name: str, abl: CaftIntervention) -> None:
        inner_x, stats = finetune(abl)
        # the CAFT model is the plain tuned model; "with_ablation" is a diagnostic (the training condition)
        with_abl = evaluate_with_ablation(model, abl, lambda: eval_tuned(inner_x))
        metrics[name] = {**eval_tuned(inner_x), **stats, "with_ablation": with_abl}
        save_intervention(out_dir / name / "inner", inner_x, info)
        save_intervention(out_dir / name / "ablation", abl, info)
        _log(f"{name} {metrics[name]}", t0)

    caft_arm("caft_pca", ablation)
    rand = {l: random_directions(dims.d_model, cfg.top_n, seed=cfg.seed + l) for l in cfg.layers}
    caft_arm("caft_random", CaftIntervention.from_directions(rand, dims, source="random"))

    from studies.caft_spurious.figures import figures

    return save_results(out_dir, {**asdict(cfg), "study": "caft_spurious"}, metrics, {"base": info}, str(model.device), started, figures)
