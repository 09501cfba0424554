"""Training and evaluating a sparse dictionary (crosscoder or difference SAE) on a stream of activation batches.

:func:`train_dictionary` — Adam on the loss of :meth:`probes.dictionaries.base.SparseDictionary.loss`, as the papers
(Lindsey et al. 2024; Bussmann, Leask, Nanda 2024; Minder et al. 2025):

* a fresh dictionary (never trained) is re-initialised from ``seed`` and its input scale estimated from the first
  ``normalization_batches`` batches (those batches are trained on too), so the result depends only on the config, the
  batches and ``seed``;
* learning rate: linear warm-up over ``warmup_steps``, constant, then linear decay to 0 over the last ``decay_steps``;
  for L1, ``λ`` ramps up linearly over ``l1_warmup_steps`` (Anthropic's crosscoder recipe);
* gradient-norm clipping at ``max_grad_norm``; a unit-norm decoder (DiffSAE) has the gradient along each row removed
  before the step and the rows renormalised after it; the crosscoder's decoder is free (its norms are the reading);
* BatchTopK's inference threshold is updated from step ``threshold_start_step`` on.

:func:`evaluate_dictionary` — fraction of variance explained per stream ``1 − Σ‖a − â‖² / Σ‖a − mean(a)‖²`` (model
units, sums over every evaluated token; the mean is over those tokens), mean L0 and the dead-latent fraction, with
the dictionary as it runs at inference (BatchTopK: the threshold).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from probes.dictionaries.base import DictionaryError, SparseDictionary
from workbench.errors import ConfigError

Batch = Mapping[str, Tensor]


def _lr_factor(step: int, steps: int, warmup_steps: int, decay_steps: int) -> float:
    """Learning-rate multiplier at ``step`` (0-based): warm-up ramp, plateau, linear decay over the last steps."""
    factor = 1.0
    if warmup_steps and step < warmup_steps:
        factor = (step + 1) / warmup_steps
    if decay_steps and step >= steps - decay_steps:
        factor = min(factor, (steps - step) / decay_steps)
    return factor


def _check(name: str, value: Any, low: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"train_dictionary: {name} must be an integer >= {low}, got {value!r}")


def train_dictionary(dictionary: SparseDictionary, batches: Iterable[Batch], *, steps: int, lr: float, seed: int,
                     warmup_steps: int = 0, decay_steps: int = 0, l1_warmup_steps: int = 0, threshold_start_step: int = 0,
                     max_grad_norm: float | None = 1.0, normalization_batches: int = 4,
                     betas: tuple[float, float] = (0.9, 0.999), log: Callable[[str], None] | None = None,
                     log_every: int = 100, progress: bool = False) -> dict[str, Any]:
    """Train ``dictionary`` in place on ``batches`` for ``steps`` optimiser steps (module docstring).

    Args:
        batches: activation batches ``{"base": [B, d], "tuned": [B, d]}`` (model units), e.g. an
            ``ActivationStore.batches(site, batch_tokens, seed=...)``; one batch per step, read lazily.
        steps: optimiser steps; stops early (``stopped_early``) if ``batches`` runs out.
        lr: Adam's peak learning rate.
        seed: re-initialises a fresh dictionary's weights (:meth:`~SparseDictionary.reset_parameters`); a dictionary
            trained before continues from its weights and input scale (seed unused).
        normalization_batches: batches the input scale of a fresh dictionary is estimated from (0: keep the scale
            already set with :meth:`~SparseDictionary.fit_input_scale`).
        log: called with a progress line every ``log_every`` steps and at the end; ``progress`` shows a tqdm bar.

    Returns:
        ``{"loss", "reconstruction", "sparsity", "aux", "l0", "lr"}`` per-step lists (floats; losses per token in
        normalised units), ``"steps_run"``, ``"stopped_early"``, ``"tokens"``, ``"seconds"`` and ``"tokens_per_s"``
        (training tokens per wall-clock second of the step loop, normalisation excluded), ``"input_scale"``,
        ``"threshold"`` (BatchTopK's θ, −1 when not estimated).

    Raises:
        ConfigError: a negative / non-integer count, ``steps`` < 1, ``lr`` ≤ 0, or ``warmup_steps + decay_steps > steps``.
        DictionaryError: ``normalization_batches=0`` on a dictionary whose input scale was never set, or no batch.
    """
    _check("steps", steps, 1)
    for name, v in (("warmup_steps", warmup_steps), ("decay_steps", decay_steps), ("l1_warmup_steps", l1_warmup_steps),
                    ("threshold_start_step", threshold_start_step), ("normalization_batches", normalization_batches),
                    ("seed", seed)):
        _check(name, v)
    _check("log_every", log_every, 1)
    if not (isinstance(lr, (int, float)) and lr > 0 and lr < float("inf")):
        raise ConfigError(f"train_dictionary: lr must be a finite number > 0, got {lr!r}")
    if warmup_steps + decay_steps > steps:
        raise ConfigError(f"train_dictionary: warmup_steps + decay_steps ({warmup_steps} + {decay_steps}) exceeds "
                          f"steps ({steps})")

    it = iter(batches)
    if int(dictionary.tokens_seen) == 0:
        dictionary.reset_parameters(seed)
        if normalization_batches:
            first = list(itertools.islice(it, normalization_batches))
            dictionary.fit_input_scale(first)
            it = itertools.chain(first, it)
    dictionary.check_scale()

    device = dictionary.W_dec.device
    opt = torch.optim.Adam(dictionary.parameters(), lr=lr, betas=betas)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, steps, warmup_steps, decay_steps))
    keys = ("loss", "reconstruction", "sparsity", "aux", "l0")
    history: dict[str, list[float]] = {k: [] for k in (*keys, "lr")}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=f"train {dictionary.kind}", unit="step")
    was_training, tokens = dictionary.training, 0
    dictionary.train()
    start = time.perf_counter()
    try:
        for step in range(steps):
            batch = next(it, None)
            if batch is None:
                break
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            l1_scale = min(1.0, (step + 1) / l1_warmup_steps) if l1_warmup_steps else 1.0
            out = dictionary.loss(batch, l1_scale=l1_scale, update_stats=True,
                                  update_threshold=step >= threshold_start_step)
            if not torch.isfinite(out["loss"]):
                raise DictionaryError(f"non-finite loss at step {step} (lr {lr:g}); lower lr or check the activations")
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            dictionary.project_decoder_grad_()
            if max_grad_norm:
                torch.nn.utils.clip_grad_norm_(dictionary.parameters(), max_grad_norm)
            history["lr"].append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
            dictionary.normalize_decoder_()
            for k in keys:
                history[k].append(float(out[k].detach()))
            tokens += next(iter(batch.values())).shape[0]
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{history['loss'][-1]:.4g}", l0=f"{history['l0'][-1]:.1f}")
            if log and (step + 1) % log_every == 0:
                log(f"step {step + 1}/{steps}: loss {history['loss'][-1]:.4g} (reconstruction "
                    f"{history['reconstruction'][-1]:.4g}), L0 {history['l0'][-1]:.1f}, lr {history['lr'][-1]:.3g}")
    finally:
        if bar is not None:
            bar.close()
        dictionary.train(was_training)
    seconds = time.perf_counter() - start
    steps_run = len(history["loss"])
    if steps_run == 0:
        raise DictionaryError("train_dictionary: the batches iterable yielded no batch")
    result = {**history, "steps_run": steps_run, "stopped_early": steps_run < steps, "tokens": tokens,
              "seconds": seconds, "tokens_per_s": tokens / seconds if seconds > 0 else float("nan"),
              "input_scale": dictionary.input_scale.tolist(), "threshold": float(dictionary.threshold)}
    if log:
        log(f"trained {steps_run} steps on {tokens} tokens in {seconds:.1f} s ({result['tokens_per_s']:.0f} tokens/s)"
            + (" — the batches ran out early" if result["stopped_early"] else ""))
    return result


@torch.no_grad()
def evaluate_dictionary(dictionary: SparseDictionary, batches: Iterable[Batch], *, max_batches: int | None = None
                        ) -> dict[str, Any]:
    """Reconstruction quality and sparsity of ``dictionary`` at inference on ``batches`` (module docstring).

    Returns:
        ``{"fraction_variance_explained": {stream: float}, "mse_per_token": {stream: float}`` (``Σ‖a − â‖² / N``, model
        units), ``"mean_l0"`` (active latents per token), ``"dead_fraction"`` / ``"n_dead"`` (latents never active on
        these tokens), ``"n_tokens"``}.

    Raises:
        DictionaryError: no token, or the input scale was never set.
    """
    was_training = dictionary.training
    dictionary.eval()
    n_streams = len(dictionary.streams)
    sse = torch.zeros(n_streams, dtype=torch.float64)
    sq = torch.zeros(n_streams, dtype=torch.float64)
    total = torch.zeros(n_streams, dictionary.config.d_model, dtype=torch.float64)
    active = torch.zeros(dictionary.config.n_latents, dtype=torch.bool)
    l0, n = 0.0, 0
    try:
        for batch in itertools.islice(batches, max_batches):
            out = dictionary(batch)
            scale = dictionary.input_scale[:, None].double()
            a = (out.x.double() / scale).cpu()
            a_hat = (out.reconstruction.double() / scale).cpu()
            sse += (a - a_hat).pow(2).sum((0, 2))
            sq += a.pow(2).sum((0, 2))
            total += a.sum(0)
            on = (out.latents > 0).cpu()
            active |= on.any(0)
            l0 += float(on.sum())
            n += a.shape[0]
    finally:
        dictionary.train(was_training)
    if n == 0:
        raise DictionaryError("evaluate_dictionary: no tokens in the batches")
    variance = sq - total.pow(2).sum(-1) / n  # Σ‖a − mean(a)‖²
    fve = 1 - sse / variance
    n_dead = int((~active).sum())
    return {"fraction_variance_explained": dict(zip(dictionary.streams, fve.tolist())),
            "mse_per_token": dict(zip(dictionary.streams, (sse / n).tolist())), "mean_l0": l0 / n,
            "dead_fraction": n_dead / dictionary.config.n_latents, "n_dead": n_dead, "n_tokens": n}
