"""LoFiT interventions on each attention head's output ``blocks.{l}.attn.hook_z`` (all positions).

Source: Yin, Ye, Durrett, "LoFiT: Localized Fine-tuning on LLM Representations", NeurIPS 2024, §3.1
(step 1, scaling vectors A with an L1 penalty) and §3.2 (step 2, offset vectors v on the selected heads).
Both act on ``z`` before the output projection, so both fold exactly into ``o_proj``:
``W_O((1 + A) ⊙ z) = (W_O diag(1 + A)) z`` and ``W_O (z + v) = W_O z + W_O v``.

Precision: the scalings ``A`` and offsets ``v`` are fp32 parameters whatever the model's dtype. They start at or
near zero and each optimizer step moves them by ~lr·1e-2; in bf16 (8 mantissa bits, ulp(1) = 2⁻⁷ ≈ 0.008) an
update of ``1 + A`` smaller than ~0.004 would round away, so AdamW would silently stop training. They are cast
to the activation's dtype and device at the hook (a no-op in fp32 on one device), so a bf16 model runs bf16
matmuls while the trained values accumulate in fp32.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn

from workbench.architecture import decoder_layers, o_proj
from workbench.errors import ConfigError
from workbench.intervention import DimsLike, Intervention, init_param
from workbench.methods.lofit.config import LofitConfig
from workbench.sites import Site


class LofitScaling(Intervention):
    """Step 1: ``z_h ← (1 + A_h) ⊙ z_h`` for every head; penalty ``λ·Σ|A|``.

    Parameters: ``scales``: ``Float[Tensor, "n_layers n_heads d_head"]``, init N(0, init_std²).
    """

    method = "lofit_scaling"

    def __init__(self, config: LofitConfig, dims: DimsLike, generator: torch.Generator | None = None) -> None:
        super().__init__(config, dims)
        d = self.dims
        self.scales = init_param((d.n_layers, d.n_heads, d.d_head), config.init_std, generator)

    def sites(self) -> list[Site]:
        return [Site(layer, "attn.hook_z") for layer in range(self.dims.n_layers)]

    def apply(self, site: Site, act: Float[Tensor, "batch pos n_heads d_head"]) -> Tensor:
        return act * (1 + self.scales[site.layer]).to(device=act.device, dtype=act.dtype)

    def regularization(self) -> Tensor:
        return self.config.l1_lambda * self.scales.abs().sum()

    def head_scores(self) -> Float[Tensor, "n_layers n_heads"]:
        """‖A_h‖₂ per head: the step-1 ranking score (paper §3.1)."""
        return self.scales.detach().norm(dim=-1)

    @torch.no_grad()
    def merge_into(self, model: nn.Module) -> None:
        """Scale ``W_O``'s input columns of each head by ``1 + A_h`` (exact)."""
        for layer in range(self.dims.n_layers):
            o = o_proj(model, layer)
            o.weight.mul_((1 + self.scales[layer]).flatten().to(o.weight)[None, :])  # fp32 → the weight's dtype / device


class LofitOffsets(Intervention):
    """Step 2: ``z_h ← z_h + v_h`` on the selected heads only (``config.heads``).

    Parameters: ``offsets``: ``Float[Tensor, "n_selected d_head"]``, init N(0, init_std²); row i belongs
    to head ``config.heads[i]``.

    Raises:
        ConfigError: no heads selected, or a head outside the model.
    """

    method = "lofit"

    def __init__(self, config: LofitConfig, dims: DimsLike, generator: torch.Generator | None = None) -> None:
        super().__init__(config, dims)
        if not config.heads:
            raise ConfigError("LofitOffsets needs config.heads (run head selection first)")
        for layer, head in config.heads:
            Site(layer, "attn.hook_z", head=head).validate(self.dims.n_layers, self.dims.n_heads)
        self.offsets = init_param((len(config.heads), self.dims.d_head), config.init_std, generator)
        self._rows: dict[int, tuple[list[int], list[int]]] = {}
        for row, (layer, head) in enumerate(config.heads):
            rows, heads = self._rows.setdefault(layer, ([], []))
            rows.append(row)
            heads.append(head)

    def sites(self) -> list[Site]:
        return [Site(layer, "attn.hook_z") for layer in sorted(self._rows)]

    def layer_offsets(self, layer: int) -> Float[Tensor, "n_heads d_head"]:
        """The dense offset added at ``layer`` (zeros on unselected heads)."""
        rows, heads = self._rows.get(layer, ([], []))
        dense = self.offsets.new_zeros(self.dims.n_heads, self.dims.d_head)
        return dense.index_add(0, torch.tensor(heads, dtype=torch.long, device=dense.device), self.offsets[rows]) if rows else dense

    def apply(self, site: Site, act: Float[Tensor, "batch pos n_heads d_head"]) -> Tensor:
        return act + self.layer_offsets(site.layer).to(device=act.device, dtype=act.dtype)

    @torch.no_grad()
    def merge_into(self, model: nn.Module) -> None:
        """Add ``W_O v`` to each touched layer's ``o_proj`` bias (created as zeros if absent); exact."""
        n_layers = len(decoder_layers(model))
        for layer in self._rows:
            if layer >= n_layers:
                raise ConfigError(f"layer {layer} does not exist in the target model ({n_layers} layers)")
            o = o_proj(model, layer)
            delta = o.weight @ self.layer_offsets(layer).flatten().to(o.weight)  # fp32 → the weight's dtype / device
            if o.bias is None:
                o.bias = nn.Parameter(torch.zeros(o.out_features, dtype=o.weight.dtype, device=o.weight.device))
            o.bias.add_(delta)
