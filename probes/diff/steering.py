"""Activation Difference Lens, part 3: steering a model with a mean difference δ_j, and the strength search.

Source: Minder et al. 2025 (arXiv 2510.13900), §3, as the authors' toolkit runs it (METHODS.md, "Activation
Difference Lens"). As the reference:

* the **fine-tuned** model (the caller passes ``pair.tuned`` inside ``pair.tuned_context()``; the base is an option)
  generates with ``α · n̄ · δ/‖δ‖`` added to ``blocks.{layer}.hook_resid_post`` at every position, generated tokens
  included;
* prompts go through the tokenizer's **chat template** when it has one (user turn + generation prompt);
* **sampled** generations (temperature 1.2 by default), several per prompt and strength;
* α is found by **binary search in [0, α_max]** (α_max = 100): the largest strength at which at least
  ``min_coherent_share`` (75%) of the samples, over all prompts, are coherent.

Departure (no judge here): the reference asks an LLM judge whether a generation is coherent. Ours is a stated rule,
:func:`coherent`: a sample is coherent when the *unsteered* model's mean NLL of its generated tokens is at most the
median NLL of the same prompt's unsteered (α = 0) samples plus ``margin_nats``, and at least ``min_distinct`` of its
tokens are distinct (a loop of one token has a low NLL). The default sizes (samples, tokens, search steps) are the
caller's; the reference's are 10 samples of 128 tokens and 12 steps.
"""

from __future__ import annotations

import statistics
from typing import Any, Callable

import torch
from jaxtyping import Float
from torch import Tensor, nn

from probes.diff.adl import scaled
from workbench.data import right_pad
from workbench.errors import ConfigError
from workbench.hooked import hooks
from workbench.sites import Site


def encode_prompt(tokenizer: Any, text: str, chat: bool = True, prepend_bos: bool = False) -> list[int]:
    """Token ids of ``text`` as a user turn through the chat template (with the generation prompt) when ``chat`` and
    the tokenizer has a template; else the raw text (BOS first when ``prepend_bos``)."""
    if chat and getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)
        return tokenizer(rendered, add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if prepend_bos and tokenizer.bos_token_id is not None else []
    return bos + tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def sample_steered(model: nn.Module, tokenizer: Any, prompt_ids: list[int], vector: Float[Tensor, " d_model"] | None,
                   layer: int, n_samples: int, max_new_tokens: int, temperature: float, seed: int) -> list[list[int]]:
    """``n_samples`` sampled continuations of ``prompt_ids`` (each cut at its first end-of-sequence token) with
    ``vector`` added to ``blocks.{layer}.hook_resid_post`` at every position; ``None`` samples unsteered. The global
    torch generator is seeded with ``seed`` first (same seed → same samples)."""
    p = next(model.parameters())
    ids = torch.tensor([prompt_ids] * n_samples, device=p.device)
    fns = {} if vector is None else {Site(layer, "hook_resid_post"): lambda x: x + vector.to(x.device, x.dtype)}
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    torch.manual_seed(seed)
    with hooks(model, fns):
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=True,
                             temperature=temperature, top_p=1.0, top_k=0, pad_token_id=pad)
    seqs = []
    for row in out[:, len(prompt_ids):].tolist():
        seqs.append(row[: row.index(eos)] if eos is not None and eos in row else row)
    return seqs


@torch.no_grad()
def continuation_nll(model: nn.Module, prompt_ids: list[int], new_ids: list[list[int]]) -> list[float]:
    """Mean NLL (nats/token) of each continuation after ``prompt_ids`` under ``model`` as it is (no hook added here);
    ``nan`` for an empty continuation. One forward pass for all of them (right-padded)."""
    if not any(new_ids):
        return [float("nan")] * len(new_ids)
    p = next(model.parameters())
    ids, mask, _ = right_pad([prompt_ids + n for n in new_ids], 0)
    ids, mask = ids.to(p.device), mask.to(p.device)
    start = len(prompt_ids)
    logp = model(input_ids=ids, attention_mask=mask).logits[:, start - 1 : -1].float().log_softmax(-1)
    nll = -logp.gather(-1, ids[:, start:, None])[..., 0]
    gen = mask[:, start:].float()
    mean = (nll * gen).sum(1) / gen.sum(1).clamp_min(1)
    return [float(m) if n else float("nan") for m, n in zip(mean.tolist(), new_ids)]


