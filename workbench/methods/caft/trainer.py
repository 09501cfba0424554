"""Concept ablation *during* fine-tuning: another method trains while CAFT's ablation is attached.

Source: Casademunt et al., arXiv 2507.16795, 2025, §3: the concept directions are ablated during
fine-tuning only and the plain model is evaluated; their toy tasks use full fine-tuning, emergent
misalignment uses LoRA. Here the inner method is any registered method (``"lofit"``: head selection and
offsets, both under ablation; ``"full"``; ``"lora"``; ``"neft"`` ...) or a trainable
:class:`~workbench.intervention.Intervention` instance.

Design: :func:`train_caft` wraps the inner method's ordinary training (its registry trainer, or ``fit``)
in ``ablation.attach(model)`` — a context manager that removes its hooks also on error — instead of
building a composite intervention, so every inner method trains with its own code path unchanged.
Evaluations requested during training run with the ablation *suspended* (the hooks pass activations
through), i.e. on the plain tuned model, which is what CAFT is judged on. :func:`caft_trainer` is the
registry adapter (``finetune("caft", ...)``), which reads the directions from ``config.directions_file``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from workbench.artifacts import atomic_save_tensors, load_tensors
from workbench.data import Example
from workbench.distributed import is_main_process
from workbench.errors import CheckpointError, ConfigError
from workbench.intervention import Intervention, check_dims
from workbench.methods.caft.config import CaftConfig
from workbench.methods.caft.intervention import CaftIntervention
from workbench.train import TrainConfig, TrainResult, fit, seed_everything


@dataclass
class CaftRun:
    """Outcome of :func:`train_caft`.

    ``inner``: the trained inner intervention — attach it (without the ablation) to evaluate the CAFT
    model; ``result``: the ``TrainResult`` of its (last) training stage; ``details``: what the inner
    method's trainer reported (e.g. LoFiT's selected heads).
    """

    ablation: CaftIntervention | None
    inner: Intervention
    result: TrainResult
    details: dict[str, Any] = field(default_factory=dict)


def _check_saved_ablation(out_dir: Path, ablation: CaftIntervention) -> None:
    """Save the ablation next to the checkpoints; refuse to resume under different directions."""
    path = out_dir / "ablation.safetensors"
    state = {k: v.detach().cpu() for k, v in ablation.state_dict().items()}
    if path.exists():
        saved = load_tensors(path)
        if saved.keys() != state.keys() or any(not torch.equal(saved[k], state[k]) for k in state):
            raise CheckpointError(f"{out_dir} holds a CAFT run with other ablation directions; use a new out_dir")
    elif is_main_process():  # one writer in a multi-process launch
        atomic_save_tensors(path, state)


def train_caft(
    model: nn.Module,
    dims: dict[str, Any],
    examples: Sequence[Example],
    ablation: CaftIntervention | None,
    *,
    train_method: str | Intervention = "lofit",
    method_config: Any = None,
    train_cfg: TrainConfig | None = None,
    pad_id: int = 0,
    out_dir: str | Path | None = None,
    eval_fn: Callable[[], dict[str, Any]] | None = None,
) -> CaftRun:
    """Fine-tune with ``ablation`` attached throughout; the ablation is gone when this returns (or raises).

    Args:
        dims: the model's dimensions (checked against the ablation's).
        ablation: the directions to project out; ``None`` runs the same fine-tuning without ablation
            (the paper's "no ablation" baseline: same code path, same seed).
        train_method: a registered method name (``"lofit"``, ``"full"``, ``"lora"``, ...) trained with its
            registry trainer if it has one (LoFiT: both steps under the ablation), else built from
            ``method_config`` and trained with ``fit``; or a trainable Intervention instance.
        method_config: the inner method's config (dataclass or dict; ``None`` = its defaults).
        train_cfg: optimisation of the (final) training stage; ``None`` = the method's own default
            (LoFiT: ``method_config.offset``) or ``TrainConfig()``.
        out_dir: checkpoints of the inner training and ``ablation.safetensors``; a rerun resumes.
        eval_fn: called during and after training with the ablation *suspended* (plain tuned model).

    Raises:
        ConfigError: unknown method, bad ``method_config``, dimension mismatch, nothing to train.
        CheckpointError: ``out_dir`` holds a run with other ablation directions.
    """
    from workbench.config import config_from_dict
    from workbench.methods import get_method

    if ablation is not None:
        check_dims(ablation.dims, dims)
    spec = None
    if isinstance(train_method, str):
        spec = get_method(train_method)
        if method_config is None or isinstance(method_config, dict):
            method_config = config_from_dict(spec.config_cls, dict(method_config or {}))
        elif not isinstance(method_config, spec.config_cls):
            raise ConfigError(f"method_config for {train_method!r} must be a {spec.config_cls.__name__} or a dict, "
                              f"got {type(method_config).__name__}")
    elif not isinstance(train_method, Intervention):
        raise ConfigError(f"train_method must be a registered method name or an Intervention, got {type(train_method).__name__}")
    if out_dir is not None and ablation is not None:
        _check_saved_ablation(Path(out_dir), ablation)
    plain_eval = None
    if eval_fn is not None:
        def plain_eval() -> dict[str, Any]:
            with ablation.suspended() if ablation is not None else nullcontext():
                return eval_fn()

    kw = dict(pad_id=pad_id, out_dir=out_dir, eval_fn=plain_eval)
    with ablation.attach(model) if ablation is not None else nullcontext():
        if spec is not None and spec.trainer is not None:
            inner, result, details = spec.trainer(model, dims, examples, method_config, train_config=train_cfg, **kw)
            return CaftRun(ablation, inner, result, dict(details))
        cfg = train_cfg or TrainConfig()
        if spec is not None:
            seed_everything(cfg.seed)
            inner = spec.intervention_cls(method_config, dims)
        else:
            inner = train_method
        return CaftRun(ablation, inner, fit(model, inner, examples, cfg, **kw))


def evaluate_with_ablation(model: nn.Module, ablation: CaftIntervention, eval_fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The test-time-only baseline: run ``eval_fn`` with the ablation attached (no training under it).

    Casademunt et al. 2025 compare CAFT with ablating the same directions only at inference; run this on
    the normally fine-tuned model (with its inner intervention attached by ``eval_fn`` or the caller).
    """
    with ablation.attach(model), torch.no_grad():
        return eval_fn()


def save_directions(ablation: CaftIntervention, path: str | Path) -> dict[str, Any]:
    """Write the ablation's bases (``q_{layer}``: [d_model, k], safetensors, atomic) and return the
    :class:`CaftConfig` fields that point to them — merge into a config for ``finetune("caft", ...)``."""
    atomic_save_tensors(path, dict(ablation.state_dict()))
    return {"layers": list(ablation.config.layers), "n_directions": list(ablation.config.n_directions),
            "source": ablation.config.source, "directions_file": str(path)}


def load_directions(cfg: CaftConfig, dims: dict[str, Any]) -> CaftIntervention:
    """The ablation described by ``cfg`` with its bases read from ``cfg.directions_file``.

    Raises:
        ConfigError: no ``directions_file``, or bases that are not orthonormal.
        CheckpointError: the file is missing / corrupt or does not match ``cfg.layers`` / ``n_directions``.
    """
    if not cfg.directions_file:
        raise ConfigError("CAFT needs directions: set CaftConfig.directions_file to a safetensors file written by "
                          "save_directions() (find directions with pca_directions / probe_direction / random_directions)")
    ablation = CaftIntervention(cfg, dims)
    try:
        ablation.load_state_dict(load_tensors(cfg.directions_file), strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{cfg.directions_file} does not match layers {cfg.layers} / n_directions "
                              f"{cfg.n_directions}: {exc}") from exc
    ablation.check_orthonormal()
    return ablation


def caft_trainer(model: nn.Module, dims: dict[str, Any], examples: Sequence[Example], cfg: CaftConfig, *,
                 train_config: TrainConfig | None = None, pad_id: int = 0, out_dir: str | Path | None = None,
                 eval_fn: Callable[[], dict[str, Any]] | None = None) -> tuple[Intervention, TrainResult, dict[str, Any]]:
    """Registry adapter: train ``cfg.inner`` (with ``cfg.inner_config``) under the ablation read from
    ``cfg.directions_file``. Returns the trained *inner* intervention (what the CAFT model is evaluated
    with); ``details["ablation"]`` holds the ablation and ``details["evaluate_with"]`` the inner again."""
    ablation = load_directions(cfg, dims)
    run = train_caft(model, dims, examples, ablation, train_method=cfg.inner, method_config=cfg.inner_config,
                     train_cfg=train_config, pad_id=pad_id, out_dir=out_dir, eval_fn=eval_fn)
    return run.inner, run.result, {**run.details, "inner": cfg.inner, "ablation": ablation, "evaluate_with": run.inner}


# --- what a CAFT run keeps beyond its adapter (declared on the method's spec) -------------------------------------
def save_extras(run_dir: str | Path, result: Any, model: nn.Module, model_info: Any) -> None:
    """The spec's ``save_extras``: a run trained with :func:`caft_trainer` keeps the ablation it trained under
    (``details["ablation"]``) as an adapter folder ``run_dir/ablation/`` (its own ``adapter/`` holds the inner
    intervention, which the CAFT model is evaluated with)."""
    from workbench.methods import save_intervention

    ablation = result.details.get("ablation")
    if isinstance(ablation, Intervention):
        save_intervention(Path(run_dir) / "ablation", ablation, model_info)


def load_extras(run_dir: str | Path, model_info: Any) -> dict[str, CaftIntervention]:
    """The spec's ``load_extras``: ``{"ablation": CaftIntervention}`` stored in a run folder -- an adapter folder of
    this method inside it (``ablation/`` from :func:`save_extras`), else an ``ablation.safetensors`` (buffers
    ``q_{layer}`` [d_model, k]) written by :func:`train_caft` -- or ``{}`` when it holds none.

    Raises:
        CheckpointError / MismatchError / ConfigError: a stored ablation that cannot be loaded onto this
            model (see :func:`workbench.methods.load_intervention`).
    """
    from workbench.artifacts import read_json
    from workbench.methods import load_intervention

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return {}
    for meta_path in sorted(run_dir.glob("*/adapter.json")) + sorted(run_dir.glob("*/*/adapter.json")):
        if read_json(meta_path).get("method") == CaftIntervention.method:
            return {"ablation": load_intervention(meta_path.parent, model_info)}
    found = [path for pattern in ("ablation.safetensors", "*/ablation.safetensors", "*/*/ablation.safetensors")
             for path in sorted(run_dir.glob(pattern))]
    if not found:
        return {}
    state = load_tensors(found[0])
    layers = sorted(int(k.removeprefix("q_")) for k in state if k.startswith("q_") and k[2:].isdigit())
    config = CaftConfig(layers=layers, n_directions=[int(state[f"q_{l}"].shape[1]) for l in layers], source=f"{found[0].relative_to(run_dir)}")
    ablation = CaftIntervention(config, model_info.to_dict())
    ablation.load_state_dict(state, strict=True)
    return {"ablation": ablation}
