"""Data-parallel training with accelerate (workbench/distributed.py): 2 CPU processes (gloo) train the same
intervention as one process with the same global batch; only rank 0 writes; kill/resume stays exact.

The 2-process runs go through ``accelerate launch`` (its torchrun launcher; on a machine without CUDA each
process's ``Accelerator`` is a gloo CPU group), exactly as ``workbench train --processes 2`` starts them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_tiny
from workbench.distributed import DataParallel, micro_batches
from workbench.errors import ConfigError
from workbench.finetune import finetune
from workbench.train import TrainConfig

TESTS = Path(__file__).resolve().parent
METHODS = {"lofit": {"top_k_heads": 0.5}, "neft": {"budget_fraction": 0.05, "select_steps": 3}, "lora": {"r": 2}, "full": {}}

WORKER = r'''
import json, sys
from pathlib import Path
import torch
from safetensors.torch import save_file
import workbench.train as train_mod
from conftest import make_tiny
from test_distributed import varied_examples, train_cfg, METHODS
from workbench.distributed import DataParallel
from workbench.finetune import finetune

out, steps, accum, methods = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split(",")
rank = DataParallel.from_env().rank
writes = []
real_save = train_mod.save_checkpoint
def logged_save(ckpt_dir, step, *a, **k):
    writes.append(step)
    return real_save(ckpt_dir, step, *a, **k)
train_mod.save_checkpoint = logged_save
for m in methods:
    model, info = make_tiny(0)
    res = finetune(m, model, info, varied_examples(), METHODS[m], train_cfg(steps, accum), out_dir=out / m)
    if rank == 0:
        save_file({k: v.detach().contiguous() for k, v in res.intervention.state_dict().items()}, str(out / f"{m}.safetensors"))
        (out / f"{m}.losses.json").write_text(json.dumps(res.train_result.losses))
(out / f"writes-rank{rank}.json").write_text(json.dumps(writes))
'''


def varied_examples(n: int = 24):
    """Prompts of varying length whose answer (one or two tokens) depends on the prompt."""
    from workbench.data import Example

    g = torch.Generator().manual_seed(3)
    out = []
    for i in range(n):
        ids = torch.randint(3, 64, (4 + i % 3,), generator=g).tolist()
        out.append(Example(tuple(ids), tuple(((ids[0] * 7) % 61 + 3,) + ((ids[1] % 50 + 5,) if i % 2 else ()))))
    return out


def train_cfg(steps: int, accum: int = 1) -> TrainConfig:
    return TrainConfig(max_steps=steps, batch_size_prompts=6, lr=1e-2, progress=False, checkpoint_every_steps=3,
                       gradient_accumulation_steps=accum, keep_checkpoints=5)


def _single(method: str, steps: int, accum: int = 1, out_dir=None):
    model, info = make_tiny(0)
    return finetune(method, model, info, varied_examples(), METHODS[method], train_cfg(steps, accum), out_dir=out_dir)


def _free_port() -> int:
    """A port no other launch holds (the suite runs in parallel under pytest-xdist: no fixed port)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out: Path, steps: int, methods: list[str], accum: int = 1, processes: int = 2) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "worker.py").write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           str(out / "worker.py"), str(out), str(steps), str(accum), ",".join(methods)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _close(a: dict, b: dict, atol: float = 2e-5) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k].float(), b[k].float(), atol=atol, rtol=1e-4, msg=lambda m, k=k: f"{k}: {m}")


def test_micro_batches_cover_the_batch_in_order():
    assert micro_batches([5, 1, 4, 2, 3], 2) == [[5, 1, 4], [2, 3]]
    assert micro_batches([1, 2], 4) == [[1], [2]]
    assert micro_batches([], 3) == []
    assert DataParallel(None, 3, 1).shard([10, 11, 12, 13, 14, 15, 16]) == [11, 14]


