"""``harness leaderboard --format html``: the self-contained page, the asv history, and a headless-browser check.

The browser tests drive Debian's Chromium through selenium; they are skipped (with how to install it) when
chromium, chromedriver or selenium is missing. ``HARNESS_SCREENSHOT_DIR=dir`` keeps a copy of the screenshot.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.cli import main
from harness.report.html import ASV_COMMAND, plot_family, read_asv_history, render_html, write_html
from harness.report.leaderboard import Row, Table, build_tables
from harness.report.plots import plot_main_metric
from harness.core.records import Store
from harness.core.cell import RunSpec
from harness.core.runner import run
from toy_plugin import toy_spec

CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars", "--force-device-scale-factor=1")
VIEWPORT = (1280, 900)
EVIL = '<script>alert("x")</script> & co'


# ---------------------------------------------------------------- helpers
def toy_tables(results_dir: Path) -> tuple[list[Table], int]:
    """Tables of a real toy run (2 methods x 2 seeds) and how many records they came from."""
    run(toy_spec(results_dir, ["toy-good", "toy-zero"], seeds=(0, 1)))
    records = Store(results_dir).load_all()
    return build_tables(records), len(records)


def synthetic_table(task: str, methods: list[str], n_metrics: int = 2, commit: str = "0123456789abcdef") -> Table:
    """A table of an unregistered task (every metric shown), the first method a baseline."""
    names = ["score"] + [f"metric_{i:02d}" for i in range(n_metrics - 1)]
    table = Table(task, "1", "-", "cafef00d" * 2, "score", True, names)
    for i, m in enumerate(methods):
        table.rows.append(Row(method=m, method_version="2", baseline=i == 0, seeds=[0, 1, 2],
                              main=(0.9 - 0.1 * i, 0.01), metrics={k: 0.5 + i for k in names},
                              wall_s=1.25, peak_rss_mb=321.0, commit=commit, dirty=i == 1))
    table.rows.sort(key=lambda r: -r.main[0])
    return table


def write_png(path: Path, size: tuple[float, float] = (3, 2)) -> Path:
    """A real PNG (a matplotlib figure, 60 pixels per inch of ``size``) at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    ax.plot([0, 1, 2], [1, 0, 2])
    fig.savefig(path, dpi=60)
    plt.close(fig)
    return path


def asv_results(root: Path) -> Path:
    """A synthetic asv 0.6 results tree: one machine, three commits (file order != date order), a parametrised
    track benchmark, a null result, a time_ benchmark (not tracked), a corrupt file and one of another format."""
    machine = root / "ci-box"
    machine.mkdir(parents=True)
    (machine / "machine.json").write_text(json.dumps({"machine": "ci-box", "version": 1}))
    (root / "benchmarks.json").write_text(json.dumps({"version": 2}))
    cols = ["result", "params", "version", "started_at", "duration"]
    commits = [("aaaaaaaa1111", 3000, 0.91, 0.5), ("bbbbbbbb2222", 1000, 0.80, 0.7), ("cccccccc3333", 2000, 0.85, None)]
    for commit, date, acc, wine in commits:
        doc = {"commit_hash": commit, "env_name": "existing-py", "date": date * 1000, "params": {},
               "python": "3.11", "requirements": {}, "env_vars": {}, "result_columns": cols, "version": 2,
               "results": {
                   "bench_models.QualitySuite.track_acc": [[acc], [], "v1", 0, 1.0],
                   "bench_models.track_by_task": [[wine, 0.25], [["'wine'", "'digits'"]], "v1"],
                   "bench_models.track_failed": [None, []],
                   "bench_models.TimeSuite.time_run": [[12.5], [], "v1"],
               }}
        (machine / f"{commit[:8]}-existing-py.json").write_text(json.dumps(doc))
    (machine / "dddddddd-broken.json").write_text("{not json")
    (machine / "eeeeeeee-old.json").write_text(json.dumps({"commit_hash": "eeeeeeee", "results": {}}))
    return root


def html_resources(page: str) -> list[str]:
    """Every src= / href= value of the page."""
    return re.findall(r"""\b(?:src|href)\s*=\s*["']?([^"'\s>]*)""", page)


