"""Training checkpoints of :func:`workbench.train.fit`: save, list, prune, resume.

A checkpoint ``out_dir/checkpoints/step-N/`` holds the intervention's tensors and the optimizer's full
state (``state.safetensors``) plus the step, the TrainConfig, the losses and evaluations so far
(``state.json``). It is written to a temporary folder and renamed, so a kill never leaves a half-written
``step-N``. Resuming is refused only when a setting that changes *what* is trained differs (seed, batch
size, loss, ...); optimisation-only settings (learning rate, step count, clipping, the divergence guard,
cadences) may change, which is what the divergence guard's advice ("rerun with a lower lr") needs.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from workbench.artifacts import (
    atomic_save_tensors,
    atomic_write_json,
    load_tensors,
    read_json,
)
from workbench.errors import CheckpointError


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The optimizer's per-parameter state as ``opt.<idx>.<name>`` tensors, and its param groups."""
    sd = opt.state_dict()
    tensors = {f"opt.{idx}.{k}": (v if isinstance(v, Tensor) else torch.tensor(v)) for idx, st in sd["state"].items() for k, v in st.items()}
    return tensors, {"param_groups": sd["param_groups"]}


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, Tensor], groups: list[dict[str, Any]]) -> None:
    """Inverse of :func:`optimizer_tensors` (other keys in ``tensors`` are ignored)."""
    state: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": groups})


def checkpoint_steps(ckpt_dir: Path) -> list[Path]:
    """The ``step-N`` folders under ``ckpt_dir``, oldest first."""
    return sorted(ckpt_dir.glob("step-*"), key=lambda p: int(p.name.split("-")[1])) if ckpt_dir.is_dir() else []


def save_checkpoint(ckpt_dir: Path, step: int, intervention: nn.Module, opt: torch.optim.Optimizer, cfg: Any,
                    losses: list[float], evals: list[dict]) -> Path:
    """Write ``ckpt_dir/step-<step>`` atomically and keep only the newest ``cfg.keep_checkpoints``."""
    final = ckpt_dir / f"step-{step:06d}"
    tmp = ckpt_dir / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    opt_tensors, opt_meta = optimizer_tensors(opt)
    params = {f"param.{k}": v for k, v in intervention.state_dict().items()}
    atomic_save_tensors(tmp / "state.safetensors", {**params, **opt_tensors})
    atomic_write_json(tmp / "state.json", {"step": step, "train_config": cfg.to_dict(), "losses": losses, "evals": evals, **opt_meta})
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in checkpoint_steps(ckpt_dir)[: -cfg.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def drop_checkpoints_after(ckpt_dir: Path, step: int) -> None:
    """Delete checkpoints newer than ``step`` (they hold a state the divergence guard rejected)."""
    for path in checkpoint_steps(ckpt_dir):
        if int(path.name.split("-")[1]) > step:
            shutil.rmtree(path, ignore_errors=True)


def _refusal(path: Path, saved: dict[str, Any], current: dict[str, Any], keys: list[str]) -> CheckpointError:
    diffs = ", ".join(f"{k} {saved.get(k)!r} → {current.get(k)!r}" for k in keys)
    first = keys[0]
    return CheckpointError(
        f"{path} was written with another TrainConfig: {diffs}. These settings change what is trained, so this run "
        f"cannot resume with them: set {first} back to {saved.get(first)!r} (job JSON: the `train` settings, "
        f"e.g. \"train\": {{\"{first}\": {saved.get(first)!r}}}), or start a new run (CLI: `--name <new run>`). "
        f"Learning rate, max_steps, clipping and the divergence thresholds may change on resume.")


def resume(ckpt_dir: Path, intervention: nn.Module, opt: torch.optim.Optimizer, cfg: Any) -> tuple[int, list[float], list[dict]] | None:
    """Load the newest readable checkpoint; return (step, losses, evals), or None when there is none.

    Settings listed in ``cfg.RESUMABLE`` may differ from the checkpoint's; the optimizer then uses the new
    ``lr`` / ``weight_decay``. Any other difference is refused.

    Raises:
        CheckpointError: the checkpoint was written with other settings that change what is trained, or it
            is past ``cfg.max_steps``.
    """
    for path in reversed(checkpoint_steps(ckpt_dir)):
        try:
            meta = read_json(path / "state.json")
            tensors = load_tensors(path / "state.safetensors")
        except CheckpointError as exc:
            warnings.warn(f"skipping unreadable checkpoint {path}: {exc}", stacklevel=3)
            continue
        saved, current = meta["train_config"], cfg.to_dict()
        differ = sorted(k for k in set(saved) | set(current) if k not in cfg.RESUMABLE and saved.get(k) != current.get(k))
        if differ:
            raise _refusal(path, saved, current, differ)
        step = int(meta["step"])
        if step > cfg.max_steps:
            raise CheckpointError(f"{path} is past max_steps={cfg.max_steps}; raise max_steps (job JSON: train.max_steps) "
                                  "to at least that step, or start a new run (CLI: `--name <new run>`)")
        params = {k[len("param."):]: v for k, v in tensors.items() if k.startswith("param.")}
        intervention.load_state_dict(params, strict=True)
        restore_optimizer(opt, tensors, meta["param_groups"])
        for group in opt.param_groups:  # an lr lowered after a divergence takes effect from here on
            group["lr"], group["weight_decay"] = cfg.lr, cfg.weight_decay
        return step, list(meta["losses"]), list(meta["evals"])
    return None