def test_bad_parallel_settings_are_refused():
    with pytest.raises(ConfigError, match="mixed_precision"):
        TrainConfig(mixed_precision="fp8")
    with pytest.raises(ConfigError, match="gradient_accumulation_steps"):
        TrainConfig(gradient_accumulation_steps=0)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_gradient_accumulation_trains_what_one_batch_trains(method):
    """3 micro-batches per step (token-count-normalised) give the single-batch run's parameters."""
    one, acc = _single(method, 4), _single(method, 4, accum=3)
    _close(dict(one.intervention.state_dict()), dict(acc.intervention.state_dict()))
    assert one.train_result.losses == pytest.approx(acc.train_result.losses, rel=1e-5)


def test_two_processes_train_what_one_process_trains_and_only_rank0_writes(tmp_path):
    """Every method: 2 gloo processes with the same global batch end at the single-process parameters
    (within fp summation order), with the same per-step losses; checkpoints are written by rank 0 only."""
    methods = sorted(METHODS)
    _launch(tmp_path, 4, methods)
    for m in methods:
        single = _single(m, 4)
        _close(dict(single.intervention.state_dict()), load_file(str(tmp_path / f"{m}.safetensors")))
        assert json.loads((tmp_path / f"{m}.losses.json").read_text()) == pytest.approx(single.train_result.losses, rel=1e-5)
        assert list((tmp_path / m).rglob("checkpoints/step-*")), f"{m}: no checkpoint written"
    assert json.loads((tmp_path / "writes-rank0.json").read_text()), "rank 0 wrote no checkpoint"
    assert json.loads((tmp_path / "writes-rank1.json").read_text()) == [], "rank 1 wrote a checkpoint"


def test_two_process_run_killed_and_resumed_equals_an_uninterrupted_run(tmp_path):
    """2 processes stop after step 3 (the checkpoint), a new 2-process launch resumes to step 6: the
    parameters equal a single-process run of 6 uninterrupted steps."""
    _launch(tmp_path, 3, ["lofit"])
    _launch(tmp_path, 6, ["lofit"])
    # the second launch resumed: it wrote only the final checkpoint (a fresh run would rewrite step 3 too)
    assert json.loads((tmp_path / "writes-rank0.json").read_text()) == [6]
    single = _single("lofit", 6)
    _close(dict(single.intervention.state_dict()), load_file(str(tmp_path / "lofit.safetensors")))


def test_cli_processes_2_trains_what_one_process_trains_on_your_data(tmp_path):
    """`workbench train lora --data F --processes 2` (accelerate launch, 2 gloo processes) writes one run folder with
    the same adapter as `--processes 1`, and its LoRA also as a standard peft adapter."""
    from typer.testing import CliRunner

    from app.cli import app
    from conftest import tiny_llama_with_smollm2_tokenizer

    model, tok = tiny_llama_with_smollm2_tokenizer()
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    rows = (TESTS.parent / "studies" / "own_finetune" / "data" / "train.jsonl").read_text().splitlines()[:12]
    (tmp_path / "train.jsonl").write_text("\n".join(rows) + "\n")
    job = {"model": str(tmp_path / "tiny"), "method_config": {"r": 2, "alpha": 4},
           "train": {"max_steps": 3, "batch_size_prompts": 4, "lr": 1e-2, "progress": False}}
    (tmp_path / "job.json").write_text(json.dumps(job))
    args = ["train", "lora", "--data", str(tmp_path / "train.jsonl"), "--max-length", "32", "--config", str(tmp_path / "job.json"),
            "--runs-dir", str(tmp_path / "runs")]
    for n in (1, 2):
        result = CliRunner().invoke(app, args + ["--name", f"p{n}", "--processes", str(n)])
        assert result.exit_code == 0, result.output
    one, two = (load_file(str(tmp_path / "runs" / f"p{n}" / "adapter" / "adapter.safetensors")) for n in (1, 2))
    _close(one, two)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["p1", "p2"]
    assert (tmp_path / "runs" / "p2" / "results.json").is_file() and (tmp_path / "runs" / "p2" / "peft_adapter" / "adapter_config.json").is_file()
    r1, r2 = (json.loads((tmp_path / "runs" / f"p{n}" / "results.json").read_text())["metrics"] for n in (1, 2))
    assert r2["losses"] == pytest.approx(r1["losses"], rel=1e-5)
