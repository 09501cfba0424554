"""Hooked models: Site -> Hugging Face module (our hook path), TransformerBridge and nnsight wrappers.

Two ways to act on a model, both addressed by :class:`~workbench.sites.Site`:

* **Our hook path** (:func:`add_hook`): a plain PyTorch hook on the Hugging Face module that carries the
  Site's activation (``attn.hook_z`` is the input of ``o_proj``, ``mlp.hook_post`` the input of
  ``down_proj``, ``hook_resid_post`` the output of a decoder layer, ...). It is what training uses: one
  hook per touched module, nothing else in the forward pass changes.
* **Hook scopes** (:func:`hooks`, :func:`record`, :func:`module_hooks`): context managers over a
  ``contextlib.ExitStack`` that register hooks and always remove them, also when the body raises. They are
  the only code that registers hooks; nobody keeps a handle by hand. Architecture lookups (layers, final
  norm, unembedding, ``W_O``, :class:`~workbench.architecture.Dims`) live in :mod:`workbench.architecture`.
* **TransformerLens** (:func:`to_bridge`): ``TransformerBridge.boot_transformers`` wraps the same
  Hugging Face model for ``run_with_cache`` and TransformerLens hook names. Booting a bridge replaces
  submodules of the Hugging Face model in place with bridge components that call the originals;
  :func:`resolve_module` unwraps them, so our hooks keep working on a bridged model.
* **nnsight** (:func:`to_nnsight`): ``nnsight.TransformersModel`` for tracing (and remote execution of
  large models).

Attention path: models load with SDPA (:func:`workbench.models.load_model`); none of the Sites above needs the
attention pattern, so training and every hook of this module run on the fused kernel. Code that reads
``attn.hook_pattern`` runs inside :func:`eager_attention` (or boots a bridge, which switches to eager for good).

Devices: with a model split by ``device_map`` each layer runs on its own device; a hook receives the activation
there, and :func:`add_hook` hands back a replacement on that same device whatever device ``fn`` computed it on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from workbench.architecture import (
    Dims,
    decoder_layers,
    head_dim,
    unwrap,
)
from workbench.errors import ConfigError
from workbench.sites import HEAD_HOOKS, Site

ActivationFn = Callable[[Tensor], Tensor | None]
#: ``{site: fn}`` or ``[(site, fn), ...]`` (the list form may name one Site twice).
SiteHooks = Mapping[Site, ActivationFn] | Iterable[tuple[Site, ActivationFn]]


#: TransformerLens hook -> (submodule of a decoder layer, "input" or "output" of it).
SITE_MODULES: dict[str, tuple[str, str]] = {
    "attn.hook_z": ("self_attn.o_proj", "input"),
    "mlp.hook_post": ("mlp.down_proj", "input"),
    "hook_resid_pre": ("", "input"),
    "hook_resid_post": ("", "output"),
    "hook_attn_out": ("self_attn", "output"),
    "hook_mlp_out": ("mlp", "output"),
    "attn.hook_q": ("self_attn.q_proj", "output"),
    "attn.hook_k": ("self_attn.k_proj", "output"),
    "attn.hook_v": ("self_attn.v_proj", "output"),
}


def resolve_module(model: nn.Module, site: Site) -> tuple[nn.Module, str]:
    """Map a Site to ``(module, kind)`` where kind is ``"input"`` or ``"output"`` of that module.

    On a bridged model the module returned is the bridge component (e.g. the ``LinearBridge`` around
    ``o_proj``): a hook on its input runs before the bridge's own hook point, so the bridge's cache of
    ``blocks.{l}.attn.hook_z`` / ``mlp.hook_post`` / ``hook_resid_pre`` shows the intervened activation.
    For output sites the bridge's cache of that same hook shows the value before our change; everything
    downstream sees the change. Use :func:`workbench.architecture.unwrap` to reach the Hugging Face module (e.g. for weights).

    Raises:
        ConfigError: the layer does not exist or the module is missing.
    """
    layers = decoder_layers(model)
    if site.layer >= len(layers):
        raise ConfigError(f"{site}: layer {site.layer} does not exist (model has layers 0..{len(layers) - 1})")
    layer = layers[site.layer]
    path = SITE_MODULES[site.hook]
    module = layer
    for part in filter(None, path[0].split(".")):
        child = getattr(unwrap(module), part, None)
        if not isinstance(child, nn.Module):
            raise ConfigError(f"{site}: {type(unwrap(layer)).__name__} has no submodule {path[0]!r}")
        module = child
    return module, path[1]


def _swap_first(value: Any, new: Tensor) -> Any:
    if isinstance(value, Tensor):
        return new
    if isinstance(value, tuple):
        return (new, *value[1:])
    raise TypeError(f"cannot replace activation inside {type(value).__name__}")


def _first(value: Any) -> Tensor:
    return value if isinstance(value, Tensor) else value[0]


def _on(out: Tensor, x: Tensor) -> Tensor:
    """``out`` on ``x``'s device (a no-op when it is there already): a hook's replacement stays where the layer runs."""
    return out if out.device == x.device else out.to(x.device)


def _selected(model: nn.Module, site: Site, fn: ActivationFn) -> ActivationFn:
    """``fn`` restricted to the slice ``site`` selects (see :func:`add_hook`); ``fn`` itself when it selects nothing."""
    if site.head is None and site.neuron is None and site.pos is None:
        return fn
    if isinstance(site.pos, str):
        raise ConfigError(f"{site}: a named position cannot be resolved by a hook scope; pass an integer pos, or use "
                          "probes.patching (which takes the per-prompt positions)")
    dims = Dims.of(model)
    site.validate(dims.n_layers, dims.n_heads, dims.d_mlp, dims.n_kv_heads)

    def index(x: Tensor) -> tuple:
        if site.pos is not None and not -x.shape[1] <= site.pos < x.shape[1]:
            raise ConfigError(f"{site}: position {site.pos} out of range for {x.shape[1]} positions")
        pos = slice(None) if site.pos is None else site.pos
        if site.head is not None:
            return (slice(None), pos, site.head)
        if site.neuron is not None:
            return (slice(None), pos, site.neuron)
        return (slice(None), pos)

    def sliced(x: Tensor) -> Tensor | None:
        at = index(x)
        out = fn(x[at])
        if out is None:
            return None
        y = x.clone()
        y[at] = out.to(device=x.device, dtype=x.dtype)
        return y

    return sliced


def add_hook(model: nn.Module, site: Site, fn: ActivationFn, n_heads: int | None = None) -> RemovableHandle:
    """Register ``fn`` on the module carrying ``site``'s activation; return the removable handle.

    ``fn`` receives the activation in the Site's TransformerLens layout (``attn.hook_z`` / ``hook_q`` as
    ``Float[Tensor, "batch pos n_heads d_head"]``, ``attn.hook_k`` / ``hook_v`` with ``n_kv_heads``, residual sites as ``"batch pos d_model"``,
    ``mlp.hook_post`` as ``"batch pos d_mlp"``) and returns a replacement of the same shape, or ``None``
    to leave it unchanged (a read-only hook). Callers use the scopes :func:`hooks` / :func:`record` (or
    :meth:`Intervention.attach`), which guarantee removal; nobody keeps the handle by hand.

    A Site that selects (``head=``, ``neuron=``, an integer ``pos=``) hands ``fn`` only the selected slice —
    ``Float[Tensor, "batch pos d_head"]`` for one head, ``"batch pos"`` for one neuron, ``"batch ... "`` without the
    position axis for one position, the selections combined — and ``fn``'s replacement of that slice is written back
    into a copy of the activation; the rest is untouched.

    Raises:
        ConfigError: unknown layer / module, ``n_heads`` missing for an ``attn.hook_z`` site, a head or neuron out of
            range for the model, or a named position (``pos="query_label"``: only the patching probes resolve those).
    """
    module, kind = resolve_module(model, site)
    fn = _selected(model, site, fn)
    if site.hook in HEAD_HOOKS:
        split = (n_heads, -1) if n_heads is not None and site.hook == "attn.hook_z" else (-1, head_dim(model))

        def to_site(x: Tensor) -> Tensor:
            return x.unflatten(-1, split)

        def from_site(x: Tensor) -> Tensor:
            return x.flatten(-2)
    else:
        to_site = from_site = lambda x: x  # noqa: E731

    if kind == "input":
        def pre_hook(_mod: nn.Module, args: tuple, kwargs: dict) -> Any:
            if args:
                out = fn(to_site(args[0]))
                return None if out is None else ((from_site(_on(out, args[0])), *args[1:]), kwargs)
            x = kwargs["hidden_states"]
            out = fn(to_site(x))
            return None if out is None else (args, {**kwargs, "hidden_states": from_site(_on(out, x))})

        return module.register_forward_pre_hook(pre_hook, with_kwargs=True)

    def post_hook(_mod: nn.Module, _args: tuple, output: Any) -> Any:
        x = _first(output)
        out = fn(to_site(x))
        return None if out is None else _swap_first(output, from_site(_on(out, x)))

    return module.register_forward_hook(post_hook)


def hook_count(model: nn.Module) -> int:
    """Number of forward (pre-)hooks registered on all modules of ``model`` (for leak checks)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# --- hook scopes: the only places in the code base that register (and always remove) hooks ------------
