"""Every public copy of the benchmarks, as researchers have them (docs/datasets.md names the source
of each layout): accepted as it is, or refused in one line where using it would give a wrong number."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import _tiny_image, official_classes
from sbir_bench.cli import main
from sbir_bench.data.discovery import index_dataset, photo_aliases
from sbir_bench.data.catalog import get_spec
from sbir_bench.data.classnames import class_key
from sbir_bench.errors import DataError

SKETCHY = ["airplane", "alarm_clock", "ant", "hot-air_balloon", "car_(sedan)"]


def build_copy(root: Path, sketch_dir: str, photo_dir: str, classes, photo_class=lambda c: c, photos: int = 2,
               extra_photos: int = 0) -> Path:
    """Class folders of one image per photo (and one sketch ``<photo>-1.png`` per photo) in any layout."""
    for ci, cname in enumerate(classes):
        for k in range(photos):
            pid = f"n{ci:08d}_{k + 1}"
            _tiny_image(root / photo_dir / photo_class(cname) / f"{pid}.jpg", ci * 10 + k, sketch=False)
            _tiny_image(root / sketch_dir / cname / f"{pid}-1.png", ci * 10 + k, sketch=True)
        for k in range(extra_photos):
            _tiny_image(root / photo_dir / photo_class(cname) / f"ext_{ci}_{k}.jpg", k, sketch=False)
    return root


LAYOUT_CASES = [(d, x.name) for d in ("sketchy", "sketchy-fg", "tuberlin", "quickdraw") for x in get_spec(d).layouts]


@pytest.mark.parametrize("dataset,layout", LAYOUT_CASES)
def test_every_catalog_layout_is_accepted(dataset, layout, tmp_path):
    entry = get_spec(dataset).layout(layout)
    build_copy(tmp_path, *(os.path.normpath(f"{entry.folder}/{d}") for d in (entry.sketch_dir, entry.photo_dir)), SKETCHY)
    index = index_dataset(dataset, tmp_path)
    assert index.layout == entry
    assert sorted(map(class_key, index.class_names)) == sorted(map(class_key, SKETCHY))
    assert len(index.sketches) == len(index.photos) == 2 * len(SKETCHY)


def test_raw_tu_berlin_download_keeps_every_class_and_runs_split_1(tmp_path):
    classes = official_classes("tuberlin")
    aliases = {cls: raw for raw, cls in _raw_names().items()}
    build_copy(tmp_path, "TUBerlin/png", "TUBerlin/ImageResized", classes, photos=1,
               photo_class=lambda c: aliases.get(class_key(c), c))
    assert len([p for p in (tmp_path / "TUBerlin/ImageResized").iterdir() if p.name in _raw_names()]) == 52
    index = index_dataset("tuberlin", tmp_path)
    assert len(index.class_names) == 250 and len(index.photos) == 250
    out = tmp_path / "runs"
    result = CliRunner().invoke(main, ["run", "zeroshot-clip", "--dataset", "tuberlin", "--data-root", str(tmp_path),
                                       "--backbone", "sbir-tiny", "--output-dir", str(out), "--quiet",
                                       "--set", "eval.save_embeddings=false"])
    assert result.exit_code == 0, result.output


def _raw_names() -> dict:
    """Raw photo folder spelling -> class key, from the shipped alias table (every target is a class)."""
    table = photo_aliases(get_spec("tuberlin"))
    keys = {class_key(c) for c in official_classes("tuberlin")}
    assert len(table) == 52 and all(class_key(c) in keys for c in table.values())
    return {raw: class_key(cls) for raw, cls in table.items()}


def test_fine_grained_refuses_the_extended_photos(tmp_path):
    build_copy(tmp_path, "Sketchy/sketch", "Sketchy/photo", SKETCHY, extra_photos=5)  # CLIP-AT's layout
    with pytest.raises(DataError, match="depicted by no sketch"):
        index_dataset("sketchy-fg", tmp_path)


def test_fine_grained_photo_folder_under_sketchy_points_to_sketchy_fg(tmp_path):
    build_copy(tmp_path, "Sketchy/sketch/tx_000000000000", "Sketchy/photo/tx_000000000000", SKETCHY)
    with pytest.raises(DataError, match="use --dataset sketchy-fg"):
        index_dataset("sketchy", tmp_path)


def test_a_class_with_one_modality_is_named_never_dropped(tmp_path):
    build_copy(tmp_path, "QuickDraw/sketches", "QuickDraw/images", SKETCHY)
    (tmp_path / "QuickDraw/sketches/zebra").mkdir()
    _tiny_image(tmp_path / "QuickDraw/sketches/zebra/1.png", 1, sketch=True)
    with pytest.raises(DataError, match=r"1 class\(es\) only in 'sketches' \(zebra\)"):
        index_dataset("quickdraw", tmp_path)


def test_datasets_check_prints_the_test_task_of_every_split_and_setting(tmp_path):
    build_copy(tmp_path, "Sketchy/256x256/sketch/tx_000000000000", "Sketchy/256x256/photo/tx_000000000000",
               official_classes("sketchy"), photos=1)
    result = CliRunner().invoke(main, ["datasets", "check", "--dataset", "sketchy-fg", "--data-root", str(tmp_path),
                                       "--no-decode", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "split 1 zs: 25 queries x 25 photos" in result.output  # 25 unseen classes, one photo and sketch each
    assert "split 2 zs: 21 queries x 21 photos" in result.output
    assert "split 1 gzs: 30 queries x 30 photos (seen part 5 x 5, unseen part 25 x 25)" in result.output
    assert "split 1 fg: 25 queries x 25 photos" in result.output


def test_the_docs_show_every_catalog_layout():
    from sbir_bench.data.catalog import layout_table
    assert layout_table() in (Path(__file__).parents[1] / "docs" / "datasets.md").read_text()
