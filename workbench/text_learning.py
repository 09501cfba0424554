"""Learning one text from a fresh copy of the model, and ignore-top-k update pruning (training code).

Source: Sun et al. (Google DeepMind), "How new data permeates LLM knowledge and how to dilute it",
arXiv 2504.09522, 2025 — §2 (learning a text: a fixed number of steps on the text, or a few presentations
mixed into ordinary text), §5.2 (ignore-top-k: drop the largest k% of each parameter update). The probes
that read the result (keyword probabilities, priming score) are in :mod:`probes.priming`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from workbench.data import IGNORE_INDEX, right_pad
from workbench.errors import ConfigError, NonFiniteLossError


class IgnoreTopK:
    """Wrap any ``torch.optim.Optimizer`` so that, after each step, the largest ``fraction`` of every
    parameter's update (by magnitude, per parameter tensor) is undone and the rest kept.

    Sun et al. 2025, §5.2 ("ignore-top-k", k ≈ 8%). The inner optimizer's state (e.g. Adam moments) still
    sees the full gradient; only the applied update is pruned. Memory: one copy of the trainable parameters
    per step.

    Raises:
        ConfigError: ``fraction`` outside [0, 1).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, fraction: float = 0.08) -> None:
        if not 0.0 <= float(fraction) < 1.0:
            raise ConfigError(f"ignore-top-k fraction must be in [0, 1), got {fraction}")
        self.optimizer = optimizer
        self.fraction = float(fraction)
        self.n_ignored = 0  # entries whose update was dropped, summed over steps

    @property
    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)

    def step(self, closure=None):  # noqa: ANN001 - the torch.optim signature
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        before = [p.detach().clone() for p in params]
        loss = self.optimizer.step(closure)
        if self.fraction == 0.0:
            return loss
        with torch.no_grad():
            for p, old in zip(params, before):
                k = int(self.fraction * p.numel())
                if k == 0:
                    continue
                flat, old_flat = p.view(-1), old.view(-1)
                drop = largest_mask((flat - old_flat).abs(), k)
                flat.copy_(torch.where(drop, old_flat, flat))
                self.n_ignored += k
        return loss


def largest_mask(values: Float[Tensor, " n"], k: int, *, sample_size: int = 262144, margin: float = 0.002) -> Bool[Tensor, " n"]:
    """Boolean mask of the ``k`` largest entries of a 1-D tensor (the same set as ``values.topk(k)`` when
    there are no ties at the boundary; exactly ``k`` entries), in a few linear passes.

    ``topk`` with k in the millions costs seconds per 28M-entry tensor on a CPU; here a random sample
    brackets the k-th largest value, everything above the bracket is kept, and ``topk`` runs only on the
    entries inside it. Falls back to a plain ``topk`` when the bracket misses (rare), so the result is exact.
    """
    n = values.numel()
    mask = torch.zeros(n, dtype=torch.bool, device=values.device)
    if k <= 0:
        return mask
    if n <= 4 * sample_size or k >= n:
        mask[values.topk(min(k, n), sorted=False).indices] = True
        return mask
    gen = torch.Generator(device=values.device).manual_seed(n)
    sample = values[torch.randint(n, (sample_size,), generator=gen, device=values.device)].float()
    q = 1.0 - k / n
    lo, hi = torch.quantile(sample, torch.tensor([max(q - margin, 0.0), min(q + margin, 1.0)], device=values.device)).tolist()
    torch.gt(values, hi, out=mask)
    need = k - int(torch.count_nonzero(mask))
    band = ((values >= lo) & (values <= hi)).nonzero().squeeze(1)
    if need < 0 or need > band.numel():
        mask.zero_()
        mask[values.topk(k, sorted=False).indices] = True
        return mask
    mask[band[values[band].topk(need, sorted=False).indices]] = True
    return mask


