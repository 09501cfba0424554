"""Latent Scaling: does a crosscoder's "tuned-only" latent really explain nothing in the base model?

Source: Minder, Dumas, Juang, Chughtai, Nanda 2025, "Robustly identifying concepts introduced during chat fine-tuning
using crosscoders" (arXiv 2504.02922), §"Latent Scaling" (METHODS.md, "Crosscoders"). An L1 crosscoder can give a
latent a near-zero base decoder row although the base model carries its concept — *complete shrinkage* (the base row
shrank to zero though the concept is weakly there) or *latent decoupling* (the base side of the concept is carried by
other latents). Latent Scaling measures how much of latent ``j``'s direction each model's activations hold.

For latent ``j`` with activations ``f_j`` over ``N`` tokens ``[N]`` and direction ``d_j`` ``[d]``, fit one scalar to a
target ``Y`` ``[N, d]``::

    β = argmin_β ‖β f_j d_jᵀ − Y‖²_F = (f_jᵀ Y d_j) / (‖f_j‖² ‖d_j‖²)          (:func:`closed_form_beta`)

:func:`latent_scaling` uses ``d_j`` = the latent's **tuned** decoder row for both models and, for each model
m ∈ {base, tuned}, the targets (``â_m`` the crosscoder's reconstruction, ``d_j^m`` latent ``j``'s own row for m):

* **error** ``Y = a_m − â_m + f_j d_j^m`` — the reconstruction error with latent ``j``'s own contribution added back
  (what the model holds along ``d_j`` that the rest of the dictionary does not explain): catches complete shrinkage;
* **reconstruction** ``Y = â_m`` — the full reconstruction (other latents carrying ``d_j`` in the base show up here):
  catches latent decoupling. This is the target of the authors' released code. The variant without latent ``j``
  (``Y = â_m − f_j d_j^m``) is reported too (``"reconstruction_without_latent"``); it is not used for the ratio,
  since for a latent no other latent reconstructs, its tuned β is ≈ 0 and the ratio is 0/0;

and the ratios ``ν_ε = β_base,ε / β_tuned,ε``, ``ν_r = β_base,r / β_tuned,r``: small for a latent whose concept the
base does not hold. **Our rule** (the paper ranks latents by ν and shows their distribution; it states no cut-off that
we could confirm): a latent stays *tuned-only after Latent Scaling* when ``β_tuned > 0`` for both targets and
``ν_ε < max_ratio`` and ``ν_r < max_ratio``, ``max_ratio = 0.2`` by default.

Everything is in the crosscoder's normalised units (the units of Δ); the sums over tokens are accumulated batch by
batch in float64 (memory O(n_latents_read · S), never ``[N, d]``), the crosscoder at inference (BatchTopK: threshold).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from probes.dictionaries.crosscoder import Crosscoder
from workbench.errors import ConfigError, MismatchError

TARGETS = ("error", "reconstruction", "reconstruction_without_latent")


def closed_form_beta(activations: Float[Tensor, "n_tokens n_read"], targets: Float[Tensor, "n_tokens *n_read d_model"],
                     directions: Float[Tensor, "n_read d_model"]) -> Float[Tensor, " n_read"]:
    """``β_j = (f_jᵀ Y_j d_j) / (‖f_j‖² ‖d_j‖²)`` for every latent ``j`` at once (the least-squares scalar of
    ``β f_j d_jᵀ ≈ Y_j``; Minder et al. 2025, §"Latent Scaling").

    Args:
        activations: ``f`` ``[N, J]``, one column per latent.
        targets: ``Y`` ``[N, d]`` shared by all latents, or ``[N, J, d]`` one per latent.
        directions: ``d`` ``[J, d]``.

    Returns:
        ``β`` ``[J]`` in float64 (``nan`` where ``f_j`` or ``d_j`` is zero).

    Raises:
        MismatchError: the shapes do not fit together.
    """
    f, y, dirs = activations.double(), targets.double(), directions.double()
    if f.ndim != 2 or dirs.ndim != 2 or dirs.shape[0] != f.shape[1] or y.shape[0] != f.shape[0] or \
            y.shape[-1] != dirs.shape[1] or y.ndim not in (2, 3) or (y.ndim == 3 and y.shape[1] != f.shape[1]):
        raise MismatchError(f"closed_form_beta: activations [N, J], targets [N, d] or [N, J, d], directions [J, d]; got "
                            f"{tuple(activations.shape)}, {tuple(targets.shape)}, {tuple(directions.shape)}")
    proj = y @ dirs.T if y.ndim == 2 else torch.einsum("njd,jd->nj", y, dirs)  # [N, J]: Y_t · d_j
    return (f * proj).sum(0) / (f.pow(2).sum(0) * dirs.pow(2).sum(-1))


def _latent_indices(latents: Sequence[int] | Tensor, n_latents: int) -> Tensor:
    idx = torch.as_tensor(latents, dtype=torch.long).flatten()
    if idx.numel() == 0 or bool(((idx < 0) | (idx >= n_latents)).any()):
        raise ConfigError(f"latent_scaling: latents must be a non-empty list of indices in [0, {n_latents}), got "
                          f"{idx.tolist()[:10]}")
    return idx


@torch.no_grad()
def latent_scaling(crosscoder: Crosscoder, batches: Iterable[Mapping[str, Tensor]], latents: Sequence[int] | Tensor,
                   *, max_ratio: float = 0.2) -> dict[str, Any]:
    """Latent Scaling of ``latents`` over every token of ``batches`` (module docstring for the definitions).

    Args:
        crosscoder: a trained :class:`~probes.dictionaries.crosscoder.Crosscoder` (run at inference).
        batches: activation batches ``{"base": [B, d], "tuned": [B, d]}`` (model units), read once.
        latents: the latent indices to score (e.g. the tuned-only class of
            :func:`~probes.dictionaries.crosscoder.classify_latents`).
        max_ratio: the cut-off of our rule on ``ν_ε`` and ``ν_r``.

    Returns:
        ``{"latents": [J] int64, "beta": {"base"|"tuned": {"error"|"reconstruction"|"reconstruction_without_latent":
        [J] float64}}, "nu_error": [J], "nu_reconstruction": [J], "tuned_only": [J] bool (our rule), "n_active": [J]
        tokens where the latent fired, "n_tokens", "max_ratio", "rule"}``. A latent that never fired has ``nan`` β
        and is not tuned-only.

    Raises:
        ConfigError: no latent, an index out of range, ``max_ratio`` ≤ 0, or no token.
    """
    if not isinstance(crosscoder, Crosscoder):
        raise ConfigError(f"latent_scaling needs a Crosscoder, got {type(crosscoder).__name__}")
    if not (isinstance(max_ratio, (int, float)) and max_ratio > 0):
        raise ConfigError(f"latent_scaling: max_ratio must be > 0, got {max_ratio!r}")
    idx = _latent_indices(latents, crosscoder.config.n_latents).to(crosscoder.W_dec.device)
    was_training = crosscoder.training
    crosscoder.eval()
    rows = crosscoder.W_dec[idx].double()  # [J, S, d]: each latent's own rows
    direction = rows[:, 1]  # d_j = the tuned row
    own = torch.einsum("jsd,jd->sj", rows, direction)  # d_j^m · d_j  [S, J]
    s_err = torch.zeros(2, len(idx), dtype=torch.float64, device=idx.device)  # Σ_t f_tj (e_t^m · d_j)
    s_rec = torch.zeros_like(s_err)  # Σ_t f_tj (â_t^m · d_j)
    f2 = torch.zeros(len(idx), dtype=torch.float64, device=idx.device)
    active = torch.zeros(len(idx), dtype=torch.long, device=idx.device)
    n = 0
    try:
        for batch in batches:
            out = crosscoder(batch)
            f = out.latents[:, idx].double()  # [B, J]
            x, x_hat = out.x.double(), out.reconstruction.double()
            # project onto every d_j first ([B, S, J]), then weight by f: never a [B, J, S, d] intermediate
            s_err += (f[:, None] * ((x - x_hat) @ direction.T)).sum(0)
            s_rec += (f[:, None] * (x_hat @ direction.T)).sum(0)
            f2 += f.pow(2).sum(0)
            active += (f > 0).sum(0)
            n += f.shape[0]
    finally:
        crosscoder.train(was_training)
    if n == 0:
        raise ConfigError("latent_scaling: no tokens in the batches")
    denom = f2 * direction.pow(2).sum(-1)  # ‖f_j‖² ‖d_j‖²
    betas = {"error": (s_err + own * f2) / denom, "reconstruction": s_rec / denom,
             "reconstruction_without_latent": (s_rec - own * f2) / denom}  # each [S, J]
    nu_error = betas["error"][0] / betas["error"][1]
    nu_reconstruction = betas["reconstruction"][0] / betas["reconstruction"][1]
    tuned_only = ((betas["error"][1] > 0) & (betas["reconstruction"][1] > 0) & (nu_error < max_ratio)
                  & (nu_reconstruction < max_ratio))
    beta = {m: {t: betas[t][s].cpu() for t in TARGETS} for s, m in enumerate(("base", "tuned"))}
    return {"latents": idx.cpu(), "beta": beta,
            "nu_error": nu_error.cpu(), "nu_reconstruction": nu_reconstruction.cpu(), "tuned_only": tuned_only.cpu(),
            "n_active": active.cpu(), "n_tokens": n, "max_ratio": float(max_ratio),
            "rule": f"tuned-only after Latent Scaling: beta_tuned > 0 and nu < {max_ratio:g} for both the error and the "
                    "reconstruction target (ours)"}
