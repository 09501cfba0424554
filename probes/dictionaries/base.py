"""What every sparse dictionary here shares: the config, BatchTopK, the input normalisation, the encoder / decoder and
the loss. :class:`probes.dictionaries.crosscoder.Crosscoder` and :class:`probes.dictionaries.sae.DiffSAE` differ only
in their input *streams* (``("base", "tuned")`` vs ``("diff",)``) and in how the decoder norm is handled.

A dictionary with ``S`` streams, width ``d = d_model`` and ``n = n_latents`` latents (all in normalised units, below):

* encoder ``f = σ(Σ_s W_enc^s x_s + b_enc)``, ``W_enc: [S, d, n]`` (Lindsey et al. 2024, "Sparse crosscoders", §model
  diffing; ``S = 1`` is an ordinary SAE);
* decoder ``x̂_s = W_dec^s f + b_dec^s``, ``W_dec: [n, S, d]`` (row ``W_dec[i, s]`` is latent ``i``'s direction in
  stream ``s``), ``b_dec: [S, d]``;
* ``σ`` is a ReLU (objective ``"l1"``) or a ReLU then **BatchTopK** (Bussmann, Leask, Nanda 2024, "BatchTopK
  sparse autoencoders"): in training, keep the ``k · B`` largest scores over the whole batch of ``B`` tokens (exactly
  that many entries, :func:`batch_topk_mask`); at inference keep every score above a threshold θ, estimated in training as
  an exponential running mean (rate ``1 − threshold_beta``) of the smallest score kept in each batch (their
  inference threshold, kept as a running mean as Minder et al.'s training library does). The score of latent ``i``
  is ``f_i · Σ_s ‖W_dec[i, s]‖`` (Minder et al.'s BatchTopK crosscoder): it makes the selection blind to the free
  scale between ``f_i`` and its decoder rows; for a unit-norm decoder (the DiffSAE) it is ``S · f_i``;
* loss per token, averaged over the batch: ``Σ_s ‖x_s − x̂_s‖²`` plus, for ``"l1"``, ``λ Σ_i f_i Σ_s ‖W_dec[i, s]‖``
  (Lindsey et al.'s decoder-norm-weighted L1), or, for ``"batch_topk"``, ``α_aux ‖e − ê_aux‖²``: the AuxK loss
  against dead latents of Gao et al. 2024 ("Scaling and evaluating sparse autoencoders") that BatchTopK adopts —
  ``e = x − x̂`` (detached) reconstructed by the ``aux_k`` largest pre-activations of the *dead* latents (none active
  for ``dead_after_tokens`` training tokens), without ``b_dec``.

**Input normalisation** (ours, as Anthropic's crosscoder updates do): stream ``s`` is multiplied by one fixed scalar
``c_s`` so that its mean squared norm ``E‖c_s a_s‖²`` equals ``d_model``, ``c_s`` estimated once from the first
batches (:meth:`SparseDictionary.fit_input_scale`) and kept in the buffer ``input_scale``. Weights, decoder norms and
reconstructions live in these normalised units; :meth:`SparseDictionary.decoder_directions` returns decoder rows in the
model's own activation units (``W_dec[i, s] / c_s``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from workbench.config import (
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Range,
    check_fields,
    config_from_dict,
)
from workbench.errors import ConfigError, MismatchError, WorkbenchError

Objective = Literal["l1", "batch_topk"]
Beta = Annotated[float, Range(low=0, high=1, high_open=True)]


class DictionaryError(WorkbenchError):
    """A dictionary used before its input normalisation is set, or an unknown dictionary kind."""


@dataclass(frozen=True)
class DictionaryConfig:
    """Shape and training objective of a sparse dictionary (units in the field names' docs).

    Attributes:
        d_model: width of each input stream (the model's residual width).
        n_latents: dictionary size.
        objective: ``"batch_topk"`` (needs ``k``) or ``"l1"`` (uses ``l1_coefficient``).
        k: BatchTopK's mean number of active latents per token (training keeps ``k · B`` per batch of ``B`` tokens).
        l1_coefficient: ``λ`` of the L1 objective (weight of ``Σ_i f_i Σ_s ‖d_i^s‖`` against the squared error, both per
            token in normalised units).
        decoder_init_norm: initial norm of each decoder row ``W_dec[i, s]`` (random direction; the encoder starts as
            the decoder's transpose, as both papers). Ignored by a unit-norm decoder (the DiffSAE).
        threshold_beta: decay of the running mean of the smallest kept score (the inference threshold θ).
        auxk_alpha: weight of the AuxK loss (Gao et al.: 1/32); 0 turns it off.
        aux_k: latents of the AuxK reconstruction per token (``None``: ``d_model // 2``, Gao et al.'s rule).
        dead_after_tokens: a latent inactive for this many training tokens counts as dead for AuxK (ours; Gao et al.
            use 10M tokens at their scale).
        seed: seed of the weights drawn at construction (:func:`~probes.dictionaries.training.train_dictionary`
            re-draws a fresh dictionary's weights from its own ``seed``).
    """

    d_model: PositiveInt
    n_latents: PositiveInt
    objective: Objective = "batch_topk"
    k: PositiveInt | None = None
    l1_coefficient: NonNegativeFloat = 1.0
    decoder_init_norm: PositiveFloat = 0.1
    threshold_beta: Beta = 0.999
    auxk_alpha: NonNegativeFloat = 1 / 32
    aux_k: PositiveInt | None = None
    dead_after_tokens: PositiveInt = 1_000_000
    seed: NonNegativeInt = 0

    def __post_init__(self) -> None:
        check_fields(self)
        name = type(self).__name__
        if self.objective == "batch_topk" and self.k is None:
            raise ConfigError(f"{name}.k is required for objective 'batch_topk' (mean active latents per token)")
        if self.k is not None and self.k > self.n_latents:
            raise ConfigError(f"{name}.k ({self.k}) must be at most n_latents ({self.n_latents})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DictionaryConfig:
        """Read a config from a dict (unknown keys, wrong types and bad ranges raise :class:`ConfigError`)."""
        return config_from_dict(cls, dict(data) if isinstance(data, Mapping) else data)


def batch_topk_mask(scores: Float[Tensor, "batch n_latents"], k: int) -> Bool[Tensor, "batch n_latents"]:
    """BatchTopK's selection (Bussmann et al. 2024): ``True`` at exactly ``min(k · B, B · n)`` entries, the
    largest ``scores`` over the whole batch (ties broken by ``torch.topk``)."""
    flat = scores.reshape(-1)
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[flat.topk(min(k * scores.shape[0], flat.numel()), sorted=False).indices] = True
    return mask.view_as(scores)


def pair(batch: Mapping[str, Tensor]) -> tuple[Float[Tensor, "batch d_model"], Float[Tensor, "batch d_model"]]:
    """``(base, tuned)`` of one activation batch ``{"base": [B, d], "tuned": [B, d]}`` as float32.

    Raises:
        ConfigError: a key is missing. MismatchError: the two shapes differ or are not ``[B, d]``.
    """
    if not isinstance(batch, Mapping) or "base" not in batch or "tuned" not in batch:
        keys = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
        raise ConfigError(f"an activation batch is a dict with 'base' and 'tuned' [batch, d_model] tensors, got {keys}")
    base, tuned = batch["base"], batch["tuned"]
    if base.ndim != 2 or base.shape != tuned.shape:
        raise MismatchError(f"base and tuned activations must both be [batch, d_model], got {tuple(base.shape)} and "
                            f"{tuple(tuned.shape)}")
    return base.float(), tuned.float()


@dataclass
class DictionaryOutput:
    """One forward pass. ``x``: the normalised input ``[B, S, d]``; ``pre``: ``ReLU(W_enc x + b_enc)`` ``[B, n]`` (before
    BatchTopK); ``latents``: ``f`` ``[B, n]``; ``reconstruction``: ``x̂`` ``[B, S, d]`` (normalised units)."""

    x: Float[Tensor, "batch n_streams d_model"]
    pre: Float[Tensor, "batch n_latents"]
    latents: Float[Tensor, "batch n_latents"]
    reconstruction: Float[Tensor, "batch n_streams d_model"]


_KINDS: dict[str, type[SparseDictionary]] = {}


def register(cls: type[SparseDictionary]) -> type[SparseDictionary]:
    """Class decorator: make a dictionary class loadable by its ``kind`` (:func:`dictionary_class`)."""
    if cls.kind in _KINDS:
        raise ConfigError(f"dictionary kind {cls.kind!r} is registered twice")
    _KINDS[cls.kind] = cls
    return cls


def dictionary_class(kind: str) -> type[SparseDictionary]:
    """The registered dictionary class of ``kind``. Raises: DictionaryError: an unknown kind."""
    if kind not in _KINDS:
        raise DictionaryError(f"unknown dictionary kind {kind!r}; known: {sorted(_KINDS)}")
    return _KINDS[kind]


class SparseDictionary(nn.Module):
    """A sparse dictionary over ``S`` input streams (module docstring). Subclasses set ``kind``, ``streams``,
    ``config_class``, ``unit_decoder`` and :meth:`stack`.

    Raises (constructor):
        ConfigError: ``config`` is not a ``config_class``.
    """

    kind: ClassVar[str] = ""
    streams: ClassVar[tuple[str, ...]] = ()
    config_class: ClassVar[type[DictionaryConfig]] = DictionaryConfig
    #: decoder rows kept at unit norm (Bussmann et al.'s SAE): renormalised after every step, gradient along them removed
    unit_decoder: ClassVar[bool] = False

    def __init__(self, config: DictionaryConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise ConfigError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config
        s, d, n = len(self.streams), config.d_model, config.n_latents
        self.W_enc = nn.Parameter(torch.empty(s, d, n))
        self.b_enc = nn.Parameter(torch.zeros(n))
        self.W_dec = nn.Parameter(torch.empty(n, s, d))
        self.b_dec = nn.Parameter(torch.zeros(s, d))
        self.register_buffer("input_scale", torch.zeros(s))  # c_s; 0 = not estimated yet
        self.register_buffer("threshold", torch.tensor(-1.0))  # θ on the score scale; < 0 = not estimated yet
        self.register_buffer("tokens_since_active", torch.zeros(n, dtype=torch.long))
        self.register_buffer("tokens_seen", torch.zeros((), dtype=torch.long))
        self.reset_parameters(config.seed)

    # --- set-up ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self, seed: int) -> None:
        """Fresh weights from ``seed``: decoder rows in random directions with norm ``decoder_init_norm`` (1 for a unit
        decoder), encoder = decoder transpose, zero biases; threshold and training counters cleared. The input scale
        is kept."""
        g = torch.Generator().manual_seed(int(seed))
        w = torch.randn(self.W_dec.shape, generator=g, dtype=torch.float32)
        w = w / w.norm(dim=-1, keepdim=True) * (1.0 if self.unit_decoder else self.config.decoder_init_norm)
        self.W_dec.copy_(w)
        self.W_enc.copy_(w.permute(1, 2, 0))
        self.b_enc.zero_()
        self.b_dec.zero_()
        self.threshold.fill_(-1.0)
        self.tokens_since_active.zero_()
        self.tokens_seen.zero_()

    def stack(self, batch: Mapping[str, Tensor]) -> Float[Tensor, "batch n_streams d_model"]:
        """The raw input streams of an activation batch (model units)."""
        raise NotImplementedError

    @torch.no_grad()
    def fit_input_scale(self, batches: Iterable[Mapping[str, Tensor]]) -> None:
        """Estimate the input scale ``c_s = sqrt(d_model / mean ‖a_s‖²)`` from ``batches`` and start ``b_dec`` at the mean
        normalised input (so the first steps need not learn the mean).

        Raises:
            DictionaryError: no token in ``batches``, or a stream that is zero on every token.
        """
        sq, total, n = 0.0, 0.0, 0
        for batch in batches:
            x = self.stack(batch).double()
            sq, total, n = sq + x.pow(2).sum((0, 2)), total + x.sum(0), n + x.shape[0]
        if n == 0:
            raise DictionaryError("cannot estimate the input scale from no tokens")
        if bool((sq == 0).any()):
            raise DictionaryError(f"a stream is zero on all {n} tokens; cannot normalise it (streams {self.streams})")
        scale = (self.config.d_model / (sq / n)).sqrt()
        self.input_scale.copy_(scale.float())
        self.b_dec.copy_((total / n * scale[:, None]).float())

    def check_scale(self) -> None:
        """Raises: DictionaryError: the input scale was never set (train or :meth:`fit_input_scale` first)."""
        if not bool((self.input_scale > 0).all()):
            raise DictionaryError(f"{type(self).__name__}: input scale not set; call fit_input_scale(batches) or "
                                  "train_dictionary first")

    def normalize(self, x: Float[Tensor, "batch n_streams d_model"]) -> Float[Tensor, "batch n_streams d_model"]:
        """``c_s · x_s``. Raises: DictionaryError: the scale was never set."""
        self.check_scale()
        return x * self.input_scale[:, None]

    # --- encode / decode ------------------------------------------------------------------------------------------
    def decoder_norms(self) -> Float[Tensor, "n_latents n_streams"]:
        """``‖W_dec[i, s]‖`` in normalised units."""
        return self.W_dec.norm(dim=-1)

    def decoder_directions(self, stream: str) -> Float[Tensor, "n_latents d_model"]:
        """Every latent's decoder row for ``stream`` in the model's activation units (``W_dec[:, s] / c_s``: the change
        of the raw activation per unit of latent activation; detached). Raises: ConfigError: an unknown stream."""
        if stream not in self.streams:
            raise ConfigError(f"{type(self).__name__} has streams {self.streams}, not {stream!r}")
        self.check_scale()
        s = self.streams.index(stream)
        return (self.W_dec[:, s] / self.input_scale[s]).detach()

    def encode_pre(self, x: Float[Tensor, "batch n_streams d_model"]) -> Float[Tensor, "batch n_latents"]:
        """``ReLU(Σ_s W_enc^s x_s + b_enc)`` of normalised input."""
        return torch.relu(torch.einsum("bsd,sdn->bn", x, self.W_enc) + self.b_enc)

    def sparsify(self, pre: Float[Tensor, "batch n_latents"], *, batch_topk: bool | None = None,
                 update_threshold: bool = False) -> Float[Tensor, "batch n_latents"]:
        """The latents ``f`` from ``pre``: unchanged for ``"l1"``; for ``"batch_topk"``, BatchTopK over the batch when
        ``batch_topk`` (default: in training mode, or while no threshold is estimated yet), else ``score > θ``.
        ``update_threshold`` moves θ toward this batch's smallest kept positive score (BatchTopK selection only)."""
        if self.config.objective == "l1":
            return pre
        with torch.no_grad():
            score = pre * self.decoder_norms().sum(-1)
            use_batch = batch_topk if batch_topk is not None else (self.training or float(self.threshold) < 0)
            mask = batch_topk_mask(score, self.config.k) if use_batch else score > self.threshold
            if use_batch and update_threshold:
                kept = score[mask & (score > 0)]
                if kept.numel():
                    low, beta = kept.min(), self.config.threshold_beta
                    self.threshold.copy_(low if float(self.threshold) < 0 else beta * self.threshold + (1 - beta) * low)
        return pre * mask

    def decode(self, f: Float[Tensor, "batch n_latents"]) -> Float[Tensor, "batch n_streams d_model"]:
        """``x̂_s = W_dec^s f + b_dec^s`` (normalised units)."""
        return torch.einsum("bn,nsd->bsd", f, self.W_dec) + self.b_dec

    def forward(self, batch: Mapping[str, Tensor], *, batch_topk: bool | None = None,
                update_threshold: bool = False) -> DictionaryOutput:
        """Encode and decode one activation batch (``{"base", "tuned"}``, ``[B, d_model]`` each, model units)."""
        x = self.normalize(self.stack(batch).to(self.W_dec.device))
        pre = self.encode_pre(x)
        f = self.sparsify(pre, batch_topk=batch_topk, update_threshold=update_threshold)
        return DictionaryOutput(x=x, pre=pre, latents=f, reconstruction=self.decode(f))

    # --- loss -----------------------------------------------------------------------------------------------------
    def loss(self, batch: Mapping[str, Tensor], *, l1_scale: float = 1.0, update_stats: bool = False,
             update_threshold: bool = False) -> dict[str, Tensor]:
        """The training loss of one batch (module docstring), per token, averaged over the batch.

        Args:
            l1_scale: factor on ``λ`` (an L1 warm-up passes ``step / warmup``).
            update_stats: count tokens and each latent's tokens since it was last active (AuxK's dead latents).
            update_threshold: update the BatchTopK inference threshold from this batch.

        Returns:
            ``{"loss", "reconstruction", "sparsity", "aux", "l0"}`` scalars (``l0``: mean active latents per token).
        """
        out = self(batch, update_threshold=update_threshold)
        err = out.x - out.reconstruction
        recon = err.pow(2).sum((1, 2)).mean()
        zero = recon.new_zeros(())
        sparsity, aux = zero, zero
        if self.config.objective == "l1":
            sparsity = self.config.l1_coefficient * l1_scale * (out.latents * self.decoder_norms().sum(-1)).sum(1).mean()
        elif self.config.auxk_alpha > 0:
            aux = self.config.auxk_alpha * self._aux_loss(out.pre, err.detach())
        if update_stats:
            with torch.no_grad():
                self.tokens_since_active += out.x.shape[0]
                self.tokens_since_active[(out.latents > 0).any(0)] = 0
                self.tokens_seen += out.x.shape[0]
        l0 = (out.latents > 0).sum(1).float().mean().detach()
        return {"loss": recon + sparsity + aux, "reconstruction": recon, "sparsity": sparsity, "aux": aux, "l0": l0}

    def _aux_loss(self, pre: Float[Tensor, "batch n_latents"], err: Float[Tensor, "batch n_streams d_model"]) -> Tensor:
        """AuxK (Gao et al. 2024): ``‖e − W_dec topk_aux(pre of dead latents)‖²`` per token, mean over tokens."""
        dead = self.tokens_since_active >= self.config.dead_after_tokens
        n_dead = int(dead.sum())
        if n_dead == 0:
            return pre.new_zeros(())
        k = min(self.config.aux_k or max(self.config.d_model // 2, 1), n_dead)
        vals, idx = pre.masked_fill(~dead, 0.0).topk(k, dim=1)
        f_aux = torch.zeros_like(pre).scatter(1, idx, vals)
        return (err - torch.einsum("bn,nsd->bsd", f_aux, self.W_dec)).pow(2).sum((1, 2)).mean()

    # --- unit-norm decoder ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def project_decoder_grad_(self) -> None:
        """Remove the gradient component along each (unit) decoder row (a unit decoder only; before the step)."""
        g = self.W_dec.grad
        if self.unit_decoder and g is not None:
            w = self.W_dec / self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            g -= (g * w).sum(-1, keepdim=True) * w

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Renormalise every decoder row to unit norm (a unit decoder only; after the step)."""
        if self.unit_decoder:
            self.W_dec /= self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)
