"""The divergence guard of :func:`workbench.train.fit`: the rules that stop a run that blew up.

A run blows up in more ways than a NaN: with a huge learning rate the loss can stay finite (it saturates)
while the parameters run off to 1e30, or the optimizer itself overflows. :class:`DivergenceGuard` checks,
every step (thresholds in :class:`~workbench.train.TrainConfig`, 0 disables a threshold):

1. before the update, the loss against a reference (``divergence_loss_factor``, after
   ``divergence_warmup_steps``): the parameters that produced it came from the previous update, so that
   update is undone;
2. the optimizer step itself (an overflow inside ``opt.step()``), and
3. after the update, every trainable parameter: finite, and ``|p| <= divergence_max_param_abs``; a bad
   update is undone.

"Undone" means the parameters and the optimizer state are restored in memory from a snapshot taken
before that update (one copy of the trainable tensors and the optimizer moments), so a caller never holds
diverged values, and :func:`fit` writes that state as the last good checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from statistics import median
from typing import Any

import torch
from torch import Tensor, nn

from workbench.checkpoints import optimizer_tensors, restore_optimizer

#: Losses of the last this-many steps give the running median of rule 1.
RUNNING_MEDIAN_STEPS = 20

#: What a divergence message tells a Python caller to do (the CLI passes its own command).
DEFAULT_RESTART_HINT = "call fit() again with the same out_dir and a lower TrainConfig.lr; it resumes from that checkpoint"

_RESTART_HINT: ContextVar[str | None] = ContextVar("restart_hint", default=None)


@contextmanager
def restart_hint_scope(hint: str | None) -> Iterator[None]:
    """Inside this block, :func:`fit` calls without their own ``restart_hint`` use ``hint`` (``None``: no change).

    Lets a caller several layers up (the CLI's train job, above a method's multi-step trainer) say which
    command restarts the run, without every trainer passing it along.
    """
    token = _RESTART_HINT.set(hint) if hint is not None else None
    try:
        yield
    finally:
        if token is not None:
            _RESTART_HINT.reset(token)


def current_restart_hint(explicit: str | None = None) -> str:
    """``explicit``, else the innermost :func:`restart_hint_scope`'s hint, else the Python-API wording."""
    return explicit or _RESTART_HINT.get() or DEFAULT_RESTART_HINT


class DivergenceGuard:
    """Snapshots and checks of one :func:`fit` run (see the module docstring)."""

    def __init__(self, cfg: Any, intervention: nn.Module, opt: torch.optim.Optimizer, params: list[Tensor]) -> None:
        self.cfg, self.intervention, self.opt, self.params = cfg, intervention, opt, params
        self._saved: tuple[dict[str, Tensor], dict[str, Tensor], list[dict[str, Any]]] | None = None

    @property
    def has_snapshot(self) -> bool:
        return self._saved is not None

    def snapshot(self) -> None:
        """Remember the current parameters and optimizer state (copies, not references)."""
        with torch.no_grad():
            params = {k: v.detach().clone() for k, v in self.intervention.state_dict().items()}
            opt_tensors, meta = optimizer_tensors(self.opt)
            self._saved = (params, {k: v.detach().clone() for k, v in opt_tensors.items()}, meta["param_groups"])

    def restore(self) -> None:
        """Put the last snapshot back into the intervention and the optimizer (no-op without one)."""
        if self._saved is None:
            return
        params, opt_tensors, groups = self._saved
        with torch.no_grad():
            self.intervention.load_state_dict({k: v.clone() for k, v in params.items()}, strict=True)
        restore_optimizer(self.opt, {k: v.clone() for k, v in opt_tensors.items()}, groups)

    def loss_blowup(self, loss: float, losses: list[float]) -> str | None:
        """Rule 1: why ``loss`` counts as a blow-up given the earlier ``losses`` (nats), or ``None``.

        The reference is the largest of the starting loss (median of the first warm-up steps), the running
        median of the last :data:`RUNNING_MEDIAN_STEPS` steps and ``divergence_min_loss_nats``: a healthy loss
        that falls towards 0 would make any ratio to its recent values huge (0.05 is 50× 0.001), so the
        reference never drops below where the run started, nor below the floor.
        """
        factor, warmup = self.cfg.divergence_loss_factor, self.cfg.divergence_warmup_steps
        if factor <= 0 or len(losses) < warmup or not losses:
            return None
        start, recent = median(losses[:warmup]), median(losses[-RUNNING_MEDIAN_STEPS:])
        ref = max(start, recent, self.cfg.divergence_min_loss_nats)
        if loss <= factor * ref:
            return None
        return (f"loss {loss:.4g} nats is above divergence_loss_factor={factor:g} × {ref:.4g} nats (the largest of the "
                f"starting loss {start:.4g}, the running median {recent:.4g} and divergence_min_loss_nats="
                f"{self.cfg.divergence_min_loss_nats:g})")

    @torch.no_grad()
    def param_problem(self) -> tuple[str, bool] | None:
        """Rule 3: ``(why, non_finite)`` when a trainable parameter is NaN/inf or beyond the bound, else ``None``."""
        norms = [torch.linalg.vector_norm(p.detach().float(), ord=math.inf) for p in self.params if p.numel()]
        if not norms:
            return None
        largest = float(torch.stack([n.to(norms[0].device) for n in norms]).max())
        if not math.isfinite(largest):
            return f"a trainable parameter became non-finite ({largest})", True
        bound = self.cfg.divergence_max_param_abs
        if bound > 0 and largest > bound:
            return f"the largest |parameter| is {largest:.4g}, above divergence_max_param_abs={bound:g}", False
        return None
