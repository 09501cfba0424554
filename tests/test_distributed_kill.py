"""A 2-process training run SIGKILLed mid-run resumes exactly (issue 26, item 3): ``accelerate launch`` trains on
2 gloo processes; right after rank 0 writes the checkpoint of step 3 (of 6), it holds there (tests/dp_launch.py,
``stall``) while rank 1 waits in step 4's all-reduce, and the test kills both workers and the launcher with SIGKILL —
no cleanup, no final checkpoint. A second launch on the same folder resumes from step 3 and ends at the parameters
and per-step losses of an uninterrupted single-process run (which tests/test_distributed.py shows equals an
uninterrupted 2-process run). CAFT resumes its inner LoFiT under the same ablation.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from dp_launch import close, launch, launch_command, run, single

STEPS, KILL_AFTER = 6, 3  # checkpoints every 3 steps (tests/dp_launch.py train_cfg)


def _dead(pid: int) -> bool:
    """The process is gone or a zombie (killed, not yet reaped by its new parent)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True


def _launch_and_kill(out: Path, method: str) -> int:
    """Start the run, wait for the stall after the step-3 checkpoint, SIGKILL every process; returns the exit code."""
    cmd, env = launch_command(out, [run(method, method, STEPS)], stall=["offset", KILL_AFTER])
    log = (out / "killed-run.log").open("w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    pids = [out / "pid-rank0", out / "pid-rank1"]
    try:
        deadline = time.monotonic() + 300  # a bound on the wait, not a measurement: the run stalls until killed
        while not ((out / "stalled").exists() and all(p.exists() for p in pids)):
            assert proc.poll() is None, f"the run ended (code {proc.returncode}) before its stall: " + (out / "killed-run.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no stall after the checkpoint within 300 s"
            time.sleep(0.1)
        workers = [int(p.read_text()) for p in pids]
        for pid in workers:  # the training processes (torchrun starts them in sessions of their own)
            os.kill(pid, signal.SIGKILL)
        proc.send_signal(signal.SIGKILL)  # and the launcher
        code = proc.wait(timeout=60)
        for _ in range(600):
            if all(_dead(pid) for pid in workers):
                break
            time.sleep(0.1)
        assert all(_dead(pid) for pid in workers), "a worker survived SIGKILL"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    return code


@pytest.mark.parametrize("method", ["lofit", "caft"])
def test_sigkilled_two_process_run_resumes_to_the_uninterrupted_parameters(method, tmp_path):
    code = _launch_and_kill(tmp_path, method)
    assert code == -signal.SIGKILL
    ckpts = tmp_path / method / "offset" / "checkpoints"
    assert (ckpts / f"step-{KILL_AFTER:06d}").is_dir() and not (ckpts / f"step-{STEPS:06d}").exists(), "not killed mid-run"
    assert not (tmp_path / f"{method}.safetensors").exists() and not (tmp_path / "writes-rank0.json").exists()

    launch(tmp_path, [run(method, method, STEPS)])  # the same command without the stall, on the same folder
    # it resumed: it wrote only the final checkpoint (a fresh run would write LoFiT's head-selection and step-3 ones)
    assert json.loads((tmp_path / "writes-rank0.json").read_text()) == [["offset", STEPS]]
    uninterrupted = single(method, STEPS, tmp_path)
    close(dict(uninterrupted.intervention.state_dict()), load_file(str(tmp_path / f"{method}.safetensors")))
    losses = json.loads((tmp_path / f"{method}.losses.json").read_text())
    assert len(losses) == STEPS and losses == pytest.approx(uninterrupted.train_result.losses, rel=1e-5)
