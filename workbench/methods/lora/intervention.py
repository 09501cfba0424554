"""LoRA through peft (Hu et al., ICLR 2022) as an Intervention: adapters injected into the model, enabled while attached."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from workbench.errors import MismatchError
from workbench.intervention import DimsLike, Intervention
from workbench.methods.lora.config import LoraMethodConfig

ADAPTER = "workbench"


class LoraIntervention(Intervention):
    """peft LoRA adapters injected into the model; ``attach`` enables them, leaving disables them.

    The adapter matrices live inside the model (peft replaces each target ``nn.Linear`` by a
    ``lora.Linear`` wrapper); :meth:`bind` injects them on first use and registers the very same
    ``Parameter`` objects here, so ``parameters()`` / ``state_dict()`` are the adapter's. ``lora_B`` starts
    at zero, so a fresh adapter is an exact no-op. With adapters disabled the wrappers compute the base
    layer only, so the model outside ``attach`` is the base model.

    Precision: ``lora_A`` / ``lora_B`` are fp32 whatever the model's dtype (:meth:`bind` casts them after peft
    injects them in the base layer's dtype; peft's ``get_peft_model`` does the same with
    ``autocast_adapter_dtype``). ``B`` starts at zero and its first updates are ~lr, below a bf16 ulp of the
    products it is added to; peft casts the layer input to the adapter's dtype and the sum back to the base
    layer's, so a bf16 model still runs its base matmuls in bf16.
    """

    method = "lora"

    def __init__(self, config: LoraMethodConfig, dims: DimsLike) -> None:
        super().__init__(config, dims)
        self.adapters = nn.ParameterDict()
        self._model_id: int | None = None
        self._pending: dict[str, torch.Tensor] | None = None

    def sites(self) -> list:
        return []

    def bind(self, model: nn.Module) -> None:
        if self._model_id == id(model):
            return
        if self._model_id is not None:
            raise MismatchError("this LoRA intervention is already injected into another model; load a new one for this model")
        from peft import LoraConfig, inject_adapter_in_model

        cfg = LoraConfig(r=int(self.config.r), lora_alpha=self.config.alpha, lora_dropout=0.0, target_modules=list(self.config.target_modules))
        inject_adapter_in_model(cfg, model, adapter_name=ADAPTER)
        for name, param in model.named_parameters():
            if "lora_" in name:
                if param.dtype != torch.float32:  # fp32 adapters on a bf16 / fp16 model (see the class docstring)
                    param.data = param.data.float()
                self.adapters[name.replace(".", "__")] = param
        self._model_id = id(model)
        self._set_enabled(model, False)
        if self._pending is not None:
            super().load_state_dict(self._pending, strict=True)
            self._pending = None

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True, assign: bool = False):  # noqa: D102
        if self._model_id is None:  # not injected yet: keep until bind()
            self._pending = {k: v.clone() for k, v in state_dict.items()}
            return None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _set_enabled(self, model: nn.Module, enabled: bool) -> None:
        from peft.tuners.lora import LoraLayer

        for module in model.modules():
            if isinstance(module, LoraLayer):
                module.enable_adapters(enabled)
        for param in self.adapters.values():  # peft switches grads off with the adapters; fit() decides
            param.requires_grad_(True)

    def attach(self, model: nn.Module):
        from contextlib import contextmanager

        @contextmanager
        def ctx():
            self.bind(model)
            self._set_enabled(model, True)
            try:
                yield self
            finally:
                self._set_enabled(model, False)

        return ctx()

    @torch.no_grad()
    def merge_into(self, model: nn.Module) -> None:
        """Add ``(alpha / r) · B A`` into each target layer's weight of a plain (un-injected) copy."""
        scale = self.config.alpha / int(self.config.r)
        targets = dict(model.named_modules())
        for key, a in self.adapters.items():
            name = key.replace("__", ".")
            if ".lora_A." not in name:
                continue
            prefix = name.split(".lora_A.")[0]
            b = self.adapters[key.replace("lora_A", "lora_B")]
            layer = targets.get(prefix.removesuffix(".base_layer")) or targets.get(prefix)
            if layer is None:
                raise MismatchError(f"target layer {prefix} not found in the model to merge into")
            weight = layer.base_layer.weight if hasattr(layer, "base_layer") else layer.weight
            weight.add_((b @ a).to(weight) * scale)
