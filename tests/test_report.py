"""asl.report: report.html is written by validate.py --output and by training; it is one
self-contained page: every section, every picture inline, nothing fetched from a network."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser

import numpy as np
from PIL import Image

from asl.report import SECTIONS, render_report
from tests.helpers import call


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sections, self.images, self.links, self.viewport = [], [], [], False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a.get("id"))
        if tag == "img":
            self.images.append(a.get("src", ""))
        if tag in ("script", "link") or (tag == "a" and "href" in a):
            self.links.append((tag, a))
        if tag == "meta" and a.get("name") == "viewport":
            self.viewport = True


def check_page(text: str, min_pictures: int) -> _Page:
    page = _Page()
    page.feed(text)
    assert page.sections == list(SECTIONS)
    assert page.viewport and not page.links  # readable on a phone; no script, stylesheet or link to fetch
    assert "http://" not in text and "https://" not in text
    pictures = 0
    for src in page.images:
        head, data = src.split(",", 1)
        assert head in ("data:image/png;base64", "data:image/jpeg;base64")
        Image.open(io.BytesIO(base64.b64decode(data))).verify()  # each inline picture decodes
        pictures += head.endswith("jpeg;base64")
    assert len(page.images) >= 4 + min_pictures and pictures >= min_pictures
    return page


def test_validate_output_writes_the_report(trained_run, tmp_path, capsys):
    rc, out, err = call(
        "validate",
        ["--model-path", trained_run["out"] / "best.pth", "--workers", "0", "--output", tmp_path / "v", "--calibrate"],
        capsys,
    )
    assert rc == 0, err
    text = (tmp_path / "v" / "report.html").read_text()
    check_page(text, min_pictures=2)
    assert "(red: the calibrated thresholds)" in text and "CF1 (calibrated)" in text


def test_training_writes_the_report_of_its_best_checkpoint(trained_run):
    text = (trained_run["out"] / "report.html").read_text()
    check_page(text, min_pictures=2)
    assert "best.pth (epoch" in text


def test_the_contact_sheet_holds_the_most_confident_errors():
    scores = np.array([[0.99, 0.1], [0.2, 0.05], [0.6, 0.9]], np.float32)
    targets = np.array([[0, 1], [1, 0], [1, -1]], np.float32)
    paths = [f"/nowhere/{i}.jpg" for i in range(3)]
    text = render_report(
        scores=scores,
        targets=targets,
        class_names=["cat", "dog"],
        image_paths=paths,
        per_class_ap=np.array([0.5, 1.0]),
        title="t",
        headline={"mAP": 75.0},
    )
    sheet = text.split("id='contact-sheet'")[1]
    fp, missed = sheet.split("Most missed positives")
    assert "<b>cat</b> 0.990 (not a label)" in fp  # row 0's cat: the most confident false positive
    assert fp.index("0.990") < fp.index("0.050")
    assert "<b>dog</b> 0.100 (a missed label)" in missed and missed.index("0.100") < missed.index("0.200")
    assert "0.900" not in missed  # an unknown label is neither


def test_class_names_in_matplotlib_mathtext_are_drawn_as_plain_text(tmp_path, capsys):
    from asl.data import inspect
    from tests.conftest import make_tagged
    from tests.helpers import TINY

    names = ("$\\frac$", "a_$x^$", "$$", "tree")
    data = make_tagged(tmp_path / "d", n_train=16, n_val=8, classes=names)
    rc, _, err = call("train", [data, "--dataset", "tagged", *TINY, "--output", tmp_path / "run"], capsys)
    assert rc == 0, err
    page = (tmp_path / "run" / "report.html").read_text()
    assert "$\\frac$" in page and "a_$x^$" in page
    rc, _, err = call(
        "validate", [data, "--model-path", tmp_path / "run" / "best.pth", "--output", tmp_path / "val"], capsys
    )
    assert rc == 0, err
    assert (tmp_path / "val" / "report.html").is_file()
    rc, _, err = call(inspect.main, [data, "--output", tmp_path / "insp"], capsys)
    assert rc == 0, err
    assert (tmp_path / "insp" / "positives.png").is_file()
