"""First contact (issue 28, items 1 and 2): the app starts on a machine where Streamlit never ran and there is no
terminal, and the dataset-diff report and app page show the corpus's text as written.

1. ``workbench app`` (``python -m app.cli app``) with stdin closed, an empty home folder (so no
   ``~/.streamlit/credentials.toml``: Streamlit's first run) and no display serves the page and prints its URL on
   stdout, opens no browser and asks nothing; in headless Chromium the page draws. The launcher opens a browser
   only with a display or ``--browser`` (a fake server stands in for Streamlit there).
2. A diff run over a corpus full of quotes, ``&``, ``<`` and ``>``: the top-KL context table (``figures/*.json``,
   which ``report.html`` and the app draw with plotly) shows each context exactly as in the corpus under plotly's
   text rules, in ``report.html`` in Chromium too, and the app's context lines (``st.html``) read the same.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: quotes, ampersands, angle brackets, a tag-like run and an entity-like run, in every row
TEXTS = ['He said "yes" & <b>no</b> > "maybe" < 3 & "ok"', 'x < y && y > z; print("a & b") <i>it</i> "q" &quot;',
         "Tom & Jerry's \"<show>\" & more > less < all", 'a "b" & c < d > e "f" & g']


# --- 1. the app without a terminal, on a machine where Streamlit never ran --------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``(url, stdout_path, stderr_path, opened_path, proc)``: ``workbench app`` started with stdin closed, HOME an empty
    folder, no DISPLAY, and ``$BROWSER`` a script that records any URL it is asked to open."""
    from app.latency.browser import free_port
    from app.latency.tiny import make_tiny_pair

    root = tmp_path_factory.mktemp("first_contact")
    base, run, runs = make_tiny_pair(root)
    home, opened, recorder = root / "home", root / "opened.txt", root / "browser.sh"
    home.mkdir()
    recorder.write_text(f'#!/bin/sh\necho "$1" >> "{opened}"\n')
    recorder.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "XDG_CONFIG_HOME")}
    env.update(HOME=str(home), BROWSER=str(recorder), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    port = free_port()
    out, err = root / "stdout.txt", root / "stderr.txt"
    app_cmd = [sys.executable, "-m", "app.cli", "app", "--base", str(base), "--tuned", str(run), "--runs-dir", str(runs),
               "--port", str(port)]
    with open(out, "w") as o, open(err, "w") as e:  # `<&-`: stdin closed, as under a service or `ssh host make app &`
        proc = subprocess.Popen(["sh", "-c", 'exec "$@" <&-', "sh", *app_cmd], cwd=ROOT, env=env, stdout=o, stderr=e,
                                start_new_session=True)
    url = f"http://localhost:{port}"
    try:
        end = time.monotonic() + 120
        while f"app: {url}" not in out.read_text() and proc.poll() is None and time.monotonic() < end:
            time.sleep(0.2)
        assert f"app: {url}" in out.read_text(), (f"exit code {proc.poll()}; stdout: {out.read_text()[-2000:]}; "
                                                  f"stderr: {err.read_text()[-2000:]}")
        yield url, out, err, opened, proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)  # the launcher stops its Streamlit server
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_app_serves_without_a_terminal_on_a_fresh_machine(served):
    url, out, err, opened, proc = served
    port = url.rsplit(":", 1)[1]
    assert proc.poll() is None, "the launcher exited"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=10) as r:
        assert r.read() == b"ok"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
        page = r.read().decode()
        assert r.status == 200 and '<div id="root">' in page, page[:500]
    logs = out.read_text() + err.read_text()
    assert "Email" not in logs and "Welcome to Streamlit" not in logs, logs  # no first-run prompt
    assert f"ssh -N -L {port}:localhost:{port}" in out.read_text()  # how to reach it from another machine
    assert not opened.exists(), "a browser was opened on a machine without a display"


