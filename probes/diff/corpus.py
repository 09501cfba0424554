"""The streaming pass of dataset-level diffing: one forward pass of each model per batch, every statistic read
from hooks inside those two passes, running sums only (never ``[N, pos, d_vocab]`` or ``[N, pos, d_model]``).

Per batch of ``batch_size`` rows (right-padded, ``attention_mask`` set):

1. base forward with read-only hooks at ``blocks.{l}.hook_resid_post`` and ``blocks.{l}.attn.hook_z`` of every
   layer (kept for this batch only);
2. tuned forward (under ``pair.tuned_context()``, so an intervention on shared weights is attached) whose hooks
   compare each layer with the base's as soon as it is computed: residual and head-output differences
   (:mod:`probes.diff.layers`), the ADL sums (:mod:`probes.diff.adl`), the logit-lens sample (:mod:`probes.diff.lens`);
3. from the two logit tensors, in chunks of rows: per-token KL and its top contexts (:mod:`probes.diff.kl`),
   vocabulary shifts (:mod:`probes.diff.mining`), next-token NLL of each model.

Memory is O(batch · pos · (n_layers · d_model + d_vocab)) for one batch plus O(d_vocab + k · d_model) of sums,
whatever the corpus size; rows are read from the iterable lazily, one batch at a time.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from probes.diff.adl import DeltaAccumulator, default_layer
from probes.diff.kl import KLStats
from probes.diff.layers import LayerStats, check_layer
from probes.diff.lens import LensStats
from probes.diff.mining import TokenShift
from probes.diff.stats import TokenMean
from workbench.architecture import w_o
from workbench.config import NonNegativeInt, PositiveInt, check_fields
from workbench.data import right_pad
from workbench.errors import ConfigError
from workbench.hooked import hooks
from workbench.sites import Site


@dataclass
class DiffSettings:
    """What the streaming pass measures and how it batches.

    Attributes:
        batch_size: rows per forward pass (memory grows with it; the result does not, see module docstring).
        max_length: tokens kept per row (BOS included), the rest truncated.
        layer: the ADL layer (``None``: the reference's ``int(0.5 · (n_layers − 1))``; negative counts from the end).
        adl_positions: ``k``: one mean difference δ_j per token position ``j < k`` (reference: 5); the scale unit n̄
            is the tuned model's mean residual norm over positions ≥ k.
        top_k_contexts, context_window: top-KL positions kept, and tokens of context on each side.
        top_k_tokens: tokens listed per diff-mining ranking.
        lens_token_stride: the logit lens of every layer reads every ``lens_token_stride``-th real token of each
            batch (row-major, from the ``(stride-1)//2``-th; at least one per batch; 1 = all). The lens costs one unembedding per layer per position read
            (on SmolLM2, 30 layers × a 576 × 49152 product ≈ 6 forward passes' worth per token read), so the default
            (128) keeps it near 5% of the two forward passes.
        chunk_positions: positions per chunk when reducing the ``[rows, pos, d_vocab]`` logits (small chunks stay in
            the CPU cache: on SmolLM2, 32 positions reduce ~6× faster than 512).
    """

    batch_size: PositiveInt = 8
    max_length: PositiveInt = 128
    layer: int | None = None
    adl_positions: PositiveInt = 5
    top_k_contexts: NonNegativeInt = 20
    context_window: NonNegativeInt = 12
    top_k_tokens: NonNegativeInt = 20
    lens_token_stride: PositiveInt = 128
    chunk_positions: PositiveInt = 32

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class CorpusDiff:
    """What :func:`diff_corpus` measured: ``metrics`` (JSON-ready) and the ADL differences (tensors):
    ``delta_by_position`` ``[k, d_model]``, ``delta_pooled`` ``[d_model]`` (a labelled extra, never the readout),
    ``mean_tuned_norm`` (n̄, the readouts' scale unit) and ``mean_base_norm`` over positions ≥ k."""

    metrics: dict[str, Any]
    delta_by_position: Tensor
    delta_pooled: Tensor
    mean_tuned_norm: float
    mean_base_norm: float
    base_nll_nats: float
    layer: int
    n_batches: int
    forward_passes: dict[str, int] = field(default_factory=dict)


def token_rows(texts: Iterable[str], tokenizer: Any, max_length: int, prepend_bos: bool) -> Iterable[list[int]]:
    """Each text as token ids (BOS first when ``prepend_bos``), truncated to ``max_length``; texts without tokens
    are skipped. Lazy: reads ``texts`` one at a time."""
    bos = [tokenizer.bos_token_id] if prepend_bos and tokenizer.bos_token_id is not None else []
    for text in texts:
        if not isinstance(text, str):
            raise ConfigError(f"the corpus must be texts (str), got {type(text).__name__}")
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if ids:
            yield (bos + ids)[:max_length]


def _lens_sample(mask: Tensor, stride: int) -> Tensor:
    """Flat indices of every ``stride``-th real position of the batch (row-major), starting at ``(stride - 1) // 2``
    (not at row 0's first token, an attention sink); a batch with fewer real tokens gets its middle one."""
    real = mask.flatten().nonzero().squeeze(-1)
    picked = real[(stride - 1) // 2::stride]
    return picked if picked.numel() or not real.numel() else real[real.numel() // 2:real.numel() // 2 + 1]


@torch.no_grad()
def diff_corpus(pair: Any, texts: Iterable[str], settings: DiffSettings | None = None,
                log: Callable[[str], None] | None = None) -> CorpusDiff:
    """Stream ``texts`` through both models of ``pair`` (a :class:`~workbench.pair.ModelPair`) and measure
    where they differ (see the module docstring; each statistic's definition is in its module).

    Raises:
        ConfigError: an empty corpus (no text with a token), a non-text item, an ADL layer that does not exist,
            or bad settings.
    """
    s = settings or DiffSettings()
    info = pair.base_info
    n_layers, n_heads = info.n_layers, info.n_heads
    layer = check_layer(default_layer(n_layers) if s.layer is None else s.layer, n_layers, "layer")
    tok = pair.tokenizer
    decode = lambda i: tok.decode([i])
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    device = next(pair.base.parameters()).device
    rows = iter(token_rows(texts, tok, s.max_length, pair.prepend_bos))
    first = list(itertools.islice(rows, s.batch_size))
    if not first:
        raise ConfigError("the corpus is empty: no text with at least one token; pass a file with text rows")

    kl, shift = KLStats(top_k=s.top_k_contexts, window=s.context_window, max_positions=s.max_length), TokenShift(info.d_vocab)
    layers, adl = LayerStats(n_layers, n_heads), DeltaAccumulator(s.adl_positions, info.d_model)
    lens = {"base": LensStats(n_layers), "tuned": LensStats(n_layers)}
    nll = {"base": TokenMean(), "tuned": TokenMean()}
    w_base = [w_o(pair.base, l).detach() for l in range(n_layers)]
    with pair.tuned_context():
        w_tuned = [w_o(pair.tuned, l).detach().clone() for l in range(n_layers)]
    passes = {"base": 0, "tuned": 0}
    offset, n_batches = 0, 0
    batch = first
    while batch:
        ids, mask, _ = right_pad(batch, pad)
        ids, mask = ids.to(device), mask.to(device)
        m = mask.bool()
        sel = _lens_sample(m, s.lens_token_stride)
        acts: dict[tuple[str, int], Tensor] = {}

        def keep(kind: str, l: int, acts: dict = acts) -> Callable[[Tensor], None]:
            def fn(x: Tensor) -> None:
                acts[kind, l] = x.detach()
            return fn

        sites = [Site(l, h) for l in range(n_layers) for h in ("hook_resid_post", "attn.hook_z")]
        layers.start_batch()
        with hooks(pair.base, {st: keep(st.hook, st.layer) for st in sites}):
            base_logits = pair.base(input_ids=ids, attention_mask=mask).logits
        passes["base"] += 1
        lens_base = torch.stack([acts["hook_resid_post", l].flatten(0, 1)[sel] for l in range(n_layers)])
        lens["base"].update(pair.base, lens_base, base_logits.flatten(0, 1)[sel])
        lens_tuned: list[Tensor | None] = [None] * n_layers

        def compare(kind: str, l: int, acts: dict = acts, m: Tensor = m, sel: Tensor = sel,
                    lens_tuned: list = lens_tuned) -> Callable[[Tensor], None]:
            def fn(x: Tensor) -> None:
                b = acts.pop((kind, l))
                if kind == "hook_resid_post":
                    layers.add_resid(l, x, b, m)
                    lens_tuned[l] = x.detach().flatten(0, 1)[sel]
                    if l == layer:
                        adl.update(x, b, m)
                else:
                    layers.add_heads(l, x, b, w_tuned[l], w_base[l], m)
            return fn

        with pair.tuned_context():
            with hooks(pair.tuned, {st: compare(st.hook, st.layer) for st in sites}):
                tuned_logits = pair.tuned(input_ids=ids, attention_mask=mask).logits
            passes["tuned"] += 1
            if any(v is None for v in lens_tuned):
                raise RuntimeError("the tuned forward pass did not reach every layer")
            lens["tuned"].update(pair.tuned, torch.stack(lens_tuned), tuned_logits.flatten(0, 1)[sel])
        layers.end_batch(m.cpu())
        acts.clear()

        # logits -> KL, mining, NLL over the real positions only, in chunks, so only one chunk's log-probabilities
        # live at a time; exp() of each side is taken once and shared by KL and the Δprob sums
        b, t = ids.shape
        flat_m = m.flatten()
        real = flat_m.nonzero().squeeze(-1)
        nxt = torch.cat([ids[:, 1:], ids[:, -1:]], 1).flatten()[real]
        has_next = (torch.cat([m[:, 1:], torch.zeros_like(m[:, :1])], 1).flatten() & flat_m)[real]
        kl_flat, zeros = torch.zeros(b * t, device=device), torch.zeros(b * t, dtype=torch.long, device=device)
        top1 = {"base": zeros.clone(), "tuned": zeros.clone()}
        p_next = {"base": torch.zeros(b * t, device=device), "tuned": torch.zeros(b * t, device=device)}
        flat_b, flat_t = base_logits.flatten(0, 1), tuned_logits.flatten(0, 1)
        for c in range(0, real.numel(), s.chunk_positions):
            at = real[c:c + s.chunk_positions]
            lb, lt = flat_b[at].float().log_softmax(-1), flat_t[at].float().log_softmax(-1)
            pb, pt = lb.exp(), lt.exp()
            dl = lt - lb
            kl_flat[at] = (pt * dl).sum(-1).clamp_min(0.0)
            tb, tt = lb.argmax(-1), lt.argmax(-1)
            top1["base"][at], top1["tuned"][at] = tb, tt
            shift.add_sums(pt.sum(0) - pb.sum(0), dl.sum(0), tb, tt)
            hn = has_next[c:c + s.chunk_positions]
            for role, lp in (("base", lb), ("tuned", lt)):
                got = lp.gather(-1, nxt[c:c + s.chunk_positions, None]).squeeze(-1)
                p_next[role][at] = got.exp()
                nll[role].add(-(got * hn).sum().double().cpu(), int(hn.sum()))
            del lb, lt, pb, pt, dl
        del base_logits, tuned_logits, flat_b, flat_t
        shape = lambda x, b=b, t=t: x.view(b, t).cpu()
        kl.update(shape(kl_flat), m.cpu(), ids.cpu(), offset, shape(top1["base"]), shape(top1["tuned"]),
                  shape(p_next["base"]), shape(p_next["tuned"]))
        offset += b
        n_batches += 1
        if log:
            log(f"      batch {n_batches}: {offset} rows, mean KL so far {kl.tokens.mean():.4g} nats/token")
        batch = list(itertools.islice(rows, s.batch_size))

    a = adl.result()
    base_nll = nll["base"].mean()
    metrics = {
        "n_rows": offset, "n_tokens": kl.result()["n_tokens"], "n_batches": n_batches, "layers": n_layers, "heads": n_heads,
        "kl": kl.result(decode), "mining": shift.result(s.top_k_tokens, decode), "layer_diff": layers.result(),
        "logit_lens": {"base": lens["base"].result(), "tuned": lens["tuned"].result(),
                       "statistics": {"top1_agreement": "share of sampled positions whose lens top-1 equals the model's final top-1",
                                      "kl_to_final": "mean KL(P_final ‖ P_lens) over sampled positions (nats)",
                                      "lens_token_stride": s.lens_token_stride}},
        "nll": {"base_nats_per_token": base_nll, "tuned_nats_per_token": nll["tuned"].mean()},
        "adl": {"layer": layer, "positions": s.adl_positions, "position_0": "BOS" if pair.prepend_bos else "first text token",
                "n_by_position": a["n_by_position"], "delta_norm_by_position": a["delta_norm_by_position"],
                "split_half_cosine": a["split_half_cosine"], "mean_tuned_norm": a["mean_tuned_norm"],
                "mean_base_norm": a["mean_base_norm"], "pooled_delta_norm": float(a["delta_pooled"].norm())},
        "forward_passes": passes,
    }
    return CorpusDiff(metrics, a["delta_by_position"].float(), a["delta_pooled"].float(), float(a["mean_tuned_norm"]),
                      float(a["mean_base_norm"]), float(base_nll), layer, n_batches, passes)