@contextmanager
def hooks(model: nn.Module, fns: SiteHooks, n_heads: int | None = None) -> Iterator[None]:
    """Register each ``fn`` at its Site (via :func:`add_hook`) for the duration of the ``with`` block.

    Every hook comes off on exit, also when the body (or registering a later hook) raises.
    ``with hooks(model, {Site(3, "hook_resid_post"): lambda x: 2 * x}): model(ids)``

    Raises:
        ConfigError: as :func:`add_hook` (unknown layer / module, a head or neuron out of range, a named position).
    """
    items = fns.items() if isinstance(fns, Mapping) else fns
    with ExitStack() as stack:
        for site, fn in items:
            stack.callback(add_hook(model, site, fn, n_heads=n_heads).remove)
        yield


@contextmanager
def module_hooks(pre: Iterable[tuple[nn.Module, Callable[..., Any]]] = (),
                 post: Iterable[tuple[nn.Module, Callable[..., Any]]] = (), *, with_kwargs: bool = False) -> Iterator[None]:
    """Raw ``nn.Module`` forward-pre (``pre``) and forward (``post``) hooks for modules that are not Sites
    (e.g. NeFT's ``gate_proj`` outputs, TuCo's whole decoder layers); removed on exit, also on error.

    Hook signatures are torch's: ``pre(module, args[, kwargs])`` and ``post(module, args[, kwargs], output)``
    (``kwargs`` when ``with_kwargs``); a returned value replaces the input / output as in torch.
    """
    with ExitStack() as stack:
        for module, fn in pre:
            stack.callback(module.register_forward_pre_hook(fn, with_kwargs=with_kwargs).remove)
        for module, fn in post:
            stack.callback(module.register_forward_hook(fn, with_kwargs=with_kwargs).remove)
        yield


