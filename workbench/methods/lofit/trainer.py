"""LoFiT's two-step pipeline: select heads (step 1), then train offsets on them (step 2).

Source: Yin, Ye, Durrett, NeurIPS 2024, §3 ("LoFiT" Algorithm): freeze the model, learn scalings
A with L1, keep the top-k heads by ‖A_h‖₂, reset, learn offsets v on those heads only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from workbench.architecture import Dims
from workbench.data import Example
from workbench.methods.lofit.config import LofitConfig
from workbench.methods.lofit.intervention import LofitOffsets, LofitScaling
from workbench.train import TrainResult, fit, seed_everything


@dataclass
class LofitRun:
    """Outcome of :func:`train_lofit`: the trained offsets, the step-1 scores and both training logs."""

    offsets: LofitOffsets
    head_scores: torch.Tensor  # [n_layers, n_heads]; ‖A_h‖₂ (l1) or random draws (random baseline)
    heads: list[list[int]]
    select_result: TrainResult | None
    offset_result: TrainResult


def top_k_heads(scores: torch.Tensor, k: int) -> list[list[int]]:
    """The ``k`` (layer, head) pairs with the largest score, sorted by (layer, head)."""
    flat = scores.flatten().topk(k).indices
    n_heads = scores.shape[1]
    return sorted([[int(i) // n_heads, int(i) % n_heads] for i in flat])


def train_lofit(
    model: nn.Module,
    dims: Dims | dict[str, Any],
    examples: Sequence[Example],
    cfg: LofitConfig,
    *,
    pad_id: int = 0,
    out_dir: str | Path | None = None,
    eval_fn: Callable[[], dict[str, Any]] | None = None,
) -> LofitRun:
    """Run LoFiT end to end on ``model`` (frozen) and return the trained offsets.

    Step 1 (``cfg.head_selection == "l1"``) trains :class:`LofitScaling` with ``cfg.select`` and keeps
    the ``cfg.n_heads_to_keep`` heads with the largest ‖A_h‖₂; ``"random"`` draws them uniformly with
    ``cfg.select.seed``. Step 2 trains :class:`LofitOffsets` with ``cfg.offset``. Checkpoints of each step
    go to ``out_dir/select`` and ``out_dir/offset``; a rerun resumes.
    """
    dims = Dims.coerce(dims)
    n_total = dims.n_layers * dims.n_heads
    k = cfg.n_heads_to_keep(n_total)
    select_result = None
    if cfg.head_selection == "l1":
        gen = seed_everything(cfg.select.seed)
        scaling = LofitScaling(cfg, dims, generator=gen)
        select_result = fit(model, scaling, examples, cfg.select, pad_id=pad_id,
                            out_dir=None if out_dir is None else Path(out_dir) / "select")
        scores = scaling.head_scores()
    else:
        scores = torch.rand(dims.n_layers, dims.n_heads, generator=torch.Generator().manual_seed(cfg.select.seed))
    heads = top_k_heads(scores, k)
    offset_cfg = replace(cfg, heads=heads)
    gen = seed_everything(cfg.offset.seed)
    offsets = LofitOffsets(offset_cfg, dims, generator=gen)
    offset_result = fit(model, offsets, examples, cfg.offset, pad_id=pad_id, eval_fn=eval_fn,
                        out_dir=None if out_dir is None else Path(out_dir) / "offset")
    return LofitRun(offsets, scores, heads, select_result, offset_result)


def lofit_trainer(model, dims, examples, cfg: LofitConfig, *, train_config=None, pad_id=0, out_dir=None, eval_fn=None):
    """Registry adapter: LoFiT carries its two TrainConfigs (``cfg.select``, ``cfg.offset``); a given
    ``train_config`` replaces ``cfg.offset`` (step 2)."""
    if train_config is not None:
        cfg = replace(cfg, offset=train_config)
    run = train_lofit(model, dims, examples, cfg, pad_id=pad_id, out_dir=out_dir, eval_fn=eval_fn)
    details = {"heads": run.heads, "head_scores": run.head_scores.tolist(),
               "select_losses": run.select_result.losses if run.select_result else [],
               "select_seconds_per_step": run.select_result.seconds_per_step if run.select_result else None}
    return run.offsets, run.offset_result, details
