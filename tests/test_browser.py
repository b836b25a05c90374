"""report.html opened in a real browser: headless Chromium (Debian's package), driven by
Playwright's Python package pointed at that executable. Playwright rather than Selenium: console
messages, network requests and dialogs are events it hands over directly, and it needs no
chromium-driver of the browser's exact version. `.ci/run` installs the browser, so CI never skips."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).is_file()), None)
playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (requirements-dev.txt)")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium: apt-get install -y chromium (.ci/run does, as root)"
)


def _open(path: Path, shot: Path, width: int = 390):
    """Load ``path`` at a phone's width; returns (page facts, console errors, requests, dialogs)."""
    errors, requests, dialogs = [], [], []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": width, "height": 844})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(path.as_uri())
        page.wait_for_load_state("load")
        facts = page.evaluate(
            """() => ({
                sections: [...document.querySelectorAll('section')].map(s => ({id: s.id,
                    visible: s.getBoundingClientRect().height > 0 && getComputedStyle(s).display !== 'none'})),
                images: [...document.images].map(i => ({complete: i.complete, width: i.naturalWidth})),
                overflow: document.documentElement.scrollWidth - window.innerWidth,
                text: document.body.innerText,
            })"""
        )
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    return facts, errors, [u for u in requests if u != path.as_uri()], dialogs


def test_the_report_renders_offline_on_a_phone_and_runs_no_class_name(trained_run, tmp_path):
    from asl.report import SECTIONS, write_report

    report = trained_run["out"] / "report.html"  # what the run wrote
    facts, errors, requests, dialogs = _open(report, tmp_path / "report.png")
    assert errors == [] and requests == [] and dialogs == []
    assert [s["id"] for s in facts["sections"]] == list(SECTIONS) and all(s["visible"] for s in facts["sections"])
    assert facts["images"] and all(i["complete"] and i["width"] > 0 for i in facts["images"])
    assert facts["overflow"] <= 0  # no horizontal scrolling at 390 px
    assert (tmp_path / "report.png").stat().st_size > 10_000

    rng = np.random.default_rng(0)
    names = ["<script>alert(1)</script>", "cat", 'dog"><img src=x onerror=alert(2)>']
    targets = (rng.random((40, 3)) < 0.4).astype(np.float32)
    scores = rng.random((40, 3)).astype(np.float32)
    hostile = tmp_path / "hostile.html"
    pics = sorted((trained_run["data"] / "img").glob("*.png"))[:40]
    write_report(
        hostile,
        scores=scores,
        targets=targets,
        class_names=names,
        image_paths=[str(p) for p in pics],
        per_class_ap=np.array([0.5, 0.6, 0.7]),
        title="<b>t</b>",
        headline={"mAP": 60.0},
    )
    facts, errors, requests, dialogs = _open(hostile, tmp_path / "hostile.png")
    assert dialogs == [] and errors == [] and requests == []
    assert "<script>alert(1)</script>" in facts["text"]  # shown as text, not run


def test_the_docs_screenshot_comes_from_the_browser(trained_run, tmp_path):
    """docs/figures/report.png is what this browser draws of a report: regenerate it with
    ``ASL_WRITE_FIGURES=1 ASL_SCREENSHOT_REPORT=runs/demo/report.html pytest tests/test_browser.py``."""
    import os

    from tests.helpers import REPO

    shot = tmp_path / "report.png"
    _open(Path(os.environ.get("ASL_SCREENSHOT_REPORT") or trained_run["out"] / "report.html"), shot, width=980)
    assert shot.stat().st_size > 10_000
    if os.environ.get("ASL_WRITE_FIGURES"):
        shutil.copy(shot, REPO / "docs" / "figures" / "report.png")
    assert (REPO / "docs" / "figures" / "report.png").is_file()
