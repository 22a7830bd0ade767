"""Real dataset layouts: discovery, official splits, settings on real trees, and `datasets check`."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from click.testing import CliRunner
from conftest import official_classes, tree_layout

from sbir_bench.cli import main
from sbir_bench.data import get_spec, index_dataset, load_split
from sbir_bench.data.check import check_dataset
from sbir_bench.data.splits import package_file, read_class_file
from sbir_bench.data.tasks import TrainingPartition, build_task, partition
from sbir_bench.errors import DataError

SPLITS = [("sketchy", "1", 25), ("sketchy", "2", 21), ("tuberlin", "1", 30), ("quickdraw", "1", 30)]


@pytest.mark.parametrize("dataset,expected", [("sketchy", 125), ("tuberlin", 250), ("quickdraw", 110)])
def test_official_class_lists(dataset, expected):
    names = official_classes(dataset)
    assert len(names) == len(set(names)) == expected


@pytest.mark.parametrize("dataset,split,count", SPLITS)
def test_split_files_count_and_names_exist(dataset, split, count):
    spec = get_spec(dataset)
    text = package_file("splits", spec.splits[split])
    assert text.startswith("#") and "Source:" in text  # header cites where the list comes from
    names = read_class_file(text)
    assert len(names) == len(set(names)) == count
    labels = load_split(spec, official_classes(dataset), split)
    assert len(labels) == count


@pytest.mark.parametrize("dataset,split,pros_list", [
    ("sketchy", "2", "sketchy_test_classes_eccv_2018.txt"),  # ProS's default (-eccv 1)
    ("sketchy", "1", "sketchy_test_classes_random_split.txt"),  # -eccv 0
    ("tuberlin", "1", "tuberlin_test_classes_random_split.txt")])
def test_pros_test_classes_are_our_split_files(dataset, split, pros_list):
    """ProS's test-class lists (fangkaipeng/ProS src/data/{Sketchy,TUBerlin}/, in sbir_bench/testing/file_lists/pros)
    name the unseen classes of our split files, so `reproduce` runs ProS on its own test classes."""
    from sbir_bench.data.classnames import class_key
    from sbir_bench.testing.hollow_copies import LISTS
    theirs = (LISTS / "pros" / pros_list).read_text().split()
    ours = read_class_file(package_file("splits", get_spec(dataset).splits[split]))
    assert sorted(map(class_key, theirs)) == sorted(map(class_key, ours))


@pytest.mark.parametrize("dataset", ["sketchy", "tuberlin", "quickdraw"])
def test_discovery_in_real_layout(make_tree, dataset):
    root = make_tree(dataset)
    index = index_dataset(dataset, root)
    assert index.root == root / tree_layout(dataset).folder
    assert sorted(index.class_names) == sorted(official_classes(dataset))
    assert len(index.sketches) == len(index.photos) == 2 * len(index.class_names)


@pytest.mark.parametrize("dataset,split,count", SPLITS)
def test_settings_on_real_tree(make_tree, dataset, split, count):
    root = make_tree(dataset)
    index = index_dataset(dataset, root)
    unseen = load_split(index.spec, index.class_names, split)
    part = partition(index, unseen, TrainingPartition(heldout_fraction=0.5))
    zs = build_task("zs", part, fine_grained=False)
    assert len(zs.queries) == 2 * count and len(zs.gallery) == 2 * count
    n_seen = len(index.class_names) - count
    held = build_task("gzs", part, fine_grained=False, gzs_protocol="heldout")
    assert len(held.gallery) == 2 * count + n_seen  # one of each seen class's two photos held out
    assert len(held.queries) == 2 * count + n_seen  # and one of its two sketches
    literature = build_task("gzs", part, fine_grained=False, gzs_protocol="sem-pcyc", seen_fraction=0.2)
    assert len(literature.gallery) == 2 * count + int(0.2 * 2 * count)  # 20% of the unseen test photos
    assert len(literature.queries) == 2 * count + int(0.2 * 2 * count)


def test_fine_grained_pairing(make_tree):
    root = make_tree("sketchy-fg", sketches_per_photo=3)
    index = index_dataset("sketchy-fg", root)
    by_instance = {p.instance: p for p in index.photos}
    for s in index.sketches:
        photo = by_instance[s.instance]
        assert photo.label == s.label
        assert s.path.endswith(f"{photo.instance}-{s.path.rsplit('-', 1)[1]}")
    unseen = load_split(index.spec, index.class_names, "1")
    part = partition(index, unseen)
    task = build_task("fg", part, fine_grained=True)
    assert len(task.queries) == 25 * 2 * 3 and len(task.gallery) == 25 * 2
    assert (task.query_to_gallery() >= 0).all()


def test_run_on_sketchy_split2_tree(make_tree, tmp_path):
    root = make_tree("sketchy")
    result = CliRunner().invoke(main, ["run", "zeroshot-clip", "--dataset", "sketchy", "--split", "2", "--setting", "zs",
                                       "--data-root", str(root), "--output-dir", str(tmp_path / "runs"), "--quiet"])
    assert result.exit_code == 0, result.output
    (path,) = (tmp_path / "runs").glob("*.json")
    record = json.loads(path.read_text())
    assert record["classes"]["unseen"] == 21 and "seagull" in record["classes"]["unseen_names"]
    assert record["n_evaluated"] == 42


# ------------------------------------------------------------------ datasets check
def check_cli(*args):
    return CliRunner().invoke(main, ["datasets", "check", *args, "--quiet"])


def test_check_passes_on_complete_copy(make_tree):
    root = make_tree("tuberlin")
    result = check_cli("--dataset", "tuberlin", "--data-root", str(root))
    assert result.exit_code == 0, result.output
    assert "tuberlin: usable" in result.output
    assert "sketches: found 500, the published copy has 20000" in result.output  # count mismatch is a warning


def test_check_reports_missing_class_and_split_class(make_tree):
    classes = [c for c in official_classes("quickdraw") if c not in ("zebra", "bat")]
    root = make_tree("quickdraw", classes)
    result = check_cli("--dataset", "quickdraw", "--data-root", str(root))
    assert result.exit_code == 3
    assert "2 official class(es) missing from sketches: bat, zebra" in result.output
    assert "split 1: 2 unseen class(es) absent: bat, zebra" in result.output
    assert "quickdraw: UNUSABLE" in result.output


def test_check_reports_empty_unreadable_and_duplicates(make_tree):
    root = make_tree("tuberlin")
    base = root / "TUBerlin"
    for f in (base / "png_ready" / "ant").iterdir():
        f.unlink()
    photo = next((base / "ImageResized_ready" / "bus").iterdir())
    photo.write_bytes(photo.read_bytes()[:40])  # truncated
    first, second = sorted((base / "png_ready" / "bee").iterdir())
    shutil.copy(first, second)  # a copy: same bytes, another file
    linked = sorted((base / "png_ready" / "cat").iterdir())
    linked[1].unlink()
    os.link(linked[0], linked[1])  # a hard link: one file under two names
    quick = check_dataset("tuberlin", str(root))
    text = "\n".join(quick.lines())
    assert "1 empty sketches class folder(s): ant" in text and not quick.usable
    assert "1 duplicate sketches file(s)" in text and str(linked[1]) in text  # without reading: the link only
    assert "decoded a sample of 200 of the 500 photos" in text
    deep = check_dataset("tuberlin", str(root), depth="deep")
    text = "\n".join(deep.lines())
    assert "1 unreadable or truncated photos image(s) (0.2% of all)" in text and str(photo) in text
    assert "2 duplicate sketches file(s)" in text  # --deep compares contents: the copy too
    assert not deep.usable


def test_check_decodes_a_sample_and_deep_decodes_everything(make_tree, monkeypatch):
    from sbir_bench.data import check
    root = make_tree("tuberlin")
    monkeypatch.setattr(check, "SAMPLE", 3)
    decoded = []
    monkeypatch.setattr(check, "load_rgb", lambda path, warn_once=True: decoded.append(path) or object())
    report = check_dataset("tuberlin", str(root))
    assert len(decoded) == 6 and any("decoded a sample of 3 of the" in n for n in report.notes)
    decoded.clear()
    check_dataset("tuberlin", str(root), depth="deep")
    assert len(decoded) == report.counts["sketches"] + report.counts["photos"]


def test_check_missing_dataset_is_one_line(tmp_path):
    result = check_cli("--dataset", "sketchy", "--data-root", str(tmp_path))
    assert result.exit_code == 3 and result.output.count("\n") == 1
    assert "Sketchy Extended not found" in result.output


def test_unreadable_image_is_skipped_and_counted_in_run(make_tree, tmp_path):
    root = make_tree("sketchy")
    bad = next((root / "Sketchy" / "EXTEND_image_sketchy" / "bat").iterdir())
    bad.write_bytes(b"\x89PNG not really")
    result = CliRunner().invoke(main, ["run", "zeroshot-clip", "--dataset", "sketchy", "--split", "2", "--data-root",
                                       str(root), "--output-dir", str(tmp_path / "runs"), "--quiet"])
    assert result.exit_code == 0, result.output
    record = json.loads(next((tmp_path / "runs").glob("*.json")).read_text())
    assert record["skipped_images"] == 1
    stages = record["skipped_by_stage"]
    assert stages == {"train": 0, "val": 0, "zs": 1}  # "bat" is a split-2 test class: the zs test task only


def test_split_mismatch_is_an_error(make_tree):
    root = make_tree("sketchy", [c for c in official_classes("sketchy") if c != "seagull"])
    index = index_dataset("sketchy", root)
    with pytest.raises(DataError, match="seagull"):
        load_split(index.spec, index.class_names, "2")
    with pytest.raises(DataError, match="no split '3'"):
        load_split(index.spec, index.class_names, "3")


@pytest.mark.parametrize("flags", [[], ["--deep"], ["--no-decode"]])
def test_a_symlink_loop_in_a_copy_is_skipped_with_a_warning_not_a_crash(make_tree, flags):
    root = make_tree("tuberlin")
    loop = root / "TUBerlin" / "png_ready" / "bee" / "loop.png"
    loop.symlink_to(loop.name)  # loop.png -> loop.png
    result = CliRunner().invoke(main, ["datasets", "check", "--dataset", "tuberlin", "--data-root", str(root), *flags])
    assert result.exit_code == 0, result.output
    assert "1 entry skipped, not readable as a file: loop.png (Too many levels of symbolic links)" in result.output
    assert "tuberlin: usable" in result.output


@pytest.mark.parametrize("flags", [[], ["--no-decode"]])
def test_zero_byte_files_are_reported_even_without_decoding(make_tree, flags):
    root = make_tree("tuberlin")
    empty = sorted((root / "TUBerlin" / "ImageResized_ready" / "bus").iterdir())[0]
    empty.write_bytes(b"")
    result = CliRunner().invoke(main, ["datasets", "check", "--dataset", "tuberlin", "--data-root", str(root), *flags])
    assert "1 empty (zero-byte) photos file(s)" in result.output and str(empty) in result.output, result.output
    assert "unreadable or truncated photos" not in result.output  # said once, not again by the decoding pass


def test_sketches_left_out_for_a_missing_photo_are_said(make_tree):
    import logging
    root = make_tree("sketchy-fg", sketches_per_photo=2)
    index = index_dataset("sketchy-fg", root)
    unseen = load_split(index.spec, index.class_names, "1")
    lost = next(p for p in index.photos if p.label in set(unseen))
    index.photos.remove(lost)  # as if the file were missing from the copy
    seen = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())
    logging.getLogger("sbir_bench.data.tasks").addHandler(handler)
    try:
        task = build_task("fg", partition(index, unseen), fine_grained=True)
    finally:
        logging.getLogger("sbir_bench.data.tasks").removeHandler(handler)
    assert len(task.queries) == 25 * 2 * 2 - 2
    assert any("2 sketch(es) left out of the unseen-class test sketches (airplane): their paired photo is missing"
               in m for m in seen), seen


def test_depros_tu_berlin_list_is_its_file_and_sakes_thirty_without_the_multi_word_five():
    from pathlib import Path
    raw = (Path(__file__).parent / "fixtures" / "official" / "depro" / "test_classes_random_split.txt").read_text()
    spec = get_spec("tuberlin")
    ours = read_class_file(package_file("splits", spec.splits["depro25"]))
    assert ours == [line.strip() for line in raw.splitlines() if line.strip()] and len(ours) == 25
    thirty = read_class_file(package_file("splits", spec.splits["1"]))
    assert sorted(set(thirty) - set(ours)) == ["bottle opener", "frying-pan", "hot air balloon", "space shuttle", "t-shirt"]
    assert len(load_split(spec, official_classes("tuberlin"), "depro25")) == 25
