"""Training an intervention: answer-only loss, AdamW, clipping, evaluation, checkpoints, exact resume.

:func:`fit` trains only the intervention's parameters; the model itself is frozen. Batches are a pure
function of ``(seed, step)``, and a checkpoint holds the intervention's tensors and the optimizer's full
state, so a run killed after step k and restarted from its checkpoint ends bit-identical to a run that
was never interrupted (tested).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from workbench.checkpoints import drop_checkpoints_after, resume, save_checkpoint
from workbench.config import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, check_fields, config_from_dict
from workbench.data import Example, collate
from workbench.distributed import DataParallel, accumulate
from workbench.divergence import DivergenceGuard, current_restart_hint
from workbench.errors import ConfigError, DivergenceError, NonFiniteLossError
from workbench.losses import answer_logits, dpo_loss, preference_pairs, reference_logprobs, sft_loss, target_logprob


@dataclass
class TrainConfig:
    """Optimisation settings (units in the names). Validated on construction.

    Divergence guard (:mod:`workbench.divergence`; 0 disables a threshold, NaN/inf always stops):

    - ``divergence_loss_factor`` (ratio, default 20): after ``divergence_warmup_steps`` (default 10) steps,
      stop when a step's loss exceeds this multiple of the largest of the starting loss, the running median
      and ``divergence_min_loss_nats`` (default 1 nat, so a task the model already solves, loss ≈ 0, does
      not trip on one noisy batch). The project's runs start at 1-10 nats and fall; 20× that (≥ 20 nats)
      means the answer tokens got probability < e⁻²⁰, which only a blown-up run reaches.
    - ``divergence_max_param_abs`` (parameter units, default 1e4): stop when any trainable parameter's
      magnitude exceeds it. AdamW moves a parameter by about ``lr`` per step, so the project's settings
      (lr ≤ 0.1, ≤ a few thousand steps) stay below ~100 and model weights are far below 1e4; lr 1e30
      crosses it in the first step.

    Only what changes *what* is trained must match to resume a run (seed, batch size, loss, dpo_beta);
    the fields in ``RESUMABLE`` may change between a run and its resumption (e.g. a lower ``lr`` after a
    divergence).

    Raises:
        ConfigError: a non-positive step count, batch size or learning rate, or a negative clip norm or
            divergence threshold.
    """

    max_steps: PositiveInt = 50
    batch_size_prompts: PositiveInt = 8
    lr: PositiveFloat = 1e-2
    weight_decay: NonNegativeFloat = 0.0
    grad_clip_norm: NonNegativeFloat = 1.0
    eval_every_steps: NonNegativeInt = 0  # 0 = evaluate only at the end
    checkpoint_every_steps: NonNegativeInt = 10
    keep_checkpoints: PositiveInt = 2
    seed: int = 0
    loss: str = "sft"  # "sft": answer-only cross-entropy; "dpo": Rafailov et al. 2023 (needs rejected_ids)
    dpo_beta: PositiveFloat = 0.5
    progress: bool = True
    divergence_loss_factor: NonNegativeFloat = 20.0  # ratio to the reference loss; 0 = off
    divergence_warmup_steps: PositiveInt = 10
    divergence_min_loss_nats: NonNegativeFloat = 1.0
    divergence_max_param_abs: NonNegativeFloat = 1e4  # 0 = off (non-finite parameters always stop)
    gradient_accumulation_steps: PositiveInt = 1  # micro-batches per process per step (same global batch, same gradient)
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16": accelerate's autocast around the forward passes

    #: Optimisation-only fields: a run may resume from a checkpoint written with other values of these.
    RESUMABLE: ClassVar[tuple[str, ...]] = (
        "max_steps", "lr", "weight_decay", "grad_clip_norm", "eval_every_steps", "checkpoint_every_steps",
        "keep_checkpoints", "progress", "divergence_loss_factor", "divergence_warmup_steps",
        "divergence_min_loss_nats", "divergence_max_param_abs", "gradient_accumulation_steps", "mixed_precision")

    def __post_init__(self) -> None:
        check_fields(self)
        if self.loss not in ("sft", "dpo"):
            raise ConfigError(f"TrainConfig.loss must be 'sft' or 'dpo', got {self.loss!r}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ConfigError(f"TrainConfig.mixed_precision must be 'no', 'bf16' or 'fp16', got {self.mixed_precision!r}")
        if 0 < self.divergence_loss_factor <= 1:
            raise ConfigError(f"TrainConfig.divergence_loss_factor must be > 1 (or 0 = off), got {self.divergence_loss_factor}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def as_train_config(value: Any, default: TrainConfig) -> TrainConfig:
    """A TrainConfig from a TrainConfig, a dict of its fields, or ``None`` (→ ``default``).

    Raises:
        ConfigError: another type, or unknown keys in the dict.
    """
    if value is None:
        return default
    if isinstance(value, TrainConfig):
        return value
    if isinstance(value, dict):
        return config_from_dict(TrainConfig, value)
    raise ConfigError(f"expected a TrainConfig or dict, got {type(value).__name__}")


@dataclass
class TrainResult:
    """What :func:`fit` returns: per-step losses (nats per answer token), evaluations, timing."""

    losses: list[float]
    evals: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    resumed_from_step: int | None = None
    wall_time_s: float = 0.0
    seconds_per_step: float = 0.0


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python and torch; return a ``torch.Generator`` seeded with ``seed`` for parameter init."""
    random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _step_loss(model: nn.Module, batch: list[Example], idx: list[int], cfg: TrainConfig, pad_id: int, device, ref: Tensor | None,
               reduction: str = "mean") -> Tensor:
    """The task loss of one batch: answer cross-entropy (SFT) or DPO against precomputed references.

    ``reduction="sum"``: summed over answer tokens (SFT) or pairs (DPO) instead of their mean (the data-parallel
    path divides by the global batch's :func:`loss_count`)."""
    if cfg.loss == "sft":
        ids, mask, labels = (t.to(device) for t in collate(batch, pad_id))
        return sft_loss(model, ids, mask, labels, reduction)
    chosen, rejected = preference_pairs(batch)
    logps = []
    for part in (chosen, rejected):
        ids, mask, labels = (t.to(device) for t in collate(part, pad_id))
        logps.append(target_logprob(*answer_logits(model, ids, mask, labels)))
    r = ref[idx].to(device)
    return dpo_loss(logps[0], logps[1], r[:, 0], r[:, 1], cfg.dpo_beta, reduction)