class _StopForward(Exception):
    """Raised by a :func:`record` hook with ``stop=True`` once every site is recorded; ends the forward pass."""


class Recording(Mapping):
    """What :func:`record` captured: ``rec[site]`` is the activation at ``site`` (after ``select``); when
    the site fired several times in the block (one forward pass per batch chunk) the calls are concatenated
    along dim 0. :meth:`calls` gives them one by one.

    Raises (``rec[site]``):
        KeyError: ``site`` was not recorded (not requested, or the forward pass never reached it).
    """

    def __init__(self, sites: Sequence[Site]) -> None:
        self._parts: dict[Site, list[Tensor]] = {s: [] for s in sites}

    def calls(self, site: Site) -> list[Tensor]:
        """One tensor per time ``site`` fired, in order."""
        return self._parts[site]

    def __getitem__(self, site: Site) -> Tensor:
        parts = self._parts[site]
        if not parts:
            raise KeyError(f"{site} was not reached by any forward pass inside the record() block")
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def __iter__(self) -> Iterator[Site]:
        return (s for s, p in self._parts.items() if p)

    def __len__(self) -> int:
        return sum(1 for p in self._parts.values() if p)


@contextmanager
def record(model: nn.Module, sites: Sequence[Site], *, select: Callable[[Tensor], Tensor] | None = None,
           detach: bool = True, dtype: torch.dtype | None = None, device: str | torch.device | None = None,
           stop: bool = False, n_heads: int | None = None) -> Iterator[Recording]:
    """Record the activations at ``sites`` during the forward passes run inside the ``with`` block.

    ``with record(model, [Site(5, "hook_resid_post")], select=lambda a: a[:, -1], device="cpu") as rec:
    model(ids)`` then ``rec[Site(5, "hook_resid_post")]`` is ``Float[Tensor, "batch d_model"]``.

    Args:
        sites: where to read, each in its TransformerLens layout (see :func:`add_hook`; a Site with ``head=``,
            ``neuron=`` or an integer ``pos=`` records only that slice); the hooks are read-only.
        select: applied to each activation before it is kept (e.g. each row's last real token:
            ``lambda a: a[rows, last]``), so only what is needed stays in memory.
        detach: keep tensors out of the autograd graph (``False`` to backpropagate through them).
        dtype, device: convert what is kept (e.g. ``torch.float32``, ``"cpu"``); ``None`` keeps it as is.
        stop: end the forward pass as soon as every site has been recorded once (saves the layers above).
            The ``with`` body then ends at that call: code after it inside the block does not run.

    Raises:
        ConfigError: as :func:`add_hook` (unknown layer / module, a head or neuron out of range, a named position).
    """
    rec = Recording(sites)
    pending: set[Site] = set(sites)

    def reader(site: Site) -> ActivationFn:
        def fn(act: Tensor) -> None:
            kept = select(act) if select is not None else act
            kept = kept.detach() if detach else kept
            rec._parts[site].append(kept.to(device=device, dtype=dtype) if dtype or device else kept)
            pending.discard(site)
            if stop and not pending:
                raise _StopForward
        return fn

    with hooks(model, [(s, reader(s)) for s in dict.fromkeys(sites)], n_heads=n_heads):
        try:
            yield rec
        except _StopForward:
            pass