# ---------------------------------------------------------------- unit tests (no browser)
@pytest.fixture
def page_inputs(results_dir: Path, tmp_path: Path) -> dict[str, Any]:
    tables, n = toy_tables(results_dir)
    tables += [synthetic_table("fama/one", ["alpha", EVIL]), synthetic_table("fama/two", ["beta", "gamma"]),
               synthetic_table("famb/wide", ["delta", "eps"], n_metrics=25)]
    plot_dir = tmp_path / "plots"
    plots = plot_main_metric(tables, plot_dir)
    plots += [write_png(plot_dir / "fama_curves.png"), write_png(plot_dir / "famb-roc-1.png", (16, 2)),
              write_png(plot_dir / "unmatched.png")]
    return {"tables": tables, "plots": plots, "n_records": n}


def test_page_has_every_table_grouped_by_family_with_toc(page_inputs):
    tables = page_inputs["tables"]
    page = render_html(tables, page_inputs["plots"], n_records=page_inputs["n_records"])
    assert page.count("<table") == len(tables) == 4
    assert f"from {page_inputs['n_records']} result records: 4 tables in 3 families" in page
    # without n_records the page counts the records behind the rows: 2 toy rows x 2 seeds + 3 x 2 synthetic rows x 3
    assert "from 22 result records" in render_html(tables, page_inputs["plots"])
    families = re.findall(r'<section class="family" id="family-([^"]+)"', page)
    assert families == ["fama", "famb", "toy"]
    for t in tables:
        anchor = re.search(r'<section class="task" id="([^"]+)"><h3>' + re.escape(t.title), page).group(1)
        assert f'href="#{anchor}"' in page  # in the table of contents
    # the toy table: ranked (lower err first), its shown metric, runtime, baseline badge, provenance
    toy = page.split('id="family-toy"')[1]
    assert toy.index("toy-good") < toy.index("toy-zero")
    assert "err (95% CI)" in toy and ">score<" in toy and ">wall s<" in toy and ">peak MiB<" in toy
    assert re.search(r'<tr class="baseline" title="commit: [^"]*; dirty: [^"]*; method version: 1; seeds: 0, 1">'
                     r'<td class="num">2</td><td class="text method">toy-zero <span class="badge">baseline</span>', toy)
    assert toy.count("<details>") == 2
    assert "method version" in toy and "seeds: 0, 1" in toy


def test_metrics_the_task_does_not_show_are_listed_behind_a_details(results_dir, monkeypatch):
    import sys

    tables, _ = toy_tables(results_dir)
    assert '<details class="hidden-metrics">' not in render_html(tables, [])
    monkeypatch.setattr(sys.modules["toy_plugin"].ToyTask, "leaderboard_metrics", ())
    page = render_html(tables, [])
    assert ">score<" not in page.split("<table")[1]  # not a column any more
    assert re.search(r'<details class="hidden-metrics"><summary>1 more metrics per row</summary>'
                     r'<p><code>score</code>', page)


