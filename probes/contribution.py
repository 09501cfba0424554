"""Tuning contribution (TuCo): split a fine-tuned model's forward pass into pre-training and fine-tuning parts.

Source: Nuti, Franzmeyer, Henriques, "TuCo: Measuring the Contribution of Fine-Tuning to Individual
Responses of LLMs", ICML 2025 (§3 decomposition, Algorithm 1, §5 scaling the fine-tuning component).

Along the *tuned* model's forward pass, with ``x_l`` the residual stream entering decoder layer ``l``
and ``f_l(x) = layer_l(x) − x`` a layer's residual update::

    PTC_l = f_base,l(x_l)          FTC_l = f_tuned,l(x_l) − f_base,l(x_l)

Component 0 is the embedding (``PTC_0`` = the base model's input to layer 0, ``FTC_0`` = tuned minus
base), so the decomposition is exact: the tuned final residual (the input of the final norm) is
``x_L = Σ_c PTC_c + Σ_c FTC_c`` over the ``n_layers + 1`` components. Component ``c = l + 1`` is decoder
layer ``l``. The paper's Algorithm 1 sums decoder layers only (``x_0`` in neither sum); :func:`tuco`
includes the embedding by default and gives the paper's variant with ``include_embedding=False``.

**TuCo** = ‖Σ FTC‖ / (‖Σ PTC‖ + ‖Σ FTC‖) at each prompt's last real token (∈ [0, 1]; 0 for identical
models).

**α-scaling** (:func:`alpha_forward`) runs ``x_{l+1} = x_l + PTC_l + α·FTC_l`` layer by layer (and
``x_0 = PTC_0 + α·FTC_0``). The readout (final norm + ``lm_head``) is treated the same way, as one more
component: ``logits = U_base(x_L) + α·(U_tuned(x_L) − U_base(x_L))``. Where the two readouts are
identical (LoFiT, LoRA on attention/MLP, any method that leaves them alone) this is just
``U_tuned(x_L)``; where they differ (full fine-tuning) it is the only choice that makes α = 0 give the
base model's logits and α = 1 the tuned model's, continuously in α. The readout is not part of TuCo.

Both models must be plain Hugging Face causal LMs (Llama / Qwen2 / Gemma / Mistral style); turn an
:class:`~workbench.intervention.Intervention` into one with :func:`tuned_from_intervention`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from workbench.architecture import decoder_layers, final_norm, readout, unembedding, unwrap
from workbench.data import as_attention_mask, as_token_ids
from workbench.errors import ConfigError, MismatchError
from workbench.hooked import module_hooks, record
from workbench.sites import Site

@dataclass
class Decomposition:
    """Per-component pre-training / fine-tuning contributions of one batch.

    Attributes:
        ptc: ``Float[Tensor, "n_components batch pos d_model"]`` in the ``dtype`` given to :func:`decompose`
            (float32 by default); component 0 = embedding, component ``l + 1`` = decoder layer ``l``.
        ftc: same shape; ``ptc.sum(0) + ftc.sum(0)`` is the tuned final residual (before the final norm).
        last_pos: ``Int[Tensor, "batch"]`` index of each prompt's last real token (from the attention mask).
        final_residual: ``Float[Tensor, "batch pos d_model"]`` the tuned model's final residual as its own
            forward pass computed it (the final norm's input); :meth:`residual` reconstructs it.

    Memory: ``2 · (n_layers + 1) · batch · pos · d_model`` elements (SmolLM2-135M, 16 prompts of 25 tokens,
    float32: 57 MiB). :func:`tuco` keeps only the sums and is the cheap path for large batches.
    """

    ptc: Tensor
    ftc: Tensor
    last_pos: Tensor
    final_residual: Tensor

    @property
    def n_layers(self) -> int:
        return self.ptc.shape[0] - 1

    def residual(self) -> Float[Tensor, "batch pos d_model"]:
        """Σ PTC + Σ FTC: the tuned model's final residual stream (input of the final norm)."""
        return self.ptc.sum(0) + self.ftc.sum(0)

    def reconstruction_error(self) -> float:
        """max |Σ PTC + Σ FTC − x_L| over all positions (residual-stream units; 0 up to rounding)."""
        return float((self.residual() - self.final_residual.to(self.ptc.dtype)).abs().max())

    def layer(self, layer: int) -> tuple[Float[Tensor, "batch pos d_model"], Float[Tensor, "batch pos d_model"]]:
        """``(PTC_l, FTC_l)`` of decoder layer ``layer`` (0-based; the embedding is :meth:`embedding`).

        Raises:
            ConfigError: ``layer`` outside ``0..n_layers-1``.
        """
        _check_layers([layer], self.n_layers)
        return self.ptc[layer + 1], self.ftc[layer + 1]

    def embedding(self) -> tuple[Float[Tensor, "batch pos d_model"], Float[Tensor, "batch pos d_model"]]:
        """``(PTC_0, FTC_0)``: the base embedding and tuned − base embedding."""
        return self.ptc[0], self.ftc[0]

    def at_last(self) -> tuple[Float[Tensor, "n_components batch d_model"], Float[Tensor, "n_components batch d_model"]]:
        """PTC and FTC of every component at each prompt's last real token."""
        idx = self.last_pos.to(self.ptc.device)[None, :, None, None].expand(self.ptc.shape[0], -1, 1, self.ptc.shape[-1])
        return self.ptc.gather(2, idx).squeeze(2), self.ftc.gather(2, idx).squeeze(2)

    def tuco(self, include_embedding: bool = True) -> Float[Tensor, "batch"]:
        """TuCo per prompt at its last real token (see module docstring)."""
        ptc, ftc = self.at_last()
        start = 0 if include_embedding else 1
        return tuco_from_sums(ptc[start:].sum(0), ftc[start:].sum(0))

    def ftc_norms(self) -> Float[Tensor, "n_components batch"]:
        """‖FTC_c‖₂ per component at the last real token (residual-stream units)."""
        return self.at_last()[1].norm(dim=-1)

    def ptc_norms(self) -> Float[Tensor, "n_components batch"]:
        """‖PTC_c‖₂ per component at the last real token (residual-stream units)."""
        return self.at_last()[0].norm(dim=-1)


def tuco_from_sums(ptc_sum: Float[Tensor, "*batch d_model"], ftc_sum: Float[Tensor, "*batch d_model"]) -> Float[Tensor, "*batch"]:
    """‖Σ FTC‖ / (‖Σ PTC‖ + ‖Σ FTC‖) as float32, computed in float32 or float64; 0 where both norms are 0."""
    wide = torch.float64 if torch.float64 in (ptc_sum.dtype, ftc_sum.dtype) else torch.float32
    f = ftc_sum.to(wide).norm(dim=-1)
    p = ptc_sum.to(wide).norm(dim=-1)
    den = p + f
    return torch.where(den > 0, f / den.clamp_min(torch.finfo(wide).tiny), torch.zeros_like(f)).float()


# --- validation -----------------------------------------------------------------------------------
def _check_alpha(alpha: Any) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(float(alpha)):
        raise ConfigError(f"alpha must be a finite number (0 = base model, 1 = tuned model), got {alpha!r}")
    return float(alpha)


def _check_layers(layers: Sequence[int], n_layers: int) -> None:
    bad = [l for l in layers if isinstance(l, bool) or not isinstance(l, int) or not 0 <= l < n_layers]
    if bad:
        raise ConfigError(f"layer index {bad} out of range: the models have decoder layers 0..{n_layers - 1}")


def check_pair(base: nn.Module, tuned: nn.Module) -> int:
    """Check that ``tuned`` can be decomposed against ``base``; return the number of decoder layers.

    Raises:
        MismatchError: different layer counts, d_model, vocabulary size or attention implementation.
        ConfigError: a model whose decoder layers cannot be found.
    """
    lb, lt = decoder_layers(base), decoder_layers(tuned)
    cb, ct = unwrap(base).config, unwrap(tuned).config
    problems = []
    if len(lb) != len(lt):
        problems.append(f"{len(lb)} vs {len(lt)} decoder layers")
    for key in ("hidden_size", "vocab_size"):
        if getattr(cb, key, None) != getattr(ct, key, None):
            problems.append(f"{key} {getattr(cb, key, None)} vs {getattr(ct, key, None)}")
    ab, at = getattr(cb, "_attn_implementation", None), getattr(ct, "_attn_implementation", None)
    if ab != at:
        problems.append(f"attention implementation {ab!r} vs {at!r} (load both the same way, e.g. eager)")
    if problems:
        raise MismatchError(
            "base and tuned cannot be decomposed layer by layer: " + "; ".join(problems)
            + ". The tuned model must be a fine-tuned copy of the base (same architecture and shapes)."
        )
    return len(lb)


# --- the hooked forward ---------------------------------------------------------------------------
def _first(value: Any) -> Tensor:  # a decoder layer returns a tensor (transformers 5) or a tuple (older)
    return value if isinstance(value, Tensor) else value[0]


def _hidden(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _base_embedding(base: nn.Module, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
    """The base model's input to its first decoder layer (embedding, plus any scaling the model does);
    the forward pass stops there."""
    site = Site(0, "hook_resid_pre")
    with record(base, [site], stop=True) as rec:
        base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return rec[site]


def _readouts_equal(base: nn.Module, tuned: nn.Module) -> bool:
    pairs = [(final_norm(base), final_norm(tuned)), (unembedding(base), unembedding(tuned))]
    for mb, mt in pairs:
        pb, pt = dict(mb.named_parameters()), dict(mt.named_parameters())
        if pb.keys() != pt.keys() or any(not torch.equal(pb[k], pt[k]) for k in pb):
            return False
    return True


def _inputs(base: nn.Module, input_ids: Any, attention_mask: Any) -> tuple[Tensor, Tensor | None]:
    """The public functions' ids and mask as tensors (:func:`workbench.data.as_token_ids`; lists welcome).
    Ids beyond the vocabulary are left to the embedding (its IndexError exercises the hooks' cleanup in tests)."""
    ids = as_token_ids(input_ids, "input_ids")
    return ids, None if attention_mask is None else as_attention_mask(attention_mask)


def _last_positions(input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
    if input_ids.ndim != 2 or input_ids.numel() == 0:
        raise ConfigError(f"input_ids must be a non-empty Int[Tensor, 'batch pos'], got shape {tuple(input_ids.shape)}")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ConfigError(f"attention_mask shape {tuple(attention_mask.shape)} differs from input_ids {tuple(input_ids.shape)}")
    if attention_mask is None:
        return torch.full((input_ids.shape[0],), input_ids.shape[1] - 1, dtype=torch.long)
    pos = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    if bool((attention_mask.sum(1) == 0).any()):
        raise ConfigError("attention_mask has a row with no real token; drop empty prompts")
    return (pos[None, :] * (attention_mask != 0)).amax(1).cpu()


@torch.no_grad()
def _run(base: nn.Module, tuned: nn.Module, input_ids: Tensor, attention_mask: Tensor | None, alpha: float,
         record: str, layers: Sequence[int] | None = None, dtype: torch.dtype = torch.float32,
         logits_to_keep: int = 0) -> tuple[Tensor, dict[str, Any]]:
    """Run the tuned model with the base layers evaluated alongside. Returns the logits and a record:
    "ptc"/"ftc" per-component lists (``record="full"``) or "ptc_sum"/"ftc_sum"/"ptc_0"/"ftc_0" ("sums"),
    and always "x_L" (the final norm's input)."""
    n_layers = check_pair(base, tuned)
    scaled = set(range(n_layers)) if layers is None else set(layers)
    _check_layers(sorted(scaled), n_layers)
    scale_ends = layers is None  # embedding and readout follow α only when all layers do
    device = next(unwrap(tuned).parameters()).device
    input_ids, attention_mask = input_ids.to(device), None if attention_mask is None else attention_mask.to(device)
    rec: dict[str, Any] = {"ptc": [], "ftc": []}

    def keep(ptc: Tensor, ftc: Tensor) -> None:
        if record == "full":
            rec["ptc"].append(ptc), rec["ftc"].append(ftc)
        elif record == "sums":
            rec["ptc_sum"] = rec.get("ptc_sum", 0) + ptc
            rec["ftc_sum"] = rec.get("ftc_sum", 0) + ftc

    base_layers, tuned_layers = decoder_layers(base), decoder_layers(tuned)
    e_base = _base_embedding(base, input_ids, attention_mask)
    busy = [False]  # re-entrancy guard: base and tuned may be the very same module

    def embed_hook(_mod: nn.Module, args: tuple, kwargs: dict) -> Any:
        if busy[0]:
            return None
        e_tuned = _hidden(args, kwargs)
        ftc = e_tuned.to(dtype) - e_base.to(dtype)
        keep(e_base.to(dtype), ftc)
        if record == "sums":
            rec["ptc_0"], rec["ftc_0"] = e_base.to(dtype), ftc
        a = alpha if scale_ends else 1.0
        if a == 1.0:
            return None
        x0 = e_base + a * (e_tuned - e_base)
        return ((x0, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": x0})

    def layer_hook(index: int):
        def hook(_mod: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            if busy[0]:
                return None
            x = _hidden(args, kwargs)
            busy[0] = True
            try:
                y_base = _first(base_layers[index](*args, **kwargs))
            finally:
                busy[0] = False
            y_tuned = _first(output)
            if record != "none":
                keep(y_base.to(dtype) - x.to(dtype), y_tuned.to(dtype) - y_base.to(dtype))
            a = alpha if index in scaled else 1.0
            if a == 1.0:
                return None
            new = y_base + a * (y_tuned - y_base)
            return new if isinstance(output, Tensor) else (new, *output[1:])

        return hook

    def norm_hook(_mod: nn.Module, args: tuple, kwargs: dict) -> None:
        if not busy[0]:
            rec["x_L"] = _hidden(args, kwargs)

    with module_hooks(pre=[(tuned_layers[0], embed_hook), (final_norm(tuned), norm_hook)],
                      post=[(layer, layer_hook(i)) for i, layer in enumerate(tuned_layers)], with_kwargs=True):
        logits = tuned(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=logits_to_keep).logits
    a = alpha if scale_ends else 1.0
    if a != 1.0 and not _readouts_equal(base, tuned):
        x_final = rec["x_L"][:, -logits_to_keep:] if logits_to_keep else rec["x_L"]
        base_logits = readout(base, x_final)
        logits = base_logits + a * (logits - base_logits)
    return logits, rec


# --- public API -----------------------------------------------------------------------------------
def decompose(base: nn.Module, tuned: nn.Module, input_ids: Int[Tensor, "batch pos"],
              attention_mask: Int[Tensor, "batch pos"] | None = None, dtype: torch.dtype = torch.float32) -> Decomposition:
    """Decompose the tuned model's forward pass into per-component PTC and FTC (Nuti et al. 2025, §3).

    Args:
        base: the pre-trained model (plain Hugging Face causal LM, eval mode).
        tuned: the fine-tuned model (same architecture; may be the same object as ``base``).
        input_ids: token ids; pad on either side and pass ``attention_mask`` (1 = real token).
        attention_mask: optional mask; the last real token of each row is where TuCo is read.
        dtype: dtype the components are computed and stored in. Each component is a difference of two
            activations taken in this dtype; ``torch.float64`` makes them exact differences of the fp32
            activations, so Σ PTC + Σ FTC reproduces x_L to ~1e-12 relative (float32: ~1e-6 relative).

    Returns:
        A :class:`Decomposition` with ``ptc``/``ftc`` of shape ``[n_layers + 1, batch, pos, d_model]``.

    Raises:
        MismatchError: the models differ in layer count, d_model, vocabulary or attention implementation.
        ConfigError: an architecture without ``model.layers`` / ``model.norm``, or an all-padding row.
    """
    input_ids, attention_mask = _inputs(base, input_ids, attention_mask)
    last = _last_positions(input_ids, attention_mask)
    _, rec = _run(base, tuned, input_ids, attention_mask, 1.0, "full", dtype=dtype, logits_to_keep=1)
    return Decomposition(torch.stack(rec["ptc"]), torch.stack(rec["ftc"]), last, rec["x_L"])


def tuco(base: nn.Module, tuned: nn.Module, input_ids: Int[Tensor, "batch pos"],
         attention_mask: Int[Tensor, "batch pos"] | None = None, include_embedding: bool = True,
         dtype: torch.dtype = torch.float32) -> Float[Tensor, "batch"]:
    """Tuning contribution per prompt, ‖Σ FTC‖ / (‖Σ PTC‖ + ‖Σ FTC‖) at the last real token (∈ [0, 1]).

    Keeps only running sums (memory ``O(batch · pos · d_model)``). ``include_embedding=False`` leaves
    component 0 out of both sums, as in the paper's Algorithm 1.

    Raises:
        MismatchError, ConfigError: as :func:`decompose`.
    """
    input_ids, attention_mask = _inputs(base, input_ids, attention_mask)
    last = _last_positions(input_ids, attention_mask)
    _, rec = _run(base, tuned, input_ids, attention_mask, 1.0, "sums", dtype=dtype, logits_to_keep=1)
    rows = torch.arange(input_ids.shape[0])
    ptc, ftc = rec["ptc_sum"], rec["ftc_sum"]
    if not include_embedding:
        ptc, ftc = ptc - rec["ptc_0"], ftc - rec["ftc_0"]
    return tuco_from_sums(ptc[rows, last.to(ptc.device)], ftc[rows, last.to(ftc.device)])


def alpha_forward(base: nn.Module, tuned: nn.Module, input_ids: Int[Tensor, "batch pos"], alpha: float,
                  attention_mask: Int[Tensor, "batch pos"] | None = None,
                  layers: Sequence[int] | None = None, logits_to_keep: int = 0) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits of the forward pass with the fine-tuning component scaled by ``alpha`` (paper §5).

    ``x_0 = PTC_0 + α·FTC_0``, ``x_{l+1} = x_l + PTC_l + α·FTC_l`` for every decoder layer, and the
    readout ``U_base(x_L) + α·(U_tuned(x_L) − U_base(x_L))`` (see module docstring). α = 0 reproduces the
    base model's logits and α = 1 the tuned model's; α > 1 amplifies the fine-tuning component.

    Args:
        layers: scale FTC only at these decoder layers (0-based); every other component, the embedding
            and the readout keep α = 1 (tuned). ``None`` (default) scales all of them.
        logits_to_keep: return logits for the last this-many positions only (``0`` = all, as in
            transformers); ``1`` skips most of the ``lm_head`` cost when only the next token matters.

    Raises:
        ConfigError: a non-finite ``alpha``, or a layer index out of range.
        MismatchError: as :func:`decompose`.
    """
    alpha = _check_alpha(alpha)
    input_ids, attention_mask = _inputs(base, input_ids, attention_mask)
    _last_positions(input_ids, attention_mask)  # validates the shapes
    if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, int) or logits_to_keep < 0:
        raise ConfigError(f"logits_to_keep must be an int >= 0 (0 = all positions), got {logits_to_keep!r}")
    logits, _ = _run(base, tuned, input_ids, attention_mask, alpha, "none", layers=layers, logits_to_keep=logits_to_keep)
    return logits


def tuned_from_intervention(base: nn.Module, intervention: Any) -> nn.Module:
    """A plain tuned model: a deep copy of ``base`` with ``intervention`` merged into its weights (exact
    for LoFiT, full fine-tuning, ...). ``base`` is left unchanged.

    Raises:
        ConfigError: the intervention's method has no exact merge (use its ``attach`` for logits instead).
    """
    tuned = copy.deepcopy(base)
    try:
        intervention.merge_into(tuned)
    except NotImplementedError as exc:
        raise ConfigError(
            f"{type(intervention).__name__} cannot be merged into weights, so TuCo has no plain tuned model "
            "to compare; use a method with an exact merge (LoFiT, full fine-tuning) or export it first"
        ) from exc
    return tuned.eval()
