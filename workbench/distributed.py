"""Data-parallel training across processes with accelerate (gloo on CPU, NCCL on GPU).

``workbench train ... --processes N`` (or ``accelerate launch --multi_gpu --num_processes N -m app.cli train
...``) starts N copies of the job; inside each, :func:`workbench.train.fit` asks :meth:`DataParallel.from_env`
which process it is. Every process holds the whole model and an identical intervention (same seed), draws the
same *global* batch of ``batch_size_prompts`` examples for a step (a pure function of seed and step), and
trains on its share ``idx[rank::world]`` in ``gradient_accumulation_steps`` micro-batches.

Why the gradients are summed by hand rather than through ``accelerator.prepare(model)`` (DDP): an
intervention acts through hooks on a frozen model and has no forward of its own, and DDP arms its gradient
reducer in the wrapper's forward. So each process's loss is its micro-batch's *summed* answer-token NLL
divided by the global batch's answer-token count, and after the backward passes the gradients are summed
across processes with ``accelerator.reduce(..., "sum")``: the result is exactly the gradient of the global
batch's mean answer loss — the gradient a single process computes on the same global batch, up to
floating-point summation order (tested). Only the main process writes checkpoints, results and run folders.

Source: the data-parallel recipe of accelerate (https://huggingface.co/docs/accelerate, "Distributed
training"); the loss normalisation by the global token count is the one Hugging Face Trainer uses for
gradient accumulation (``num_items_in_batch``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from workbench.errors import ConfigError

#: ``TrainConfig.mixed_precision`` values → accelerate's names.
MIXED_PRECISION = {"no": "no", "bf16": "bf16", "fp16": "fp16"}


def launched_world_size() -> int:
    """Number of processes of the launch this process belongs to (``WORLD_SIZE``; 1 when not launched)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def is_main_process() -> bool:
    """True unless this is a non-zero rank of a multi-process launch (``RANK`` > 0): only the main process writes
    run folders, checkpoints, results and method caches (NeFT's scores, CAFT's ablation)."""
    try:
        return int(os.environ.get("RANK", "0") or 0) == 0
    except ValueError:
        return True


def wait_for_every_process() -> None:
    """A barrier across the processes of a multi-process launch (no-op for one process): e.g. every rank reads a
    method cache before the main process may write it, so all ranks take the same path."""
    if launched_world_size() > 1:
        DataParallel.from_env().barrier()


@dataclass
class DataParallel:
    """Which process this is and how to combine gradients and losses across processes.

    ``world_size == 1`` is the plain single-process case: every method is then the identity.

    Attributes:
        accelerator: the ``accelerate.Accelerator`` of a multi-process launch, else ``None``.
        world_size: number of processes; rank: this process's index (0 = main).
    """

    accelerator: Any = None
    world_size: int = 1
    rank: int = 0

    @classmethod
    def from_env(cls, mixed_precision: str = "no") -> DataParallel:
        """The launch this process belongs to: an accelerate ``Accelerator`` when ``WORLD_SIZE`` > 1 (CPU
        processes use gloo, GPU processes NCCL), else a single process.

        Raises:
            ConfigError: an unknown ``mixed_precision`` (valid: ``"no"``, ``"bf16"``, ``"fp16"``).
        """
        if mixed_precision not in MIXED_PRECISION:
            raise ConfigError(f"mixed_precision must be one of {sorted(MIXED_PRECISION)}, got {mixed_precision!r}")
        if launched_world_size() <= 1 and mixed_precision == "no":
            return cls()
        from accelerate import Accelerator

        acc = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=MIXED_PRECISION[mixed_precision])
        return cls(acc, acc.num_processes, acc.process_index)

    @property
    def is_main(self) -> bool:
        """True on the process that writes files (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, idx: Sequence[int]) -> list[int]:
        """This process's share of a global batch: every ``world_size``-th index from ``rank``."""
        return list(idx[self.rank :: self.world_size])

    def sum(self, value: Tensor) -> Tensor:
        """``value`` summed over processes (a copy; the identity for one process)."""
        if not self.distributed:
            return value
        return self.accelerator.reduce(value.detach().clone(), reduction="sum")

    def sum_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Replace each parameter's ``.grad`` by its sum over processes (in one flat all-reduce).

        A parameter without a gradient on this process contributes zeros, so every process takes the same
        optimizer step.
        """
        if not self.distributed:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = self.accelerator.reduce(torch.cat([g.reshape(-1).float() for g in grads]), reduction="sum")
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(g).to(g.dtype)
            offset += n

    def barrier(self) -> None:
        """Wait until every process arrives (no-op for one process)."""
        if self.distributed:
            self.accelerator.wait_for_everyone()

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """The launch's mixed-precision autocast (accelerate's), or nothing."""
        if self.accelerator is None:
            yield
            return
        with self.accelerator.autocast():
            yield


def micro_batches(idx: Sequence[int], n: int) -> list[list[int]]:
    """``idx`` split into at most ``n`` consecutive, non-empty micro-batches of near-equal size."""
    idx = list(idx)
    if not idx:
        return []
    n = max(1, min(n, len(idx)))
    size, extra = divmod(len(idx), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        out.append(idx[start:end])
        start = end
    return out


def accumulate(dp: DataParallel, shard: Sequence[int], n_micro: int, loss_sum: Any, total: int, device: Any) -> Tensor:
    """Forward and backward this process's share of a global batch in ``n_micro`` micro-batches.

    Args:
        shard: this process's example indices (:meth:`DataParallel.shard` of the global batch).
        loss_sum: ``loss_sum(indices) -> Tensor``, the *summed* loss of those examples (a scalar with grad).
        total: the global batch's loss count (answer tokens for SFT, pairs for DPO), the same on every process.

    Returns:
        The global batch's mean loss (summed over processes, divided by ``total``; detached, on ``device``).
        Each micro-batch's backward adds ``loss_sum / total`` to the gradients; :meth:`DataParallel.sum_gradients`
        then completes the global gradient.
    """
    denom = max(int(total), 1)
    local = torch.zeros((), dtype=torch.float32, device=device)
    for micro in micro_batches(shard, n_micro):
        with dp.autocast():
            part = loss_sum(micro)
        (part / denom).backward()
        local = local + part.detach().float()
    return dp.sum(local) / denom