def coherent(nll: float, distinct: float, reference_nll: float, margin_nats: float, min_distinct: float) -> bool:
    """The judge-free coherence rule (module docstring)."""
    return nll == nll and nll <= reference_nll + margin_nats and distinct >= min_distinct


def steering_search(model: nn.Module, tokenizer: Any, delta: Float[Tensor, " d_model"], layer: int, ref_norm: float,
                    prompts: list[str], *, alpha_max: float = 100.0, steps: int = 12, n_samples: int = 10,
                    max_new_tokens: int = 128, temperature: float = 1.2, margin_nats: float = 1.5, min_distinct: float = 0.3,
                    min_coherent_share: float = 0.75, chat: bool = True, prepend_bos: bool = False, seed: int = 0,
                    log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Binary search for the largest coherent steering strength α ∈ [0, α_max] (module docstring).

    Args:
        delta: ``[d_model]`` one position's mean difference; the vector added is ``α · ref_norm · δ/‖δ‖``.
        ref_norm: ``n̄``, the unit of α.
        steps: bisection steps (the resolution is ``α_max / 2**steps``).

    Returns:
        ``{"by_alpha": [{"alpha", "coherent_share", "coherent", "samples": [{"prompt", "text", "nll_nats",
        "distinct_fraction"}]}] in search order (α = 0 first), "chosen_alpha" (``None`` when no α > 0 is coherent or
        δ = 0), "chosen_samples", the rule and the sizes}``.

    Raises:
        ConfigError: no prompt, ``steps`` < 1, ``n_samples`` < 1, ``alpha_max`` ≤ 0.
    """
    if not prompts or steps < 1 or n_samples < 1 or not alpha_max > 0:
        raise ConfigError(f"steering needs prompts, steps >= 1, n_samples >= 1 and alpha_max > 0 (got {len(prompts)} prompts, "
                          f"steps={steps}, n_samples={n_samples}, alpha_max={alpha_max})")
    encoded = [encode_prompt(tokenizer, t, chat, prepend_bos) for t in prompts]
    p = next(model.parameters())
    reference: list[float] = []
    rows: list[dict[str, Any]] = []

    def run(alpha: float) -> dict[str, Any]:
        vector = scaled(delta.double(), ref_norm, alpha).to(p.device, p.dtype) if alpha else None
        samples = []
        for i, (text, ids) in enumerate(zip(prompts, encoded)):
            new = sample_steered(model, tokenizer, ids, vector, layer, n_samples, max_new_tokens, temperature, seed + 7919 * i)
            nlls = continuation_nll(model, ids, new)
            if alpha == 0:
                finite = [x for x in nlls if x == x]
                reference.append(statistics.median(finite) if finite else float("inf"))
            for n, nll in zip(new, nlls):
                distinct = len(set(n)) / len(n) if n else 0.0
                samples.append({"prompt": text, "text": tokenizer.decode(n, skip_special_tokens=True), "nll_nats": nll,
                                "distinct_fraction": distinct,
                                "coherent": coherent(nll, distinct, reference[i], margin_nats, min_distinct)})
        share = sum(s["coherent"] for s in samples) / len(samples)
        row = {"alpha": float(alpha), "coherent_share": share, "coherent": share >= min_coherent_share, "samples": samples}
        rows.append(row)
        if log:
            log(f"      steering α={alpha:.4g}: {share:.0%} of {len(samples)} samples coherent")
        return row

    base_row = run(0.0)
    lo, hi, best = 0.0, float(alpha_max), base_row
    if float(delta.norm()) > 0:
        for _ in range(steps):
            mid = (lo + hi) / 2
            row = run(mid)
            if row["coherent"]:
                lo, best = mid, row
            else:
                hi = mid
    chosen = lo if lo > 0 else None
    return {"layer": layer, "alpha_unit": "n̄ (vector = α · n̄ · δ/‖δ‖)", "ref_norm": ref_norm, "alpha_max": alpha_max, "steps": steps,
            "n_samples": n_samples, "max_new_tokens": max_new_tokens, "temperature": temperature, "chat_template": bool(
                chat and getattr(tokenizer, "chat_template", None)),
            "rule": f"sample coherent: unsteered NLL ≤ median unsteered-sample NLL of its prompt + {margin_nats:g} nats and "
                    f"≥ {min_distinct:g} distinct tokens; strength coherent: ≥ {min_coherent_share:.0%} of samples",
            "reference_nll_nats": reference, "by_alpha": rows, "chosen_alpha": chosen,
            "chosen_samples": [s["text"] for s in best["samples"]] if chosen is not None else []}
