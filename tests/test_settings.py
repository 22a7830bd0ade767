"""ZS / GZS / FG query-gallery composition on the generated mini set."""

from __future__ import annotations

import pytest

from sbir_bench.data import index_dataset, load_split
from sbir_bench.data.mini import MINI_CLASSES, MINI_UNSEEN, PHOTOS_PER_CLASS, SKETCHES_PER_PHOTO
from sbir_bench.errors import DataError
from sbir_bench.settings import build_task, build_val_task, partition


@pytest.fixture(scope="module")
def part(mini_root):
    index = index_dataset("mini")
    unseen = load_split(index.spec, index.class_names, "1")
    return partition(index, unseen, seed=0, val_fraction=0.1, heldout_fraction=0.2)


def test_split_marks_the_unseen_classes(part):
    assert sorted(part.class_names[c] for c in part.unseen) == sorted(MINI_UNSEEN)
    assert len(part.seen) + len(part.unseen) == len(MINI_CLASSES)
    assert not set(part.seen) & set(part.unseen)


def test_zs_is_unseen_vs_unseen(part):
    task = build_task("zs", part, fine_grained=True)
    n_unseen = len(MINI_UNSEEN)
    assert len(task.queries) == n_unseen * PHOTOS_PER_CLASS * SKETCHES_PER_PHOTO
    assert len(task.gallery) == n_unseen * PHOTOS_PER_CLASS
    assert {s.label for s in task.queries} == set(part.unseen) == {s.label for s in task.gallery}


def test_gzs_gallery_adds_held_out_seen_photos_never_trained_on(part):
    task = build_task("gzs", part, fine_grained=True)
    seen_in_gallery = [s for s in task.gallery if s.label in set(part.seen)]
    per_class = round(0.2 * PHOTOS_PER_CLASS)
    assert len(seen_in_gallery) == len(part.seen) * per_class
    assert len(task.gallery) == len(MINI_UNSEEN) * PHOTOS_PER_CLASS + len(seen_in_gallery)
    trained = {p.path for p in part.train_photos} | {p.path for p in part.val_photos}
    assert not trained & {p.path for p in seen_in_gallery}
    assert {s.label for s in task.queries} == set(part.unseen)


def test_fg_is_instance_level_without_leaking_queries(part):
    task = build_task("fg", part, fine_grained=True)
    assert task.level == "instance"
    gallery_paths = {p.path for p in task.gallery}
    assert not gallery_paths & {q.path for q in task.queries}
    q2g = task.query_to_gallery()
    assert (q2g >= 0).all()
    for q, g in zip(task.queries, q2g):
        assert task.gallery[g].instance == q.instance
        assert q.path.split("/")[-1].startswith(task.gallery[g].instance + "-")


def test_fg_training_sketches_follow_their_photos(part):
    train_instances = {p.instance for p in part.train_photos}
    assert all(s.instance in train_instances for s in part.train_sketches)
    val_task = build_val_task("fg", part, fine_grained=True)
    assert {q.instance for q in val_task.queries} <= {p.instance for p in part.val_photos}


def test_partition_is_deterministic_per_seed(mini_root):
    index = index_dataset("mini")
    unseen = load_split(index.spec, index.class_names, "1")
    a, b = partition(index, unseen, seed=3), partition(index, unseen, seed=3)
    c = partition(index, unseen, seed=4)
    assert [s.path for s in a.heldout_photos] == [s.path for s in b.heldout_photos]
    assert [s.path for s in a.heldout_photos] != [s.path for s in c.heldout_photos]


def test_unknown_setting_and_fg_without_pairs(part):
    with pytest.raises(DataError):
        build_task("transductive", part, fine_grained=True)
    with pytest.raises(DataError, match="instance pairs"):
        build_task("fg", part, fine_grained=False)
