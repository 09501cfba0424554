"""Start the app: ``streamlit run app/main.py -- --base ... --tuned ...`` in a subprocess.

Used by ``workbench app`` and ``make app``; also ``python app/launch.py --help``. No streamlit import here.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

APP = Path(__file__).resolve().parent / "main.py"


def command(base: str = "smollm2-135m-instruct", tuned: str | None = None, port: int = 8501, headless: bool = False,
            runs_dir: str = "runs") -> list[str]:
    """The ``streamlit run`` command line (the app's own options follow ``--``).

    ``--runner.postScriptGC false``: Streamlit otherwise runs a full ``gc.collect(2)`` after every script and fragment run;
    with two models, their TransformerLens bridges and the analysis cache in the process, that took about 0.25 s each,
    and a submitted prompt makes three runs (the prompt box committing, the button, the page): 0.8 of the 1.1 s from
    submit to drawn for a cached prompt (py-spy on the server, SmolLM2 pair, 2-core CPU). Memory is still freed by
    reference counting and Python's own generational collection; the app's caches are bounded."""
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port),
           "--server.headless", "true" if headless else "false", "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none", "--client.toolbarMode", "viewer", "--runner.postScriptGC", "false",
           "--", "--base", base, "--runs-dir", runs_dir]
    return cmd + (["--tuned", tuned] if tuned else [])


def environment() -> dict[str, str]:
    """The app's environment: ours, plus ``OMP_WAIT_POLICY=PASSIVE`` unless set. With OpenMP's default
    spin-waiting, a forward pass of the 135M model on 2 cores took 4.9 s instead of 0.35 s whenever other
    processes competed for the cores (measured on the development machine); passive waiting avoids that."""
    return {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}


def main(base: str = "smollm2-135m-instruct", tuned: str | None = None, port: int = 8501, headless: bool = False,
         runs_dir: str = "runs") -> int:
    """Run the app until it is stopped (Ctrl-C); return streamlit's exit code.

    Args:
        base: registry name, model directory or Hugging Face id of the base model.
        tuned: run folder, adapter folder, model directory or Hugging Face id; ``None`` = the newest run
            folder under ``runs_dir`` (the sidebar can change both).
        port: HTTP port (http://localhost:<port>).
        headless: do not open a browser.
        runs_dir: where to look for run folders and results.json files.
    """
    proc = subprocess.Popen(command(base, tuned, port, headless, runs_dir), env=environment())
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a terminated launcher stops its server too
    try:
        return proc.wait()
    except KeyboardInterrupt:  # Ctrl-C reaches streamlit too (same process group); let it shut down
        return proc.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="Start the ft-workbench app (base vs tuned, side by side).")
    p.add_argument("--base", default="smollm2-135m-instruct")
    p.add_argument("--tuned", default=None)
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--headless", action="store_true")
    p.add_argument("--runs-dir", default="runs")
    a = p.parse_args()
    sys.exit(main(a.base, a.tuned, a.port, a.headless, a.runs_dir))