def test_the_served_page_draws_in_a_browser(served):
    from app.latency import browser

    missing = browser.missing_browser()
    if missing:
        pytest.skip(f"the browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver; pip install selenium)")
    url = served[0]
    with browser.chromium() as driver:
        driver.get(url)
        browser.wait_for("the app's title", lambda: "Base vs tuned" in browser.page_text(driver), timeout_s=120, poll_s=0.5)


FAKE_SERVER = """
import http.server, sys
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).handle_request()  # one answer, then exit 0
"""


@pytest.mark.parametrize("headless, display, opens", [(None, False, False), (None, True, True), (True, True, False), (False, False, True)])
def test_a_browser_opens_only_with_a_display_or_when_asked(monkeypatch, capsys, headless, display, opens):
    """``main`` waits for the server's health check, prints the URL on stdout, then opens a browser per ``headless``
    (None: where there is a display)."""
    import app.launch as launch
    from app.latency.browser import free_port

    port = free_port()
    monkeypatch.setattr(launch, "command", lambda *a, **k: [sys.executable, "-c", FAKE_SERVER, str(port)])
    monkeypatch.setattr(launch, "has_display", lambda: display)
    opened = []
    monkeypatch.setattr(launch.webbrowser, "open", lambda url: opened.append(url) or True)
    assert launch.main("b", None, port, headless, "runs") == 0
    assert opened == ([f"http://localhost:{port}"] if opens else [])
    assert f"app: http://localhost:{port}" in capsys.readouterr().out


def test_has_display():
    from app.launch import has_display

    assert not has_display({}, "linux") and not has_display({"DISPLAY": ""}, "linux")
    assert has_display({"DISPLAY": ":0"}, "linux") and has_display({"WAYLAND_DISPLAY": "wayland-0"}, "linux")
    assert has_display({}, "darwin") and has_display({}, "win32")


# --- 2. text escaped exactly once -------------------------------------------------------------------------------------
_ENTITIES = {"mu": "μ", "amp": "&", "lt": "<", "gt": ">", "nbsp": "\xa0", "times": "×", "plusmn": "±", "deg": "°"}


def plotly_shows(text: str) -> str:
    """What plotly draws for ``text`` (its svg_text_utils rules): every ``<...>`` is markup, not text; of the
    entities only the named ones above and numeric ones become characters (``&quot;`` stays as it is)."""
    plain = "".join(part for part in re.split(r"(<[^<>]*>)", text) if not re.fullmatch(r"<[^<>]*>", part))

    def entity(m: re.Match) -> str:
        code = m.group(1)
        if code.startswith("#"):
            return chr(int(code[2:], 16) if code[1] == "x" else int(code[1:]))
        return _ENTITIES.get(code, m.group(0))

    return re.sub(r"&(#\d+|#x[\da-fA-F]+|[a-z]+);", entity, plain)


