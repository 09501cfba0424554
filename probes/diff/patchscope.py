"""Activation Difference Lens, part 2: the token-identity Patchscope of a mean difference δ_j.

Source: Minder et al. 2025 (arXiv 2510.13900), §3, as the authors' toolkit runs it (METHODS.md, "Activation
Difference Lens"); Patchscopes: Ghandeharioun et al. 2024, "Patchscopes: A Unifying Framework for Inspecting Hidden
Representations of Language Models". As the reference:

* three identity prompts ``"a -> a\\nb -> b\\nc -> c\\n?"`` (:data:`DEFAULT_PROMPTS`), run on the **fine-tuned**
  model (the caller passes ``pair.tuned`` inside ``pair.tuned_context()``; the base model is an option);
* the residual at ``blocks.{layer}.hook_resid_post`` at the ``"?"`` position is **replaced** by ``s · n̄ · δ/‖δ‖``
  and the next-token distribution is read at that same position;
* per scale, probabilities averaged over the three prompts, keeping only tokens in **every** prompt's top-``k_each``;
  the 20 most probable kept tokens are the readout;
* scales :data:`DEFAULT_SCALES`: 0.5–2.0 in 0.1 steps, then 3, 4, 5, 10, 20 … 200 (39 scales), in units of ``n̄``.

Departure (no judge here): the reference lets an LLM judge pick the best scale. Ours is a stated rule,
:func:`best_scale`: the scale whose kept tokens, leaving out every token in any prompt's *unpatched* top-20 (what the
identity prompt says anyway), carry the most averaged probability; ties go to the smaller scale. The benchmark also
reports the oracle scale (best keyword score), labelled as such.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from probes.diff.adl import scaled
from workbench.errors import ConfigError
from workbench.hooked import hooks
from workbench.sites import Site

DEFAULT_PROMPTS = ("man -> man\n1135 -> 1135\nhello -> hello\n?", "bear -> bear\n42 -> 42\nblue -> blue\n?",
                   "921 -> 921\ntarget -> target\nanna -> anna\n?")
DEFAULT_SCALES = tuple([round(0.5 + 0.1 * i, 1) for i in range(16)] + [3.0, 4.0, 5.0] + [float(x) for x in range(10, 201, 10)])


def placeholder_position(tokenizer: Any, prompt: str, placeholder: str = "?", prepend_bos: bool = False) -> tuple[list[int], int]:
    """``(token ids of prompt, index of the placeholder's last token)``; the placeholder is its last occurrence.

    Raises:
        ConfigError: the placeholder is not in the prompt, or tokenizing the prompt splits it differently than
            tokenizing the text up to it.
    """
    at = prompt.rfind(placeholder)
    if not placeholder or at < 0:
        raise ConfigError(f"the Patchscope prompt {prompt!r} has no placeholder {placeholder!r}")
    bos = [tokenizer.bos_token_id] if prepend_bos and tokenizer.bos_token_id is not None else []
    ids = bos + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    prefix = bos + tokenizer(prompt[: at + len(placeholder)], add_special_tokens=False)["input_ids"]
    if ids[: len(prefix)] != prefix:
        raise ConfigError(f"the Patchscope prompt {prompt!r} tokenizes across the placeholder {placeholder!r}; put spaces around it")
    return ids, len(prefix) - 1


@torch.no_grad()
def patched_probs(model: nn.Module, ids: list[int], pos: int, layer: int,
                  vectors: Float[Tensor, "n d_model"]) -> Float[Tensor, "n_plus_1 d_vocab"]:
    """Next-token probabilities read at ``pos`` of one prompt, one row per vector with the residual at
    ``blocks.{layer}.hook_resid_post``, position ``pos``, replaced by that vector, plus a last unpatched row."""
    p = next(model.parameters())
    n = vectors.shape[0]
    batch = torch.tensor([ids] * (n + 1), device=p.device)

    def patch(x: Tensor) -> Tensor:
        x = x.clone()
        x[:n, pos] = vectors.to(x.device, x.dtype)
        return x

    with hooks(model, {Site(layer, "hook_resid_post"): patch}):
        logits = model(input_ids=batch).logits[:, pos]
    return logits.float().softmax(-1)


def best_scale(by_scale: list[dict[str, Any]]) -> float | None:
    """The judge-free choice (module docstring): the scale of largest ``novel_mass``, the smaller on ties."""
    best = max(by_scale, key=lambda r: (r["novel_mass"], -r["scale"]), default=None)
    return None if best is None else best["scale"]


@torch.no_grad()
def patchscope(model: nn.Module, tokenizer: Any, delta: Float[Tensor, " d_model"], layer: int, ref_norm: float,
               scales: tuple[float, ...] | list[float] = DEFAULT_SCALES, prompts: tuple[str, ...] | list[str] = DEFAULT_PROMPTS,
               placeholder: str = "?", prepend_bos: bool = False, top_k: int = 20, k_each: int = 100,
               decode: Any = str) -> dict[str, Any]:
    """The Patchscope of δ at every scale (module docstring): one batched forward per prompt.

    Args:
        model: the model read (the fine-tuned one in the reference).
        delta: ``[d_model]`` one position's mean difference.
        layer: where the placeholder's residual is replaced (``hook_resid_post``).
        ref_norm: ``n̄``, the unit of the scales (the fine-tuned model's mean residual norm over positions ≥ k).
        top_k: tokens kept per scale; ``k_each``: the per-prompt top-k whose intersection is kept.

    Returns:
        ``{"by_scale": [{"scale", "tokens": [{"id", "token", "prob"}] (averaged prob, ≤ top_k), "novel_mass"}],
        "unpatched": tokens of the unpatched prompts (same rule), "best_scale": the rule's choice, ...}``.

    Raises:
        ConfigError: no prompt or no scale, a prompt without the placeholder (:func:`placeholder_position`).
    """
    if not prompts or not scales:
        raise ConfigError("the Patchscope needs at least one prompt and one scale")
    p = next(model.parameters())
    vectors = torch.stack([scaled(delta.double(), ref_norm, s) for s in scales]).to(p.device, p.dtype)
    probs = []
    for prompt in prompts:
        ids, pos = placeholder_position(tokenizer, prompt, placeholder, prepend_bos)
        probs.append(patched_probs(model, ids, pos, layer, vectors))
    probs = torch.stack(probs)  # [prompt, scale + 1, d_vocab]
    k = min(k_each, probs.shape[-1])
    in_top = torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, probs.topk(k, dim=-1).indices, True).all(0)  # every prompt's top-k
    mean = torch.where(in_top, probs.mean(0), torch.zeros((), device=probs.device))  # [scale + 1, d_vocab]
    plain = set(probs[:, -1].topk(min(20, probs.shape[-1]), dim=-1).indices.flatten().tolist())

    def kept(row: Tensor) -> list[dict[str, Any]]:
        v, i = row.topk(min(top_k, int((row > 0).sum())))
        return [{"id": int(t), "token": decode(int(t)), "prob": float(x)} for x, t in zip(v, i)]

    by_scale = []
    for s_i, s in enumerate(scales):
        tokens = kept(mean[s_i])
        by_scale.append({"scale": float(s), "tokens": tokens, "novel_mass": sum(t["prob"] for t in tokens if t["id"] not in plain)})
    return {"layer": layer, "prompts": list(prompts), "placeholder": placeholder, "scale_unit": "n̄ (mean ‖h_tuned‖ over positions ≥ k)",
            "ref_norm": ref_norm, "k_each": k, "by_scale": by_scale, "unpatched": kept(mean[-1]), "best_scale": best_scale(by_scale),
            "best_scale_rule": "largest averaged probability of kept tokens outside every prompt's unpatched top-20 (smaller scale on ties)"}
