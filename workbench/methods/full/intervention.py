"""Full fine-tuning baseline: every weight of the model moves, under the Intervention protocol.

The trainable parameters are deltas ``Δ`` for every model parameter (zeros at the start), applied with
``torch.nn.utils.parametrize`` while attached (``W ← W + Δ``) and removed on exit, so the model outside
``attach`` keeps its original weights bit for bit and a fresh intervention is an exact no-op.
Tied parameters (e.g. SmolLM2's embedding and ``lm_head``) share one delta.

Precision: the deltas are fp32 whatever the model's dtype (fp32 "master" copies, as in mixed-precision training):
a bf16 delta next to a bf16 weight would lose any update below the weight's ulp (2⁻⁷ relative). While attached the
weight is ``W + Δ`` cast to ``W``'s dtype and device; the sum rounds there, but ``Δ`` keeps accumulating in fp32.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from workbench.errors import MismatchError
from workbench.intervention import DimsLike, Intervention
from workbench.methods.full.config import FullConfig


class _AddDelta(nn.Module):
    def __init__(self, delta: nn.Parameter) -> None:
        super().__init__()
        self.delta = delta

    def forward(self, weight: Tensor) -> Tensor:
        return weight + self.delta.to(device=weight.device, dtype=weight.dtype)


class FullFineTune(Intervention):
    """All parameters trainable, as deltas (see module docstring)."""

    method = "full"

    def __init__(self, config: FullConfig, dims: DimsLike) -> None:
        super().__init__(config, dims)
        self.deltas = nn.ParameterDict()
        self._pending: dict[str, Tensor] | None = None

    def sites(self) -> list:
        return []

    @staticmethod
    def _owners(model: nn.Module) -> dict[str, list[tuple[nn.Module, str]]]:
        """First name of each distinct parameter -> every (module, attribute) holding it (ties)."""
        first: dict[int, str] = {}
        owners: dict[str, list[tuple[nn.Module, str]]] = {}
        for mod_name, module in model.named_modules():
            # a TransformerBridge nests the original modules under ``_original_component``: use HF names
            mod_name = ".".join(p for p in mod_name.split(".") if p not in ("_original_component", "original_component"))
            for attr, param in module.named_parameters(recurse=False):
                key = first.setdefault(id(param), f"{mod_name}.{attr}" if mod_name else attr)
                owners.setdefault(key, []).append((module, attr))
        return owners

    def bind(self, model: nn.Module) -> None:
        owners = self._owners(model)
        if len(self.deltas) == 0:
            for name, holders in owners.items():
                module, attr = holders[0]
                self.deltas[name.replace(".", "__")] = nn.Parameter(torch.zeros_like(getattr(module, attr), dtype=torch.float32))
            if self._pending is not None:
                super().load_state_dict(self._pending, strict=True)
                self._pending = None
        missing = {n.replace(".", "__") for n in owners} ^ set(self.deltas.keys())
        if missing:
            raise MismatchError(f"full fine-tuning deltas do not match this model's parameters: {sorted(missing)[:5]}")

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # noqa: D102
        if len(self.deltas) == 0:
            self._pending = {k: v.clone() for k, v in state_dict.items()}
            return None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def attach(self, model: nn.Module):
        @contextmanager
        def ctx():
            self.bind(model)
            touched: list[tuple[nn.Module, str]] = []
            try:
                for name, holders in self._owners(model).items():
                    add = _AddDelta(self.deltas[name.replace(".", "__")])
                    for module, attr in holders:
                        parametrize.register_parametrization(module, attr, add, unsafe=True)
                        touched.append((module, attr))
                yield self
            finally:
                for module, attr in touched:
                    parametrize.remove_parametrizations(module, attr, leave_parametrized=False)

        return ctx()

    @torch.no_grad()
    def merge_into(self, model: nn.Module) -> None:
        """``W += Δ`` for every parameter (the fine-tuned model as plain weights)."""
        self.bind(model)
        for name, holders in self._owners(model).items():
            module, attr = holders[0]
            weight = getattr(module, attr)
            weight.add_(self.deltas[name.replace(".", "__")].to(weight))
