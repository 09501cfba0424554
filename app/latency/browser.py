"""Drive the app in headless Debian Chromium (Selenium): start the server, submit a prompt, wait until
every figure is drawn. Shared by ``tests/test_app_browser.py`` and the latency benchmark, so both use one
definition of "all figures rendered":

1. the page's last line reads ``figures on this page: N — view '<view>' … prompt '<the prompt's first 40
   characters>' (<its length> characters)`` (the script run for this prompt and view has finished and sent every element; the page
   builds and sends the selected view only);
2. no element is stale (``data-stale="true"``: Streamlit's mark for elements of the previous run);
3. the page holds N plotly charts and each has drawn its SVG (``.main-svg``);
4. two animation frames have passed (the browser painted them).

Never downloads a browser or a driver: it uses ``/usr/bin/chromium`` and ``/usr/bin/chromedriver``
(Debian ``chromium`` and ``chromium-driver``) or the paths in ``WORKBENCH_CHROMIUM`` /
``WORKBENCH_CHROMEDRIVER``, and sets ``SE_OFFLINE=true`` for selenium-manager.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = os.environ.get("WORKBENCH_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("WORKBENCH_CHROMEDRIVER", "/usr/bin/chromedriver")
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--window-size=1600,2000"]
ROOT = Path(__file__).resolve().parents[2]


def missing_browser() -> list[str]:
    """What is missing to drive a browser (empty when everything is there)."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    return missing


