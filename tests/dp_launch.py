"""Helpers of the data-parallel tests (tests/test_distributed*.py): the methods and data they train, a recorder of
the gradient each ``fit()`` hands to the optimizer at its first step, and ``accelerate launch`` of this file as the
2-process worker (``python dp_launch.py OUT OPTIONS_JSON`` under ``accelerate launch``).

The gradient is read where :func:`workbench.train.fit` clips it (``torch.nn.utils.clip_grad_norm_``): after the
backward passes and, in a multi-process launch, after :meth:`DataParallel.sum_gradients` — the all-reduced gradient
the optimizer steps with, before clipping rescales it.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parent

#: method -> finetune() config on the tiny model; CAFT trains LoFiT under 2 random directions at layer 1 (its
#: directions file is written by :func:`method_config`).
METHODS = {"lofit": {"top_k_heads": 0.5}, "neft": {"budget_fraction": 0.05, "select_steps": 3}, "lora": {"r": 2}, "full": {},
           "caft": {"inner": "lofit", "inner_config": {"top_k_heads": 0.5}}}


def method_config(method: str, root: Path) -> dict:
    """``METHODS[method]``; for CAFT with ``directions_file`` at ``root/caft-directions.safetensors`` (written once,
    by whoever calls this first: the test, before any launch)."""
    cfg = dict(METHODS[method])
    if method == "caft":
        from conftest import make_tiny
        from workbench.methods.caft import CaftIntervention, random_directions, save_directions

        path = Path(root) / "caft-directions.safetensors"
        dims = make_tiny(0)[1].to_dict()
        ablation = CaftIntervention.from_directions({1: random_directions(dims["d_model"], 2, seed=0)}, dims, source="random")
        if not path.exists():
            save_directions(ablation, path)
        cfg.update(layers=list(ablation.config.layers), n_directions=list(ablation.config.n_directions),
                   source=ablation.config.source, directions_file=str(path))
    return cfg


def varied_examples(n: int = 24):
    """Prompts of varying length whose answer (one or two tokens) depends on the prompt."""
    from workbench.data import Example

    g = torch.Generator().manual_seed(3)
    out = []
    for i in range(n):
        ids = torch.randint(3, 64, (4 + i % 3,), generator=g).tolist()
        out.append(Example(tuple(ids), tuple(((ids[0] * 7) % 61 + 3,) + ((ids[1] % 50 + 5,) if i % 2 else ()))))
    return out


def train_cfg(steps: int, accum: int = 1):
    from workbench.train import TrainConfig

    return TrainConfig(max_steps=steps, batch_size_prompts=6, lr=1e-2, progress=False, checkpoint_every_steps=3,
                       gradient_accumulation_steps=accum, keep_checkpoints=5)


def single(method: str, steps: int, root: Path, accum: int = 1, out_dir=None):
    """One process: ``finetune(method)`` on a fresh tiny model."""
    from conftest import make_tiny
    from workbench.finetune import finetune

    model, info = make_tiny(0)
    return finetune(method, model, info, varied_examples(), method_config(method, root), train_cfg(steps, accum), out_dir=out_dir)


@contextlib.contextmanager
def first_step_gradients():
    """Record, for every ``fit()`` (and NeFT's brief full fine-tuning) inside the block, the gradients its first
    step hands to the optimizer: yields a list that fills with one list of tensors (parameter order) per run."""
    real = torch.nn.utils.clip_grad_norm_
    seen: list[list] = []  # the parameter lists already recorded (kept alive, so their ids are not reused)
    grads: list[list[torch.Tensor]] = []

    def recording(params, *args, **kwargs):
        params = list(params)
        if not any(len(s) == len(params) and all(a is b for a, b in zip(s, params)) for s in seen):
            seen.append(params)
            grads.append([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone() for p in params])
        return real(params, *args, **kwargs)

    torch.nn.utils.clip_grad_norm_ = recording
    try:
        yield grads
    finally:
        torch.nn.utils.clip_grad_norm_ = real


def flat_grads(grads: list[list[torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {f"run{i}.param{j}": g.contiguous() for i, run in enumerate(grads) for j, g in enumerate(run)}


def assert_same_gradients(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], atol: float = 1e-7,
                          rtol: float = 1e-6) -> None:
    """Every recorded gradient equal within ``atol + rtol·|want|``: 1e-7 absolute plus ~8 float32 ulps relative, room
    for summation order only (measured ≤ 6e-8 absolute), far from the 50 % a ×2 or ×½ scale moves a gradient."""
    assert got.keys() == want.keys(), (sorted(got), sorted(want))
    largest = max(float(g.abs().max()) for g in want.values())  # (some are exactly 0: LoRA's A under B = 0)
    assert largest > 1e3 * atol, f"gradients too small ({largest:.2e}) to see a scale with atol {atol}"
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=atol, rtol=rtol, msg=lambda m, k=k: f"{k}: {m}")


def close(a: dict, b: dict, atol: float = 2e-5) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k].float(), b[k].float(), atol=atol, rtol=1e-4, msg=lambda m, k=k: f"{k}: {m}")


def _free_port() -> int:
    """A port no other launch holds (the suite runs in parallel under pytest-xdist: no fixed port)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(out: Path, runs: list[dict], processes: int = 2, stall: list | None = None) -> tuple[list[str], dict]:
    """The ``accelerate launch`` command line and environment of a worker that trains ``runs`` (each
    ``{"name", "method", "steps", "accum", "bug"}``) into ``out/<name>``."""
    out.mkdir(parents=True, exist_ok=True)
    for r in runs:
        method_config(r["method"], out)  # CAFT's directions file, written here: before the processes read it
    env = {**os.environ, "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1"}
    options = json.dumps({"runs": runs, "stall": stall})
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           str(TESTS / "dp_launch.py"), str(out), options]
    return cmd, env


