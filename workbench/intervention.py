"""The Intervention protocol: an ``nn.Module`` whose parameters are what gets trained.

An intervention names the Sites it acts on and how it changes each activation. ``attach(model)`` is a
context manager that registers one hook per Site through the hook scope :func:`workbench.hooked.hooks`,
which always removes them, also when the body raises.

Precision and devices: an intervention's parameters are fp32 (:func:`init_param`) whatever the model's dtype,
because the updates an optimizer makes to small offsets / deltas are below a bf16 weight's ulp and would round
away; :meth:`Intervention.apply` casts them to the activation's dtype and device at the hook (a no-op for an fp32
model on one device, so fp32 results are unchanged bit for bit). On a model split with ``device_map`` the hook
runs on the layer's device and the cast moves the parameter there (autograd moves the gradient back).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from workbench.architecture import Dims
from workbench.errors import ConfigError
from workbench.hooked import hooks
from workbench.sites import Site

#: What an Intervention is built from: a :class:`Dims`, a ``ModelInfo`` (``info.dims``) or a plain dict
#: (a ``ModelInfo.to_dict()``, or the ``dims`` of a saved ``adapter.json``).
DimsLike = Dims | Mapping[str, Any] | Any


class Intervention(nn.Module):
    """Base class. Subclasses set ``method`` and implement :meth:`sites` and :meth:`apply`.

    Subclasses are built from ``(config, dims)`` where ``dims`` is a :class:`~workbench.architecture.Dims`,
    a :class:`~workbench.models.ModelInfo` or a dict with at least ``n_layers``, ``n_heads``, ``d_head``,
    ``d_model``, ``d_mlp`` (so that :func:`workbench.methods.load_intervention` can rebuild them from
    JSON); ``self.dims`` is always a ``Dims``.

    Raises:
        ConfigError: ``dims`` lacks a required field.
    """

    method: ClassVar[str] = "intervention"

    def __init__(self, config: Any, dims: DimsLike) -> None:
        super().__init__()
        self.config = config
        self.dims: Dims = Dims.coerce(dims)

    # --- to implement -------------------------------------------------------------------------
    def sites(self) -> list[Site]:
        """The Sites this intervention hooks (one hook each)."""
        raise NotImplementedError

    def apply(self, site: Site, act: Tensor) -> Tensor:
        """Return the new activation for ``site`` (same shape, dtype and device as ``act``: cast fp32 parameters with
        ``p.to(device=act.device, dtype=act.dtype)``)."""
        raise NotImplementedError

    # --- optional -----------------------------------------------------------------------------
    def regularization(self) -> Tensor | float:
        """A penalty added to the training loss (e.g. LoFiT's L1 on scalings); 0 by default."""
        return 0.0

    def bind(self, model: nn.Module) -> None:
        """Called by :func:`~workbench.train.fit` before the optimizer is built. Methods whose trainable
        parameters live inside the model (full fine-tuning, peft LoRA) create or collect them here;
        hook-based methods need nothing (the default)."""

    def merge_into(self, model: nn.Module) -> None:
        """Fold the intervention exactly into the model's weights, where the method allows it."""
        raise NotImplementedError(f"{type(self).__name__} cannot be merged into weights")

    def config_dict(self) -> dict[str, Any]:
        """JSON-serialisable config (dataclass fields) used when saving."""
        return asdict(self.config)

    # --- provided -----------------------------------------------------------------------------
    @contextmanager
    def attach(self, model: nn.Module) -> Iterator["Intervention"]:
        """Hook this intervention into ``model`` for the duration of the ``with`` block.

        Raises:
            ConfigError: a Site does not exist in ``model``.
        """
        sites = self.sites()
        for site in sites:
            site.validate(self.dims.n_layers, self.dims.n_heads, self.dims.d_mlp)
        with hooks(model, [(site, self._bound(site)) for site in sites], n_heads=self.dims.n_heads):
            yield self

    def _bound(self, site: Site):
        def fn(act: Tensor) -> Tensor:
            return self.apply(site, act)

        return fn

    def n_trainable(self) -> int:
        """Number of trainable scalars."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def check_dims(dims: DimsLike, model_dims: DimsLike) -> None:
    """Refuse an intervention whose dimensions do not match the model's (Dims, ModelInfo or dicts).

    Raises:
        ConfigError: any dimension known on both sides differs, or either side lacks a required one.
    """
    bad = Dims.coerce(dims).mismatches(Dims.coerce(model_dims))
    if bad:
        raise ConfigError(f"intervention built for other dimensions (intervention, model): {bad}")


def init_param(shape: tuple[int, ...], std: float, generator: torch.Generator | None = None) -> nn.Parameter:
    """An fp32 parameter drawn from N(0, std²) (zeros when std == 0), reproducible with ``generator``."""
    if std < 0:
        raise ConfigError(f"init std must be >= 0, got {std}")
    data = torch.randn(shape, generator=generator, dtype=torch.float32) * std if std > 0 else torch.zeros(shape, dtype=torch.float32)
    return nn.Parameter(data)
