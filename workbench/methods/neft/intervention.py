"""NeFT: trainable weight deltas on selected MLP neurons, applied with hooks, exactly mergeable.

Source: Xu, Zhan, Ma, Wong, Chao, "Let's Focus on Neuron: Neuron-Level Supervised Fine-tuning for Large
Language Model", COLING 2025, §3 (only the selected neurons' weights are updated).

A neuron ``(layer, i)`` of a gated MLP ``down(act(gate(x)) * up(x))`` owns row ``i`` of
``gate_proj.weight`` and of ``up_proj.weight`` (``[d_model]`` each) and column ``i`` of
``down_proj.weight`` (``[d_model]``). Instead of editing those weights (and masking gradients, as the
reference code does), the trainable parameters are deltas for the selected neurons only, added by
forward hooks::

    gate(x)[..., i] += x · d_gate[r]      up(x)[..., i] += x · d_up[r]      down(h) += h[..., i] · d_down[r]

which equals running the model with ``W_gate[i] + d_gate[r]``, ``W_up[i] + d_up[r]`` and
``W_down[:, i] + d_down[r]``. So the model's own parameters are never in the optimizer (bit-identical
by construction), the optimizer state covers only ``3 * n_selected * d_model`` scalars, and
:meth:`NeftIntervention.merge_into` / :func:`export_hf` write the exact edited weights.

Precision: the deltas are fp32 parameters whatever the model's dtype: a neuron's weights are ~1e-2 and a step of
AdamW moves a delta by ~lr, far below a bf16 weight's ulp (2⁻⁷ relative), so bf16 deltas would round their
updates away. At the hook they are cast to the activation's dtype and device (a no-op in fp32 on one device).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from workbench.architecture import mlp_projections
from workbench.errors import ConfigError, MismatchError
from workbench.hooked import module_hooks
from workbench.intervention import DimsLike, Intervention, init_param
from workbench.methods.neft.config import NeftConfig
from workbench.sites import Site


class NeftIntervention(Intervention):
    """Trainable deltas on the selected neurons ``config.neurons`` (row ``r`` belongs to
    ``config.neurons[r]``).

    Parameters:
        ``d_gate``, ``d_up``: ``Float[Tensor, "n_selected d_model"]`` — added to the neurons'
        ``gate_proj`` / ``up_proj`` rows; ``d_down``: ``Float[Tensor, "n_selected d_model"]`` — added to
        their ``down_proj`` columns. Init N(0, init_std²); zeros (the default) is the exact identity.

    :meth:`attach` is overridden: the deltas act on module weights' rows and columns, which no Site
    activation alone can express (the gate/up delta needs the MLP input, the down delta the neuron
    activation ``mlp.hook_post`` and the output together). It still always removes its hooks.
    :meth:`sites` lists the touched neurons as ``Site(layer, "mlp.hook_post", neuron=i)``.

    Raises:
        ConfigError: no neurons, a duplicate neuron, or a layer / neuron index outside the model.
    """

    method = "neft"

    def __init__(self, config: NeftConfig, dims: DimsLike, generator: torch.Generator | None = None) -> None:
        super().__init__(config, dims)
        if not config.neurons:
            raise ConfigError("NeftIntervention needs config.neurons (run neuron selection first: select_neurons / train_neft)")
        n_layers, d_mlp, d_model = self.dims.n_layers, self.dims.d_mlp, self.dims.d_model
        seen: set[tuple[int, int]] = set()
        self._rows: dict[int, tuple[list[int], list[int]]] = {}
        for row, (layer, index) in enumerate(config.neurons):
            if not 0 <= layer < n_layers:
                raise ConfigError(f"neuron [{layer}, {index}]: layer {layer} does not exist (model has layers 0..{n_layers - 1})")
            if not 0 <= index < d_mlp:
                raise ConfigError(f"neuron [{layer}, {index}]: index {index} out of range (d_mlp = {d_mlp}, valid 0..{d_mlp - 1})")
            if (layer, index) in seen:
                raise ConfigError(f"neuron [{layer}, {index}] is listed twice in config.neurons; list each neuron once")
            seen.add((layer, index))
            rows, idx = self._rows.setdefault(layer, ([], []))
            rows.append(row)
            idx.append(index)
        n = len(config.neurons)
        self.d_gate = init_param((n, d_model), config.init_std, generator)
        self.d_up = init_param((n, d_model), config.init_std, generator)
        self.d_down = init_param((n, d_model), config.init_std, generator)
        self._n_attached = 0

    # --- protocol -------------------------------------------------------------------------------
    def sites(self) -> list[Site]:
        """The selected neurons as ``mlp.hook_post`` Sites, sorted by (layer, neuron)."""
        return sorted(Site(layer, "mlp.hook_post", neuron=index) for layer, index in self.config.neurons)

    def layer_deltas(self, layer: int) -> tuple[list[int], Tensor, Tensor, Tensor]:
        """``(neuron indices, d_gate, d_up, d_down)`` of ``layer``; each delta ``[n_in_layer, d_model]``."""
        rows, idx = self._rows[layer]
        return idx, self.d_gate[rows], self.d_up[rows], self.d_down[rows]

    @contextmanager
    def attach(self, model: nn.Module) -> Iterator["NeftIntervention"]:
        """Add the deltas with forward hooks on each touched layer's ``gate_proj``, ``up_proj`` and
        ``down_proj`` for the duration of the ``with`` block; the hooks are removed on exit, also when
        the body raises.

        Raises:
            ConfigError: a layer does not exist in ``model`` or its MLP is not gated.
            MismatchError: the model's ``d_model`` / ``d_mlp`` differ from this intervention's.
        """
        post = []
        for layer in sorted(self._rows):
            gate, up, down = mlp_projections(model, layer)
            self._check_shapes(layer, gate, down)
            where = gate.weight.device if gate.weight.device.type != "meta" else "cpu"  # meta: offloaded by accelerate
            index = torch.tensor(self._rows[layer][1], dtype=torch.long, device=where)
            post += [(gate, self._in_hook(layer, index, "gate")), (up, self._in_hook(layer, index, "up")),
                     (down, self._down_hook(layer, index))]
        with module_hooks(post=post, with_kwargs=True):
            self._n_attached += 1
            try:
                yield self
            finally:
                self._n_attached -= 1

    def _check_shapes(self, layer: int, gate: nn.Linear, down: nn.Linear) -> None:
        want = (self.dims.d_mlp, self.dims.d_model)
        if tuple(gate.weight.shape) != want or tuple(down.weight.shape) != want[::-1]:
            raise MismatchError(f"layer {layer}: MLP weights {tuple(gate.weight.shape)} / {tuple(down.weight.shape)} do not match "
                                f"this intervention's d_mlp={want[0]}, d_model={want[1]}; load it onto the model it was built for")

    def _in_hook(self, layer: int, index: Tensor, which: str):
        rows = self._rows[layer][0]

        def hook(_mod: nn.Module, args: tuple, kwargs: dict, out: Tensor) -> Tensor:
            x = args[0] if args else kwargs["input"]  # [batch, pos, d_model]
            delta = (self.d_gate if which == "gate" else self.d_up)[rows].to(x)  # fp32 → x's dtype and device
            return out.index_add(-1, index.to(out.device), (x @ delta.T).to(out.device))

        return hook

    def _down_hook(self, layer: int, index: Tensor):
        rows = self._rows[layer][0]

        def hook(_mod: nn.Module, args: tuple, kwargs: dict, out: Tensor) -> Tensor:
            h = args[0] if args else kwargs["input"]  # mlp.hook_post: [batch, pos, d_mlp]
            return out + h.index_select(-1, index.to(h.device)) @ self.d_down[rows].to(h)

        return hook

    @torch.no_grad()
    def merge_into(self, model: nn.Module) -> None:
        """Add the deltas into the selected rows of ``gate_proj`` / ``up_proj`` and columns of
        ``down_proj`` in place (exact up to float rounding of the sums).

        Raises:
            ConfigError: the intervention is currently attached to a model (merging then would apply
                the deltas twice), or a layer does not exist / is not a gated MLP.
            MismatchError: the model's MLP shapes differ from this intervention's.
        """
        if self._n_attached:
            raise ConfigError("merge_into called while the intervention is attached; merge outside the `with attach(...)` block")
        for layer in sorted(self._rows):
            gate, up, down = mlp_projections(model, layer)
            self._check_shapes(layer, gate, down)
            idx, dg, du, dd = self.layer_deltas(layer)
            index = torch.tensor(idx, dtype=torch.long, device=gate.weight.device)
            gate.weight.index_add_(0, index, dg.to(gate.weight))
            up.weight.index_add_(0, index, du.to(up.weight))
            down.weight.index_add_(1, index, dd.T.to(down.weight))


def export_hf(model: nn.Module, intervention: NeftIntervention, out_dir: str | Path, tokenizer: Any = None, model_info: Any = None) -> Path:
    """Write a plain Hugging Face model (safetensors) with the NeFT deltas merged in, plus ``tokenizer``
    if given; reload it with ``AutoModelForCausalLM.from_pretrained(out_dir)``. ``model`` is not changed
    (a deep copy is merged). Delegates to :func:`workbench.export.export_hf` (written next to ``out_dir``
    and renamed into place; ``workbench_export.json`` records method, config and source weight hash).

    Pass the plain Hugging Face model, not a TransformerBridge-booted one (booting rewires submodules).

    Raises:
        ConfigError: ``model`` has forward hooks registered (e.g. called inside ``attach``: the copy
            would carry them and the export would not be the plain merged model), or the merge fails
            (see :meth:`NeftIntervention.merge_into`).
    """
    from workbench.export import export_hf as _export_hf
    from workbench.hooked import hook_count

    if n := hook_count(model):
        raise ConfigError(f"export_hf: the model has {n} forward hook(s) registered; export outside any attach() block")
    return _export_hf(model, intervention, out_dir, tokenizer=tokenizer, model_info=model_info)


def neuron_weights(model: nn.Module, layer: int) -> Float[Tensor, "d_mlp three_d_model"]:
    """Each neuron's weights of ``layer`` as one vector: ``[gate row, up row, down column]``, shape
    ``[d_mlp, 3 * d_model]`` (a view-free copy in the weights' dtype)."""
    gate, up, down = mlp_projections(model, layer)
    return torch.cat([gate.weight.detach(), up.weight.detach(), down.weight.detach().T], dim=1)
