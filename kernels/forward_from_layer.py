"""Run a Hugging Face decoder from decoder layer ``first`` on, given the residual stream entering that layer.

Layer-prefix sharing in exact patching (:mod:`probes.shared_prefix`): a variant that patches nothing below layer
``l`` has the clean (target) run's residual stream entering layer ``l``, so layers ``0..l-1`` need not run again.
:func:`run_from_layer` runs only layers ``first..`` plus the final norm and the unembedding, reusing the model's own
forward for everything else — masks (full and sliding-window), rotary position embeddings per layer type, the final
logit soft-cap, ``logits_to_keep`` — so nothing architecture-specific is re-implemented here. It does so by standing a
no-op module in for each decoder layer below ``first`` (which hands on ``hidden`` and touches no cache) for the
duration of one call, and feeding ``hidden`` as ``inputs_embeds``. Hooks registered on decoder layers ``first..`` (or
their submodules) fire as usual, those on the input of layer ``first`` included (so ``hidden`` is the stream as layer
``first - 1`` hands it on, before them); hooks on the layers below do not fire (their effect is already in ``hidden``).

With a key/value ``cache`` the call runs positions after the cached ones (Hugging Face semantics). Layers ``first..``
of the cache must hold the keys / values of the cached positions; layers below are never read for attention, only
for sizes (the mask and position ids come from the cache length), so they may hold an untiled batch.

Eager reference: :func:`run_from_layer_reference`, the model's full forward with a hook that replaces the input of
layer ``first`` by ``hidden`` (layers below compute and are overwritten); ``tests/test_kernels_forward_from_layer.py``
checks both agree on tiny Llama, Qwen2, Mistral and Gemma 3 models (sliding windows, embedding scaling, soft-cap),
with and without a cache. Speed: ``studies/benchmarks/shared_prefix.py``.

Supported: the Hugging Face families in :data:`SUPPORTED_MODEL_TYPES` as transformers 5 writes them (the decoder
loop ``for layer in self.layers[:n]: hidden = layer(hidden, ...)`` with tensor outputs and embedding scaling inside
the embedding module). :func:`supports` is False for anything else (including a TransformerBridge-booted model);
callers then run the full forward.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from jaxtyping import Float, Int
from torch import Tensor, nn

from workbench.architecture import text_config, unwrap
from workbench.errors import ConfigError
from workbench.hooked import hooks
from workbench.sites import Site

#: ``config.model_type`` of the text decoders whose transformers-5 forward this runner was checked against.
SUPPORTED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"})


def _layers(model: nn.Module) -> nn.ModuleList | None:
    layers = getattr(getattr(model, "model", None), "layers", None)
    return layers if isinstance(layers, nn.ModuleList) else None


def supports(model: nn.Module) -> bool:
    """Whether :func:`run_from_layer` can run ``model``: a plain (not bridge-wrapped) Hugging Face causal LM of a
    family in :data:`SUPPORTED_MODEL_TYPES` with its decoder layers at ``model.model.layers``."""
    if unwrap(model) is not model or _layers(model) is None:
        return False
    layers = _layers(model)
    if any(unwrap(layer) is not layer for layer in layers):
        return False
    try:
        model_type = text_config(model).model_type
    except AttributeError:
        return False
    return model_type in SUPPORTED_MODEL_TYPES


class _Handover(nn.Module):
    """Stands in for a decoder layer below ``first``: returns the given residual stream, computes nothing."""

    def __init__(self, hidden: Tensor) -> None:
        super().__init__()
        self.hidden = hidden

    def forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return self.hidden


@contextmanager
def layers_skipped(model: nn.Module, first: int, hidden: Float[Tensor, "batch pos d_model"]) -> Iterator[None]:
    """Inside the block, decoder layers ``0..first-1`` of ``model`` are replaced by modules that return ``hidden``
    (restored on exit, also on error). Not thread-safe: the model is changed in place for the block's duration.

    Raises:
        ConfigError: ``model`` is not supported (:func:`supports`) or ``first`` is not a layer index.
    """
    _check(model, first)
    layers = _layers(model)
    originals = [layers[i] for i in range(first)]
    stand_in = _Handover(hidden)
    try:
        for i in range(first):
            layers[i] = stand_in
        yield
    finally:
        for i, layer in enumerate(originals):
            layers[i] = layer


def _check(model: nn.Module, first: int) -> None:
    if not supports(model):
        raise ConfigError(f"{type(model).__name__}: the prefix runner supports plain Hugging Face "
                          f"{sorted(SUPPORTED_MODEL_TYPES)} decoders; run the full forward instead")
    n = len(_layers(model))
    if isinstance(first, bool) or not isinstance(first, int) or not 0 <= first < n:
        raise ConfigError(f"first layer must be in 0..{n - 1}, got {first!r}")


def run_from_layer(model: nn.Module, hidden: Float[Tensor, "batch pos d_model"], first: int, *, cache: Any = None,
                   cache_argument: str = "cache", logits_to_keep: int = 1) -> Float[Tensor, "batch keep d_vocab"]:
    """``model``'s logits when the residual stream entering decoder layer ``first`` is ``hidden``; layers below
    ``first`` are not run.

    Args:
        hidden: ``[batch, pos, d_model]`` in the model's dtype and device — ``blocks.{first}.hook_resid_pre`` at the
            positions after the cached ones (all positions without a cache). For ``first == 0`` it is the scaled
            embedding (what the embedding module returns).
        cache: a transformers ``Cache`` whose layers ``first..`` hold the cached positions for this batch; it is
            updated in place (pass a copy to keep the original).
        cache_argument: the forward's name for the cache (``"cache"`` in transformers 5).
        logits_to_keep: as in transformers: the last ``logits_to_keep`` positions (0 keeps all).

    Returns:
        the logits ``[batch, logits_to_keep, d_vocab]`` (unembedding and any soft-cap applied, model dtype).

    Raises:
        ConfigError: as :func:`layers_skipped`, or ``hidden`` not ``[batch, pos, d_model]``.
    """
    _check(model, first)
    d_model = int(text_config(model).hidden_size)
    if hidden.ndim != 3 or hidden.shape[-1] != d_model:
        raise ConfigError(f"hidden must be [batch, pos, {d_model}], got {tuple(hidden.shape)}")
    kw = {} if cache is None else {cache_argument: cache, "use_cache": True}
    with layers_skipped(model, first, hidden):
        return model(inputs_embeds=hidden, logits_to_keep=logits_to_keep, **kw).logits


def run_from_layer_reference(model: nn.Module, input_ids: Int[Tensor, "batch pos"],
                             hidden: Float[Tensor, "batch pos d_model"], first: int, *, cache: Any = None,
                             cache_argument: str = "cache", logits_to_keep: int = 1) -> Float[Tensor, "batch keep d_vocab"]:
    """Eager reference of :func:`run_from_layer`: the full forward on ``input_ids`` (on top of ``cache``) with the
    input of layer ``first`` replaced by ``hidden``; every layer runs. Same arguments and result."""
    kw = {} if cache is None else {cache_argument: cache, "use_cache": True}
    with hooks(model, {Site(first, "hook_resid_pre"): lambda x: hidden.to(x.dtype)}):
        return model(input_ids=input_ids, logits_to_keep=logits_to_keep, **kw).logits
