"""The published zero-shot test sets, laid out as researchers' copies hold them (hollow copies).

SAKE's and ZSE-SBIR's file lists (sbir_bench/testing/file_lists) are the test sets most published numbers
were computed on. Every layout a public copy uses must be accepted, and the task a run builds must be
the lists' own: the same queries, and the same gallery, unique by default or with the lists'
duplicates (``data.gallery: published``). The expected sizes come from the lists (counted here, and
the published totals below), never from the loader.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from sbir_bench.cli import main
from sbir_bench.data.catalog import get_spec
from sbir_bench.data.discovery import index_dataset, photos_listed_twice
from sbir_bench.data.splits import load_split
from sbir_bench.data.tasks import build_task, partition
from sbir_bench.errors import DataError
from sbir_bench.testing.hollow_copies import (
    PUBLISHED,
    build,
    has_paired_photos,
    layouts,
    zero_lists,
)

EVERY = {"quickdraw": 25}  # unit tests lay out about 1 in 7 files (QuickDraw 1 in 25); the benchmark all


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_the_fixture_lists_are_the_published_test_sets(name):
    sketches, photos = zero_lists(name)
    assert (len(sketches), len(photos)) == PUBLISHED[name]


def test_the_sketchy_lists_name_each_original_photo_twice():
    for split, originals in (("1", 2_500), ("2", 2_100)):
        _, photos = zero_lists(f"sketchy-split{split}")
        first = {p.split("/", 3)[3] for p in photos if p.startswith("256x256/photo/")}
        inside = {p.split("/", 1)[1] for p in photos if p.startswith("EXTEND") and "/ext_" not in p}
        assert len(first) == originals
        # the originals again, except one camel photo whose extended copy is named c.jpg (split 1's class)
        assert first ^ inside == ({"camel/n02437136_5405.jpg", "camel/c.jpg"} if split == "1" else set())


def task(root: Path, dataset: str, split: str, gallery: str = "unique"):
    index = index_dataset(dataset, root)
    unseen = load_split(index.spec, index.class_names, split)
    again = photos_listed_twice(index, root) if gallery == "published" else None
    return build_task("zs", partition(index, unseen), index.spec.fine_grained, listed_again=again)


LAYOUT_CASES = [(d, layout, split) for d in ("sketchy", "tuberlin", "quickdraw") for layout in layouts(d)
                for split in (("1", "2") if d == "sketchy" else ("1",))]


@pytest.mark.parametrize("dataset,layout,split", LAYOUT_CASES)
def test_every_public_layout_gives_the_lists_test_task(dataset, layout, split, tmp_path):
    copy = build(tmp_path, dataset, layout, split, every=EVERY.get(dataset, 7))
    zs = task(tmp_path, dataset, split)
    assert len(zs.queries) == len(copy.sketches)
    assert len(zs.gallery) == copy.unique_photos  # the toolkit's default gallery: each photo once
    if dataset == "sketchy":
        published = task(tmp_path, dataset, split, gallery="published")
        if has_paired_photos(dataset, layout):  # copies with the paired-photo folder: exactly the lists' composition
            assert len(published.gallery) == len(copy.photos)
        else:  # without it, the originals found in the extended folder (by name) are listed again
            inside = [p for p in copy.photos if p.startswith("EXTEND") and re.fullmatch(r"n\d+_\d+\.jpg", p.rsplit("/", 1)[1])]
            assert len(published.gallery) == copy.unique_photos + len(inside)
        assert len(copy.photos) > copy.unique_photos
    else:
        assert copy.unique_photos == len(copy.photos)  # these lists hold no duplicate


def test_sketchy_fine_grained_takes_the_original_photos_of_the_lists(tmp_path):
    copy = build(tmp_path, "sketchy", "sake", "1", every=7)
    index = index_dataset("sketchy-fg", tmp_path)
    originals = [p for p in copy.photos if p.startswith("256x256/photo/")]
    fg = build_task("fg", partition(index, load_split(index.spec, index.class_names, "1")), True)
    assert len(fg.gallery) == len(originals)
    named = {p.rsplit("/", 1)[1].rsplit(".", 1)[0] for p in originals}
    assert len(fg.queries) == sum(1 for s in copy.sketches if s.rsplit("/", 1)[1].rsplit("-", 1)[0] in named)


def test_published_gallery_is_refused_where_the_lists_have_no_duplicates(tmp_path):
    build(tmp_path, "tuberlin", "sake", every=7)
    with pytest.raises(DataError, match="data.gallery=published"):
        task(tmp_path, "tuberlin", "1", gallery="published")


def test_datasets_check_prints_both_sketchy_galleries(tmp_path):
    copy = build(tmp_path, "sketchy", "sake", "1", every=7)
    result = CliRunner().invoke(main, ["datasets", "check", "--dataset", "sketchy", "--data-root", str(tmp_path)])
    line = next(x for x in result.output.splitlines() if x.startswith("split 1 zs:"))
    assert f"{len(copy.sketches):,} queries x {copy.unique_photos:,} photos" in line
    assert f"{len(copy.photos):,} with data.gallery=published" in line
    assert get_spec("sketchy").listed_twice