def wait_for(what: str, condition: Callable[[], Any], timeout_s: float, poll_s: float = 0.1) -> Any:
    """Poll ``condition`` until it returns something truthy; return it.

    Raises:
        TimeoutError: not within ``timeout_s`` (the message names ``what``).
    """
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            value = condition()
        except Exception:  # noqa: BLE001 — elements come and go while streamlit re-renders
            value = None
        if value:
            return value
        time.sleep(poll_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def app_server(base: str, tuned: str, runs_dir: str, log_path: Path, timeout_s: float = 60) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run ``streamlit run app/main.py`` (via :func:`app.launch.command`) on a free port until the block
    ends; yield ``(url, process)`` once its health endpoint answers.

    Raises:
        RuntimeError: the server exits or is not healthy within ``timeout_s`` (the message has its log).
    """
    from app.launch import command, environment

    port = free_port()
    env = {**environment(), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command(base, tuned, port, runs_dir=runs_dir), cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            end = time.monotonic() + timeout_s
            while True:
                if proc.poll() is not None or time.monotonic() > end:
                    raise RuntimeError(f"streamlit did not start (exit {proc.poll()}): {Path(log_path).read_text()[-3000:]}")
                try:
                    if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1).read() == b"ok":
                        break
                except OSError:
                    time.sleep(0.2)
            yield f"http://127.0.0.1:{port}", proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium WebDriver with a fresh profile (removed afterwards)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")
    profile = tempfile.mkdtemp(prefix="wb-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROME_FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


_PROBE = """
const line = Array.from(document.querySelectorAll('[data-testid="stCaptionContainer"]'))
    .map(e => e.textContent).find(t => t.startsWith('figures on this page:')) || '';
return [line,
        document.querySelectorAll('[data-stale="true"]').length,
        document.querySelectorAll('[data-testid="stPlotlyChart"]').length,
        document.querySelectorAll('[data-testid="stPlotlyChart"] .js-plotly-plot .main-svg').length];
"""


def figures_line(driver) -> str:
    """The page's ``figures on this page: …`` line, or ``""`` (one cheap DOM query, no page-wide text)."""
    return driver.execute_script(_PROBE)[0]


def page_text(driver) -> str:
    """The visible text of the whole page (slow on a page full of figures: not for polling)."""
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def enter_prompt(driver, prompt: str) -> None:
    """Replace the prompt box's text (typing it; not yet submitted)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    area = wait_for("the prompt box", lambda: driver.find_element(By.TAG_NAME, "textarea"), 30)
    area.send_keys(Keys.CONTROL, "a")
    area.send_keys(Keys.DELETE)
    area.send_keys(prompt)


def click_analyse(driver) -> None:
    """Press the Analyse button (returns right after the click)."""
    from selenium.webdriver.common.by import By

    button = wait_for("the Analyse button", lambda: [b for b in driver.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Analyse"], 10)
    button[0].click()


def wait_rendered(driver, prompt: str | None, timeout_s: float, view: str | None = None) -> int:
    """Wait until every figure of the run for ``prompt`` (``None``: the page without a prompt) and ``view``
    (``None``: whichever view is selected) is drawn (see the module docstring); return the number of figures.

    Raises:
        TimeoutError: not within ``timeout_s``.
    """
    return _in_page(driver, prompt, view, timeout_s, click=False)[0]


# The one definition of "drawn" (module docstring), checked inside the page once per animation frame: no WebDriver round
# trip per check, whose polling would itself use the browser's CPU on a shared machine. With ``click``, the script first
# leaves the focused box (committing it, as a real click's focus change does) and presses Analyse, timing from there.
_IN_PAGE = """
const [wants, label, timeoutMs, click, done] = arguments;
const t0 = performance.now();
let partial = null;
const fresh = el => !el.closest('[data-stale="true"]');
function state() {
  const caps = Array.from(document.querySelectorAll('[data-testid="stCaptionContainer"]'));
  const line = (caps.map(e => e.textContent).find(t => t.startsWith('figures on this page:')) || '');
  const charts = Array.from(document.querySelectorAll('[data-testid="stPlotlyChart"]'));
  const drawn = charts.filter(c => c.querySelector('.js-plotly-plot .main-svg')).length;
  if (partial === null && label !== null) {
    const live = charts.filter(fresh);
    const pending = caps.some(e => e.textContent.startsWith('Computing the logit lens') && e.textContent.includes(label) && fresh(e));
    if (pending && live.length && live.every(c => c.querySelector('.js-plotly-plot .main-svg'))) partial = performance.now() - t0;
  }
  const m = line.match(/^figures on this page: (\\d+)/);
  if (!m || !wants.every(w => line.includes(w)) || document.querySelectorAll('[data-stale="true"]').length) return null;
  const n = parseInt(m[1]);
  return charts.length === n && drawn >= n ? n : null;
}
function check() {
  const n = state();
  if (n !== null) {  // two more animation frames: the browser has painted it
    requestAnimationFrame(() => requestAnimationFrame(() => done([n, performance.now() - t0, partial])));
  } else if (performance.now() - t0 > timeoutMs) {
    done([null, performance.now() - t0, partial]);
  } else {
    requestAnimationFrame(check);
  }
}
if (click) {
  const button = Array.from(document.querySelectorAll('button')).find(b => b.textContent.trim() === 'Analyse');
  if (!button) { done([null, -1, null]); } else { if (document.activeElement) document.activeElement.blur(); button.click(); requestAnimationFrame(check); }
} else {
  requestAnimationFrame(check);
}
"""


def _in_page(driver, prompt: str | None, view: str | None, timeout_s: float, click: bool) -> tuple[int, float, float | None]:
    """Run :data:`_IN_PAGE`: ``(figures, seconds until drawn, seconds until drawn but the lens window or None)``."""
    tag = None if prompt is None else f"({len(prompt)} characters)"
    wants = ([] if prompt is None else [f"prompt {prompt[:40]!r} {tag}"]) + ([] if view is None else [f"view {view!r}"])
    driver.set_script_timeout(timeout_s + 10)
    n, ms, partial = driver.execute_async_script(_IN_PAGE, wants, tag, timeout_s * 1000, click)
    if n is None:
        if ms == -1:
            raise RuntimeError("no Analyse button on the page")
        raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for every figure of the page for prompt {prompt!r:.60}")
    return int(n), ms / 1000, None if partial is None else partial / 1000


def submit_timed(driver, prompt: str, timeout_s: float) -> tuple[int, float, float | None]:
    """Press Analyse and wait until ``prompt``'s view is drawn (:func:`wait_rendered`'s definition), timed inside the
    page from the click. Also notes when the view was drawn *except* its logit-lens window (the page shows "Computing
    the logit lens …" for this prompt and every chart not stale has drawn its SVG). Returns ``(figures, seconds from the
    click until all drawn and two frames painted, seconds until drawn but the lens, or None when that state was not seen:
    a cached lens is sent at once)``.

    Raises:
        TimeoutError: not within ``timeout_s``; RuntimeError: no Analyse button.
    """
    return _in_page(driver, prompt, None, timeout_s, click=True)


def select_view(driver, view: str) -> None:
    """Click the view ``view`` in the page's view selector (returns right after the click)."""
    from selenium.webdriver.common.by import By

    label = wait_for(f"the view selector's {view!r}", lambda: [e for e in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stRadio"] label')
                                                            if e.text.strip() == view], 10)
    label[0].click()


