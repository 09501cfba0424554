"""The context-sensitivity knob: layer search, a rank-1 DAS subspace, steering and intent separation.

Source: Minder, Du, Stoehr, Monea, Wendler, West, Cotterell, "Controllable Context Sensitivity and the
Knob Behind It", ICLR 2025 — §4.1 (linear-time search for the layers whose attention outputs carry the
intent), §4.2 (a rank-1 subspace found with distributed alignment search, DAS; Geiger et al. 2024),
§4.3 (steering by setting the projection on that direction), §5 (separation of the intents along it).

Everything here reads the model at the **last prompt token** of right-padded batches. ``targets`` and
``sources`` are token-id lists of paired prompts that differ only in their intent instruction; the
*source answer* is the answer the source prompt's intent asks for. ``adapter`` (optional, any
:class:`~workbench.intervention.Intervention`, e.g. the LoRA adapter of the tuned model) is attached
around every forward pass, so one frozen base model serves as both the tuned and the untuned model.

* :func:`probes.layer_search.layer_search` (its own module) — patch ``hook_attn_out`` (the attention block's write into
  the residual stream) at a window of layers from source into target; binary searches give the smallest upper bound and then
  the largest lower bound that keep the source answer's probability above a threshold, in
  ``O(log n_layers)`` forward passes.
* :class:`RankOneSubspace` — a trainable unit vector ``u`` at ``blocks.{layer}.hook_resid_post``:
  interchange ``h' = h_t − u uᵀh_t + u uᵀh_s`` (:meth:`~RankOneSubspace.interchanging`) or steering
  ``uᵀh ← c`` (:meth:`~RankOneSubspace.steering`); :func:`fit_das` trains it.
* :func:`interchange_accuracy`, :func:`steer_rates`, :func:`projections`, :func:`separation`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from probes.layer_search import Seqs, attached, check_layer, check_pairs, chunks, last_token_acts
from workbench.data import final_position_logits as last_logits, right_pad as pad_batch
from workbench.errors import ConfigError, NonFiniteLossError
from workbench.intervention import Intervention
from workbench.sites import Site
from workbench.train import batch_indices

__all__ = ["SubspaceConfig", "RankOneSubspace", "DasResult", "fit_das", "interchange_accuracy", "random_direction", "projections",
           "steering_values", "steer_rates", "separation"]

# --- (b) the rank-1 DAS subspace ------------------------------------------------------------------
@dataclass
class SubspaceConfig:
    """``layer``: the block whose ``hook_resid_post`` holds the direction; ``init_seed``: its random start."""

    layer: int
    init_seed: int = 0


class RankOneSubspace(Intervention):
    """A unit direction ``u`` (``Float[Tensor, " d_model"]``) at ``blocks.{layer}.hook_resid_post``, last token.

    The trainable parameter is ``weight``; ``u = weight / ‖weight‖`` (a unit-norm parametrisation, so u
    stays unit norm whatever the optimiser does). Outside :meth:`interchanging` / :meth:`steering` the
    attached hook is the identity. Rows of a right-padded batch are addressed by ``positions`` (each row's
    last real token); ``None`` = the last position of every row.

    Source: Minder et al. 2025, §4.2–4.3; DAS: Geiger, Wu, Potts, Icard, Goodman, "Finding Alignments
    Between Interpretable Causal Variables and Distributed Neural Representations", CLeaR 2024.

    Raises:
        ConfigError: a layer the model does not have, or a direction of the wrong width / zero / non-finite.
    """

    method = "das_rank1"

    def __init__(self, config: SubspaceConfig, dims: dict[str, Any], direction: Tensor | None = None) -> None:
        super().__init__(config, dims)
        check_layer(config.layer, self.dims.n_layers)
        g = torch.Generator().manual_seed(config.init_seed)
        w = torch.randn(self.dims.d_model, generator=g)
        self.weight = nn.Parameter(w / w.norm())  # unit norm at the start, so Adam's lr is a step on the sphere
        self._mode: tuple[str, Any, Tensor | None] | None = None
        if direction is not None:
            self.set_direction(direction)

    @property
    def u(self) -> Float[Tensor, " d_model"]:
        return self.weight / self.weight.norm()

    @torch.no_grad()
    def set_direction(self, direction: Float[Tensor, " d_model"]) -> None:
        """Store ``direction`` (rescaled to unit norm).

        Raises:
            ConfigError: not a ``[d_model]`` vector, zero, or non-finite.
        """
        d = self.dims.d_model
        if direction.shape != (d,):
            raise ConfigError(f"direction has shape {tuple(direction.shape)}, expected ({d},) (width must be d_model = {d})")
        if not torch.isfinite(direction).all() or float(direction.norm()) == 0:
            raise ConfigError("direction must be finite and non-zero")
        self.weight.copy_((direction / direction.norm()).to(self.weight))

    def sites(self) -> list[Site]:
        return [Site(self.config.layer, "hook_resid_post")]

    @contextmanager
    def interchanging(self, source: Float[Tensor, "batch d_model"], positions: Int[Tensor, " batch"] | None = None) -> Iterator[None]:
        """While active, the hook sets ``h' = h − u uᵀh + u uᵀh_s`` at each row's position, ``h_s = source[row]``.

        Raises:
            ConfigError: ``source`` is not ``[batch, d_model]``.
        """
        if source.ndim != 2 or source.shape[1] != self.dims.d_model:
            raise ConfigError(f"source must be [batch, {self.dims.d_model}], got {tuple(source.shape)}")
        with self._in_mode(("interchange", source, positions)):
            yield

    @contextmanager
    def steering(self, value: float, positions: Int[Tensor, " batch"] | None = None) -> Iterator[None]:
        """While active, the hook sets ``h ← h + (c − uᵀh) u`` (so ``uᵀh = c``) at each row's position.

        Raises:
            ConfigError: ``value`` is not a finite number.
        """
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"steering value must be a finite number, got {value!r}")
        with self._in_mode(("steer", float(value), positions)):
            yield

    @contextmanager
    def _in_mode(self, mode: tuple) -> Iterator[None]:
        previous, self._mode = self._mode, mode
        try:
            yield
        finally:
            self._mode = previous

    def apply(self, site: Site, act: Float[Tensor, "batch pos d_model"]) -> Tensor:
        if self._mode is None:
            return act
        kind, arg, positions = self._mode
        rows = torch.arange(act.shape[0], device=act.device)
        pos = (torch.full_like(rows, act.shape[1] - 1) if positions is None else positions.to(act.device))
        if len(pos) != act.shape[0] or (kind == "interchange" and arg.shape[0] != act.shape[0]):
            raise ConfigError(f"batch of {act.shape[0]} rows, but {len(pos)} positions"
                              + (f" and {arg.shape[0]} source rows" if kind == "interchange" else ""))
        u = self.u.to(device=act.device, dtype=torch.float32)
        h = act[rows, pos].float()
        target = (arg.to(h) @ u) if kind == "interchange" else torch.full_like(h[:, 0], arg)
        new = h + (target - h @ u)[:, None] * u
        return act.index_put((rows, pos), new.to(act.dtype))


@dataclass
class DasResult:
    """Per-step DAS losses (cross-entropy on the source answer, nats) and wall time (s)."""

    losses: list[float]
    wall_time_s: float


def fit_das(model: nn.Module, subspace: RankOneSubspace, targets: Seqs, sources: Seqs, answer_ids: Sequence[int], *,
            max_steps: int = 100, lr: float = 1e-2, batch_size: int = 16, seed: int = 0, adapter: Any = None,
            pad_id: int = 0) -> DasResult:
    """Train ``u`` by DAS: interchange the source's projection into the target and minimise the
    cross-entropy of the source intent's answer at the target's last token (Minder et al. 2025, §4.2).

    Only ``subspace.weight`` is updated (Adam; gradients via ``torch.autograd.grad``, so the model and
    ``adapter`` are untouched). Batches are a pure function of ``(seed, step)``.

    Raises:
        ConfigError: mismatched inputs or a non-positive step count / batch size / learning rate.
        NonFiniteLossError: the loss became NaN or inf.
    """
    check_pairs(targets, sources, answer_ids)
    if max_steps < 1 or batch_size < 1 or not (lr > 0 and math.isfinite(lr)):
        raise ConfigError(f"fit_das needs max_steps >= 1, batch_size >= 1, lr > 0; got {max_steps}, {batch_size}, {lr}")
    layer = subspace.config.layer
    src = last_token_acts(model, sources, "hook_resid_post", [layer], adapter=adapter, pad_id=pad_id)[layer]
    answers = torch.tensor(list(answer_ids))
    device = next(model.parameters()).device
    subspace.to(device)
    opt = torch.optim.Adam([subspace.weight], lr=lr)
    losses, t0 = [], time.perf_counter()
    for step in range(max_steps):
        idx = batch_indices(len(targets), min(batch_size, len(targets)), seed, step)
        ids, mask, last = pad_batch([targets[i] for i in idx], pad_id)
        with attached(adapter, model), subspace.attach(model), subspace.interchanging(src[idx], last):
            logits = last_logits(model, ids, mask, last)
        loss = nn.functional.cross_entropy(logits.float(), answers[idx].to(logits.device))
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"DAS loss became {float(loss)} at step {step}; lower the learning rate")
        (grad,) = torch.autograd.grad(loss, [subspace.weight])
        opt.zero_grad(set_to_none=True)
        subspace.weight.grad = grad
        opt.step()
        losses.append(float(loss.detach()))
    return DasResult(losses, time.perf_counter() - t0)


@torch.no_grad()
def interchange_accuracy(model: nn.Module, subspace: RankOneSubspace | None, targets: Seqs, sources: Seqs,
                         answer_ids: Sequence[int], *, adapter: Any = None, batch_size: int = 32, pad_id: int = 0) -> float:
    """Fraction of targets whose top-1 token is the source answer after the interchange along ``subspace``'s
    ``u`` (``None`` = no interchange: how often the target already gives the source answer)."""
    check_pairs(targets, sources, answer_ids)
    src = None
    if subspace is not None:
        layer = subspace.config.layer
        src = last_token_acts(model, sources, "hook_resid_post", [layer], adapter=adapter, batch_size=batch_size, pad_id=pad_id)[layer]
    hits = 0
    for sl in chunks(len(targets), batch_size):
        ids, mask, last = pad_batch(targets[sl], pad_id)
        ctx = (subspace.attach(model), subspace.interchanging(src[sl], last)) if subspace is not None else (nullcontext(), nullcontext())
        with attached(adapter, model), ctx[0], ctx[1]:
            top = last_logits(model, ids, mask, last).argmax(-1).cpu()
        hits += int((top == torch.tensor(list(answer_ids[sl]))).sum())
    return hits / len(targets)


def random_direction(d_model: int, seed: int) -> Float[Tensor, " d_model"]:
    """A unit vector drawn uniformly on the sphere (seeded Gaussian, normalised): the random baseline."""
    v = torch.randn(d_model, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (v / v.norm()).float()


# --- (c) steering and (d) projections -------------------------------------------------------------
@torch.no_grad()
def projections(model: nn.Module, subspace: RankOneSubspace, seqs: Seqs, *, adapter: Any = None, batch_size: int = 32,
                pad_id: int = 0) -> Float[Tensor, " n"]:
    """``uᵀh`` at ``blocks.{layer}.hook_resid_post``, last token of each prompt (residual-stream units)."""
    layer = subspace.config.layer
    acts = last_token_acts(model, seqs, "hook_resid_post", [layer], adapter=adapter, batch_size=batch_size, pad_id=pad_id)[layer]
    return (acts @ subspace.u.detach().to(acts)).cpu()


def steering_values(proj_a: Sequence[float], proj_b: Sequence[float], n_points: int = 9, extend: float = 0.5) -> list[float]:
    """``n_points`` evenly spaced values of ``c`` over the range spanned by both intents' projections,
    widened by ``extend × span`` on each side.

    Raises:
        ConfigError: ``n_points < 2``, ``extend < 0``, or empty / non-finite projections.
    """
    values = [float(v) for v in (*proj_a, *proj_b)]
    if n_points < 2 or extend < 0 or not proj_a or not proj_b or not all(math.isfinite(v) for v in values):
        raise ConfigError(f"steering_values needs n_points >= 2, extend >= 0 and finite non-empty projections; "
                          f"got n_points={n_points}, extend={extend}")
    lo, hi = min(values), max(values)
    span = hi - lo
    return torch.linspace(lo - extend * span, hi + extend * span, n_points, dtype=torch.float64).tolist()


@torch.no_grad()
def steer_rates(model: nn.Module, subspace: RankOneSubspace, seqs: Seqs, context_ids: Sequence[int], prior_ids: Sequence[int],
                values: Sequence[float], *, adapter: Any = None, batch_size: int = 32, pad_id: int = 0) -> dict[str, list[float]]:
    """For each steering value ``c`` (``uᵀh ← c`` at the last token): the fraction of prompts whose top-1 token
    is the context answer (``context_rate``) and the prior answer (``prior_rate``).

    Raises:
        ConfigError: a value that is not finite, or lists of different lengths.
    """
    if not seqs or not len(seqs) == len(context_ids) == len(prior_ids):
        raise ConfigError("steer_rates needs one context and one prior answer per prompt (>= 1 prompt)")
    for c in values:
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c):
            raise ConfigError(f"steering value must be a finite number, got {c!r}")
    ctx_t, pri_t = torch.tensor(list(context_ids)), torch.tensor(list(prior_ids))
    out: dict[str, list[float]] = {"values": [float(c) for c in values], "context_rate": [], "prior_rate": []}
    for c in values:
        hits_c = hits_p = 0
        for sl in chunks(len(seqs), batch_size):
            ids, mask, last = pad_batch(seqs[sl], pad_id)
            with attached(adapter, model), subspace.attach(model), subspace.steering(float(c), last):
                top = last_logits(model, ids, mask, last).argmax(-1).cpu()
            hits_c += int((top == ctx_t[sl]).sum())
            hits_p += int((top == pri_t[sl]).sum())
        out["context_rate"].append(hits_c / len(seqs))
        out["prior_rate"].append(hits_p / len(seqs))
    return out


def separation(proj_context: Sequence[float], proj_prior: Sequence[float]) -> dict[str, float]:
    """How well the two intents separate along u: ROC AUC (scikit-learn; context = positive class, so 1 =
    context prompts project higher, 0.5 = no separation), the sign-free AUC max(AUC, 1 − AUC), Cohen's d
    (gap of the means in pooled-std units), and each intent's mean and std.

    Raises:
        ConfigError: fewer than 2 values in a group.
    """
    from sklearn.metrics import roc_auc_score

    a, b = torch.tensor([float(v) for v in proj_context], dtype=torch.float64), torch.tensor([float(v) for v in proj_prior], dtype=torch.float64)
    if len(a) < 2 or len(b) < 2:
        raise ConfigError("separation needs >= 2 projections per intent")
    auc = float(roc_auc_score([1] * len(a) + [0] * len(b), torch.cat([a, b]).numpy()))
    pooled = math.sqrt(((len(a) - 1) * float(a.var()) + (len(b) - 1) * float(b.var())) / (len(a) + len(b) - 2))
    d = (float(a.mean()) - float(b.mean())) / pooled if pooled > 0 else float("inf") * (1 if a.mean() > b.mean() else -1)
    return {"auc": auc, "auc_sign_free": max(auc, 1 - auc), "cohens_d": d, "context_mean": float(a.mean()), "context_std": float(a.std()),
            "prior_mean": float(b.mean()), "prior_std": float(b.std())}
