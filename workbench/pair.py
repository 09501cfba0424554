"""ModelPair: a base and a tuned model that share one tokenizer and one architecture.

The constructor refuses a mismatched pair with one clear error (vocabulary, architecture, dimensions or
parameter shapes), so every comparison downstream can index both models with the same token ids,
layers and heads. It has no analysis methods of its own (those live in ``probes/``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from workbench.data import as_token_ids, right_pad, tokenizer_fingerprint, vocab_size_of
from workbench.errors import ConfigError, MismatchError

_DIMS = ("n_layers", "n_heads", "n_kv_heads", "d_head", "d_model", "d_mlp", "d_vocab")


@dataclass
class ModelPair:
    """Base and tuned models checked for compatibility.

    Args:
        base, tuned: Hugging Face causal LMs.
        tokenizer: the shared tokenizer (the base's).
        base_info, tuned_info: their :class:`~workbench.models.ModelInfo` records.
        tuned_tokenizer: the tuned model's own tokenizer, if it has one; its vocabulary (and merges) must equal
            the base's. Without it, the tokenizer fingerprints the two ModelInfos recorded at load are compared.
        tuned_intervention: an :class:`~workbench.intervention.Intervention` that turns ``tuned`` into the
            tuned model while the pair runs it (e.g. LoFiT offsets on the base weights: pass the base as
            ``tuned`` and the pair shares one copy of the weights).

    Raises:
        MismatchError: different vocabularies, architectures, dimensions, or shapes of a parameter both
            models have (a parameter only one side has, such as an ``o_proj`` bias added by an exact
            LoFiT merge, is allowed).
    """

    base: nn.Module
    tuned: nn.Module
    tokenizer: Any
    base_info: Any
    tuned_info: Any
    tuned_tokenizer: Any = None
    tuned_intervention: Any = None
    prepend_bos: bool = field(init=False)
    _bridges: dict = field(init=False, default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        problems = self._tokenizer_problems()
        if self.base_info.architecture != self.tuned_info.architecture:
            problems.append(f"architecture {self.base_info.architecture} vs {self.tuned_info.architecture}")
        dims = {k: (getattr(self.base_info, k), getattr(self.tuned_info, k)) for k in _DIMS}
        problems += [f"{k} {a} vs {b}" for k, (a, b) in dims.items() if a != b]
        if not problems:
            tuned_shapes = {k: v.shape for k, v in self.tuned.state_dict().items()}
            for name, tensor in self.base.state_dict().items():
                if name in tuned_shapes and tuned_shapes[name] != tensor.shape:
                    problems.append(f"parameter {name}: {tuple(tensor.shape)} vs {tuple(tuned_shapes[name])}")
        if problems:
            raise MismatchError(
                f"base {self.base_info.id!r} and tuned {self.tuned_info.id!r} cannot be compared: "
                + "; ".join(problems[:8])
                + ". A tuned model must be a fine-tuned copy of the base (same tokenizer and shapes)."
            )
        self.prepend_bos = bool(self.base_info.prepend_bos)

    def _tokenizer_problems(self) -> list[str]:
        """Tokenizers are compared by content (vocabulary and merges, :func:`tokenizer_fingerprint`), not size: the
        tuned tokenizer if given, the fingerprints recorded in the two ModelInfos at load time, and the passed
        tokenizer against the base's record — so two equal-size vocabularies that differ are caught even when
        only one tokenizer is passed."""
        if self.tuned_tokenizer is not None and self.tuned_tokenizer.get_vocab() != self.tokenizer.get_vocab():
            return ["the tokenizers have different vocabularies"]
        base_fp, tuned_fp = (getattr(i, "tokenizer_hash", "") for i in (self.base_info, self.tuned_info))
        if base_fp and tuned_fp and base_fp != tuned_fp:
            return [f"the tokenizers differ (fingerprints {base_fp[:19]}… vs {tuned_fp[:19]}…, recorded at load time)"]
        fp = tokenizer_fingerprint(self.tokenizer) if base_fp or self.tuned_tokenizer is not None else ""
        if self.tuned_tokenizer is not None and tokenizer_fingerprint(self.tuned_tokenizer) != fp:
            return ["the tokenizers have the same vocabulary but different merges"]
        if base_fp and fp and fp != base_fp:
            return ["the tokenizer passed is not the base model's (its fingerprint differs from the one recorded at load)"]
        return []

    def tokenize(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Left-aligned, right-padded ``(input_ids, attention_mask)``, both ``Int[Tensor, "batch pos"]``, BOS
        prepended if the model needs it (padding: :func:`workbench.data.right_pad`).

        Raises:
            ConfigError: no prompts, a bare string instead of a list of them, or a prompt with no tokens.
        """
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise ConfigError(f"prompts must be a list of strings, got {type(prompts).__name__}"
                              + (" (one prompt? wrap it: [prompt])" if isinstance(prompts, str) else ""))
        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        if self.prepend_bos:
            ids = [[self.tokenizer.bos_token_id, *x] for x in ids]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids, mask, _ = right_pad(ids, pad)
        return input_ids, mask

    def tuned_context(self) -> Any:
        """Context manager under which ``self.tuned`` computes the tuned model (attaches the intervention)."""
        return self.tuned_intervention.attach(self.tuned) if self.tuned_intervention is not None else nullcontext()

    @torch.no_grad()
    def logits(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Both models' logits on the same tokens (a tensor or ``list[list[int]]``): two
        ``Float[Tensor, "batch pos d_vocab"]``. Raises ConfigError for ids that are not ``[batch, pos]`` token ids."""
        input_ids = as_token_ids(input_ids, vocab_size=vocab_size_of(self.base))
        device = next(self.base.parameters()).device
        args = {"input_ids": input_ids.to(device), "attention_mask": None if attention_mask is None else attention_mask.to(device)}
        base = self.base(**args).logits
        with self.tuned_context():
            return base, self.tuned(**args).logits

    def bridge(self, role: str) -> Any:
        """The TransformerLens ``TransformerBridge`` of ``"base"`` or ``"tuned"`` (booted once, shared when
        both roles are the same module)."""
        from workbench.hooked import to_bridge

        if role not in ("base", "tuned"):
            raise ConfigError(f"role must be 'base' or 'tuned', got {role!r}")
        model, info = (self.base, self.base_info) if role == "base" else (self.tuned, self.tuned_info)
        key = id(model)
        if key not in self._bridges:
            self._bridges[key] = to_bridge(model, self.tokenizer, info.path)
        return self._bridges[key]

    @torch.no_grad()
    def run_with_cache(self, input_ids: Tensor, names_filter: Callable[[str], bool] | None = None) -> tuple[Tensor, Any, Tensor, Any]:
        """Run both models through their bridges on the same (equal-length) token ids.

        Returns:
            ``(base_logits, base_cache, tuned_logits, tuned_cache)``; caches are TransformerLens
            ``ActivationCache`` objects keyed by hook name (``blocks.{l}.attn.hook_z`` ...).

        Raises:
            ConfigError: ids that are not ``[batch, pos]`` token ids (a tensor or ``list[list[int]]``).
        """
        input_ids = as_token_ids(input_ids, vocab_size=vocab_size_of(self.base))
        base_logits, base_cache = self.bridge("base").run_with_cache(input_ids, names_filter=names_filter)
        with self.tuned_context():
            tuned_logits, tuned_cache = self.bridge("tuned").run_with_cache(input_ids, names_filter=names_filter)
        return base_logits, base_cache, tuned_logits, tuned_cache