def test_plots_are_embedded_in_their_family_sections(page_inputs):
    plots = page_inputs["plots"]
    page = render_html(page_inputs["tables"], plots)
    uris = re.findall(r'<img src="(data:image/png;base64,[^"]+)" alt="[^"]+"', page)
    assert len(uris) == len(plots) == 7
    assert base64.b64decode(uris[0].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert 'alt="fama curves" width="180" height="120">' in page  # the PNG's own size, so nothing reflows
    assert re.search(r'<figure class="wide"><img [^>]+ alt="famb roc 1" width="960"', page)  # spans the row
    before_other, other = page.split('<section id="other-plots">')
    chunks = before_other.split('<section class="family" id="family-')[1:]
    sections = {c.split('"', 1)[0]: c for c in chunks}
    other = other.split("</section>")[0]
    assert "fama_curves.png" in sections["fama"] and "main-fama_one-" in sections["fama"]
    assert "famb-roc-1.png" in sections["famb"] and "main-toy_vector-" in sections["toy"]
    assert "unmatched.png" in other and "unmatched.png" not in "".join(sections.values())


@pytest.mark.parametrize("name, family", [
    ("main-circuits_ioi-8dd403e6.png", "circuits"), ("reconstruction_fidelity_vs_l0.png", "reconstruction"),
    ("icl-linear-d5-curves.png", "icl"), ("circuits-roc-ioi.png", "circuits"), ("iclx-foo.png", None),
    ("main-icl2_x-1.png", "icl2"), ("summary.png", None),
])
def test_plot_family_matches_by_file_name_prefix(name, family):
    assert plot_family(Path(name), ["circuits", "reconstruction", "icl", "icl2"]) == family


def test_page_is_self_contained(page_inputs):
    page = render_html(page_inputs["tables"], page_inputs["plots"], read_asv_history(Path("/nonexistent")))
    assert "http://" not in page and "https://" not in page and "url(" not in page
    assert "<script" not in page and "<link rel=\"stylesheet\"" not in page
    resources = html_resources(page)
    assert resources and all(r.startswith(("data:", "#")) for r in resources), resources


def test_everything_from_records_is_escaped():
    evil_task = 'fam<x>/t"q'
    table = synthetic_table(evil_task, ["plain", EVIL], commit='<b>"deadbeef"</b>')
    page = render_html([table], [], title="<i>title</i>")
    assert "<script>" not in page and "<b>" not in page and "<i>title" not in page and "fam<x>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co" in page
    assert "fam&lt;x&gt;" in page and "&lt;i&gt;title&lt;/i&gt;" in page
    assert 'title="commit: &lt;b&gt;&quot;deadbeef&quot;&lt;/b&gt;;' in page  # inside an attribute, quotes too


def test_read_asv_history_keeps_track_benchmarks_in_commit_order(tmp_path, capsys):
    history = read_asv_history(asv_results(tmp_path / "asv"))
    err = capsys.readouterr().err  # unreadable files are skipped with a warning, not fatal
    assert "dddddddd-broken.json" in err and "eeeeeeee-old.json" in err and "missing date, result_columns" in err
    assert history == {
        "bench_models.QualitySuite.track_acc": [("bbbbbbbb2222", 1e6, 0.80), ("cccccccc3333", 2e6, 0.85),
                                                ("aaaaaaaa1111", 3e6, 0.91)],
        "bench_models.track_by_task('digits')": [("bbbbbbbb2222", 1e6, 0.25), ("cccccccc3333", 2e6, 0.25),
                                                 ("aaaaaaaa1111", 3e6, 0.25)],
        "bench_models.track_by_task('wine')": [("bbbbbbbb2222", 1e6, 0.7), ("aaaaaaaa1111", 3e6, 0.5)],
    }


def test_history_is_an_inline_svg_per_tracked_benchmark(tmp_path):
    history = read_asv_history(asv_results(tmp_path / "asv"))
    page = render_html([synthetic_table("fama/one", ["alpha"])], [], history)
    assert page.count("<svg") == 3 and page.count("<polyline") == 3
    assert "<title>bbbbbbbb · 1970-01-01 · 0.8</title>" in page  # hover: short hash, date, value
    assert "bench_models.QualitySuite.track_acc" in page and "time_run" not in page
    assert ASV_COMMAND not in page


def test_quick_suite_cells_share_their_task_chart_and_changes_are_listed():
    pts = lambda *vals: [(f"{i:08d}aaaa", 1e6 * (i + 1), v) for i, v in enumerate(vals)]  # noqa: E731
    history = {"m.TrackX.track_x('fam/t1|alpha')": pts(0.5, 0.6), "m.TrackX.track_x('fam/t1|beta')": pts(0.7, 0.7),
               "m.TrackX.track_x('fam/t2|alpha')": pts(0.1, 0.1)}
    page = render_html([synthetic_table("fam/t1", ["alpha"])], [], history)
    assert page.count("<svg") == 2 and page.count("<polyline") == 3  # one chart per task, one line per method
    assert "alpha · 00000001 ·" in page and "beta: 0.7</li>" in page and "(+0.1)" in page
    changes = page.split("Changed at the latest commit")[1].split("</table>")[0]
    assert "fam/t1|alpha" in changes and "beta" not in changes and "t2" not in changes


def test_missing_asv_results_say_how_to_create_them(tmp_path):
    assert read_asv_history(tmp_path / "none") == {}
    page = render_html([], [], {}, history_source=tmp_path / "none")
    assert "No results yet" in page and "<svg" not in page
    assert ASV_COMMAND in page and str(tmp_path / "none") in page


def test_write_html_is_atomic_and_returns_the_path(tmp_path, page_inputs):
    path = write_html(tmp_path / "out" / "lb.html", page_inputs["tables"][:1], [])
    assert path.read_text().startswith("<!DOCTYPE html>")
    assert [p.name for p in path.parent.iterdir()] == ["lb.html"]  # no temporary file left behind


def test_cli_leaderboard_html(capsys, results_dir, tmp_path):
    run(toy_spec(results_dir, ["toy-good", "toy-zero"]))
    asv = asv_results(tmp_path / "asv")
    assert main(["leaderboard", "--format", "html", "--results-dir", str(results_dir), "--asv-results", str(asv)]) == 0
    out = capsys.readouterr().out
    assert out.strip() == str(results_dir / "leaderboard.html")  # the path, no markdown
    page = (results_dir / "leaderboard.html").read_text()
    assert "from 6 result records" in page and "toy-good" in page and page.count("<svg") == 3
    assert "data:image/png;base64," in page  # the main-metric plot
    custom = tmp_path / "custom.html"
    assert main(["leaderboard", "--format", "html", "--results-dir", str(results_dir), "--out", str(custom),
                 "--asv-results", str(tmp_path / "none")]) == 0
    assert capsys.readouterr().out.strip() == str(custom) and ASV_COMMAND in custom.read_text()


# ---------------------------------------------------------------- headless browser
def chromium_paths() -> tuple[str, str] | None:
    """(chromium, chromedriver) executables, or None."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@contextmanager
def chromium(viewport: tuple[int, int] = VIEWPORT) -> Iterator[Any]:
    """A headless Chromium driven by selenium, with a fresh profile and the console log enabled."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    paths = chromium_paths()
    if paths is None:
        raise RuntimeError("chromium/chromedriver not found: apt-get install chromium chromium-driver")
    profile = tempfile.mkdtemp(prefix="harness-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = paths[0]
    for flag in (*CHROMIUM_FLAGS, f"--window-size={viewport[0]},{viewport[1]}", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=paths[1]))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def page_size(driver: Any, timeout_s: float = 10.0) -> tuple[int, int]:
    """(width, height) of the loaded document in CSS pixels, waiting until it is laid out (right after a
    navigation Chromium can briefly report 0)."""
    deadline = time.monotonic() + timeout_s
    while True:
        ready, width, height = driver.execute_script(
            "const e = document.documentElement;"
            "return [document.readyState === 'complete', e.scrollWidth, e.scrollHeight];")
        if ready and width > 0 and height > 0:
            return width, height
        if time.monotonic() > deadline:
            raise RuntimeError(f"page not laid out after {timeout_s} s (ready {ready}, size {width}x{height})")
        time.sleep(0.05)


def full_page_screenshot(driver: Any, path: Path) -> Path:
    """A PNG of the whole page (not only the viewport) through the DevTools protocol."""
    width, height = page_size(driver)
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}})
    path = Path(path)
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def keep_screenshot(shot: Path) -> None:
    """Copy a screenshot to ``$HARNESS_SCREENSHOT_DIR`` when it is set (to look at it after the run)."""
    if os.environ.get("HARNESS_SCREENSHOT_DIR"):
        keep = Path(os.environ["HARNESS_SCREENSHOT_DIR"])
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, keep / shot.name)


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path, list[Table]]]:
    """A page from a real toy run plus a wide synthetic family and an asv history, open in headless Chromium."""
    if chromium_paths() is None:
        pytest.skip("chromium/chromedriver not installed: `apt-get install chromium chromium-driver` "
                    "to run the headless-browser test of the HTML leaderboard")
    pytest.importorskip("selenium", reason="selenium missing: pip install -e '.[dev]'")
    root = tmp_path_factory.mktemp("html-browser")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_CACHE", str(root / "cache"))
        tables, n = toy_tables(root / "results")
    tables.append(synthetic_table("famb/wide", ["delta", EVIL], n_metrics=30))
    plots = plot_main_metric(tables, root / "plots")
    page = write_html(root / "leaderboard.html", tables, plots, read_asv_history(asv_results(root / "asv")),
                      n_records=n)
    with chromium() as driver:
        yield driver, page, tables


