"""How long `sbir-bench report` takes and how large its folder is for a QuickDraw-Ext-sized run.

    python benchmarks/report_size.py [--queries 92291] [--gallery 54151] [--dim 512]

One synthetic record of QuickDraw-Ext's zero-shot test size (92,291 sketches x 54,151 photos, 30
classes, 512-d embeddings; 1,000 distinct tiny images behind the paths, so thumbnails are really made)
is reported with the default limits. Printed: the build's wall time against the floor of what any
report must do (ranking every query's top-k: the blocked similarity and torch.topk alone, measured in
the same process), and the folder's size by part. Run it with nothing else running.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image


def synthetic_run(root: Path, n_q: int, n_g: int, dim: int, classes: int = 30) -> Path:
    """A mini zero-shot record rewritten to QuickDraw-Ext's test size, with its embeddings and per-query values."""
    from sbir_bench.cli import main
    from sbir_bench.retrieval.npz_files import save_embeddings
    runs = root / "runs"
    result = CliRunner().invoke(main, ["run", "zeroshot-clip", "--output-dir", str(runs), "--quiet"])
    assert result.exit_code == 0, result.output
    record_path = next(runs.glob("*.json"))
    record = json.loads(record_path.read_text())
    rng = np.random.default_rng(0)
    images = root / "images"
    images.mkdir()
    pool = []
    for i in range(1000):
        p = images / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(p)
        pool.append(str(p))
    ql, gl = rng.integers(0, classes, n_q), rng.integers(0, classes, n_g)
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    query = centres[ql] + rng.normal(scale=2.0, size=(n_q, dim)).astype(np.float32)
    gallery = centres[gl] + rng.normal(scale=2.0, size=(n_g, dim)).astype(np.float32)
    folder = record_path.with_suffix("")
    save_embeddings(folder / "embeddings.npz", query, gallery, ql, gl,
                    query_paths=[pool[i % 1000] for i in range(n_q)], gallery_paths=[pool[i % 1000] for i in range(n_g)])
    ap = rng.random(n_q)
    np.savez_compressed(folder / "per_query.npz", query_index=np.arange(n_q), AP_at_all=ap, mAP_at_200=ap,
                        P_at_100=rng.random(n_q), P_at_200=rng.random(n_q))
    record.update(n_queries=n_q, class_names=[f"class_{c}" for c in range(classes)],
                  per_class_map={str(c): float(rng.random()) for c in range(classes)})
    record_path.write_text(json.dumps(record))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=92291)
    parser.add_argument("--gallery", type=int, default=54151)
    parser.add_argument("--dim", type=int, default=512)
    args = parser.parse_args()
    from sbir_bench.cli import main as cli
    from sbir_bench.reporting.report import ranked
    from sbir_bench.retrieval.npz_files import load_embeddings
    with tempfile.TemporaryDirectory() as tmp:
        runs = synthetic_run(Path(tmp), args.queries, args.gallery, args.dim)
        data = load_embeddings(next(runs.glob("*/embeddings.npz")))
        t0 = time.perf_counter()
        ranked(data, "cosine", 10)
        floor = time.perf_counter() - t0
        out = Path(tmp) / "report"
        t0 = time.perf_counter()
        result = CliRunner().invoke(cli, ["report", str(runs), "-o", str(out), "--quiet"])
        build = time.perf_counter() - t0
        assert result.exit_code == 0, result.output
        sizes = {part: sum(p.stat().st_size for p in (out / part).rglob("*") if p.is_file()) for part in ("data", "thumbs")}
        print(f"{args.queries:,} queries x {args.gallery:,} photos, {args.dim}-d: report built in {build:.1f} s; "
              f"the top-k ranking alone {floor:.1f} s (floor): {build / floor:.2f}x the floor")
        print(f"folder: data {sizes['data'] / 2**20:.1f} MiB ({sizes['data'] / args.queries:.0f} bytes per query), "
              f"thumbnails {sizes['thumbs'] / 2**20:.1f} MiB ({len(list((out / 'thumbs').glob('*.jpg')))} files)")
        browse(out)


def browse(out: Path) -> None:
    """In headless Chromium (where installed): seconds to open the query list (loading the run's data
    and sorting every query), to re-sort it by another column, and to search it."""
    import shutil
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        print("browser timings skipped: Debian's chromium and chromium-driver are not installed")
        return
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait
    options = Options()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    rows = "return document.querySelectorAll('#query-list tbody tr').length"
    try:
        t0 = time.perf_counter()
        driver.get((out / "index.html").as_uri() + "#queries/0")
        WebDriverWait(driver, 120).until(lambda d: d.execute_script(rows) == 50)
        opened = time.perf_counter() - t0
        t0 = time.perf_counter()
        driver.execute_script("[...document.querySelectorAll('#query-list thead th')].find(t => t.textContent === 'P@100')"
                              ".click()")
        WebDriverWait(driver, 60).until(lambda d: "sorted by P@100" in d.find_element("id", "view").text)
        resorted = time.perf_counter() - t0
        t0 = time.perf_counter()
        driver.execute_script("const s = document.getElementById('search'); s.value = 'class_7'; "
                              "s.dispatchEvent(new Event('change'))")
        WebDriverWait(driver, 60).until(lambda d: "class_7" in d.find_element("id", "search").get_attribute("value")
                                        and d.execute_script(rows) > 0)
        searched = time.perf_counter() - t0
        print(f"headless Chromium: query list opened in {opened:.2f} s (data loaded, every query sorted), re-sorted "
              f"in {resorted:.2f} s, searched in {searched:.2f} s")
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
