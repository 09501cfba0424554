"""Start the app: ``streamlit run app/main.py -- --base ... --tuned ...`` in a subprocess.

Used by ``workbench app`` and ``make app``; also ``python app/launch.py --help``. No streamlit import here.

Streamlit always runs headless here (``--server.headless true``, ``--server.showEmailPrompt false``, stdin not
passed on): it never asks for an e-mail address on its first run and never needs a terminal, so the app also
starts under nohup, in a container, as a service or through ``ssh host make app``. Once the server answers, the
launcher prints the URL on stdout and opens a browser only where there is a display (:func:`has_display`) or when
asked (``--browser``); on a remote machine, forward the port (``ssh -N -L 8501:localhost:8501 host``) and open
http://localhost:8501 on your own machine.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
import webbrowser
from pathlib import Path

APP = Path(__file__).resolve().parent / "main.py"
#: How long the launcher waits for the server's health endpoint before it stops waiting to print the URL (s).
START_TIMEOUT_S = 120.0


def command(base: str = "smollm2-135m-instruct", tuned: str | None = None, port: int = 8501, runs_dir: str = "runs") -> list[str]:
    """The ``streamlit run`` command line (the app's own options follow ``--``).

    Always headless, without Streamlit's first-run e-mail prompt (module docstring); the launcher, not Streamlit,
    opens a browser.

    ``--runner.postScriptGC false``: Streamlit otherwise runs a full ``gc.collect(2)`` after every script and fragment run;
    with two models, their TransformerLens bridges and the analysis cache in the process, that took about 0.25 s each,
    and a submitted prompt makes three runs (the prompt box committing, the button, the page): 0.8 of the 1.1 s from
    submit to drawn for a cached prompt (py-spy on the server, SmolLM2 pair, 2-core CPU). Memory is still freed by
    reference counting and Python's own generational collection; the app's caches are bounded."""
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port),
           "--server.headless", "true", "--server.showEmailPrompt", "false", "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none", "--client.toolbarMode", "viewer", "--runner.postScriptGC", "false",
           "--", "--base", base, "--runs-dir", runs_dir]
    return cmd + (["--tuned", tuned] if tuned else [])


def environment() -> dict[str, str]:
    """The app's environment: ours, plus ``OMP_WAIT_POLICY=PASSIVE`` unless set. With OpenMP's default
    spin-waiting, a forward pass of the 135M model on 2 cores took 4.9 s instead of 0.35 s whenever other
    processes competed for the cores (measured on the development machine); passive waiting avoids that."""
    return {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}


def has_display(environ: dict[str, str] | None = None, platform: str | None = None) -> bool:
    """Whether a browser window can open on this machine: always on macOS and Windows; elsewhere only with an X or
    Wayland display (``DISPLAY`` or ``WAYLAND_DISPLAY`` set), so not over plain SSH, in a container or a service.
    ``environ`` / ``platform`` default to ``os.environ`` / ``sys.platform``."""
    environ = os.environ if environ is None else environ
    platform = sys.platform if platform is None else platform
    return platform in ("darwin", "win32") or bool(environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"))


def _served(proc: subprocess.Popen, port: int, timeout_s: float) -> bool:
    """Wait until the server on ``port`` answers its health check (True), or ``proc`` exits or ``timeout_s`` passes."""
    end = time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < end:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.read() == b"ok":
                    return proc.poll() is None  # not another server that holds the port while ours exits
        except OSError:
            pass
        time.sleep(0.25)
    return False


def main(base: str = "smollm2-135m-instruct", tuned: str | None = None, port: int = 8501, headless: bool | None = None,
         runs_dir: str = "runs") -> int:
    """Run the app until it is stopped (Ctrl-C, SIGTERM); return streamlit's exit code.

    Once the page is served, prints ``app: http://localhost:<port>`` (and how to reach it from another machine) on
    stdout, and opens it in a browser unless headless. Never reads stdin.

    Args:
        base: registry name, model directory or Hugging Face id of the base model.
        tuned: run folder, adapter folder, model directory or Hugging Face id; ``None`` = the newest run
            folder under ``runs_dir`` (the sidebar can change both).
        port: HTTP port (http://localhost:<port>).
        headless: True: serve only; False: also open a browser (``webbrowser``; ``$BROWSER`` picks one); ``None``:
            open one only where :func:`has_display`.
        runs_dir: where to look for run folders and results.json files.
    """
    open_browser = has_display() if headless is None else not headless
    proc = subprocess.Popen(command(base, tuned, port, runs_dir), env=environment(), stdin=subprocess.DEVNULL)
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a terminated launcher stops its server too
    try:
        if _served(proc, port, START_TIMEOUT_S):
            url = f"http://localhost:{port}"
            print(f"app: {url}  (from another machine: ssh -N -L {port}:localhost:{port} <this host>, then open {url} there)",
                  flush=True)
            if open_browser and not webbrowser.open(url):
                print(f"no browser could be started here; open {url} yourself", file=sys.stderr, flush=True)
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
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--headless", dest="headless", action="store_const", const=True, default=None,
                       help="serve only and print the URL (the default without a display)")
    shown.add_argument("--browser", dest="headless", action="store_const", const=False,
                       help="also open a browser window (the default with a display)")
    p.add_argument("--runs-dir", default="runs")
    a = p.parse_args()
    sys.exit(main(a.base, a.tuned, a.port, a.headless, a.runs_dir))