@pytest.mark.browser
def test_browser_shows_every_table_image_and_chart_without_console_errors(browser_page):
    from selenium.webdriver.common.by import By

    driver, page, tables = browser_page
    start = time.perf_counter()
    driver.get(page.as_uri())
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == [], severe
    shown = driver.find_elements(By.CSS_SELECTOR, "section.family table")
    assert len(shown) == len(tables) and all(t.is_displayed() for t in shown)
    changes = driver.find_element(By.CSS_SELECTOR, "#history table")  # what the latest commit changed
    assert changes.is_displayed() and "track_acc" in changes.text
    for section in ("family-toy", "family-famb", "history"):
        assert driver.find_element(By.ID, section).is_displayed()
    good = driver.find_element(By.XPATH, "//td[contains(@class, 'method')][contains(., 'toy-good')]")
    assert good.is_displayed() and good.text == "toy-good"
    evil = driver.find_element(By.XPATH, "//td[contains(@class, 'method')][contains(., 'alert')]")
    assert evil.text.startswith(EVIL)  # shown as text, never run
    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth]);")
    assert len(images) == len(tables) and all(done and width > 0 for _, done, width in images), images
    assert len([s for s in driver.find_elements(By.CSS_SELECTOR, "svg.history") if s.is_displayed()]) == 3
    # provenance opens on click; the wide table scrolls inside its box instead of widening the page
    details = driver.find_element(By.CSS_SELECTOR, "td.prov details")
    assert not details.find_element(By.TAG_NAME, "dl").is_displayed()
    details.find_element(By.TAG_NAME, "summary").click()
    assert details.find_element(By.TAG_NAME, "dl").is_displayed() and "method version" in details.text
    widths = driver.execute_script(
        "const s = document.getElementById('family-famb').querySelector('.scroll');"
        "return [document.documentElement.scrollWidth, window.innerWidth, s.scrollWidth, s.clientWidth];")
    assert widths[0] <= widths[1] and widths[2] > widths[3], widths
    print(f"browser checks: {time.perf_counter() - start:.2f} s")


