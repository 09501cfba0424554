"""Export a trained intervention as a plain Hugging Face model (safetensors), exactly merged.

Every method with an exact merge (LoFiT offsets/scalings into ``o_proj``, NeFT neuron deltas, LoRA, full
fine-tuning) implements ``merge_into``; this module copies the model, merges, saves, and can reload to
report the largest logit difference between the hooked and the exported model.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from workbench.artifacts import atomic_write_json
from workbench.errors import ConfigError
from workbench.architecture import decoder_layers, unwrap


def _ensure_attention_biases(model: nn.Module) -> None:
    """If a merge added an ``o_proj`` bias, give every attention projection a (zero) bias and set
    ``config.attention_bias`` so that ``from_pretrained`` rebuilds the same modules."""
    attns = [unwrap(unwrap(layer).self_attn) for layer in decoder_layers(model)]
    if all(a.o_proj.bias is None for a in attns):
        return
    if not hasattr(model.config, "attention_bias"):
        raise ConfigError(f"{type(model).__name__}'s config has no attention_bias switch: cannot export an o_proj bias")
    for attn in attns:
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            proj = getattr(attn, name)
            if proj.bias is None:
                proj.bias = nn.Parameter(torch.zeros(proj.out_features, dtype=proj.weight.dtype, device=proj.weight.device))
    model.config.attention_bias = True


def export_hf(model: nn.Module, intervention: Any, out_dir: str | Path, tokenizer: Any = None, model_info: Any = None) -> Path:
    """Merge ``intervention`` into a copy of ``model`` and ``save_pretrained`` it to ``out_dir``.

    ``model`` must be a plain Hugging Face model (not bridged, no peft adapters injected; load a fresh
    copy if needed). The folder is written next to ``out_dir`` and renamed into place, so a failed export
    leaves nothing half-written. ``workbench_export.json`` records the method, its config and the source
    model's weight hash.

    Raises:
        ConfigError: the method cannot be merged exactly, or the architecture cannot hold the result.
    """
    out_dir = Path(out_dir)
    merged = copy.deepcopy(model)
    try:
        intervention.merge_into(merged)
    except NotImplementedError as exc:
        raise ConfigError(f"method {intervention.method!r} has no exact merge: {exc}") from exc
    _ensure_attention_biases(merged)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    atomic_write_json(tmp / "workbench_export.json", {
        "method": intervention.method,
        "config": intervention.config_dict(),
        "source_model_id": getattr(model_info, "id", None),
        "source_weight_hash": getattr(model_info, "weight_hash", None),
    })
    old = out_dir.with_name(f".{out_dir.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out_dir.exists():
        out_dir.rename(old)  # keep the previous export until the new one is in place
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return out_dir


@torch.no_grad()
def export_max_logit_diff(model: nn.Module, intervention: Any, exported_dir: str | Path, input_ids: torch.Tensor) -> float:
    """Largest |logit| difference between ``model`` with ``intervention`` attached and the reloaded export."""
    from transformers import AutoModelForCausalLM

    attn = getattr(getattr(model, "config", None), "_attn_implementation", None) or "sdpa"  # the source model's path
    reloaded = AutoModelForCausalLM.from_pretrained(exported_dir, attn_implementation=attn).eval()
    with intervention.attach(model):
        hooked = model(input_ids=input_ids).logits
    return float((reloaded(input_ids=input_ids).logits - hooked).abs().max())