@dataclass
class LearnConfig:
    """How one text is learned (Sun et al. 2025, §2: a fixed number of steps on the text, or a few
    presentations mixed into ordinary text).

    Attributes:
        steps: optimizer steps.
        lr: learning rate.
        optimizer: ``"adam"`` (torch Adam, no weight decay) or ``"sgd"``.
        ignore_top_k: fraction of each update to drop (0 = off; :class:`IgnoreTopK`).
        mode: ``"text"`` (every step trains on the text alone) or ``"mixed"`` (every step is a batch of
            ordinary texts; the text replaces one of them in ``presentations`` evenly spaced steps).
        presentations: how often the text is shown in ``"mixed"`` mode.
        batch_size: sequences per step in ``"mixed"`` mode.

    Raises:
        ConfigError: non-positive steps / lr / batch size, unknown optimizer or mode, presentations outside
            1..steps, or a fraction outside [0, 1).
    """

    steps: int = 10
    lr: float = 1e-5
    optimizer: str = "adam"
    ignore_top_k: float = 0.0
    mode: str = "text"
    presentations: int = 3
    batch_size: int = 4

    def __post_init__(self) -> None:
        if self.steps < 1 or not self.lr > 0 or self.batch_size < 1:
            raise ConfigError(f"LearnConfig needs steps >= 1, lr > 0, batch_size >= 1; got {self.steps}, {self.lr}, {self.batch_size}")
        if self.optimizer not in ("adam", "sgd") or self.mode not in ("text", "mixed"):
            raise ConfigError(f"LearnConfig: optimizer must be adam|sgd and mode text|mixed, got {self.optimizer!r}, {self.mode!r}")
        if self.mode == "mixed" and not 1 <= self.presentations <= self.steps:
            raise ConfigError(f"presentations must be in 1..steps ({self.steps}), got {self.presentations}")
        if not 0.0 <= self.ignore_top_k < 1.0:
            raise ConfigError(f"ignore_top_k must be in [0, 1), got {self.ignore_top_k}")


@contextmanager
def fresh_copy(model: nn.Module) -> Iterator[nn.Module]:
    """Snapshot the trainable weights in memory; restore them bit-for-bit when the block ends (also on
    error), so that each text is learned from the same starting point without reloading from disk."""
    params = [p for p in model.parameters()]
    saved = [p.detach().clone() for p in params]
    try:
        yield model
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
        model.zero_grad(set_to_none=True)


def learn_text(
    model: nn.Module,
    text_ids: Sequence[int],
    cfg: LearnConfig,
    *,
    ordinary_ids: Sequence[Sequence[int]] = (),
    pad_id: int = 0,
    seed: int = 0,
) -> list[float]:
    """Full fine-tuning on one text with the causal-LM loss on every token (in place; wrap the call in
    :func:`fresh_copy` to undo it). Returns the loss of each step (nats per token).

    Raises:
        ConfigError: an empty text, or ``"mixed"`` mode without ordinary texts.
        NonFiniteLossError: a NaN / infinite loss (the weights are left as they were before that step).
    """
    if len(text_ids) < 2:
        raise ConfigError("the text to learn needs at least 2 tokens")
    if cfg.mode == "mixed" and not ordinary_ids:
        raise ConfigError("mixed mode needs ordinary texts to mix the learned text into")
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    inner = torch.optim.Adam(params, lr=cfg.lr, foreach=True) if cfg.optimizer == "adam" else torch.optim.SGD(params, lr=cfg.lr, foreach=True)
    opt = IgnoreTopK(inner, cfg.ignore_top_k) if cfg.ignore_top_k > 0 else inner
    gen = torch.Generator().manual_seed(seed)
    shown = {round(i * (cfg.steps - 1) / max(cfg.presentations - 1, 1)) for i in range(cfg.presentations)} if cfg.mode == "mixed" else set()
    losses = []
    was_training = model.training
    model.train()
    try:
        for step in range(cfg.steps):
            if cfg.mode == "text":
                batch = [list(text_ids)]
            else:
                picks = torch.randint(len(ordinary_ids), (cfg.batch_size,), generator=gen).tolist()
                batch = [list(ordinary_ids[i]) for i in picks]
                if step in shown:
                    batch[0] = list(text_ids)
            ids, mask, _ = right_pad(batch, pad_id)
            labels = ids.masked_fill(mask == 0, IGNORE_INDEX)  # the causal-LM loss on every real token
            loss = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)).loss
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"non-finite loss {loss.item()} at step {step} while learning a text; lower lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    finally:
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    return losses
