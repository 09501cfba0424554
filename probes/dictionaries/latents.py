"""Reading a dictionary's latents: the logit lens of decoder rows, max-activating tokens, steering with a latent.

The views METHODS.md ("Crosscoders", "Difference SAE") names for crosscoder and difference-SAE latents, as Lindsey et
al. 2024 and Minder et al. 2025 (arXiv 2504.02922, the analysis of tuned-only latents) read them:

* :func:`decoder_logit_lens` — a decoder row through a model's **final norm (with its weight), unembedding and logit
  soft-cap** (:func:`workbench.architecture.readout`, the logit lens of nostalgebraist 2020). The final RMSNorm
  divides by the row's RMS, so the row's length does not matter (up to the norm's ε); read a crosscoder's tuned row
  through the tuned model and its base row through the base model;
* :func:`max_activating` — the ``k`` stored tokens on which each latent fires most, streamed over the store in order
  (``ActivationStore.ordered``; memory O(latents · k)); the store's ``context(index, window)`` gives the text around
  each token. Vectorised per batch (one sort per batch for all latents) rather than
  :class:`probes.diff.stats.StreamingTopK`, whose per-item ``push`` would be one Python call per (token, latent);
* :func:`steer_with_latent` — the **base** model generates with a latent's decoder direction added at
  ``blocks.{layer}.hook_resid_post`` at every position (prompt and generated tokens), through
  :func:`probes.diff.steering.sample_steered`. The vector is ``strength · unit · d/‖d‖``: ``unit`` is the caller's, for
  example :func:`latent_steering_unit` (the latent's largest activation × its decoder norm in model units: the size of
  its own largest contribution to the residual stream) or ADL's ``n̄`` (the mean residual norm at the layer).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from probes.dictionaries.base import SparseDictionary
from probes.diff.adl import scaled
from probes.diff.steering import encode_prompt, sample_steered
from workbench.architecture import readout
from workbench.errors import ConfigError


@torch.no_grad()
def decoder_logit_lens(direction: Float[Tensor, "n_rows d_model"], model: nn.Module, k: int = 20,
                       decode: Callable[[int], str] = str, *, chunk_rows: int = 256) -> list[list[dict[str, Any]]]:
    """The ``k`` tokens each decoder row promotes most: top logits of ``readout(model, row)`` (final norm with its
    weight, unembedding, soft-cap; module docstring). Pass ``-direction`` for the tokens a row suppresses.

    Args:
        direction: ``[n, d]`` rows (or one ``[d]`` row), e.g. ``dictionary.decoder_directions("tuned")[latents]``.
        model: the model whose unembedding reads the rows.
        decode: token id → text (e.g. ``tokenizer.decode`` of one id).

    Returns:
        One list per row of ``{"id", "token", "logit"}``, largest logit first.

    Raises:
        ConfigError: ``k`` < 1, a direction that is not ``[n, d]`` / ``[d]``, or a model without final norm or
            unembedding (:func:`workbench.architecture.readout`).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"decoder_logit_lens: k must be an integer >= 1, got {k!r}")
    rows = direction[None] if direction.ndim == 1 else direction
    if rows.ndim != 2:
        raise ConfigError(f"decoder_logit_lens: direction must be [n, d_model] or [d_model], got {tuple(direction.shape)}")
    p = next(model.parameters())
    out: list[list[dict[str, Any]]] = []
    for c in range(0, rows.shape[0], chunk_rows):
        logits = readout(model, rows[c:c + chunk_rows].to(p.device, p.dtype)).float()
        vals, ids = logits.topk(min(k, logits.shape[-1]), dim=-1)
        out += [[{"id": int(t), "token": decode(int(t)), "logit": float(v)} for v, t in zip(vr, ir)]
                for vr, ir in zip(vals.cpu(), ids.cpu())]
    return out


