"""``workbench train ... --processes N``: start N data-parallel copies of the job with ``accelerate launch``.

The launcher validates everything first (the job config, the data files, the model name, the run name and runs
folder: :func:`workbench.train_job.check_job` and :func:`workbench.runs.plan_run`, before any process starts or any
model loads), fixes the run folder's name so that every process resumes and writes the same one,
hands the validated job to the processes as a JSON file, and starts them with accelerate's launcher
(``python -m accelerate.commands.launch --multi_gpu --num_processes N -m app.cli train ...``: torchrun's
elastic launcher; on a machine without CUDA each process's ``Accelerator`` is a gloo CPU group). Inside, every
process runs the ordinary ``workbench train`` and :func:`workbench.train.fit` trains data-parallel
(:mod:`workbench.distributed`); only rank 0 creates the run folder and writes checkpoints and results.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from workbench.errors import WorkbenchError
from workbench.runs import log_progress

#: Set in the environment of the processes :func:`launch_processes` starts: the launcher prints the run's summary, so
#: they do not (a process started by a plain ``accelerate launch`` still prints it on rank 0).
LAUNCHED_ENV = "WORKBENCH_LAUNCHED_TRAIN"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_command(processes: int, job_json: Path, method: str, runs_dir: Path, name: str, port: int) -> list[str]:
    """The ``accelerate launch`` command line that runs ``workbench train`` in ``processes`` processes."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
            "-m", "app.cli", "train", method, "--config", str(job_json), "--runs-dir", str(runs_dir), "--name", name]


def launch_processes(processes: int, cfg: Any, runs_dir: Path, name: str | None, log: Callable[[str], Any] = log_progress) -> Path:
    """Train ``cfg`` (a validated :class:`~workbench.train_job.TrainJobConfig`) in ``processes`` processes; return the
    run folder.

    Raises:
        ConfigError: a bad data file, run name or runs folder; ModelNotFoundError / CheckpointError: a model name or
            folder that cannot load -- all before any process starts (:func:`workbench.train_job.check_job`, the
            checks the single-process job makes before its model loads).
        WorkbenchError: a process failed (its output is above; the run folder keeps its checkpoints, so the same
            command resumes).
    """
    from workbench.runs import plan_run
    from workbench.train_job import check_job

    check_job(cfg)  # the data files and the model name: one error here, not one per process after they start
    source = cfg.task if cfg.data is None else Path(cfg.data).stem
    default = time.strftime(f"train-{cfg.method}-{source}-%Y%m%d-%H%M%S")
    run_dir = plan_run(runs_dir, name, default)  # checked here, before anything starts
    env = {**os.environ, LAUNCHED_ENV: "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))}
    with tempfile.TemporaryDirectory(prefix="workbench-launch-") as tmp:
        job = Path(tmp) / "job.json"
        job.write_text(json.dumps(cfg.to_dict()))
        cmd = launch_command(processes, job, cfg.method, run_dir.parent, run_dir.name, _free_port())
        log(f"starting {processes} processes: {' '.join(cmd[1:4])} ... (run folder {run_dir})")
        rc = subprocess.run(cmd, env=env).returncode
    if rc != 0:
        kept = (f"The run folder {run_dir} keeps its checkpoints: rerun the same command to resume." if run_dir.is_dir()
                else "No run folder was created.")
        raise WorkbenchError(f"the {processes}-process training run failed (exit code {rc}; its error is printed above). {kept}")
    return run_dir
