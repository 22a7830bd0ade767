"""Full-size hollow copies of the published test sets, and `datasets check` at QuickDraw-Ext scale.

    python benchmarks/dataset_check.py /tmp/hollow        # needs ~2 GB of directory entries, no data
    python benchmarks/dataset_check.py /tmp/hollow --skip-layouts

1. Every layout of every public copy (sbir_bench/testing/hollow_copies.py), from the whole zero-shot lists of SAKE
   and ZSE-SBIR: the ZS task a run builds must be the published test set (Sketchy also with
   ``data.gallery: published``); each line says PASS or FAIL.
2. A whole QuickDraw-Ext copy (the zero list plus 3,000 sketches per seen class and 204,000 photos in
   all: ~534k files, every one a hard link) checked by ``sbir-bench datasets check`` in a fresh
   process, against a bare ``os.walk`` of the same tree (the floor: listing the files). Target: under
   60 s on 2 cores. Run it with nothing else busy.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from sbir_bench.testing.hollow_copies import (  # noqa: E402
    PUBLISHED,
    build,
    layouts,
    quickdraw_ext_training_side,
)

TARGET_S = 60.0


def layout_sizes(where: Path) -> bool:
    from sbir_bench.data.discovery import index_dataset, photos_listed_twice
    from sbir_bench.data.splits import load_split
    from sbir_bench.data.tasks import build_task, partition
    ok = True
    for dataset in ("sketchy", "tuberlin", "quickdraw"):
        for layout in layouts(dataset):
            for split in (("1", "2") if dataset == "sketchy" else ("1",)):
                root = where / f"{dataset}-{layout}-{split}"
                shutil.rmtree(root, ignore_errors=True)
                copy = build(root, dataset, layout, split)
                index = index_dataset(dataset, root)
                part = partition(index, load_split(index.spec, index.class_names, split))
                zs = build_task("zs", part, False)
                got = f"{len(zs.queries):,} x {len(zs.gallery):,}"
                expected = (len(copy.sketches), copy.unique_photos)
                if dataset == "sketchy":
                    published = build_task("zs", part, False, listed_again=photos_listed_twice(index, root))
                    got += f", published {len(published.gallery):,}"
                listed = PUBLISHED[f"sketchy-split{split}" if dataset == "sketchy" else dataset]
                good = (len(zs.queries), len(zs.gallery)) == expected and expected[0] == listed[0]
                if dataset == "sketchy" and layout in ("sake", "sem-pcyc"):
                    good = good and len(published.gallery) == listed[1]
                ok &= good
                print(f"{'PASS' if good else 'FAIL'}  {dataset:<9} {layout:<21} split {split}: {got}  "
                      f"(lists: {listed[0]:,} x {listed[1]:,})")
                shutil.rmtree(root)
    return ok


def check_timing(where: Path) -> bool:
    root = where / "quickdraw-ext"
    shutil.rmtree(root, ignore_errors=True)
    start = time.perf_counter()
    build(root, "quickdraw", "zse-sbir", extra=quickdraw_ext_training_side())
    built = time.perf_counter() - start
    start = time.perf_counter()
    n_files = sum(len(files) for _, _, files in os.walk(root / "QuickDraw"))
    walk = time.perf_counter() - start
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "sbir_bench", "datasets", "check", "--dataset", "quickdraw",
                             "--data-root", str(root), "--quiet"], capture_output=True, text=True)
    check = time.perf_counter() - start
    print(result.stdout.strip())
    print(f"{n_files:,} files (built in {built:.0f} s); os.walk {walk:.1f} s; datasets check {check:.1f} s = "
          f"{check / walk:.1f}x the walk; target < {TARGET_S:.0f} s: {'PASS' if check < TARGET_S else 'FAIL'}")
    shutil.rmtree(root)
    return check < TARGET_S and result.returncode == 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("where", type=Path, help="an empty scratch folder on one file system (hard links)")
    ap.add_argument("--skip-layouts", action="store_true", help="only time the QuickDraw-Ext check")
    args = ap.parse_args()
    args.where.mkdir(parents=True, exist_ok=True)
    ok = (args.skip_layouts or layout_sizes(args.where)) & check_timing(args.where)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
