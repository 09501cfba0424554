"""Tiny random Llama models: one factory for the tests (``tests/conftest.py``), the app's latency bench and its saved
tiny models (``app/latency/tiny.py``), so every tiny model of the repository has the same shape unless told otherwise:
2 layers, 2 heads, 1 key/value head, MLP width 32, untied embeddings, ``pad_token_id`` 0. Nothing is downloaded."""

from __future__ import annotations

from typing import Any

import torch


def tiny_llama(vocab_size: int = 64, *, hidden_size: int = 16, seed: int = 0, max_position_embeddings: int = 64,
               attn_implementation: str | None = "eager") -> Any:
    """A random ``LlamaForCausalLM`` in eval mode, its weights drawn right after ``torch.manual_seed(seed)``.

    Args:
        vocab_size: e.g. ``len(tokenizer)`` to pair it with a real tokenizer.
        attn_implementation: ``None`` leaves transformers' default (what a saved folder then loads with).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    extra = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=max_position_embeddings, pad_token_id=0, tie_word_embeddings=False,
                      **extra)
    return LlamaForCausalLM(cfg).eval()


def tiny_info(model: Any, id_: str) -> Any:
    """A real :class:`~workbench.models.ModelInfo` for a tiny Llama (its weights hashed; no BOS; no path)."""
    from workbench.models import ModelInfo, weights_hash

    c = model.config
    return ModelInfo(id=id_, weight_hash=weights_hash(model), n_layers=c.num_hidden_layers, n_heads=c.num_attention_heads,
                     n_kv_heads=c.num_key_value_heads, d_head=c.hidden_size // c.num_attention_heads, d_model=c.hidden_size,
                     d_mlp=c.intermediate_size, d_vocab=c.vocab_size, architecture="LlamaForCausalLM", prepend_bos=False, path="")


def make_tiny(seed: int = 0, hidden_size: int = 16) -> tuple[Any, Any]:
    """``(model, info)``: :func:`tiny_llama` over a 64-token vocabulary and its ModelInfo (id ``tiny-llama-<seed>``)."""
    model = tiny_llama(hidden_size=hidden_size, seed=seed)
    return model, tiny_info(model, f"tiny-llama-{seed}")
