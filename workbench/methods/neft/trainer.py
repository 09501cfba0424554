"""NeFT's pipeline: brief full fine-tuning → per-neuron cosine similarity → select → train the deltas.

Source: Xu, Zhan, Ma, Wong, Chao, COLING 2025, §3: fine-tune the whole model briefly (an early checkpoint
is enough), score every neuron by the cosine similarity of its base and tuned weights, keep the
lowest-similarity neurons up to a parameter budget, restart from the base model and train only those.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from workbench.architecture import Dims, decoder_layers
from workbench.artifacts import (
    atomic_save_tensors,
    atomic_write_json,
    load_tensors,
    read_json,
)
from workbench.data import Example, collate
from workbench.distributed import is_main_process, wait_for_every_process
from workbench.errors import (
    CheckpointError,
    ConfigError,
    DivergenceError,
    MismatchError,
    NonFiniteLossError,
)
from workbench.losses import sft_loss
from workbench.methods.neft.config import SELECTION_MODES, NeftConfig
from workbench.methods.neft.intervention import NeftIntervention, neuron_weights
from workbench.train import TrainResult, batch_indices, fit, seed_everything


@dataclass
class NeftRun:
    """Outcome of :func:`train_neft`.

    Attributes:
        intervention: the trained deltas.
        scores: ``[n_layers, d_mlp]`` cosine similarities (float64), or ``None`` for random selection.
        neurons: the selected ``[layer, index]`` pairs.
        select_losses: per-step losses (nats per answer token) of the brief full fine-tuning (empty when
            it was skipped: random selection, or scores reused from ``out_dir``).
        train_result: :func:`~workbench.train.fit`'s result for the deltas.
    """

    intervention: NeftIntervention
    scores: Tensor | None
    neurons: list[list[int]]
    select_losses: list[float]
    train_result: TrainResult


#: The sizes the budget arithmetic needs (a partial dims dict with only these works).
_SIZES = ("n_layers", "d_mlp", "d_model")


def neuron_cost(dims: Dims | dict[str, Any]) -> int:
    """Parameters per neuron of a gated MLP: ``3 * d_model`` (gate row, up row, down column)."""
    return 3 * Dims.coerce(dims, _SIZES).d_model


def brief_full_finetune(
    model: nn.Module,
    examples: Sequence[Example],
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    *,
    pad_id: int = 0,
    on_step: Callable[[int, float], None] | None = None,
) -> nn.Module:
    """Fully fine-tune a deep copy of ``model`` for ``steps`` AdamW steps and return the copy.

    Same answer-only loss and batches as :func:`~workbench.train.fit` (``batch_indices(seed, step)``),
    eval mode (no dropout), gradient clipping at 1.0, weight decay 0 (so every weight moves only by its
    gradient, which is what the similarity score is meant to read). ``model`` itself is not changed.
    ``on_step(step, loss)`` is called after each step (loss in nats per answer token).

    Note: AdamW's first steps move every weight with a non-zero gradient by ≈ ``lr`` regardless of the
    gradient's size, so very short runs rank neurons mostly by how small their weights are; the paper
    scores an early checkpoint of a real run (hundreds of steps).

    Raises:
        ConfigError: no examples or non-positive steps / lr / batch size.
        NonFiniteLossError: the loss, gradient norm or a weight became NaN/inf (lower ``lr``).
        DivergenceError: the optimizer step overflowed (lower ``lr``).
    """
    if not examples:
        raise ConfigError("brief_full_finetune needs at least one training example")
    if steps < 1 or batch_size < 1 or not (lr > 0 and math.isfinite(lr)):
        raise ConfigError(f"brief_full_finetune needs steps >= 1, batch_size >= 1 and lr > 0 (got {steps}, {batch_size}, {lr})")
    tuned = copy.deepcopy(model).eval()
    params = list(tuned.parameters())
    for p in params:
        p.requires_grad_(True)
    device = params[0].device
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    for step in range(steps):
        batch = [examples[i] for i in batch_indices(len(examples), batch_size, seed, step)]
        ids, mask, labels = (t.to(device) for t in collate(batch, pad_id))
        loss = sft_loss(tuned, ids, mask, labels)
        opt.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"brief full fine-tuning: loss became {float(loss)} at step {step}; lower NeftConfig.select_lr")
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        if not torch.isfinite(gnorm):
            raise NonFiniteLossError(f"brief full fine-tuning: gradient norm became {float(gnorm)} at step {step}; lower NeftConfig.select_lr")
        try:
            opt.step()
        except RuntimeError as exc:  # an overflowing update (e.g. lr 1e38); the copy is discarded
            if "out of memory" in str(exc).lower():
                raise
            raise DivergenceError(f"brief full fine-tuning: the optimizer step failed at step {step} ({exc}); lower NeftConfig.select_lr") from exc
        if not all(torch.isfinite(p).all() for p in params):
            raise NonFiniteLossError(f"brief full fine-tuning: a weight became non-finite at step {step}; lower NeftConfig.select_lr")
        if on_step is not None:
            on_step(step + 1, float(loss.detach()))
    del opt
    for p in params:
        p.requires_grad_(False)
        p.grad = None
    return tuned


@torch.no_grad()
def score_neurons(base_model: nn.Module, tuned_model: nn.Module) -> Float[Tensor, "n_layers d_mlp"]:
    """Cosine similarity between each neuron's base and tuned weights (NeFT §3; lower = changed more).

    A neuron's weights are ONE concatenated vector ``[gate row, up row, down column]`` (length
    ``3 * d_model``), not an average of three cosines. Computed in float64: after a few small steps
    ``1 - cos`` is ~1e-8, below float32 resolution. A neuron whose weights did not change at all scores
    exactly 1.0; a zero vector counts as unchanged only when both are zero.

    Raises:
        MismatchError: the two models have different layer counts or MLP shapes.
        ConfigError: a layer's MLP is not gated.
    """
    n_base, n_tuned = len(decoder_layers(base_model)), len(decoder_layers(tuned_model))
    if n_base != n_tuned:
        raise MismatchError(f"base has {n_base} layers, tuned has {n_tuned}; score neurons of a fine-tuned copy of the base")
    out = []
    for layer in range(n_base):
        a, b = neuron_weights(base_model, layer), neuron_weights(tuned_model, layer)
        if a.shape != b.shape:
            raise MismatchError(f"layer {layer}: neuron weights {tuple(a.shape)} vs {tuple(b.shape)}; the models must share MLP shapes")
        same = (a == b).all(dim=1).to(a.device)
        a, b = a.double(), b.to(a.device).double()
        cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-300)
        out.append(torch.where(same, torch.ones_like(cos), cos).cpu())
    return torch.stack(out)


def n_neurons_for_budget(budget_fraction: float, dims: Dims | dict[str, Any], n_model_params: int) -> int:
    """How many neurons fit in ``budget_fraction`` of ``n_model_params`` (rounded down).

    Raises:
        ConfigError: budget outside (0, 1], fewer than one neuron, or more neurons than the model has.
    """
    if isinstance(budget_fraction, bool) or not isinstance(budget_fraction, (int, float)) or not (0 < budget_fraction <= 1):
        raise ConfigError(f"budget must be a fraction of all model parameters in (0, 1], got {budget_fraction!r} (1% is 0.01)")
    dims = Dims.coerce(dims, _SIZES)
    cost, total = neuron_cost(dims), dims.n_layers * dims.d_mlp
    n = math.floor(budget_fraction * n_model_params / cost + 1e-9)
    if n < 1:
        raise ConfigError(f"budget {budget_fraction:g} x {n_model_params} params = {budget_fraction * n_model_params:.0f} params buys no "
                          f"neuron (one costs {cost}); use a budget >= {cost / n_model_params:.3g}")
    if n > total:
        raise ConfigError(f"budget {budget_fraction:g} asks for {n} neurons but the model has only {total} "
                          f"({total * cost / n_model_params:.3g} of its parameters); use a smaller budget or full fine-tuning")
    return n


def select_neurons(
    scores: Float[Tensor, "n_layers d_mlp"] | None,
    budget_fraction_of_params: float,
    dims: Dims | dict[str, Any],
    n_model_params: int,
    mode: str = "low",
    seed: int = 0,
) -> list[list[int]]:
    """Pick neurons within a budget, returned as ``[layer, index]`` pairs sorted by (layer, index).

    Args:
        scores: per-neuron cosine similarities (:func:`score_neurons`); not needed for ``"random"``.
        budget_fraction_of_params: trainable parameters as a fraction of ALL ``n_model_params``; each
            neuron costs ``3 * d_model``; the count is rounded down.
        dims: a :class:`~workbench.architecture.Dims` (a ``ModelInfo`` or its ``to_dict()`` works).
        mode: ``"low"`` lowest similarity first (NeFT), ``"reversed"`` highest first, ``"random"``
            uniform without replacement seeded by ``seed``. Ties keep flat (layer, index) order.

    Raises:
        ConfigError: budget out of range (see :func:`n_neurons_for_budget`), an unknown mode, missing
            scores for a score-based mode, or scores whose shape is not ``[n_layers, d_mlp]``.
    """
    if mode not in SELECTION_MODES:
        raise ConfigError(f"selection mode must be one of {list(SELECTION_MODES)}, got {mode!r}")
    dims = Dims.coerce(dims, _SIZES)
    n = n_neurons_for_budget(budget_fraction_of_params, dims, n_model_params)
    shape = (dims.n_layers, dims.d_mlp)
    if mode == "random":
        flat = torch.randperm(shape[0] * shape[1], generator=torch.Generator().manual_seed(seed))[:n]
    else:
        if scores is None or tuple(scores.shape) != shape:
            got = None if scores is None else tuple(scores.shape)
            raise ConfigError(f"selection {mode!r} needs scores of shape {shape} (from score_neurons), got {got}")
        key = scores.flatten().double()
        flat = torch.sort(key if mode == "low" else -key, stable=True).indices[:n]
    return sorted([int(i) // shape[1], int(i) % shape[1]] for i in flat)


def _examples_digest(examples: Sequence[Example]) -> str:
    h = hashlib.sha256()
    for e in examples:  # the answer mask (chat data) changes the loss, so it is part of the digest when present
        mask = getattr(e, "answer_mask", None)
        h.update(json.dumps([e.prompt_ids, e.answer_ids] + ([list(mask)] if mask is not None else [])).encode())
    return h.hexdigest()[:16]


def _cached_scores(select_dir: Path | None, meta: dict[str, Any]) -> Tensor | None:
    if select_dir is None or not (select_dir / "scores.json").exists():
        return None
    saved = read_json(select_dir / "scores.json")
    if saved != meta:
        raise CheckpointError(f"{select_dir} holds scores from other selection settings ({saved}); use a new out_dir or the same config")
    return load_tensors(select_dir / "scores.safetensors")["scores"]


def train_neft(
    model: nn.Module,
    dims: Dims | dict[str, Any],
    examples: Sequence[Example],
    cfg: NeftConfig,
    *,
    pad_id: int = 0,
    out_dir: str | Path | None = None,
    eval_fn: Callable[[], dict[str, Any]] | None = None,
) -> NeftRun:
    """Run NeFT end to end; ``model`` is never modified (its weights stay bit-identical).

    1. ``"low"`` / ``"reversed"``: :func:`brief_full_finetune` a copy for ``cfg.select_steps`` steps
       (``cfg.select_lr``), then :func:`score_neurons`; ``"random"`` skips this.
    2. :func:`select_neurons` with ``cfg.budget_fraction`` of all of ``model``'s parameters.
    3. Train a :class:`NeftIntervention` on those neurons with :func:`~workbench.train.fit` and
       ``cfg.train``.

    With ``out_dir``, the scores go to ``out_dir/select`` (reused by a rerun with the same settings) and
    checkpoints of step 3 to ``out_dir/train`` (a rerun resumes).

    Raises:
        ConfigError: budget out of range, no examples, or a non-gated MLP.
        CheckpointError: ``out_dir`` holds scores or checkpoints from other settings.
        NonFiniteLossError: the brief fine-tuning or the delta training diverged.
    """
    if not examples:
        raise ConfigError("train_neft needs at least one training example")
    weight_hash = dims.get("weight_hash") if isinstance(dims, dict) else getattr(dims, "weight_hash", None)
    dims = Dims.coerce(dims)
    n_params = sum(p.numel() for p in model.parameters())
    n_neurons_for_budget(cfg.budget_fraction, dims, n_params)  # fail before the expensive part
    scores, select_losses = None, []
    if cfg.selection != "random":
        select_dir = None if out_dir is None else Path(out_dir) / "select"
        meta = {"select_steps": cfg.select_steps, "select_lr": cfg.select_lr, "select_batch_size": cfg.select_batch_size,
                "seed": cfg.seed, "pad_id": pad_id, "n_examples": len(examples), "examples": _examples_digest(examples),
                "model_weight_hash": weight_hash}
        scores = _cached_scores(select_dir, meta)
        wait_for_every_process()  # every rank has looked at the cache before the main process may write it
        if scores is None:
            tuned = brief_full_finetune(model, examples, cfg.select_steps, cfg.select_lr, cfg.select_batch_size, cfg.seed,
                                        pad_id=pad_id, on_step=lambda _s, loss: select_losses.append(loss))
            scores = score_neurons(model, tuned)
            del tuned
            if select_dir is not None and is_main_process():  # one writer in a multi-process launch
                atomic_save_tensors(select_dir / "scores.safetensors", {"scores": scores})
                atomic_write_json(select_dir / "scores.json", meta)
    neurons = select_neurons(scores, cfg.budget_fraction, dims, n_params, cfg.selection, cfg.seed)
    gen = seed_everything(cfg.train.seed)
    intervention = NeftIntervention(replace(cfg, neurons=neurons), dims, generator=gen)
    result = fit(model, intervention, examples, cfg.train, pad_id=pad_id, eval_fn=eval_fn,
                 out_dir=None if out_dir is None else Path(out_dir) / "train")
    return NeftRun(intervention, scores, neurons, select_losses, result)


def neft_trainer(model, dims, examples, cfg: NeftConfig, *, train_config=None, pad_id=0, out_dir=None, eval_fn=None):
    """Registry adapter for :func:`workbench.finetune.finetune`: a given ``train_config`` replaces
    ``cfg.train`` (the delta training; the brief full fine-tuning keeps ``cfg.select_*``). ``details``
    holds the selected neurons, their count per layer and the brief fine-tuning's losses (the full
    ``[n_layers, d_mlp]`` scores are saved to ``out_dir/select/scores.safetensors`` when ``out_dir``
    is given)."""
    if train_config is not None:
        cfg = replace(cfg, train=train_config)
    run = train_neft(model, dims, examples, cfg, pad_id=pad_id, out_dir=out_dir, eval_fn=eval_fn)
    per_layer = [0] * Dims.coerce(dims).n_layers
    for layer, _ in run.neurons:
        per_layer[layer] += 1
    details = {"selection": cfg.selection, "n_neurons": len(run.neurons), "neurons": run.neurons,
               "neurons_per_layer": per_layer, "select_losses": run.select_losses}
    return run.intervention, run.train_result, details