@pytest.mark.browser
def test_browser_full_page_screenshot_is_not_blank(browser_page, tmp_path):
    import matplotlib.image as mpimg

    driver, page, _ = browser_page
    driver.get(page.as_uri())
    shot = full_page_screenshot(driver, tmp_path / "leaderboard.png")
    keep_screenshot(shot)
    pixels = mpimg.imread(shot)
    height, width = pixels.shape[:2]
    assert width == VIEWPORT[0] and height > VIEWPORT[1]  # the whole page, taller than one screen
    colours = np.unique(pixels[::4, ::4, :3].reshape(-1, 3), axis=0)
    assert len(colours) > 1, "the screenshot is blank"
    not_white = float(np.mean(np.any(pixels[..., :3] < 0.95, axis=-1)))
    assert not_white > 0.02 and not math.isnan(not_white), f"only {not_white:.1%} of the page is drawn"


@pytest.mark.browser
def test_a_real_page_renders_every_family(tmp_path):
    """A page built from real records, named by ``HARNESS_HTML_PAGE`` (CI builds it from the quick suite);
    ``HARNESS_HTML_FAMILIES=a,b,...`` lists the families whose tables and plots it must show."""
    from selenium.webdriver.common.by import By

    page = os.environ.get("HARNESS_HTML_PAGE")
    if not page:
        pytest.skip("set HARNESS_HTML_PAGE=<leaderboard.html> (and HARNESS_HTML_FAMILIES) to check a real page")
    if chromium_paths() is None:
        pytest.skip("chromium/chromedriver not installed: `apt-get install chromium chromium-driver`")
    families = [f for f in os.environ.get("HARNESS_HTML_FAMILIES", "").split(",") if f]
    with chromium() as driver:
        driver.get(Path(page).resolve().as_uri())
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert severe == [], severe
        for family in families:
            section = driver.find_element(By.ID, f"family-{family}")
            tables = section.find_elements(By.TAG_NAME, "table")
            images = section.find_elements(By.TAG_NAME, "img")
            assert tables and all(t.is_displayed() for t in tables), f"{family}: no table shown"
            assert images, f"{family}: no plot"
        broken = driver.execute_script(
            "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt);")
        assert broken == [], f"images that did not decode: {broken}"
        shot = full_page_screenshot(driver, tmp_path / "real-page.png")
        keep_screenshot(shot)