def loss_count(batch: Sequence[Example], cfg: TrainConfig, pad_id: int) -> int:
    """What the batch's mean loss divides by: its answer tokens that the loss sees (SFT), or its pairs (DPO)."""
    if cfg.loss == "dpo":
        return len(batch)
    return int((collate(batch, pad_id)[2][:, 1:] != -100).sum())


def batch_indices(n_examples: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Example indices of ``step``'s batch: epoch-wise permutations, a pure function of (seed, step)."""
    start = step * batch_size
    out: list[int] = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n_examples)
        perm = torch.randperm(n_examples, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        out.extend(perm[offset : offset + batch_size - len(out)].tolist())
    return out


def fit(
    model: nn.Module,
    intervention: Any,
    examples: Sequence[Example],
    cfg: TrainConfig,
    *,
    pad_id: int = 0,
    out_dir: str | Path | None = None,
    eval_fn: Callable[[], dict[str, Any]] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    restart_hint: str | None = None,
) -> TrainResult:
    """Train ``intervention`` (attached to the frozen ``model``) on ``examples``.

    Loss (``cfg.loss``): ``"sft"`` — mean cross-entropy on answer tokens only; ``"dpo"`` — DPO on
    (answer, rejected) pairs with the model *without* the intervention as reference; plus
    ``intervention.regularization()``. AdamW with
    ``cfg.lr`` / ``cfg.weight_decay``, gradient clipping at ``cfg.grad_clip_norm`` (0 = off). When
    ``out_dir`` is given, checkpoints go to ``out_dir/checkpoints/step-N`` every
    ``cfg.checkpoint_every_steps`` and at the end, and a rerun with the same ``out_dir`` resumes from the
    newest one (a lower ``lr`` or other ``TrainConfig.RESUMABLE`` settings may change). ``eval_fn`` is called
    (with the intervention attached) every ``cfg.eval_every_steps`` and at the end; ``on_step(step, loss)``
    after each step (used to simulate a kill in tests). ``restart_hint`` is the command a divergence message
    recommends (default: an enclosing :func:`~workbench.divergence.restart_hint_scope`, else Python wording).

    Raises:
        ConfigError: no examples, or an intervention with nothing to train.
        NonFiniteLossError: the loss, gradient norm or a parameter became NaN/inf.
        DivergenceError: the divergence guard tripped (loss far above its reference, a parameter beyond
            ``cfg.divergence_max_param_abs``, or the optimizer step overflowed). For both: the parameters are
            left at the last good state (a bad update is undone in memory), that state is saved as a
            checkpoint (when ``out_dir`` is set; newer checkpoints are deleted), and the message names the
            step, the checkpoint and ``restart_hint``.
        CheckpointError: ``out_dir`` holds checkpoints from a TrainConfig that trains something else.
    """
    if not examples:
        raise ConfigError("fit() needs at least one training example")
    if cfg.loss == "dpo" and any(e.rejected_ids is None for e in examples):
        raise ConfigError("TrainConfig.loss='dpo' needs every Example to have rejected_ids")
    intervention.bind(model)
    params = [p for p in intervention.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"{type(intervention).__name__} has no trainable parameters")
    device = next(model.parameters()).device
    in_model = {id(p) for p in model.parameters()}
    if not any(id(p) in in_model for p in params):  # parameters bind() put inside the model stay on their layers' devices
        intervention.to(device)
    was_training = model.training
    model.eval()  # no dropout: the step is a deterministic function of (params, batch)
    trainable = {id(p) for p in params}  # methods whose parameters live in the model (full FT, LoRA)
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in trainable]
    for p in frozen:
        p.requires_grad_(False)
    # foreach: one fused kernel per operation over all parameters (torch's default on CUDA only); on CPU it gave the
    # same losses bit for bit and a 5 % faster LoRA step (SmolLM2, 210 LoRA matrices)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    ckpt_dir = Path(out_dir) / "checkpoints" if out_dir is not None else None
    start, losses, evals, resumed = 0, [], [], None
    if ckpt_dir is not None and (state := resume(ckpt_dir, intervention, opt, cfg)) is not None:
        start, losses, evals = state
        resumed = start
    guard = DivergenceGuard(cfg, intervention, opt, params)
    hint = current_restart_hint(restart_hint)
    dp = DataParallel.from_env(cfg.mixed_precision)  # one process unless launched with accelerate (see workbench.distributed)
    plain = not dp.distributed and cfg.gradient_accumulation_steps == 1 and cfg.mixed_precision == "no"
    writer = ckpt_dir if dp.is_main else None  # only the main process writes checkpoints

    def stop(error: type[DivergenceError], head: str, good_step: int, undone: str) -> DivergenceError:
        """Save the last good state (``good_step``), drop newer checkpoints, and build the error."""
        if ckpt_dir is None:
            return error(f"{head}; {undone}; the parameters hold the last good state (step {good_step}), no checkpoint "
                         f"was written (no out_dir). Train again with a lower lr (this run's lr: {cfg.lr:g}).")
        good_evals = [e for e in evals if e["step"] <= good_step]
        path = ckpt_dir / f"step-{good_step:06d}"
        if writer is not None:
            drop_checkpoints_after(ckpt_dir, good_step)  # first: pruning to keep_checkpoints must not hit good_step
            path = save_checkpoint(ckpt_dir, good_step, intervention, opt, cfg, losses[:good_step], good_evals)
        return error(f"{head}; {undone}; last good state saved at {path} (step {good_step}). "
                     f"To resume from it: {hint} (this run's lr: {cfg.lr:g}).")

    t0 = time.perf_counter()
    try:
        # DPO's reference is the untouched model: computed once, before the intervention is attached.
        ref = reference_logprobs(model, examples, pad_id) if cfg.loss == "dpo" else None
        with intervention.attach(model):
            bar = tqdm(range(start, cfg.max_steps), initial=start, total=cfg.max_steps, disable=not (cfg.progress and dp.is_main),
                       desc=f"train {getattr(intervention, 'method', '')}", leave=False)
            for step in bar:
                idx = batch_indices(len(examples), cfg.batch_size_prompts, cfg.seed, step)
                opt.zero_grad(set_to_none=True)
                if plain:
                    task_loss = _step_loss(model, [examples[i] for i in idx], idx, cfg, pad_id, device, ref)
                    loss = reg = task_loss + intervention.regularization()
                else:  # data-parallel / accumulated: this process's share, forward and backward per micro-batch
                    task_loss = accumulate(dp, dp.shard(idx), cfg.gradient_accumulation_steps,
                                           lambda m: _step_loss(model, [examples[i] for i in m], m, cfg, pad_id, device, ref, "sum"),
                                           loss_count([examples[i] for i in idx], cfg, pad_id), device)
                    reg = intervention.regularization()
                    loss = task_loss + (reg.detach() if isinstance(reg, Tensor) else reg)
                if torch.isfinite(loss) and (why := guard.loss_blowup(float(task_loss.detach()), losses)):
                    # These parameters came from the previous update: undo it (when it happened in this call).
                    if guard.has_snapshot:
                        guard.restore()
                        raise stop(DivergenceError, f"training diverged at step {step}: {why}", step - 1,
                                   f"the update of step {step - 1} that led there was undone")
                    raise stop(DivergenceError, f"training diverged at step {step}: {why}", step, "parameters were not updated")
                if torch.isfinite(loss):
                    guard.snapshot()
                    if plain:
                        loss.backward()
                    else:  # the regulariser's gradient once (main process), then the global sum
                        if dp.is_main and isinstance(reg, Tensor) and reg.requires_grad:
                            reg.backward()
                        dp.sum_gradients(params)
                    gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip_norm if cfg.grad_clip_norm > 0 else float("inf"))
                if not torch.isfinite(loss) or not torch.isfinite(gnorm):
                    what = "loss" if not torch.isfinite(loss) else "gradient norm"
                    value = float((loss if what == "loss" else gnorm).detach())
                    raise stop(NonFiniteLossError, f"{what} became non-finite ({value}) at step {step}", step, "parameters were not updated")
                try:
                    opt.step()
                except torch.OutOfMemoryError:
                    raise
                except RuntimeError as exc:  # e.g. "value cannot be converted to type float without overflow"
                    guard.restore()
                    raise stop(DivergenceError, f"training diverged at step {step}: the optimizer step failed ({exc})", step,
                               f"the update of step {step} was undone") from exc
                if problem := guard.param_problem():
                    why, non_finite = problem
                    guard.restore()
                    raise stop(NonFiniteLossError if non_finite else DivergenceError, f"training diverged at step {step}: {why}",
                               step, f"the update of step {step} was undone")
                losses.append(float(task_loss.detach()))
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                done = step + 1
                if eval_fn is not None and cfg.eval_every_steps and done % cfg.eval_every_steps == 0 and done < cfg.max_steps:
                    with torch.no_grad():
                        evals.append({"step": done, **eval_fn()})
                if writer is not None and cfg.checkpoint_every_steps and done % cfg.checkpoint_every_steps == 0:
                    save_checkpoint(ckpt_dir, done, intervention, opt, cfg, losses, evals)
                if on_step is not None:
                    on_step(done, losses[-1])
            if eval_fn is not None and (not evals or evals[-1]["step"] != cfg.max_steps):
                with torch.no_grad():
                    evals.append({"step": cfg.max_steps, **eval_fn()})
            if writer is not None and not (ckpt_dir / f"step-{cfg.max_steps:06d}").exists():
                save_checkpoint(ckpt_dir, cfg.max_steps, intervention, opt, cfg, losses, evals)
            dp.barrier()  # every process leaves fit() after the main one has written its checkpoint
    finally:
        for p in frozen:
            p.requires_grad_(True)
        model.train(was_training)
    wall = time.perf_counter() - t0
    n_run = cfg.max_steps - start
    return TrainResult(losses, evals, cfg.max_steps, resumed, wall, wall / n_run if n_run else 0.0)
