"""App latency and memory on the real default pair: submit a prompt -> every figure drawn in the browser.

    python -m app.latency.bench [--base smollm2-135m-instruct] [--tuned runs/<run>] [--out runs/app_latency]
                                        [--repeats 3] [--no-merged] [--tiny] [--sessions 5]

For each pair configuration it starts the app (``app.launch.command``, as ``make app`` does), opens it in
headless Chromium, and measures:

* **first page**: server start -> the page with both models loaded (including the one-prompt warm-up
  the app runs when it loads a pair) has drawn its figures;
* **submit -> rendered** for prompts of several lengths: from the click on *Analyse* until every figure of
  that prompt is drawn (the page's figure count for that prompt, no stale element, every plotly chart's SVG
  present, two animation frames), timed inside the page (``app.latency.browser.submit_timed``: checked once per
  animation frame, no WebDriver polling). Each length runs
  ``--repeats`` fresh prompts (distinct text, so the analysis is not cached) and one cached re-submission;
* the server's own time split, read from the page: the analysis (both models' forward passes and the
  reductions, in the green line) and the page build (figures, in the last line);
* the CPU seconds the server process and the browser (chromedriver and its Chromium processes) used per submission:
  on a machine shared with other jobs the wall clock measures the neighbours too, CPU seconds much less;
* **memory**: the server process's resident set (``VmRSS``) after the first page and its peak (``VmHWM``)
  after all prompts. The browser's memory is not included.

Configurations: ``run folder`` (the tuned side is the base with the run's LoFiT offsets: one copy of the
weights) and, unless ``--no-merged``, ``model directory`` (the same offsets merged into a plain Hugging
Face model with ``workbench.export.export_hf``: two copies of the weights).
Writes ``<out>/app_latency.json``; prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import time
from pathlib import Path

from app.latency import browser
from app.views import page_views

TEXT = ("The committee met on a cold morning to review the plans for the new library. Everyone agreed that the reading room "
        "should face the river, that the children's section needed more light, and that the archive in the basement had to stay "
        "dry all year. The architect showed three drawings, explained the cost of each, and answered questions about heating, "
        "windows, shelves and the garden. After a long discussion about the budget, the town decided to build the second design, "
        "to open the doors in spring, and to ask the students of the school nearby to paint the long wall of the entrance hall. ")
PROMPTS = {
    "short": "The Eiffel Tower is in the city of",
    "entity tracking": "The apple is in Box F, the key is in Box C, the coin is in Box A. Box C contains the",
    "paragraph": TEXT,
    "near the limit": TEXT * 2,
}


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system) used so far by process ``root`` and all its descendants (Linux ``/proc``); used for
    the browser (chromedriver and every Chromium process under it). Processes that ended are not counted."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        try:
            total += _cpu_s(pid)
        except (OSError, IndexError, ValueError):
            pass
        todo += parents.get(pid, [])
    return total


def _numbers(driver) -> dict:
    text = browser.page_text(driver)
    analysis = re.search(r"(\d+) tokens\. Next token.*\((\d+\.\d+) s\)", text)
    build = re.search(r"built in (\d+\.\d+) s", text)
    lens = re.search(r"logit lens over positions \d+–\d+ (?:computed in (\d+\.\d+) s|cached)", text)
    return {"tokens": int(analysis.group(1)) if analysis else None, "analysis_s": float(analysis.group(2)) if analysis else None,
            "page_build_s": float(build.group(1)) if build else None,
            "lens_s": (float(lens.group(1)) if lens.group(1) else 0.0) if lens else None}


def _timed_submit(driver, proc, prompt: str) -> dict:
    """Click Analyse and wait until ``prompt``'s view is drawn; wall seconds, and the CPU seconds the server and the
    browser used meanwhile (on a shared machine the wall clock also measures the neighbours; CPU seconds much less)."""
    browser_pid = driver.service.process.pid
    s0, b0 = _cpu_s(proc.pid), _tree_cpu_s(browser_pid)
    n, wall, partial = browser.submit_timed(driver, prompt, 600)  # clicked and timed inside the page
    return {"figures": n, "submit_to_rendered_s": round(wall, 2), "submit_to_drawn_but_lens_s": None if partial is None else round(partial, 2),
            "server_cpu_s": round(_cpu_s(proc.pid) - s0, 2),
            "browser_cpu_s": round(_tree_cpu_s(browser_pid) - b0, 2), "loadavg_1min": os.getloadavg()[0], **_numbers(driver)}


def measure(label: str, base: str, tuned: str, runs_dir: str, out: Path, repeats: int, prompts: dict[str, str] = PROMPTS) -> dict:
    """One configuration: start the app, load the page, time every prompt; return the records."""
    record: dict = {"label": label, "base": base, "tuned": tuned, "prompts": []}
    started = time.perf_counter()
    log = out / f"streamlit-{label.replace(' ', '_')}.log"
    with browser.app_server(base, tuned, runs_dir, log, timeout_s=120) as (url, proc), browser.chromium() as driver:
        driver.get(url)
        record["first_page_figures"] = browser.wait_rendered(driver, None, 600)
        record["first_page_s"] = round(time.perf_counter() - started, 2)
        record["memory_after_load_mib"] = browser.server_memory_mib(proc.pid)
        cpu0, wall0 = _cpu_s(proc.pid), time.perf_counter()
        for name, text in prompts.items():
            seen = []
            for r in range(repeats):
                prompt = f"Take {r + 1}. {text}"
                browser.enter_prompt(driver, prompt)
                record["prompts"].append({"prompt": name, "take": r + 1, "cached": False, **_timed_submit(driver, proc, prompt)})
                seen.append(prompt)
            browser.enter_prompt(driver, seen[0])  # the first take again: its analysis is cached
            record["prompts"].append({"prompt": name, "take": 1, "cached": True, **_timed_submit(driver, proc, seen[0])})
            print(f"[{label}] {name}: {[p['submit_to_rendered_s'] for p in record['prompts'] if p['prompt'] == name]}", flush=True)
        record["controls"] = controls(driver, f"Take 1. {prompts['entity tracking']}")
        print(f"[{label}] controls: {record['controls']}", flush=True)
        record["server_cpu_over_wall"] = round((_cpu_s(proc.pid) - cpu0) / (time.perf_counter() - wall0), 2)
        record["memory_end_mib"] = browser.server_memory_mib(proc.pid)
        driver.save_screenshot(str(out / f"screenshot-{label.replace(' ', '_')}.png"))
    return record


def controls(driver, prompt: str) -> dict:
    """On ``prompt`` (analysed before, so cached): seconds from a click until the view is drawn, for opening
    another view (the second in the selector) for the first time on this prompt (``view_first_open_s``: built),
    opening the first view again
    (``view_reopen_s``: its figures cached), and a control change in the predictions view (``position_change_s``:
    the position picker, which reruns that view's fragment only)."""
    out: dict = {}
    try:
        browser.enter_prompt(driver, prompt)
        browser.click_analyse(driver)
        browser.wait_rendered(driver, prompt, 600)
        first, second = (v.name for v in page_views()[:2])  # the default view and the next one
        for name, view in (("view_first_open_s", second), ("view_reopen_s", first)):
            t0 = time.perf_counter()
            browser.select_view(driver, view)
            browser.wait_rendered(driver, prompt, 600, view=view)
            out[name] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        browser.pick_option(driver, "Position", "3:")
        browser.wait_title(driver, "after position 3 ", 600)
        out["position_change_s"] = round(time.perf_counter() - t0, 2)
    except Exception as exc:  # noqa: BLE001 — reported in the record; the prompt timings stand
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def merged_model(base: str, run: Path, out: Path) -> Path:
    """Export the run's intervention merged into the base as a plain Hugging Face model (once)."""
    target = out / f"merged-{run.name}"
    if (target / "config.json").is_file():
        return target
    from workbench.export import export_hf
    from workbench.methods import load_intervention
    from workbench.models import load_model

    model, tok, info = load_model(base, device="cpu")
    return export_hf(model, load_intervention(run / "adapter", info), target, tokenizer=tok, model_info=info)


def table(records: list[dict]) -> str:
    med = lambda rows, k: statistics.median(p[k] for p in rows) if rows and all(p.get(k) is not None for p in rows) else float("nan")
    lines = [("| pair | prompt | tokens | submit → view drawn (s), fresh: median [min–max] | fresh, drawn but the lens window (s) | cached (s) | "
              "analysis (s) | view build (s) | of which lens (s) | server CPU (s), fresh / cached | browser CPU (s), fresh / cached | load (1 min) |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for rec in records:
        for name in dict.fromkeys(p["prompt"] for p in rec["prompts"]):
            fresh = [p for p in rec["prompts"] if p["prompt"] == name and not p["cached"]]
            cached = [p for p in rec["prompts"] if p["prompt"] == name and p["cached"]]
            times = [p["submit_to_rendered_s"] for p in fresh]
            lines.append(f"| {rec['label']} | {name} | {fresh[0]['tokens']} | {statistics.median(times):.2f} [{min(times):.2f}–{max(times):.2f}] | "
                         f"{med(fresh, 'submit_to_drawn_but_lens_s'):.2f} | "
                         f"{cached[0]['submit_to_rendered_s']:.2f} | {statistics.median(p['analysis_s'] for p in fresh):.2f} | "
                         f"{statistics.median(p['page_build_s'] for p in fresh):.1f} | {med(fresh, 'lens_s'):.2f} | "
                         f"{med(fresh, 'server_cpu_s'):.2f} / {med(cached, 'server_cpu_s'):.2f} | "
                         f"{med(fresh, 'browser_cpu_s'):.2f} / {med(cached, 'browser_cpu_s'):.2f} | {med(fresh + cached, 'loadavg_1min'):.1f} |")
    lines += ["", "| pair | first page (s) | RSS after load (MiB) | peak RSS (MiB) | server CPU / wall |", "|---|---|---|---|---|"]
    for rec in records:
        lines.append(f"| {rec['label']} | {rec['first_page_s']:.1f} | {rec['memory_after_load_mib']['VmRSS']} | {rec['memory_end_mib']['VmHWM']} | "
                     f"{rec['server_cpu_over_wall']} |")
    lines += ["", "| pair | open another view (s) | reopen a view (s) | position change (s) |", "|---|---|---|---|"]
    for rec in records:
        c = rec.get("controls", {})
        lines.append(f"| {rec['label']} | {c.get('view_first_open_s', '–')} | {c.get('view_reopen_s', '–')} | {c.get('position_change_s', c.get('error', '–'))} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    browser.add_pair_arguments(p)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-merged", action="store_true", help="skip the two-model configuration")
    p.add_argument("--sessions", type=int, default=0, help="then N browser sessions submitting at once (app.latency.sessions): "
                                                           "who was told it was queued, and the server's peak memory")
    args = p.parse_args()
    out, tuned = browser.resolve_pair(args)
    args.no_merged = args.no_merged or args.tiny
    load_before = os.getloadavg()
    # the tiny tokenizer splits long English text into more than the app's 256-token limit
    prompts = {k: v for k, v in PROMPTS.items() if k in ("short", "entity tracking")} if args.tiny else PROMPTS
    records = [measure("run folder", args.base, str(Path(tuned).resolve()), args.runs_dir, out, args.repeats, prompts)]
    if not args.no_merged:
        merged = merged_model(args.base, Path(tuned), out)
        records.append(measure("model directory", args.base, str(merged.resolve()), args.runs_dir, out, args.repeats))
    sessions = None
    if args.sessions:
        from app.latency.sessions import concurrent_sessions

        sessions = concurrent_sessions(args.base, str(Path(tuned).resolve()), args.runs_dir, out / "streamlit-sessions.log", args.sessions)
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config": vars(args), "sessions": sessions,
              "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "loadavg_before_after": [load_before, os.getloadavg()],
                          "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "PASSIVE (set by app.launch)")},
              "records": records}
    (out / "app_latency.json").write_text(json.dumps(result, indent=2) + "\n")
    print(table(records))
    if sessions is not None:
        told = sum(bool(x.get("told_it_waited")) for x in sessions["sessions"])
        times = sorted(x.get("submit_to_rendered_s", float("nan")) for x in sessions["sessions"])
        print(f"\n{args.sessions} sessions at once: submit → drawn {times} s; {told} told they were queued; server RSS after load "
              f"{sessions['memory_after_load_mib']['VmRSS']} MiB, peak (VmHWM) {sessions['memory_end_mib']['VmHWM']} MiB")
    print(f"load average before {load_before}, after {os.getloadavg()}; wrote {out / 'app_latency.json'}")


if __name__ == "__main__":
    main()
