"""The app's logit lens, computed apart from the prompt's analysis (no streamlit): a window of positions on demand,
every layer at one position, and chosen tokens tracked through every layer and position.

Logit lens (nostalgebraist 2020, "interpreting GPT: the logit lens"): each layer's ``hook_resid_post`` read
through the model's own final norm, unembedding and any logit soft-cap (:func:`workbench.architecture.readout`),
as if the remaining layers were skipped. At the last layer it is the model's own output.

Cost per model: a window of ``w`` positions is ``n_layers × w`` rows of a ``d_model × d_vocab`` matmul (SmolLM2:
30 × 16 × 576 × 49152 ≈ 14 G multiply-adds, about 0.5 CPU-seconds on the shared 2-core development CPU); one position is
``n_layers`` rows (≈ 20 ms); tracked tokens need only their own unembedding rows (a few ms for every layer and
position), so the app computes the window after the rest of the view is drawn and the others with it. The tuned side's readout
runs under ``pair.tuned_context()`` (an intervention may change the final norm or the unembedding), so callers hold the
pair's lock, as for a forward pass.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from app.views.analysis import ROLES, PromptAnalysis
from probes.logit_lens import chunked_logit_lens
from workbench.architecture import (
    final_norm,
    logit_softcap,
    readout,
    softcap,
    unembedding,
)
from workbench.errors import ConfigError

#: Default logit-lens window: the last this many positions (adjustable in the page). Measured on the shared 2-core
#: development CPU with SmolLM2 (30 layers): the window costs about 0.06 CPU-s per position on the server (both models),
#: and drawing its heatmap with a token in every cell took headless Chromium 0.17 s for 8 positions against 0.9–1.2 s
#: for 16 (75 ms without the cell text); 8 keeps the tokens readable in the cells at a fraction of the cost.
LENS_WINDOW = 8


def _models(pair):
    """``(role, model, context)`` for both roles: the tuned side's readout runs under ``pair.tuned_context()``, since an
    intervention may change the final norm or the unembedding too (full fine-tuning deltas do)."""
    return [("base", pair.base, nullcontext), ("tuned", pair.tuned, pair.tuned_context)]


def window_bounds(n_pos: int, start: int | None = None, size: int = LENS_WINDOW) -> tuple[int, int]:
    """``(start, stop)`` of a window of ``size`` positions starting at ``start`` (default: the last ``size``),
    clipped to the prompt's ``n_pos`` positions."""
    size = max(1, min(int(size), n_pos))
    start = n_pos - size if start is None else max(0, min(int(start), n_pos - size))
    return start, start + size


@dataclass
class LensWindow:
    """The logit lens over positions ``start .. stop - 1`` of one prompt, both models.

    Attributes:
        start, stop: the window (positions, BOS counted).
        top_ids: role -> ``Int[Tensor, "n_layers w"]`` the lens's top-1 token at each layer and position.
        top_probs: role -> ``Float[Tensor, "n_layers w"]`` its probability.
        final_prob: role -> ``Float[Tensor, "n_layers w"]`` the lens probability of that model's final top-1 token.
        vocab: decoded text of every id in ``top_ids``.
    """

    start: int
    stop: int
    top_ids: dict[str, Tensor]
    top_probs: dict[str, Tensor]
    final_prob: dict[str, Tensor]
    vocab: dict[int, str]


@torch.no_grad()
def lens_window(pair, a: PromptAnalysis, start: int, stop: int, rows_per_chunk: int = 256) -> LensWindow:
    """Logit lens of both models over positions ``start .. stop - 1`` of ``a`` (from its ``resid_post``), in chunks
    of ``rows_per_chunk`` (layer, position) rows with a streaming top-1 (:func:`probes.logit_lens.chunked_logit_lens`).

    Raises:
        ConfigError: an empty or out-of-range window; a model without ``model.norm`` / ``lm_head``.
    """
    if not 0 <= start < stop <= a.n_pos:
        raise ConfigError(f"logit-lens window {start}..{stop - 1} is outside the prompt's {a.n_pos} positions")
    out: dict[str, dict[str, Tensor]] = {"ids": {}, "probs": {}, "final": {}}
    for role, model, context in _models(pair):
        final_top = a.top_ids[role][start:stop, 0]
        # the analysis is kept on the CPU; the lens runs where the unembedding is (a CUDA pair: CPU rows would meet
        # CUDA weights in the final norm). tests/test_gpu.py checks it with the weights on the meta device.
        resid = a.resid_post[role][:, start:stop].to(unembedding(model).weight.device)
        with context():
            lens = chunked_logit_lens(model, resid, final_top, k=1, rows_per_chunk=rows_per_chunk)
        out["ids"][role], out["probs"][role], out["final"][role] = lens.top_ids[..., 0], lens.top_probs[..., 0], lens.target_prob
    seen = torch.cat([t.flatten() for t in out["ids"].values()]).unique().tolist()
    vocab = {int(t): a.vocab.get(int(t)) or pair.tokenizer.decode([int(t)]) for t in seen}
    return LensWindow(start, stop, out["ids"], out["probs"], out["final"], vocab)


