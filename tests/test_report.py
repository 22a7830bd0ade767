"""``sbir-bench report``, opened in a real browser (Debian's headless Chromium through chromedriver):
the table, a run, every query and one query's top-k, two runs side by side; what the page shows is
held to the records and the saved embeddings, and its console holds no error."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import as_options, short_training

from sbir_bench.cli import main
from sbir_bench.records import beside_record
from sbir_bench.reporting.report import _thumb, ranked
from sbir_bench.retrieval.npz_files import load_embeddings

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two mini runs of the same query set (zero-shot CLIP and a short CoOp), embeddings saved."""
    out = tmp_path_factory.mktemp("runs")
    for method, extra in (("zeroshot-clip", []), ("coop", as_options(short_training({"eval.save_embeddings": True})))):
        result = CliRunner().invoke(main, ["run", method, "--output-dir", str(out), "--quiet", *extra])
        assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    result = CliRunner().invoke(main, ["report", str(runs), "-o", str(folder), "--quiet", "--thumb-queries", "30"])
    assert result.exit_code == 0, result.output
    return folder


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and DRIVER):
        if os.environ.get("CI"):
            pytest.fail("CI must test the report in a browser: .ci/run installs Debian's chromium and chromium-driver")
        pytest.skip("Debian's chromium and chromium-driver are not installed here (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.implicitly_wait(5)
    yield driver
    driver.quit()


def records(folder: Path) -> dict:
    """Method -> record, with ``_path`` (where it lies)."""
    return {r["method"]: r for r in ({**json.loads(p.read_text()), "_path": p} for p in folder.glob("*.json"))}


def page_runs(report: Path) -> list:
    """The runs as the report's data file lists them."""
    return json.loads((report / "data" / "report.js").read_text().split("=", 1)[1].rstrip(";\n"))["runs"]


def open_page(browser, report: Path, fragment: str):
    browser.get((report / "index.html").as_uri() + fragment)
    return browser


def css(browser, selector: str):
    from selenium.webdriver.common.by import By
    return browser.find_elements(By.CSS_SELECTOR, selector)


def rendered(browser, selector: str, n: int) -> list:
    """(class, text) of the ``n`` elements ``selector`` finds once the page shows that many, read in one
    script: the page may render a view twice (load, then its hash), so held element handles can go stale."""
    from selenium.webdriver.support.ui import WebDriverWait
    script = f"return [...document.querySelectorAll('{selector}')].map(e => [e.className, e.innerText])"
    WebDriverWait(browser, 10).until(lambda d: len(d.execute_script(script)) == n)
    return browser.execute_script(script)


def images_loaded(browser, selector: str = ".topk .hit img") -> int:
    """How many of the images ``selector`` finds the browser has decoded (waiting until all have)."""
    from selenium.webdriver.support.ui import WebDriverWait
    script = f"return [...document.querySelectorAll('{selector}')].map(i => i.complete && i.naturalWidth > 0)"
    WebDriverWait(browser, 10).until(lambda d: all(d.execute_script(script)))
    return sum(browser.execute_script(script))


def no_console_errors(browser) -> None:
    severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not severe, severe


def test_the_table_shows_each_run_as_the_records_say_and_sorts(browser, report, runs):
    recs = records(runs)
    open_page(browser, report, "#table")
    rows = css(browser, "#results tbody tr")
    assert len(rows) == 2
    head = [th.text for th in css(browser, "#results thead th")]
    column = head.index("mini ZS mAP@all")
    shown = {r.find_elements("css selector", "td")[0].text: r.find_elements("css selector", "td")[column].text for r in rows}
    for method, rec in recs.items():
        assert shown[method] == f"{rec['metrics']['mAP@all']:.3f} (1)"
    css(browser, "#results thead th")[column].click()  # best first
    first = css(browser, "#results tbody tr td")[0].text
    assert first == max(recs, key=lambda m: recs[m]["metrics"]["mAP@all"])
    no_console_errors(browser)


def test_a_run_shows_its_classes_and_curves(browser, report, runs):
    open_page(browser, report, "#runs")
    css(browser, "#runs tbody tr a")[0].click()
    classes = css(browser, "#per-class tbody tr")
    assert len(classes) == 5 and len(css(browser, "svg polyline")) >= 1  # the mini set's unseen classes; the PR curve
    no_console_errors(browser)


def test_every_query_is_listed_searchable_and_one_opens_with_its_top_k(browser, report, runs):
    recs = records(runs)
    open_page(browser, report, "#runs")
    links = {a.text: a.get_attribute("href") for a in css(browser, "#runs tbody tr td:last-child a")}
    assert set(links) == {str(recs["coop"]["n_queries"])}
    browser.get([h for h in links.values()][0])
    assert "page 1 of 4 (160 queries)" in browser.find_element("id", "view").text
    assert len(css(browser, "#query-list tbody tr")) == 50
    search = browser.find_element("id", "search")
    search.send_keys("kite\n")
    rows = css(browser, "#query-list tbody tr")
    assert len(rows) == 32 and all(r.find_elements("css selector", "td")[1].text == "kite" for r in rows)
    rows[0].find_element("css selector", "a").click()
    hits = css(browser, ".topk .hit")
    assert len(hits) == 10
    assert images_loaded(browser) == 10  # a query's photos all have thumbnails (the search's first is a chosen query)
    no_console_errors(browser)


def test_the_top_k_shown_is_the_runs_ranking(browser, report, runs):
    rec = records(runs)["coop"]
    data = load_embeddings(beside_record(rec["_path"], rec["embeddings"]))
    top, scores = ranked(data, "cosine", 10)
    coop = [r["id"] for r in page_runs(report) if r["method"] == "coop"][0]
    open_page(browser, report, f"#query/{coop}/7")
    hits = rendered(browser, ".topk .hit", len(top[7]))
    labels = data["gallery_labels"][top[7]] == data["query_labels"][7]
    assert [("right" in cls.split()) for cls, _ in hits] == labels.tolist()
    assert [text.strip().splitlines()[-1] for _, text in hits] == [f"score {s:.4f}" for s in scores[7]]


def test_two_runs_side_by_side(browser, report, runs):
    recs = records(runs)
    open_page(browser, report, "#compare")
    summary = browser.find_element("id", "compare-summary").text
    n = recs["coop"]["n_queries"]
    counts = [int(w) for w in summary.replace(",", "").split() if w.isdigit()]
    assert counts[-1] == n and sum(counts[:3]) == n  # higher + lower + equal = every query
    assert len(css(browser, "#class-diff tbody tr")) == 5
    rows = css(browser, "#pair-list tbody tr")
    deltas = [float(r.find_elements("css selector", "td")[4].text) for r in rows]
    assert deltas == sorted(deltas, reverse=True)  # A's largest wins first
    rows[0].find_element("css selector", "a").click()
    assert len(css(browser, "#pair-a .hit")) == len(css(browser, "#pair-b .hit")) == 10
    no_console_errors(browser)


def test_without_thumbnails_every_image_is_a_placeholder_and_nothing_fails(browser, runs, tmp_path):
    result = CliRunner().invoke(main, ["report", str(runs), "-o", str(tmp_path), "--quiet", "--thumb-queries", "0"])
    assert result.exit_code == 0, result.output
    open_page(browser, tmp_path, "#query/0/0")
    assert len(css(browser, ".topk .ph")) == 10  # (a count, not a wait for an element that must be absent:)
    assert browser.execute_script("return document.querySelectorAll('.topk img').length") == 0
    no_console_errors(browser)


def test_an_unreadable_image_makes_no_thumbnail_and_no_failure(tmp_path):
    made = {}
    assert _thumb(str(tmp_path / "gone.jpg"), tmp_path / "thumbs", 32, made) is None
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    assert _thumb(str(tmp_path / "broken.jpg"), tmp_path / "thumbs", 32, made) is None
    assert not (tmp_path / "thumbs").exists()


def test_the_folder_is_self_contained(report):
    import re
    html, js = (report / "index.html").read_text(), (report / "report.js").read_text()
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", html)  # no CDN: every file is beside the page
    assert "fetch(" not in js and "XMLHttpRequest" not in js  # no server: data comes in <script> files
    names = {p.name for p in (report / "data").iterdir()}
    assert "report.js" in names and {"run-0.js", "run-1.js"} <= names
    thumbs = list((report / "thumbs").glob("*.jpg"))
    assert 0 < len(thumbs) and all(p.stat().st_size < 20_000 for p in thumbs)


def test_runs_without_per_query_values_list_their_queries_and_say_why_they_cannot_be_compared(browser, runs, tmp_path):
    copy = tmp_path / "runs"
    shutil.copytree(runs, copy)
    for f in copy.glob("*/per_query.npz"):  # records of runs that saved embeddings but no per-query values
        f.unlink()
    for record in copy.glob("*.json"):
        record.write_text(json.dumps({**json.loads(record.read_text()), "per_query": None}))
    result = CliRunner().invoke(main, ["report", str(copy), "-o", str(tmp_path / "r"), "--quiet"])
    assert result.exit_code == 0, result.output
    open_page(browser, tmp_path / "r", "#queries/0")
    assert len(css(browser, "#query-list tbody tr")) == 50
    open_page(browser, tmp_path / "r", "#compare")
    assert "no common per-query metric" in browser.find_element("id", "failure").text
    no_console_errors(browser)


def test_a_damaged_history_leaves_the_curves_out_with_a_warning_not_the_report(runs, tmp_path, caplog):
    copy = tmp_path / "runs"
    shutil.copytree(runs, copy)
    for record in copy.glob("coop*.json"):
        record.write_text(json.dumps({**json.loads(record.read_text()), "train": {"history": [{"loss": 1.0}]}}))
    result = CliRunner().invoke(main, ["report", str(copy), "-o", str(tmp_path / "r"), "--quiet"])
    assert result.exit_code == 0, result.output
    coop = [r for r in page_runs(tmp_path / "r") if r["method"] == "coop"][0]
    assert coop["history"] == [] and "training history is damaged" in caplog.text
