"""Data-parallel training with accelerate (workbench/distributed.py): 2 CPU processes (gloo) train the same
intervention as one process with the same global batch; only rank 0 writes. The step-1 gradients themselves
(all-reduced, and accumulated) are compared in tests/test_distributed_gradients.py; a SIGKILLed 2-process run
resumes exactly in tests/test_distributed_kill.py; the helpers and the worker are tests/dp_launch.py.

The 2-process runs go through ``accelerate launch`` (its torchrun launcher; on a machine without CUDA each
process's ``Accelerator`` is a gloo CPU group), exactly as ``workbench train --processes 2`` starts them.
"""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from dp_launch import METHODS, TESTS, close, launch, run, single
from workbench.distributed import DataParallel, micro_batches
from workbench.errors import ConfigError
from workbench.train import TrainConfig


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
def test_gradient_accumulation_trains_what_one_batch_trains(method, tmp_path):
    """3 micro-batches per step (token-count-normalised) give the single-batch run's parameters."""
    one, acc = single(method, 4, tmp_path), single(method, 4, tmp_path, accum=3)
    close(dict(one.intervention.state_dict()), dict(acc.intervention.state_dict()))
    assert one.train_result.losses == pytest.approx(acc.train_result.losses, rel=1e-5)


def test_two_processes_train_what_one_process_trains_and_only_rank0_writes(tmp_path):
    """Every method: 2 gloo processes with the same global batch end at the single-process parameters
    (within fp summation order), with the same per-step losses; checkpoints are written by rank 0 only.
    (The parameters cannot see a wrong gradient scale — AdamW and clipping undo it; tests/test_distributed_gradients.py
    compares the gradients themselves.)"""
    methods = sorted(METHODS)
    launch(tmp_path, [run(m, m, 4) for m in methods])
    for m in methods:
        one = single(m, 4, tmp_path)
        close(dict(one.intervention.state_dict()), load_file(str(tmp_path / f"{m}.safetensors")))
        assert json.loads((tmp_path / f"{m}.losses.json").read_text()) == pytest.approx(one.train_result.losses, rel=1e-5)
        assert list((tmp_path / m).rglob("checkpoints/step-*")), f"{m}: no checkpoint written"
    assert json.loads((tmp_path / "writes-rank0.json").read_text()), "rank 0 wrote no checkpoint"
    assert json.loads((tmp_path / "writes-rank1.json").read_text()) == [], "rank 1 wrote a checkpoint"


def test_cli_processes_2_trains_what_one_process_trains_on_your_data(tmp_path, capfd):
    """`workbench train lora --data F --processes 2` (accelerate launch, 2 gloo processes) writes one run folder with
    the same adapter as `--processes 1`, and its LoRA also as a standard peft adapter; the summary prints once."""
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
        capfd.readouterr()
        result = CliRunner().invoke(app, args + ["--name", f"p{n}", "--processes", str(n)])
        assert result.exit_code == 0, result.output
        from_processes = capfd.readouterr().out  # what the started processes printed (the launcher's is result.output)
        summary = f"lora on {tmp_path / 'train.jsonl'}: held-out answer loss"  # the command's last line
        assert result.output.count(summary) + from_processes.count(summary) == 1, (n, result.output, from_processes)
    one, two = (load_file(str(tmp_path / "runs" / f"p{n}" / "adapter" / "adapter.safetensors")) for n in (1, 2))
    close(one, two)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["p1", "p2"]
    assert (tmp_path / "runs" / "p2" / "results.json").is_file() and (tmp_path / "runs" / "p2" / "peft_adapter" / "adapter_config.json").is_file()
    r1, r2 = (json.loads((tmp_path / "runs" / f"p{n}" / "results.json").read_text())["metrics"] for n in (1, 2))
    assert r2["losses"] == pytest.approx(r1["losses"], rel=1e-5)