@torch.no_grad()
def lens_at(pair, a: PromptAnalysis, pos: int, token_ids: Int[Tensor, " k"]) -> dict[str, Float[Tensor, "n_layers k"]]:
    """role -> the lens probability of each of ``token_ids`` at every layer, at position ``pos`` (one
    ``n_layers × d_vocab`` readout per model: cheap)."""
    pos = pos % a.n_pos
    ids = torch.as_tensor(token_ids, dtype=torch.long)
    out = {}
    for role, model, context in _models(pair):
        head = unembedding(model)
        resid = a.resid_post[role][:, pos].to(head.weight.device, head.weight.dtype)  # [n_layers, d_model]
        with context():
            probs = readout(model, resid).float().softmax(-1)
        out[role] = probs[:, ids.to(probs.device)].cpu()
    return out


@torch.no_grad()
def tracked_logits(pair, a: PromptAnalysis, token_ids: Int[Tensor, " k"]) -> dict[str, Float[Tensor, "n_layers pos k"]]:
    """role -> the lens logit of each of ``token_ids`` at every layer and position: ``softcap(W_U[t] · norm(resid) + b_t)``,
    only those unembedding rows (never the vocabulary). ``tracked[..., 0] − tracked[..., 1]`` is the logit difference in
    nats, ``log p(answer) − log p(contrast)`` under the lens; at the last layer, the model's own.

    Raises:
        ConfigError: a token id outside the vocabulary; a model without ``model.norm`` / ``lm_head``.
    """
    ids = torch.as_tensor(token_ids, dtype=torch.long)
    out = {}
    for role, model, context in _models(pair):
        with context():
            head = unembedding(model)
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= head.weight.shape[0]):
                raise ConfigError(f"token ids {ids.tolist()} outside the vocabulary of {head.weight.shape[0]} tokens")
            rows = head.weight[ids.to(head.weight.device)]
            normed = final_norm(model)(a.resid_post[role].to(rows.device, rows.dtype))
            logits = normed @ rows.T
            if getattr(head, "bias", None) is not None:
                logits = logits + head.bias[ids.to(head.weight.device)]
        out[role] = softcap(logits.float(), logit_softcap(model)).cpu()
    return out


def single_token(pair, text: str) -> int:
    """The id of ``text`` as exactly one token (the leading space matters: ``" Paris"`` vs ``"Paris"``).

    Raises:
        ConfigError: empty text, or text that is not one token (the message gives its tokens).
    """
    if not text:
        raise ConfigError("the token is empty: type one token, e.g. ' Paris' (with its leading space)")
    ids = pair.tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = [pair.tokenizer.decode([i]) for i in ids]
        raise ConfigError(f"{text!r} is {len(ids)} tokens {pieces}, not one: type a single token (the lens tracks one token id)")
    return int(ids[0])


def resolve_token(pair, a: PromptAnalysis, text: str, prefer: int | None = None) -> int:
    """The token id for ``text``: ``prefer`` when that id decodes to exactly ``text`` (a default token that is not valid
    UTF-8 on its own, shown as '�', keeps its id), else the one token the analysis decoded to this text, else
    :func:`single_token`.

    Raises:
        ConfigError: as :func:`single_token`.
    """
    if prefer is not None and a.vocab.get(prefer) == text:
        return prefer
    known = [t for t, s in a.vocab.items() if s == text]
    if len(known) == 1:
        return known[0]
    return single_token(pair, text)


def default_tokens(a: PromptAnalysis) -> tuple[int, int]:
    """``(answer_id, contrast_id)`` at the last position: the base model's top-1, and the tuned model's top-1 when it
    differs (else the base model's second candidate); ``a.vocab`` has their text."""
    base = [int(t) for t in a.top_ids["base"][-1]]
    tuned_top = int(a.top_ids["tuned"][-1][0])
    contrast = tuned_top if tuned_top != base[0] else (base[1] if len(base) > 1 else base[0])
    return base[0], contrast


__all__ = ["LENS_WINDOW", "ROLES", "LensWindow", "default_tokens", "lens_at", "lens_window", "resolve_token", "single_token", "tracked_logits",
           "window_bounds"]
