"""Several browser sessions at once against one app server: peak server memory and the waiting notice.

    python -m app.latency.sessions [--sessions 5] [--base smollm2-135m-instruct] [--tuned runs/<run>]
                                   [--out runs/app_latency] [--tiny]

Starts the app (``app.launch.command``, as ``make app`` does), opens ``--sessions`` headless Chromium
windows, loads the page in each (the pair is loaded once and shared), then submits a different prompt in
every window at the same moment and waits until each window has drawn every figure of its own prompt
(``app.latency.browser.wait_rendered``). The pair analyses one prompt at a time (its lock), so all but one
session wait; each is told so on the page ("Queued: waiting for another session's analysis…", then "Waited … s").

Measures the server process's resident set: ``VmRSS`` after the first page, ``VmHWM`` (the kernel's
peak) at the end, and the largest ``VmRSS`` seen by a 50 ms sampler while the sessions ran. The browsers'
memory is not counted. Writes ``<out>/app_sessions.json`` and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from contextlib import ExitStack
from pathlib import Path

from app.latency import browser

PROMPTS = ["The Eiffel Tower is in the city of", "The apple is in Box F, the key is in Box C. Box C contains the",
           "Paris is the capital of", "Hello world, hello", "The key is in Box C. Box C contains the"]


class _Sampler(threading.Thread):
    """The largest ``VmRSS`` of ``pid`` seen every ``period_s`` until :meth:`stop`."""

    def __init__(self, pid: int, period_s: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.period_s, self.peak_mib, self._stop_event = pid, period_s, 0, threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.peak_mib = max(self.peak_mib, browser.server_memory_mib(self.pid)["VmRSS"])
            except (OSError, KeyError):
                return
            self._stop_event.wait(self.period_s)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak_mib


def concurrent_sessions(base: str, tuned: str, runs_dir: str, log_path: Path, n_sessions: int = 5, prompts: list[str] = PROMPTS,
                        timeout_s: float = 600) -> dict:
    """Run ``n_sessions`` browser sessions on one server (see the module docstring); return the record:
    ``sessions`` (per session: prompt, figures, submit→rendered seconds, whether it was told it waited),
    ``memory_after_load_mib``, ``memory_end_mib`` (``VmRSS`` / ``VmHWM``), ``sampled_peak_rss_mib``."""
    record: dict = {"base": base, "tuned": tuned, "n_sessions": n_sessions, "sessions": []}
    with browser.app_server(base, tuned, runs_dir, log_path, timeout_s=120) as (url, proc), ExitStack() as stack:
        drivers = [stack.enter_context(browser.chromium()) for _ in range(n_sessions)]
        started = time.perf_counter()
        for driver in drivers:
            driver.get(url)
            browser.wait_rendered(driver, None, timeout_s)
        record["first_pages_s"] = round(time.perf_counter() - started, 2)
        record["memory_after_load_mib"] = browser.server_memory_mib(proc.pid)
        sampler = _Sampler(proc.pid)
        sampler.start()
        mine = [f"{prompts[i % len(prompts)]}{' ' * (i // len(prompts))}" for i in range(n_sessions)]
        for driver, prompt in zip(drivers, mine):
            browser.enter_prompt(driver, prompt)
        results: list[dict] = [{} for _ in drivers]

        def submit(i: int) -> None:
            t0 = time.perf_counter()
            try:
                browser.click_analyse(drivers[i])
                n = browser.wait_rendered(drivers[i], mine[i], timeout_s)
                text = browser.page_text(drivers[i])
                results[i] = {"prompt": mine[i], "figures": n, "submit_to_rendered_s": round(time.perf_counter() - t0, 2),
                              "told_it_waited": "for another session's analysis" in text, "traceback": "Traceback" in text}
            except Exception as exc:  # noqa: BLE001 — reported in the record, the caller decides
                results[i] = {"prompt": mine[i], "error": f"{type(exc).__name__}: {exc}"}

        threads = [threading.Thread(target=submit, args=(i,)) for i in range(n_sessions)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        record["sampled_peak_rss_mib"] = sampler.stop()
        record["memory_end_mib"] = browser.server_memory_mib(proc.pid)
        record["sessions"] = results
    return record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sessions", type=int, default=5)
    browser.add_pair_arguments(p)
    args = p.parse_args()
    out, tuned = browser.resolve_pair(args)
    load_before = os.getloadavg()
    record = concurrent_sessions(args.base, str(Path(tuned).resolve()) if Path(tuned).exists() else tuned, args.runs_dir,
                                 out / "streamlit-sessions.log", args.sessions)
    record.update(date=time.strftime("%Y-%m-%dT%H:%M:%S%z"), config=vars(args),
                  machine={"platform": platform.platform(), "cpu_count": os.cpu_count(), "loadavg_before_after": [load_before, os.getloadavg()]})
    (out / "app_sessions.json").write_text(json.dumps(record, indent=2) + "\n")
    for s in record["sessions"]:
        print(s)
    print(f"{args.sessions} sessions: server RSS after load {record['memory_after_load_mib']['VmRSS']} MiB, "
          f"peak (VmHWM) {record['memory_end_mib']['VmHWM']} MiB, sampled peak {record['sampled_peak_rss_mib']} MiB; wrote {out / 'app_sessions.json'}")


if __name__ == "__main__":
    main()
