"""DomainNet's universal cross-domain retrieval: the official class lists and draws, the settings on a
generated DomainNet-shaped tree (hand-counted), the mini DomainNet world, and the refusals."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import as_options, run_record, short_training
from PIL import Image

from sbir_bench.cli import main
from sbir_bench.data import get_spec, index_dataset, mini_domains
from sbir_bench.data.check import check_dataset, task_sizes
from sbir_bench.data.domains import class_lists, domain_catalog_sizes, official_draw
from sbir_bench.data.mini import tree_digest
from sbir_bench.data.splits import package_file, read_class_file
from sbir_bench.data.tasks import TrainingPartition, build_task, partition
from sbir_bench.errors import DataError
from sbir_bench.methods import get_method

OFFICIAL = Path(__file__).parent / "fixtures" / "official" / "domainnet"  # the .npy files of the four repositories


@pytest.mark.parametrize("kind,count", [("train", 245), ("val", 55), ("test", 45)])
def test_shipped_class_lists_are_the_official_arrays_in_their_order(kind, count):
    raw = (OFFICIAL / f"{kind}_classes.npy").read_bytes()
    text = package_file("splits", f"domainnet_{kind}.txt")
    assert hashlib.sha256(raw).hexdigest() in text  # the header names the file it was read from
    official = [str(x) for x in np.load(OFFICIAL / f"{kind}_classes.npy")]
    assert read_class_file(text) == official and len(official) == count


def test_the_three_lists_are_disjoint_and_merge_to_300_or_245_seen():
    split = get_spec("domainnet").domain_split
    seen, val, unseen = class_lists(split, "train+val")
    assert len(seen) == 300 and val == [] and len(unseen) == 45
    seen245, val55, _ = class_lists(split, "train")
    assert seen[:245] == seen245 and seen[245:] == val55 and len(val55) == 55
    assert len(set(seen) | set(unseen)) == 345 and not set(seen) & set(unseen)
    assert seen[:3] == ["aircraft_carrier", "alarm_clock", "ambulance"] and seen[244] == "bulldozer"


@pytest.mark.parametrize("n,fraction,seed", [(13, 0.92, 0), (13, 0.25, 7), (200, 0.1, 44), (1, 0.92, 3), (0, 0.3, 1)])
def test_official_draw_is_what_np_random_choice_returns(n, fraction, seed):
    listing = np.array([f"f{i:04d}.jpg" for i in range(n)])
    np.random.seed(seed)
    theirs = np.random.choice(listing, int(fraction * n), replace=False) if n else np.array([])
    state = np.random.get_state()[1].copy()
    ours = listing[official_draw(n, fraction, seed)]
    assert ours.tolist() == theirs.tolist()
    assert (np.random.get_state()[1] == state).all()  # the global NumPy state is left alone


PER_DOMAIN = {"real": 13, "sketch": 4, "quickdraw": 10, "painting": 3}  # clipart and infograph absent


def domainnet_tree(root: Path) -> Path:
    """A DomainNet-shaped copy: <root>/DomainNet/<domain>/<class>/ for all 345 classes, PER_DOMAIN files
    each (hard links of one tiny image), and a stray folder the protocol does not know."""
    split = get_spec("domainnet").domain_split
    names = [c for f in (split.train, split.val, split.test) for c in read_class_file(package_file("splits", f))]
    base = root / "DomainNet"
    seed_image = root / "one.jpg"
    Image.new("RGB", (8, 8), (120, 30, 200)).save(seed_image)
    for domain, n in PER_DOMAIN.items():
        for cname in names:
            folder = base / domain / cname
            folder.mkdir(parents=True)
            for k in range(n):  # names listed unsorted by the filesystem: the sorted listing decides
                (folder / f"{cname}_{(k * 7) % n:03d}.jpg").hardlink_to(seed_image)
    (base / "logs" / "giraffe").mkdir(parents=True)
    (base / "logs" / "giraffe" / "x.jpg").hardlink_to(seed_image)
    return root


@pytest.fixture(scope="module")
def dn_index(tmp_path_factory):
    return index_dataset("domainnet", domainnet_tree(tmp_path_factory.mktemp("dn")))


def _sizes(index, held, seen_split):
    spec = index.spec
    part = partition(index, [], TrainingPartition(held_out_domain=held, seen_split=seen_split))
    tasks = {(s, g): build_task(s, part, False, dataset=spec, ucdr_gallery=g if s == "ucdr" else "g0",
                                udcdr_gallery=g if s == "udcdr" else "official")
             for s, g in (("ucdr", "g0"), ("ucdr", "g1"), ("udcdr", "official"), ("udcdr", "held-out"))}
    return part, tasks


def test_the_settings_on_a_domainnet_shaped_tree_have_the_hand_counted_sizes(dn_index):
    assert len(dn_index.class_names) == 345 and {s.domain for s in dn_index.sketches} == {"sketch", "quickdraw",
                                                                                          "painting"}
    part, t = _sizes(dn_index, "sketch", "train+val")
    # real: 13 per class -> int(.92 * 13) = 11 trained on, 2 held out (G1's distractors), for 300 seen classes
    assert (len(part.train_photos), len(part.heldout_photos)) == (300 * 11, 300 * 2)
    assert len(part.train_sketches) == 300 * (10 + 3)  # quickdraw + painting (sketch held out, stray folder unread)
    assert (len(t["ucdr", "g0"].queries), len(t["ucdr", "g0"].gallery)) == (45 * 4, 45 * 13)
    assert len(t["ucdr", "g1"].gallery) == 45 * 13 + 300 * 2
    # U^d-CDR: the first 45 seen classes, int(.25 * 4) = 1 query and int(.25 * 13) = 3 photos each
    assert (len(t["udcdr", "official"].queries), len(t["udcdr", "official"].gallery)) == (45, 45 * 3)
    assert len(t["udcdr", "held-out"].gallery) == 45 * 2
    assert (part.val_sketches, part.val_photos) == ([], [])

    part, t = _sizes(dn_index, "quickdraw", "train")
    assert (len(part.seen), len(part.train_photos), len(part.train_sketches)) == (245, 245 * 11, 245 * (4 + 3))
    assert (len(t["udcdr", "official"].queries), len(t["udcdr", "official"].gallery)) == (45 * 1, 45 * 1)  # p = 0.1
    assert len(t["ucdr", "g1"].gallery) == 45 * 13 + 245 * 2
    # SnMpNet's validation: int(.3 * n) per validation class and training domain; all their real photos
    assert (len(part.val_sketches), len(part.val_photos)) == (55 * (int(.3 * 4) + int(.3 * 3)), 55 * 13)


def test_a_seen_query_domain_scores_its_unseen_class_images_on_the_same_galleries(dn_index, tmp_path):
    """data.query_domain: the official trainers' extra rows, the unseen-class images of a domain trained on
    (quickdraw, with sketch held out: 45 x 10) against G0/G1; the same training partition (the model is
    the held-out cell's: one identity), its own split label and record; refused off ucdr or on real."""
    from sbir_bench.config import build_run_config
    from sbir_bench.records import data_split
    from sbir_bench.runner import training_identity
    part, _ = _sizes(dn_index, "sketch", "train+val")
    spec = dn_index.spec
    seen = build_task("ucdr", part, False, dataset=spec, ucdr_gallery="g1", query_domain="quickdraw")
    held = build_task("ucdr", part, False, dataset=spec, ucdr_gallery="g1")
    assert len(seen.queries) == 45 * 10 and {q.domain for q in seen.queries} == {"quickdraw"}
    assert [p.path for p in seen.gallery] == [p.path for p in held.gallery]
    assert not {q.label for q in seen.queries} - set(part.unseen)  # unseen classes only
    cfgs = [build_run_config({}, {"method": "coop", "data.dataset": "domainnet", "data.setting": "ucdr", **extra})
            for extra in ({}, {"data.query_domain": "quickdraw", "data.ucdr_gallery": "g1"})]
    assert training_identity(cfgs[0]) == training_identity(cfgs[1])
    assert (data_split(cfgs[0].data), data_split(cfgs[1].data)) == ("sketch", "sketch-qquickdraw-g1")
    root = str(dn_index.root.parent)
    for bad in (["--setting", "udcdr", "--set", "data.query_domain=painting"],
                ["--setting", "ucdr", "--set", "data.query_domain=real"]):
        result = CliRunner().invoke(main, ["run", "zeroshot-clip", "--dataset", "domainnet", "--data-root", root, *bad,
                                           "--output-dir", str(tmp_path / "bad")])
        assert result.exit_code == 2 and "query_domain" in result.output and not (tmp_path / "bad").exists()


def test_the_official_udcdr_gallery_was_trained_on_and_g1_never(dn_index):
    part, t = _sizes(dn_index, "sketch", "train+val")
    trained = {p.path for p in part.train_photos}
    assert {p.path for p in t["udcdr", "official"].gallery} <= trained  # the official code's property, kept
    assert not {p.path for p in t["udcdr", "held-out"].gallery} & trained
    assert not {p.path for p in part.heldout_photos} & trained
    assert not {s.path for s in t["ucdr", "g0"].queries} & {s.path for s in part.train_sketches}


def test_the_draws_follow_the_official_class_order_over_a_sorted_listing(dn_index):
    part, _ = _sizes(dn_index, "sketch", "train+val")
    cls = dn_index.class_names.index("church")  # 45th of the official order: seed 44
    listing = sorted(p.path for p in dn_index.photos if p.label == cls)
    np.random.seed(44)
    theirs = set(np.random.choice(np.array(listing), int(0.92 * 13), replace=False).tolist())
    assert {p.path for p in part.train_photos if p.label == cls} == theirs


def test_datasets_check_names_the_stray_folder_the_absent_domains_and_the_set_sizes(dn_index):
    report = check_dataset("domainnet", str(dn_index.root.parent), depth="none")
    text = "\n".join(report.lines())
    assert report.usable and "logs" in text and "clipart, infograph" in text
    assert report.counts["real"] == 345 * 13 and report.counts["classes"] == 345
    lines = task_sizes("domainnet", str(dn_index.root.parent))
    assert any(line.startswith("held out sketch, seen train+val (300 classes): ucdr 180 queries x 585 (g0) / 1,185 (g1)")
               for line in lines)


def test_a_class_folder_without_real_photos_is_one_line(tmp_path):
    for domain, cname in (("real", "giraffe"), ("sketch", "giraffe"), ("sketch", "parrot")):
        (tmp_path / "DomainNet" / domain / cname).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "DomainNet" / domain / cname / "a.jpg")
    with pytest.raises(DataError, match="sketch/parrot has no real/ counterpart"):
        index_dataset("domainnet", tmp_path)


