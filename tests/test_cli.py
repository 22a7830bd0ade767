"""The CLI end to end on the mini set: run (every setting), eval, methods, datasets, error lines."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from sbir_bench.cli import main
from sbir_bench.records import REQUIRED_KEYS, SCHEMA


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def zs_record(tmp_path_factory, mini_root) -> dict:
    out = tmp_path_factory.mktemp("runs")
    result = invoke("run", "zeroshot-clip", "--dataset", "mini", "--setting", "zs", "--output-dir", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    assert "mAP@all" in result.output and "P@200" in result.output
    (path,) = out.glob("*.json")
    return json.loads(path.read_text())


def test_record_schema(zs_record):
    for key in REQUIRED_KEYS:
        assert key in zs_record
    assert zs_record["schema"] == SCHEMA
    assert zs_record["config"]["data"]["setting"] == "zs"  # the full resolved config
    assert zs_record["config"]["backbone"]["name"] == "sbir-tiny"
    assert set(zs_record["metrics"]) == {"mAP@all", "mAP@200", "P@100", "P@200"}
    assert all(0.0 <= v <= 1.0 for v in zs_record["metrics"].values())
    assert zs_record["protocol"]["topk_interpolation"] == "voc"
    assert zs_record["provenance"]["packages"]["torch"]
    assert "timings" in zs_record and zs_record["n_evaluated"] == 160


def test_eval_reproduces_the_run_from_saved_embeddings(zs_record, tmp_path):
    out = tmp_path / "m.json"
    result = invoke("eval", "--embeddings", zs_record["embeddings"], "--json", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())["metrics"]
    assert set(metrics) == {"mAP@all", "mAP@200", "P@100", "P@200"}
    for key, value in metrics.items():
        assert value == pytest.approx(zs_record["metrics"][key], abs=1e-6)


def test_eval_instance_level_keys(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "fg.npz"
    np.savez(path, query=rng.normal(size=(6, 4)), gallery=rng.normal(size=(5, 4)), query_to_gallery=np.arange(6) % 5)
    out = tmp_path / "fg.json"
    assert invoke("eval", "--embeddings", str(path), "--json", str(out), "--quiet").exit_code == 0
    assert set(json.loads(out.read_text())["metrics"]) == {"Acc@1", "Acc@5", "Acc@10"}


GZS_KEYS = {f"{m}{g}" for m in ("mAP@all", "mAP@200", "P@100", "P@200") for g in ("", "/seen", "/unseen", "/H")}


@pytest.mark.parametrize("setting,keys", [("gzs", GZS_KEYS), ("fg", {"Acc@1", "Acc@5", "Acc@10"})])
def test_run_other_settings(tmp_path, mini_root, setting, keys):
    result = invoke("run", "zeroshot-clip", "--setting", setting, "--output-dir", str(tmp_path), "--quiet")
    assert result.exit_code == 0, result.output
    (path,) = tmp_path.glob("*.json")
    assert set(json.loads(path.read_text())["metrics"]) == keys


def test_missing_dataset_is_one_line_error(tmp_path):
    result = CliRunner().invoke(main, ["run", "zeroshot-clip", "--dataset", "sketchy", "--data-root", str(tmp_path)])
    assert result.exit_code == 3  # a data error (docs/errors.md)
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: Sketchy Extended not found")
    assert str(tmp_path) in lines[0] and "--data-root" in lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args,needle,code", [
    (["run", "no-such-method"], "unknown method", 2),
    (["run", "zeroshot-clip", "--set", "train.epochs=many"], "expected int", 2),
    (["run", "zeroshot-clip", "--set", "nonsense.key=1"], "unknown key", 2),
    (["run", "zeroshot-clip", "--config", "/no/such.yaml"], "config file not found", 2),
    (["run", "zeroshot-clip", "--split-file", "/no/split.txt"], "split file not found", 3),
    (["eval", "--embeddings", "/no/file.npz"], "embeddings file not found", 3),
])
def test_bad_inputs_are_one_line_errors(args, needle, code, mini_root):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == code, result.output
    assert needle in result.output and "Traceback" not in result.output


def test_yaml_config_and_cli_override(tmp_path, mini_root):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  setting: gzs\n  gzs_seen_photo_fraction: 0.5\nseed: 7\n")
    result = invoke("run", "zeroshot-clip", "--config", str(cfg), "--seed", "3", "--output-dir", str(tmp_path), "--quiet")
    assert result.exit_code == 0, result.output
    (path,) = tmp_path.glob("*.json")
    record = json.loads(path.read_text())
    assert record["seed"] == 3 and record["setting"] == "gzs"
    assert record["config"]["data"]["gzs_seen_photo_fraction"] == 0.5


def test_unknown_class_in_split_file(tmp_path, mini_root):
    split = tmp_path / "split.txt"
    split.write_text("# my split\nstar\nunicorn\n")
    result = CliRunner().invoke(main, ["run", "zeroshot-clip", "--split-file", str(split)])
    assert result.exit_code == 3 and "unicorn" in result.output


def test_methods_and_datasets_listing(mini_root):
    result = invoke("methods")
    assert "zeroshot-clip" in result.output
    result = invoke("datasets")
    for name in ("sketchy", "tuberlin", "quickdraw", "sketchy-fg", "mini"):
        assert name in result.output
    mini = [line for line in result.output.splitlines() if line.split()[0] == "mini"]
    assert len(mini) == 1 and " present " in mini[0]  # the mini_root fixture unpacked it


def _commands(group, prefix=()):
    import click
    for name, cmd in group.commands.items():
        yield (*prefix, name)
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*prefix, name))


def test_every_command_help_shows_an_example_of_itself():
    commands = list(_commands(main))
    assert len(commands) >= 13
    for cmd in commands:
        result = invoke(*cmd, "--help")
        assert result.exit_code == 0, cmd
        head = result.output.split("Options:")[0]
        is_group = "Commands:" in result.output
        example = f"sbir-bench {' '.join(cmd)}" if not is_group else f"sbir-bench {cmd[0]}"
        assert example in head or (is_group and any(f"sbir-bench {' '.join(c)}" in head for c in commands
                                                    if c[: len(cmd)] == cmd)), (cmd, head)


def test_variant_labels_the_record_and_compare_row(tmp_path, mini_root):
    result = invoke("run", "zeroshot-clip", "--variant", "no-prompts", "--output-dir", str(tmp_path), "--quiet")
    assert result.exit_code == 0, result.output
    record = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert record["variant"] == "no-prompts" and record["run_name"].startswith("zeroshot-clip-no-prompts_")
    assert "zeroshot-clip [no-prompts]" in invoke("compare", "--results-dir", str(tmp_path)).output


HEAVY = ("torch", "pandas", "scipy", "open_clip", "matplotlib")


@pytest.mark.parametrize("command", [[], ["run"], ["reproduce"], ["eval"], ["compare"], ["export"], ["plot"]])
def test_help_starts_without_torch_or_pandas(command):
    """`sbir-bench --help` and each command's help import none of the heavy libraries (a fresh interpreter)."""
    import subprocess
    import sys
    code = ("import sys\nfrom sbir_bench.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in %r if m in sys.modules))" % (command + ["--help"], HEAVY))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]", out
