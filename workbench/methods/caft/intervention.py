"""CAFT's projection ablation at the residual output ``blocks.{l}.hook_resid_post`` (all positions).

Source: Casademunt, Juang, Karvonen, Marks, Rajamanoharan, Nanda, "Steering Out-of-Distribution
Generalization with Concept Ablation Fine-Tuning", arXiv 2507.16795, 2025, §3: given an orthonormal basis
``Q`` [d_model, k] of an unwanted concept's subspace at a layer, every residual vector is replaced by
``x − (x Q) Qᵀ`` while *another* method trains; the ablation is removed for evaluation.

The directions are buffers, never trained: :class:`CaftIntervention` has no parameters, so it is not
an identity and cannot be trained on its own (the zero-init-is-identity property belongs to the inner
method it trains with). Its invariant: with the hook attached, the activation after the hook has no
component along ``Q`` (up to fp32 rounding), and once the ``with`` block ends no hook is left.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from jaxtyping import Float
from torch import Tensor, nn

from workbench.errors import ConfigError
from workbench.intervention import DimsLike, Intervention
from workbench.methods.caft.config import CaftConfig
from workbench.sites import Site

#: A column of the input whose QR diagonal is below this fraction of the largest is "dependent".
RANK_TOL = 1e-6
#: Largest |QᵀQ − I| accepted when the ablation is attached (fp32 storage of an fp64 QR).
ORTHO_TOL = 1e-4


def orthonormalize(directions: Float[Tensor, "k d_model"], *, name: str = "directions") -> Float[Tensor, "d_model k"]:
    """Orthonormal basis ``Q`` [d_model, k] (fp32) of the span of the rows of ``directions`` (QR in fp64).

    ``Q Qᵀ`` is the orthogonal projector onto that span, whatever the scale or angles of the input rows.

    Raises:
        ConfigError: not 2-D, non-finite values, more rows than columns, or rank-deficient rows (a zero
            row, or a row in the span of the others).
    """
    if directions.ndim == 1:
        directions = directions[None]
    if directions.ndim != 2:
        raise ConfigError(f"{name}: expected a [k, d_model] tensor, got shape {tuple(directions.shape)}")
    k, d = directions.shape
    if k > d:
        raise ConfigError(f"{name}: {k} directions in a {d}-dimensional space cannot be independent")
    d64 = directions.detach().to("cpu", torch.float64)
    if not torch.isfinite(d64).all():
        raise ConfigError(f"{name}: directions contain NaN or inf")
    q, r = torch.linalg.qr(d64.T)
    diag = r.diagonal().abs()
    scale = float(d64.norm(dim=1).max())
    bad = [i for i in range(k) if scale == 0 or float(diag[i]) <= RANK_TOL * scale]
    if bad:
        raise ConfigError(f"{name}: rank-deficient input — direction(s) {bad} are zero or lie in the span of the "
                          f"earlier ones (rank {k - len(bad)} < {k}); drop them or pass independent directions")
    return q.to(torch.float32)


class CaftIntervention(Intervention):
    """Projection ablation ``x ← x − (x Q_l) Q_lᵀ`` at ``blocks.{l}.hook_resid_post`` for each configured layer.

    Buffers: ``q_{l}``: ``Float[Tensor, "d_model k_l"]`` orthonormal (fp32), one per layer of
    ``config.layers``; saved with the adapter. The product is computed in fp32 and cast back to the
    activation's dtype (the paper's projection is in fp32: in bf16 ``x − (x Q) Qᵀ`` leaves a component along ``Q`` of
    ~2⁻⁸·‖x‖, i.e. the ablation would not be exact); gradients flow through it to everything upstream. ``Q`` is
    moved to the activation's device at the hook, so it works on a model split across devices.

    Args:
        config: layers and per-layer counts.
        dims: model dimensions (``n_layers``, ``d_model``, ...).
        directions: optional ``{layer: Float[Tensor, "k_l d_model"]}`` (rows need not be orthonormal;
            they are orthonormalised with QR). Without it the buffers are zeros until
            :meth:`set_directions` or ``load_state_dict`` fills them, and :meth:`attach` refuses to run.

    Raises:
        ConfigError: a layer the model does not have, or invalid directions (see :meth:`set_directions`).
    """

    method = "caft"

    def __init__(self, config: CaftConfig, dims: DimsLike, directions: Mapping[int, Tensor] | None = None) -> None:
        super().__init__(config, dims)
        for layer, k in zip(config.layers, config.n_directions):
            Site(layer, "hook_resid_post").validate(self.dims.n_layers)
            if k > self.dims.d_model:
                raise ConfigError(f"layer {layer}: {k} directions exceed d_model = {self.dims.d_model}")
            self.register_buffer(f"q_{layer}", torch.zeros(self.dims.d_model, k))
        self._active = True
        if directions is not None:
            self.set_directions(directions)

    @classmethod
    def from_directions(cls, directions: Mapping[int, Tensor], dims: DimsLike, source: str = "") -> "CaftIntervention":
        """Build the config from ``{layer: Float[Tensor, "k_l d_model"]}`` and orthonormalise the rows."""
        layers = sorted(int(l) for l in directions)
        counts = [1 if directions[l].ndim == 1 else int(directions[l].shape[0]) for l in layers]
        return cls(CaftConfig(layers=layers, n_directions=counts, source=source), dims, directions)

    @torch.no_grad()
    def set_directions(self, directions: Mapping[int, Tensor]) -> None:
        """Orthonormalise and store the directions of every configured layer.

        Raises:
            ConfigError: a missing or unconfigured layer, a width other than ``d_model``, a count other
                than the configured ``k_l``, or rank-deficient / non-finite rows.
        """
        given = {int(l) for l in directions}
        if given != set(self.config.layers):
            raise ConfigError(f"directions given for layers {sorted(given)}, but the config ablates layers "
                              f"{self.config.layers}; give exactly one [k, d_model] tensor per configured layer")
        for layer, k in zip(self.config.layers, self.config.n_directions):
            rows = directions[layer]
            rows = rows[None] if rows.ndim == 1 else rows
            if rows.ndim != 2 or rows.shape[-1] != self.dims.d_model:
                raise ConfigError(f"layer {layer}: directions have shape {tuple(rows.shape)}, expected [{k}, "
                                  f"{self.dims.d_model}] (width must be d_model = {self.dims.d_model})")
            if rows.shape[0] != k:
                raise ConfigError(f"layer {layer}: {rows.shape[0]} directions given, the config says {k}")
            q = orthonormalize(rows, name=f"layer {layer}")
            buf = self.basis(layer)
            buf.copy_(q.to(buf.device))

    def basis(self, layer: int) -> Float[Tensor, "d_model k"]:
        """The stored orthonormal basis ``Q_l`` of ``layer``."""
        return getattr(self, f"q_{layer}")

    def projector(self, layer: int) -> Float[Tensor, "d_model d_model"]:
        """``Q_l Q_lᵀ``: the projector onto the ablated subspace of ``layer`` (fp32)."""
        q = self.basis(layer).float()
        return q @ q.T

    def sites(self) -> list[Site]:
        return [Site(layer, "hook_resid_post") for layer in self.config.layers]

    def apply(self, site: Site, act: Float[Tensor, "batch pos d_model"]) -> Tensor:
        if not self._active:
            return act
        q = self.basis(site.layer).to(device=act.device, dtype=torch.float32)
        x = act.float()
        return (x - (x @ q) @ q.T).to(act.dtype)

    def check_orthonormal(self) -> None:
        """Raises:
            ConfigError: a basis is not orthonormal (directions never set, or tensors edited by hand).
        """
        for layer, k in zip(self.config.layers, self.config.n_directions):
            q = self.basis(layer).double()
            err = float((q.T @ q - torch.eye(k, dtype=torch.float64, device=q.device)).abs().max())
            if err > ORTHO_TOL:
                raise ConfigError(f"layer {layer}: the stored basis is not orthonormal (max |QᵀQ − I| = {err:.2e}); "
                                  "set the directions with set_directions() or load a saved CAFT adapter first")

    @contextmanager
    def attach(self, model: nn.Module) -> Iterator["CaftIntervention"]:
        """Hook the ablation into ``model`` for the ``with`` block; the hooks are always removed.

        Raises:
            ConfigError: a layer the model does not have, or a basis that is not orthonormal.
        """
        self.check_orthonormal()
        with super().attach(model):
            yield self

    @contextmanager
    def suspended(self) -> Iterator[None]:
        """Temporarily make the attached hooks pass activations through unchanged (for evaluation
        of the plain model in the middle of CAFT training); restores the previous state on exit."""
        previous, self._active = self._active, False
        try:
            yield
        finally:
            self._active = previous