def test_the_dry_run_sizes_from_the_catalog_are_near_deprocs_logged_sets():
    # DePro's deleted logs (held-out sketch, 300 seen): UCDR 9,729 queries x 24,387 (G0) / 36,600 (G1);
    # U^d-CDR 1,883 x 5,857. The catalog splits published totals by class share: within 10 %.
    spec = get_spec("domainnet")
    names, seen, g0 = domain_catalog_sizes(spec, "sketch", "train+val", "ucdr", "g0")
    _, _, g1 = domain_catalog_sizes(spec, "sketch", "train+val", "ucdr", "g1")
    _, _, ud = domain_catalog_sizes(spec, "sketch", "train+val", "udcdr")
    assert len(names) == 345 and len(seen) == 300
    for ours, logged in ((g0, 9729 + 24387), (g1, 9729 + 36600), (ud, 1883 + 5857)):
        assert abs(ours["test_images"] / logged - 1) < 0.1, (ours, logged)


def test_the_mini_world_is_the_shipped_bytes_and_the_generator_still_writes_it(tmp_path):
    root = mini_domains.ensure()
    assert tree_digest(root) == mini_domains.SHIPPED_SHA256
    fresh = mini_domains.generate(tmp_path / "fresh")
    names = lambda r: sorted(str(p.relative_to(r)) for p in r.rglob("*") if p.is_file())  # noqa: E731
    assert names(fresh) == names(root)
    for rel in names(root)[::11]:
        if rel != "VERSION":
            a, b = (np.asarray(Image.open(r / rel).convert("RGB"), dtype=float) for r in (root, fresh))
            assert np.abs(a - b).mean() < 1.0, rel
    assert sorted(mini_domains.PER_CLASS) == sorted(get_spec("mini-domainnet").domain_split.domains)