def pick_option(driver, label: str, option: str) -> None:
    """Choose ``option`` (its displayed text) in the select box labelled ``label`` (the first such box)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = wait_for(f"the select box {label!r}", lambda: [b for b in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stSelectbox"]')
                                                          if b.text.split("\n")[0].strip() == label], 10)[0]
    field = box.find_element(By.TAG_NAME, "input")
    field.click()
    field.send_keys(option)
    field.send_keys(Keys.ENTER)


def wait_title(driver, text: str, timeout_s: float) -> None:
    """Wait until a figure title contains ``text``, nothing on the page is stale and every chart has drawn its SVG
    (the end of a control change, which reruns its view's fragment only)."""
    def done() -> bool:
        _, stale, charts, svgs = driver.execute_script(_PROBE)
        return not stale and svgs >= charts > 0 and text in figure_titles(driver)

    wait_for(f"a figure titled ...{text}...", done, timeout_s, poll_s=0.05)
    driver.execute_async_script("const done = arguments[0]; requestAnimationFrame(() => requestAnimationFrame(() => done(true)));")


def figure_titles(driver) -> str:
    """The titles of every plotly chart on the page, joined."""
    from selenium.webdriver.common.by import By

    return " ".join(el.get_attribute("textContent") for el in driver.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .gtitle"))


def add_pair_arguments(parser: Any) -> None:
    """The options every app measurement takes: which pair to serve, where to write, ``--tiny``."""
    parser.add_argument("--base", default="smollm2-135m-instruct")
    parser.add_argument("--tuned", default=None, help="run folder or model (default: the newest run folder under --runs-dir)")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--out", default="runs/app_latency")
    parser.add_argument("--tiny", action="store_true", help="tiny random models (a quick check; numbers are the app's own)")


def resolve_pair(args: Any) -> tuple[Path, str]:
    """Check the browser and ``--out``, make the tiny pair under ``--out`` with ``--tiny``, and return
    ``(out_dir, tuned)`` (``args.base`` / ``args.runs_dir`` updated for ``--tiny``).

    Raises:
        SystemExit: no Chromium / chromedriver, a bad ``--out``, or no run folder to serve as tuned.
    """
    from app.views.load import default_tuned
    from workbench.errors import WorkbenchError
    from workbench.runs import check_output_dir

    missing = missing_browser()
    if missing:
        raise SystemExit(f"this measurement needs {', '.join(missing)}")
    try:
        out = check_output_dir(args.out, "--out")
    except WorkbenchError as exc:
        raise SystemExit(f"error: {exc}") from None
    out.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        from app.latency.tiny import make_tiny_pair

        base, run, runs = make_tiny_pair(out / "tiny")
        args.base, args.tuned, args.runs_dir = str(base), str(run), str(runs)
    tuned = args.tuned or default_tuned(args.runs_dir)
    if tuned is None:
        raise SystemExit(f"no run folder under {args.runs_dir!r}: run `make demo` first or pass --tuned")
    return out, tuned


def server_memory_mib(pid: int) -> dict[str, int]:
    """``{"VmRSS": resident now, "VmHWM": the kernel's peak resident}`` of process ``pid``, in MiB (Linux ``/proc``)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) // 1024
    return out
