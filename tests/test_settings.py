"""ZS / GZS / FG query-gallery composition on the generated mini set."""

from __future__ import annotations

import pytest

from sbir_bench.data import index_dataset, load_split
from sbir_bench.data.mini import (
    MINI_CLASSES,
    MINI_UNSEEN,
    PHOTOS_PER_CLASS,
    SKETCHES_PER_PHOTO,
)
from sbir_bench.data.tasks import (
    TrainingPartition,
    build_task,
    build_val_task,
    partition,
)
from sbir_bench.errors import DataError


@pytest.fixture(scope="module")
def part(mini_root):
    index = index_dataset("mini")
    unseen = load_split(index.spec, index.class_names, "1")
    return partition(index, unseen, TrainingPartition(heldout_fraction=0.2))


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


def test_gzs_heldout_adds_seen_queries_and_photos_never_trained_on(part):
    task = build_task("gzs", part, fine_grained=True, gzs_protocol="heldout")
    seen = set(part.seen)
    seen_in_gallery = [s for s in task.gallery if s.label in seen]
    seen_queries = [s for s in task.queries if s.label in seen]
    per_class = round(0.2 * PHOTOS_PER_CLASS)
    assert len(seen_in_gallery) == len(part.seen) * per_class
    assert len(task.gallery) == len(MINI_UNSEEN) * PHOTOS_PER_CLASS + len(seen_in_gallery)
    assert len(seen_queries) == len(seen_in_gallery) * SKETCHES_PER_PHOTO  # the held-out photos' sketches
    trained = {p.path for p in part.train_photos + part.val_photos + part.train_sketches + part.val_sketches}
    assert not trained & {p.path for p in seen_in_gallery + seen_queries}
    assert task.query_seen().sum() == len(seen_queries)


def test_gzs_sem_pcyc_composition_counts_and_seed(part):
    task = build_task("gzs", part, fine_grained=True, gzs_protocol="sem-pcyc", seen_fraction=0.2, seed=0)
    seen = set(part.seen)
    n_unseen_sketches = len(MINI_UNSEEN) * PHOTOS_PER_CLASS * SKETCHES_PER_PHOTO
    n_unseen_photos = len(MINI_UNSEEN) * PHOTOS_PER_CLASS
    seen_queries = [s for s in task.queries if s.label in seen]
    seen_photos = [s for s in task.gallery if s.label in seen]
    assert len(seen_queries) == int(0.2 * n_unseen_sketches) and len(seen_photos) == int(0.2 * n_unseen_photos)
    assert len(task.queries) == n_unseen_sketches + len(seen_queries)
    assert len(task.gallery) == n_unseen_photos + len(seen_photos)
    train = {p.path for p in part.train_sketches + part.train_photos}
    assert {p.path for p in seen_queries + seen_photos} <= train  # drawn from the seen classes' training files
    again = build_task("gzs", part, fine_grained=True, gzs_protocol="sem-pcyc", seed=0)
    other = build_task("gzs", part, fine_grained=True, gzs_protocol="sem-pcyc", seed=1)
    assert [s.path for s in again.gallery] == [s.path for s in task.gallery]
    assert [s.path for s in other.gallery] != [s.path for s in task.gallery]


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
    a, b = (partition(index, unseen, TrainingPartition(3, heldout_fraction=0.2)) for _ in range(2))
    c = partition(index, unseen, TrainingPartition(4, heldout_fraction=0.2))
    assert [s.path for s in a.heldout_photos] == [s.path for s in b.heldout_photos]
    assert [s.path for s in a.heldout_photos] != [s.path for s in c.heldout_photos]


def test_unknown_setting_and_fg_without_pairs(part):
    with pytest.raises(DataError):
        build_task("transductive", part, fine_grained=True)
    with pytest.raises(DataError, match="instance pairs"):
        build_task("fg", part, fine_grained=False)


def test_the_default_gzs_adds_a_fifth_of_the_unseen_test_set_from_seen_classes(tmp_path, mini_root):
    """SEM-PCYC's composition (docs/datasets.md): seen-class queries and photos numbering 0.2 of the
    unseen test sketches and photos, by default, from a config that names nothing but the setting."""
    from sbir_bench.config import build_run_config
    from sbir_bench.runner import prepare_data
    data = prepare_data(build_run_config({}, {"method": "zeroshot-clip", "data.setting": "gzs",
                                              "output_dir": str(tmp_path)}))
    unseen_q, unseen_g = len(data.part.unseen_sketches), len(data.part.unseen_photos)
    seen = set(data.task.seen_classes)
    assert sum(q.label in seen for q in data.task.queries) == int(0.2 * unseen_q) > 0
    assert sum(g.label in seen for g in data.task.gallery) == int(0.2 * unseen_g) > 0
    assert len(data.task.queries) == unseen_q + int(0.2 * unseen_q)