@torch.no_grad()
def max_activating(dictionary: SparseDictionary, ordered_batches: Iterable[tuple[int, Mapping[str, Tensor]]],
                   latents: Sequence[int] | Tensor, k: int = 20) -> dict[int, list[tuple[int, float]]]:
    """The ``k`` largest activations of each latent over all tokens, with their store indices.

    Args:
        ordered_batches: ``(start_index, {"base", "tuned"})`` in store order (``ActivationStore.ordered(site, B)``):
            token ``i`` of the batch is stored token ``start_index + i``.
        latents: latent indices to follow.

    Returns:
        ``{latent: [(index, activation), ...]}``, largest first; only tokens where the latent fired (activation > 0),
        so a list can be shorter than ``k``; ties keep the earlier token. The dictionary runs at inference.

    Raises:
        ConfigError: ``k`` < 1 or a latent index out of range.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"max_activating: k must be an integer >= 1, got {k!r}")
    idx = torch.as_tensor(latents, dtype=torch.long).flatten()
    if bool(((idx < 0) | (idx >= dictionary.config.n_latents)).any()):
        raise ConfigError(f"max_activating: latent indices must lie in [0, {dictionary.config.n_latents})")
    n_latents = len(idx)
    vals = torch.full((n_latents, 0), float("-inf"))
    where = torch.zeros((len(idx), 0), dtype=torch.long)
    was_training = dictionary.training
    dictionary.eval()
    try:
        for start, batch in ordered_batches:
            f = dictionary(batch).latents[:, idx.to(dictionary.W_dec.device)].float().cpu().T  # [J, B]
            f = f.masked_fill(f <= 0, float("-inf"))
            pos = torch.arange(start, start + f.shape[1], dtype=torch.long).expand_as(f)
            vals, where = torch.cat([vals, f], 1), torch.cat([where, pos], 1)  # kept first: they win ties
            order = vals.argsort(dim=1, descending=True, stable=True)[:, :k]
            vals, where = vals.gather(1, order), where.gather(1, order)
    finally:
        dictionary.train(was_training)
    return {int(j): [(int(i), float(v)) for v, i in zip(vr, ir) if v > float("-inf")]
            for j, vr, ir in zip(idx.tolist(), vals, where)}


def latent_steering_unit(dictionary: SparseDictionary, latent: int, max_activation: float, stream: str = "tuned") -> float:
    """``max_activation · ‖d_latent^stream‖`` in model units: the norm of the latent's own largest contribution to the
    stream (``max_activation`` e.g. the first value of :func:`max_activating`). Raises: ConfigError: unknown stream."""
    return float(max_activation) * float(dictionary.decoder_directions(stream)[latent].norm())


def steer_with_latent(model: nn.Module, tokenizer: Any, direction: Float[Tensor, " d_model"], layer: int,
                      prompts: Sequence[str], *, strength: float, unit: float, n_samples: int = 4,
                      max_new_tokens: int = 48, temperature: float = 1.0, seed: int = 0, chat: bool = False,
                      prepend_bos: bool = False) -> dict[str, Any]:
    """Sample from ``model`` (pass the **base** model) with ``strength · unit · d/‖d‖`` added to
    ``blocks.{layer}.hook_resid_post`` at every position (module docstring); ``strength = 0`` samples unsteered with
    the same seeds, the comparison to read beside it.

    Args:
        direction: a latent's decoder row in model units (``dictionary.decoder_directions("tuned")[j]``; for a
            DiffSAE ``("diff")``).
        unit: the norm the strength is counted in (e.g. :func:`latent_steering_unit`, or ADL's ``n̄``).
        chat: wrap each prompt in the tokenizer's chat template (off by default: a base model has none).

    Returns:
        ``{"layer", "strength", "unit", "vector_norm", "samples": [{"prompt", "texts": [str]}]}``.

    Raises:
        ConfigError: no prompt, ``n_samples`` < 1, a direction that is not ``[d_model]`` or a non-finite strength.
    """
    if not prompts or isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ConfigError(f"steer_with_latent needs prompts and n_samples >= 1 (got {len(prompts)} prompts, "
                          f"n_samples={n_samples!r})")
    if direction.ndim != 1 or not torch.isfinite(torch.tensor([float(strength), float(unit)])).all():
        raise ConfigError(f"steer_with_latent: direction must be [d_model] and strength, unit finite (got shape "
                          f"{tuple(direction.shape)}, strength {strength!r}, unit {unit!r})")
    p = next(model.parameters())
    vector = scaled(direction.detach().double(), float(unit), float(strength)).to(p.device, p.dtype)
    vec = vector if float(strength) != 0 else None
    samples = []
    for i, text in enumerate(prompts):
        ids = encode_prompt(tokenizer, text, chat, prepend_bos)
        new = sample_steered(model, tokenizer, ids, vec, layer, n_samples, max_new_tokens, temperature, seed + 7919 * i)
        samples.append({"prompt": text, "texts": [tokenizer.decode(n, skip_special_tokens=True) for n in new]})
    return {"layer": layer, "strength": float(strength), "unit": float(unit), "vector_norm": float(vector.norm()),
            "samples": samples}
