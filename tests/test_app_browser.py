"""End to end in a real browser: the app on tiny saved models, in headless Debian Chromium via Selenium.

Starts ``streamlit run app/main.py`` on a free port, types a prompt, submits it, waits until every figure
of that prompt is drawn (the definition lives in ``app/latency/browser.py``, shared with the
latency benchmark), checks the views' titles, and saves a screenshot (to ``$WORKBENCH_SCREENSHOT_DIR``
when set, else the test's tmp folder). Nothing is downloaded: it uses ``/usr/bin/chromium`` and
``/usr/bin/chromedriver`` (Debian ``chromium`` and ``chromium-driver``) and skips when they are missing,
unless ``WORKBENCH_REQUIRE_BROWSER=1`` (CI), where it fails instead.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "The apple is in Box F, the key is in Box C. Box C contains the"
#: predictions 4 + residual stream 3 + attention 2 + heads & neurons 2 + LoFiT 2 + run results 7
EXPECTED_FIGURES = 20
TITLES = ["Next-token predictions", "Per-token KL", "Logit lens", "resid_post", "Attention pattern", "Per-head output difference",
          "changed MLP neurons", "LoFiT offsets", "Held-out accuracy"]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from app.latency import browser

    missing = browser.missing_browser()
    if missing:
        msg = f"the browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver; pip install selenium)"
        if os.environ.get("WORKBENCH_REQUIRE_BROWSER") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    from app.latency.tiny import make_tiny_pair

    root = tmp_path_factory.mktemp("browser")
    base, run, runs = make_tiny_pair(root)
    with browser.app_server(str(base), str(run), str(runs), root / "streamlit.log") as (url, _), browser.chromium() as driver:
        yield driver, url, root


def test_prompt_to_figures_in_headless_chromium(page):
    from app.latency import browser

    driver, url, root = page
    started = time.monotonic()
    driver.get(url)
    assert browser.wait_rendered(driver, None, 60) == 2 + 7  # models loaded: the method and run-results views
    browser.enter_prompt(driver, PROMPT)
    browser.click_analyse(driver)
    assert browser.wait_rendered(driver, PROMPT, 45) == EXPECTED_FIGURES
    titles = browser.figure_titles(driver)
    for title in TITLES:
        assert title in titles, f"no figure titled ...{title}... on the page"
    text = browser.page_text(driver)
    assert "Traceback" not in text and "Cannot" not in text and "tokens. Next token" in text
    out = Path(os.environ.get("WORKBENCH_SCREENSHOT_DIR", root))
    out.mkdir(parents=True, exist_ok=True)
    shot = out / "app_browser_test.png"
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    assert time.monotonic() - started < 60
