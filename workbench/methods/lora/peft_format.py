"""Our LoRA as a standard peft adapter folder: ``adapter_config.json`` + ``adapter_model.safetensors``.

``PeftModel.from_pretrained(fresh_base, directory)`` loads it unchanged (no workbench code needed) and computes
what our :class:`~workbench.methods.lora.LoraIntervention` computes while attached; the workbench loads it back
through :func:`workbench.models.tuned.load_pair` like any other peft adapter. Our own ``adapter/`` format
(``adapter.json``) stays the one runs resume from; this is the export for the rest of the ecosystem.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from workbench.artifacts import atomic_save_tensors, atomic_write_json
from workbench.errors import ConfigError
from workbench.methods.lora.intervention import ADAPTER, LoraIntervention

__all__ = ["save_extras", "save_peft_adapter"]

#: peft's prefix for the wrapped model's parameter names (``PeftModel.base_model.model``).
_PREFIX = "base_model.model."


def peft_config(intervention: LoraIntervention, model_info: Any) -> Any:
    """The ``peft.LoraConfig`` equivalent to ``intervention``'s settings (dropout 0, scaling ``alpha / r``, no
    bias), with ``base_model_name_or_path`` set to the base model's id."""
    from peft import LoraConfig

    cfg = intervention.config
    return LoraConfig(r=int(cfg.r), lora_alpha=cfg.alpha, lora_dropout=0.0, target_modules=list(cfg.target_modules),
                      bias="none", task_type="CAUSAL_LM", base_model_name_or_path=str(getattr(model_info, "id", "") or ""))


def save_peft_adapter(directory: str | os.PathLike, intervention: LoraIntervention, model: nn.Module, model_info: Any) -> Path:
    """Write ``intervention`` as a standard peft LoRA adapter in ``directory``.

    Args:
        directory: created if missing; gets ``adapter_model.safetensors`` (tensors named as peft saves them:
            ``base_model.model.<module>.lora_A.weight`` ``[r, d_in]`` / ``.lora_B.weight`` ``[d_out, r]``) and then
            ``adapter_config.json`` (peft ``LoraConfig``), each written atomically, the config last, so a killed
            save never leaves a folder that looks like a complete adapter.
        intervention: a trained :class:`LoraIntervention`. If it has not been injected yet (loaded from disk),
            it is bound to ``model`` first (outside ``attach`` the model still computes the base).
        model: the Hugging Face model it was trained on (or is to be bound to).
        model_info: its :class:`~workbench.models.ModelInfo`; ``id`` becomes ``base_model_name_or_path`` and the
            weight hash is kept in the safetensors metadata.

    Returns:
        ``directory`` as a ``Path``.

    Raises:
        ConfigError: ``intervention`` is not our LoRA, or holds no adapter tensors.
    """
    if not isinstance(intervention, LoraIntervention):
        raise ConfigError(f"save_peft_adapter saves our LoRA only, got a {type(intervention).__name__} "
                          "(LoFiT, NeFT and full fine-tuning export a merged model: workbench.export.export_hf)")
    if intervention._model_id is None:
        intervention.bind(model)
    tensors = {}
    for key, param in intervention.adapters.items():
        name = key.replace("__", ".")  # our ParameterDict keys are the model's parameter names with "." -> "__"
        tensors[_PREFIX + name.replace(f".{ADAPTER}.", ".")] = param.detach()
    if not tensors:
        raise ConfigError("this LoRA intervention holds no adapter tensors (no target module matched the model?)")
    directory = Path(directory)
    config = peft_config(intervention, model_info).to_dict()
    config = {k: sorted(v) if isinstance(v, set) else getattr(v, "value", v) for k, v in config.items()}
    atomic_save_tensors(directory / "adapter_model.safetensors", tensors,
                        metadata={"format": "pt", "workbench_model_id": str(getattr(model_info, "id", "")),
                                  "workbench_model_weight_hash": str(getattr(model_info, "weight_hash", ""))})
    atomic_write_json(directory / "adapter_config.json", config)
    return directory


def save_extras(run_dir: str | os.PathLike, result: Any, model: nn.Module, model_info: Any) -> None:
    """The spec's ``save_extras``: a trained LoRA also goes into ``run_dir/peft_adapter/`` as a standard peft adapter
    (:func:`save_peft_adapter`); ``PeftModel.from_pretrained`` and :func:`workbench.models.tuned.load_pair` load it
    back, so the spec needs no ``load_extras``."""
    save_peft_adapter(Path(run_dir) / "peft_adapter", result.intervention, model, model_info)