class _Text(HTMLParser):
    """The text a browser shows for an HTML fragment (character references decoded once)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data):
        self.parts.append(data)


def html_shows(fragment: str) -> str:
    parser = _Text()
    parser.feed(fragment)
    parser.close()
    return "".join(parser.parts)


def _as_written(t: dict) -> tuple[str, str, str]:
    """``(left, token, right)`` of a top-KL entry as the corpus has them, newlines as ↵."""
    join = lambda xs: "".join(xs).replace("\n", "↵")
    return join(t["left_text"]), t["token_text"].replace("\n", "↵"), join(t["right_text"])


@pytest.fixture(scope="module")
def diff_run(tmp_path_factory):
    """A ``studies.dataset_diff`` run folder over :data:`TEXTS` (tiny base and a perturbed copy) and its record."""
    from app.latency.tiny import save_tiny
    from studies.dataset_diff import ModelDiffConfig, run
    from workbench.config import config_from_dict
    from workbench.models.tuned import load_pair

    root = tmp_path_factory.mktemp("escaping")
    base = save_tiny(root / "base")
    tuned = save_tiny(root / "tuned", seed=1, perturb_from=base)
    shipped = json.loads((ROOT / "studies" / "dataset_diff" / "configs" / "tiny.json").read_text())  # small readouts
    cfg = config_from_dict(ModelDiffConfig, {**shipped, "base": str(base), "tuned": str(tuned), "texts": TEXTS, "max_rows": len(TEXTS),
                                             "max_length": 64, "top_k_contexts": 30, "context_window": 4})
    out = root / "runs" / "quotes"
    record = run(cfg, out, pair=load_pair(str(base), str(tuned), "cpu").pair, log=lambda s: None)
    return out, record


def test_the_context_table_shows_the_corpus_text_once_escaped(diff_run):
    out, record = diff_run
    top = record["metrics"]["kl"]["top"]
    assert len(top) == 30
    fig = json.loads((out / "figures" / "01_kl_contexts.json").read_text())  # what report.html and the app draw
    _, _, contexts, base_top1, tuned_top1 = fig["data"][0]["cells"]["values"]
    shown = []
    for t, cell, b, tu in zip(top, contexts, base_top1, tuned_top1):
        left, token, right = _as_written(t)
        assert plotly_shows(cell) == f"{left}[{token}]{right}", cell
        assert plotly_shows(b) == t["base_top1_text"].replace("\n", "↵") and plotly_shows(tu) == t["tuned_top1_text"].replace("\n", "↵")
        shown.append(plotly_shows(cell))
    everything = "".join(shown)
    assert all(c in everything for c in '"&<>'), everything  # the corpus's characters are on the page
    assert everything.count("&quot;") == sum(f"{a}{b}{c}".count("&quot;") for a, b, c in map(_as_written, top))


def test_the_report_shows_the_corpus_text_in_a_browser(diff_run):
    from app.latency import browser

    missing = browser.missing_browser()
    if missing:
        pytest.skip(f"the browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver; pip install selenium)")
    out, record = diff_run
    expected = {"".join(f"{a}[{b}]{c}".split()) for a, b, c in map(_as_written, record["metrics"]["kl"]["top"])}
    script = """const plot = document.querySelectorAll('.js-plotly-plot')[0];
                return plot ? Array.from(plot.querySelectorAll('.cell-text')).map(e => e.textContent) : [];"""
    with browser.chromium() as driver:
        driver.get((out / "report.html").resolve().as_uri())
        cells = browser.wait_for("the context table", lambda: driver.execute_script(script), timeout_s=60, poll_s=0.5)
    contexts = [c for c in cells if "[" in c and "".join(c.split()) in expected]  # plotly wraps long cells: spaces aside
    assert len(contexts) >= 5, cells[:20]
    assert not [c for c in cells if "&quot;" in c and "x&quot;" not in "".join(c.split())], cells
    assert all(ch in "".join(contexts) for ch in '"&<>'), contexts


def test_the_app_page_shows_the_corpus_text_once_escaped(diff_run):
    from app.views import diff as view

    out, record = diff_run
    lines = view.context_lines(record)
    for t, line in zip(record["metrics"]["kl"]["top"], lines):
        left, token, right = _as_written(t)
        assert html_shows(line).startswith(f"{t['kl']:.4g} nats · row {t['row']} pos {t['pos']}: {left}{token}{right} "), line
        assert f"base → {t['base_top1_text']!r}" in html_shows(line)

    class Page:  # records what the page draws
        def __init__(self):
            self.calls = []

        def __getattr__(self, name):
            return (lambda *a, **k: self) if name == "expander" else (lambda *a, **k: self.calls.append((name, a)) or 0)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    page = Page()
    view.render(page, str(out.parent))
    html_calls = [a[0] for name, a in page.calls if name == "html"]
    assert len(html_calls) == 1 and "markdown" not in [name for name, _ in page.calls]  # markdown would read * _ $ ` too
    assert html_shows(html_calls[0]) == "".join(html_shows(line) for line in lines)