def launch(out: Path, runs: list[dict], processes: int = 2) -> None:
    """Run the worker to completion under ``accelerate launch``; fail with its output when it fails."""
    cmd, env = launch_command(out, runs, processes)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def run(name: str, method: str, steps: int, accum: int = 1, bug: str | None = None) -> dict:
    return {"name": name, "method": method, "steps": steps, "accum": accum, "bug": bug}


def _inject(bug: str | None) -> None:
    """A deliberate data-parallel bug for the negative controls: the all-reduced gradient multiplied (``"x_world"``)
    or divided (``"mean"``: an all-reduce with ``reduction="mean"``) by the number of processes."""
    from workbench.distributed import DataParallel

    real = getattr(DataParallel, "_real_sum_gradients", DataParallel.sum_gradients)
    DataParallel._real_sum_gradients = real
    if bug is None:
        DataParallel.sum_gradients = real
        return
    factor = {"x_world": lambda w: w, "mean": lambda w: 1.0 / w}[bug]

    def buggy(self, params):
        real(self, params)
        for p in params:
            p.grad.mul_(factor(self.world_size))

    DataParallel.sum_gradients = buggy


def _worker(out: Path, options: dict) -> None:
    from safetensors.torch import save_file

    import workbench.train as train_mod
    from conftest import make_tiny
    from workbench.distributed import DataParallel
    from workbench.finetune import finetune

    rank = DataParallel.from_env().rank
    (out / f"pid-rank{rank}").write_text(str(os.getpid()))
    writes: list = []
    real_save = train_mod.save_checkpoint
    stall = options.get("stall")

    def logged_save(ckpt_dir, step, *a, **k):
        writes.append([Path(ckpt_dir).parent.name, step])
        path = real_save(ckpt_dir, step, *a, **k)
        if stall and [Path(ckpt_dir).parent.name, step] == stall:  # hold here, mid-run, until the test kills us
            (out / "stalled").write_text(str(step))
            time.sleep(600)
        return path

    train_mod.save_checkpoint = logged_save
    for r in options["runs"]:
        _inject(r["bug"])
        model, info = make_tiny(0)
        with first_step_gradients() as grads:
            res = finetune(r["method"], model, info, varied_examples(), method_config(r["method"], out),
                           train_cfg(r["steps"], r["accum"]), out_dir=out / r["name"])
        name = r["name"]
        save_file(flat_grads(grads), str(out / f"{name}.grads-rank{rank}.safetensors"))  # every rank: they must agree
        if rank == 0:
            save_file({k: v.detach().contiguous() for k, v in res.intervention.state_dict().items()}, str(out / f"{name}.safetensors"))
            (out / f"{name}.losses.json").write_text(json.dumps(res.train_result.losses))
    _inject(None)
    (out / f"writes-rank{rank}.json").write_text(json.dumps(writes))
    import torch.distributed as dist

    if dist.is_initialized():  # leave together and tear gloo down before exit: a rank that exits with its process group
        dist.barrier()  # alive can abort ("terminate called without an active exception", seen once under CI load)
        dist.destroy_process_group()


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), json.loads(sys.argv[2]))