def attn_implementation(model: nn.Module) -> str | None:
    """The attention implementation ``model`` runs (``"sdpa"``, ``"eager"`` ...; ``None`` if it has no config)."""
    config = getattr(unwrap(model), "config", None)
    return getattr(config, "_attn_implementation", None)


def _set_attn(model: nn.Module, impl: str) -> None:
    hf = unwrap(model)
    if hasattr(hf, "set_attn_implementation"):
        hf.set_attn_implementation(impl)  # transformers 5: dispatches to sub-configs too
    if attn_implementation(hf) != impl:  # a model without the public API: write the config
        hf.config._attn_implementation = impl


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` with eager attention inside the ``with`` block, then restore its implementation (also on error).

    SDPA never materialises the attention pattern, so code that reads ``blocks.{l}.attn.hook_pattern`` (the
    TransformerLens bridge's cache, the app's attention view, pattern patching) needs eager attention;
    everything else runs faster on SDPA with the same values up to rounding (fp32, SmolLM2: max |Δlogit| 3.8e-5 at
    |logit| ≤ 28; see tests/test_attention_path.py). Switching is a config
    change (transformers dispatches attention at each forward), no weights move. Nested use is fine.
    """
    before = attn_implementation(model)
    if before in (None, "eager"):
        yield model
        return
    _set_attn(model, "eager")
    try:
        yield model
    finally:
        _set_attn(model, before)


def to_bridge(model: nn.Module, tokenizer: Any, name_or_path: str) -> Any:
    """Wrap a loaded Hugging Face model as a TransformerLens ``TransformerBridge`` (no reload).

    The bridge exposes TransformerLens hook names (``blocks.{l}.attn.hook_z``, ``hook_resid_post`` ...,
    ``attn.hook_pattern``) and ``run_with_cache``. Its hook_pattern needs eager attention, so booting switches
    ``model`` to eager attention for good (a bridged model is a pattern reader; TransformerLens does the same);
    the bridge's logits then match ``model``'s (``tests/test_real_model.py``). Note: booting replaces submodules of
    ``model`` in place with bridge components. A model split by ``device_map`` is booted on its first parameter's
    device (not tested on a split model).
    """
    from transformer_lens.model_bridge import TransformerBridge

    _set_attn(model, "eager")
    device = next(model.parameters()).device
    return TransformerBridge.boot_transformers(
        name_or_path, hf_model=model, tokenizer=tokenizer, device=device, dtype=next(model.parameters()).dtype
    )


def to_nnsight(model: nn.Module, tokenizer: Any) -> Any:
    """Wrap a loaded Hugging Face model as an ``nnsight.TransformersModel`` (tracing, remote runs)."""
    import nnsight

    return nnsight.TransformersModel(model, tokenizer=tokenizer)


def nnsight_site(nn_model: Any, site: Site) -> Any:
    """The nnsight proxy of ``site`` inside a ``with nn_model.trace(...)`` block.

    ``attn.hook_z`` and ``mlp.hook_post`` are the (flat) inputs of ``o_proj`` / ``down_proj``:
    ``[batch, pos, n_heads * d_head]`` and ``[batch, pos, d_mlp]``; residual sites are module outputs.
    nnsight requires sites to be requested in the order the forward pass reaches them.
    """
    path, kind = SITE_MODULES[site.hook]
    envoy = nn_model.model.layers[site.layer]
    for part in filter(None, path.split(".")):
        envoy = getattr(envoy, part)
    if kind == "input":
        return envoy.input
    return envoy.output[0] if site.hook == "hook_attn_out" else envoy.output