def test_a_ucdr_run_from_the_cli_records_its_protocol(tmp_path):
    rec = run_record(tmp_path, "--dataset", "mini-domainnet", "--setting", "ucdr", "--set", "data.ucdr_gallery=g1",
                     "--set", "data.held_out_domain=quickdraw")
    assert rec["split"] == "quickdraw-g1" and rec["setting"] == "ucdr"
    assert rec["domains"] == {"held_out_domain": "quickdraw", "gallery_domain": "real", "seen_split": "train+val",
                              "seen_classes": 15, "val_classes": 0, "unseen_classes": 5, "listing": "sorted",
                              "gallery": "g1", "query_domain": "quickdraw"}
    assert rec["counts"]["unseen_sketches"] == 5 * 10 and rec["n_queries"] == 50
    assert rec["partition"]["held_out_domain"] == "quickdraw" and len(rec["data_fingerprint"]["files_sha256"]) == 64


def test_a_trained_udcdr_run_validates_on_the_held_out_classes_under_245(tmp_path):
    options = as_options(short_training({"train.val_every": 1, "train.early_stop": 1}))
    rec = run_record(tmp_path, "--dataset", "mini-domainnet", "--setting", "udcdr", "--set", "data.seen_split=train",
                     *options, method="coop")
    assert rec["domains"]["seen_classes"] == 12 and rec["domains"]["gallery"].startswith("official: ")
    assert rec["model_selection"]["on"] == "validation" and rec["val_metrics"]
    assert rec["counts"]["val_sketches"] == 3 * (3 * int(.3 * 8) + int(.3 * 10))


@pytest.mark.parametrize("args,message", [
    (["--dataset", "mini", "--setting", "ucdr"], "needs a multi-domain dataset"),
    (["--dataset", "mini-domainnet", "--setting", "zs"], "choose --setting ucdr or udcdr"),
    (["--dataset", "mini", "--set", "data.held_out_domain=painting"], "applies to multi-domain datasets"),
    (["--dataset", "mini-domainnet", "--setting", "ucdr", "--set", "data.val_fraction=0.2"], "does not apply"),
    (["--dataset", "mini-domainnet", "--setting", "udcdr", "--set", "train.early_stop=1", "--set", "train.val_every=1",
      "--epochs", "1"], "needs a seen-class validation"),
])
def test_a_setting_or_option_foreign_to_the_dataset_is_one_line(tmp_path, args, message):
    result = CliRunner().invoke(main, ["run", "coop", "--output-dir", str(tmp_path), "--quiet", *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not list(tmp_path.glob("*.json"))


@pytest.mark.parametrize("method", ["pros", "ucdr-adapter"])
def test_one_domain_unit_per_training_domain_as_the_official_code_sizes_them(method, tmp_path):
    """On the mini DomainNet world (sketch held out) the run learns one unit per training domain, five, in the
    official dictionary's order (the record and the artifact say so: method_config_resolved.domains); each
    triplet's sketch and photo take their own domain's unit; a contradicting value is one line, and so is
    the option on a sketch dataset."""
    from sbir_bench.baselines.pros import batch_domains
    from sbir_bench.methods import TripletBatch
    short = ["--epochs", "1", "--batch-size", "4", "--set", "train.steps_per_epoch=1", "--set", "train.val_every=0",
             "--set", f"method_config.{'units' if method == 'pros' else 'prompts'}_batch_size=4",
             "--set", "eval.save_embeddings=false", "--quiet", "--output-dir", str(tmp_path / "a")]
    result = CliRunner().invoke(main, ["run", method, "--dataset", "mini-domainnet", "--setting", "ucdr", *short])
    assert result.exit_code == 0, result.output
    record = json.loads(next((tmp_path / "a").glob("*.json")).read_text())
    assert record["method_config_resolved"]["domains"] == 5
    bad = CliRunner().invoke(main, ["run", method, "--dataset", "mini-domainnet", "--setting", "ucdr", "--set",
                                    "method_config.domains=4", "--output-dir", str(tmp_path / "b")])
    assert bad.exit_code == 2 and "trains on 5 domains" in bad.output and not (tmp_path / "b").exists()
    bad = CliRunner().invoke(main, ["run", method, "--set", "method_config.domains=5", "--output-dir", str(tmp_path / "c")])
    assert bad.exit_code == 2 and "applies to a multi-domain dataset" in bad.output
    x = torch.zeros(2, 3, 8, 8)
    batch = TripletBatch(x, x, x, torch.tensor([0, 1]), torch.tensor([1, 0]), domain=torch.tensor([4, 0]),
                         positive_domain=torch.tensor([3, 3]))
    cfg = get_method(method).config_class(domains=5)
    assert batch_domains(cfg, batch).tolist() == [4, 0, 3, 3]  # the dictionary's: sketch 4, clipart 0, real 3
    assert batch_domains(get_method(method).config_class(), batch).tolist() == [1, 1, 0, 0]  # sketch / photo


def test_the_datasets_listing_names_each_shipped_set_where_it_is_unpacked():
    result = CliRunner().invoke(main, ["datasets"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines() if line.strip()}
    assert lines["mini-domainnet"].rstrip().endswith("mini-domainnet-v1") and lines["mini"].rstrip().endswith("mini-v1")
    assert " missing " in lines["domainnet"] or " present " in lines["domainnet"]


@pytest.mark.slow  # the quick loop stays under 3 minutes; CI runs it (the whole suite)
def test_a_run_on_the_domainnet_shaped_tree_scores_the_hand_counted_sets(dn_index, tmp_path):
    root = str(dn_index.root.parent)
    rec = run_record(tmp_path, "--dataset", "domainnet", "--data-root", root, "--setting", "ucdr", "--set",
                     "data.ucdr_gallery=g1", "--set", "eval.save_embeddings=false")
    assert rec["test_set"] == {"queries": 45 * 4, "gallery": 45 * 13 + 300 * 2} and rec["n_queries"] == 45 * 4
    assert rec["counts"]["train_sketches"] == 300 * (10 + 3) and rec["domains"]["seen_classes"] == 300
    rec = run_record(tmp_path, "--dataset", "domainnet", "--data-root", root, "--setting", "udcdr", "--set",
                     "data.held_out_domain=quickdraw", "--set", "data.seen_split=train", "--set",
                     "eval.save_embeddings=false")
    assert rec["test_set"] == {"queries": 45 * 1, "gallery": 45 * 1} and rec["split"] == "quickdraw"
    rec = run_record(tmp_path, "--dataset", "domainnet", "--data-root", root, "--setting", "ucdr", "--set",
                     "data.query_domain=painting", "--set", "eval.save_embeddings=false")  # a seen query domain
    assert rec["test_set"] == {"queries": 45 * 3, "gallery": 45 * 13} and rec["domains"]["query_domain"] == "painting"
    assert rec["split"] == "sketch-qpainting"
