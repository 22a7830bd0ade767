"""How sbir-bench installs into a researcher's environment: a torch range (never a pin), one import name,
a wheel that carries its recipes and tables, a minimal install without extras, logs that read well in
files, and the Python versions it states."""

from __future__ import annotations

import ast
import io
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from sbir_bench.errors import ConfigError
from sbir_bench.locations import find_config, recipes_folder

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = ("faiss", "submitit", "tensorboard", "wandb", "mlflow", "sklearn", "torchmetrics")
OLDEST_PYTHON = (3, 10)
NEWEST_TORCH, NEWEST_TORCHVISION = "2.15.0", "0.29.2"  # the newest releases when this test was written


def _requirements() -> dict:
    """The installed distribution's own requirements (not the extras'), by name."""
    reqs = [Requirement(r) for r in metadata.requires("sbir-bench") or []]
    return {r.name.lower(): r for r in reqs if r.marker is None}


def _ci_pins() -> dict:
    """What .ci/constraints.txt pins (the versions CI tests)."""
    lines = (ROOT / ".ci" / "constraints.txt").read_text().splitlines()
    return dict(line.split("==") for line in (ln.split("#")[0].strip() for ln in lines) if "==" in line)


@pytest.mark.parametrize("name,oldest,newest", [("torch", "2.4.0", NEWEST_TORCH),
                                                ("torchvision", "0.19.0", NEWEST_TORCHVISION)])
def test_torch_is_a_range_holding_the_oldest_supported_the_ci_and_the_newest_release(name, oldest, newest):
    spec = _requirements()[name].specifier
    ci = _ci_pins()[name]
    for version in (oldest, ci, newest):
        assert spec.contains(version), f"{name} {version} is refused by {spec}"
    installed = metadata.version(name).split("+")[0]
    assert spec.contains(installed), f"the installed {name} {installed} is outside the supported {spec}"
    if os.environ.get("CI"):  # CI runs the version its constraints file names; a developer any supported one
        assert installed == ci


def test_no_requirement_is_an_exact_pin_and_ci_pins_through_its_own_constraints_file():
    for name, req in _requirements().items():
        assert not any(s.operator in ("==", "===") for s in req.specifier), f"{name} is pinned: {req}"
    run = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^export PIP_CONSTRAINT=.*\.ci/constraints\.txt", run, re.M)


def test_the_stated_python_versions_parse_every_module():
    """No syntax newer than the oldest stated Python (a static check: no other interpreter is at hand)."""
    stated = SpecifierSet(metadata.metadata("sbir-bench")["Requires-Python"])
    assert f"{OLDEST_PYTHON[0]}.{OLDEST_PYTHON[1]}" in stated and "3.9" not in stated
    newer_stdlib = re.compile(r"^\s*(import tomllib|from typing import .*\b(Self|LiteralString|Never|TypeVarTuple)\b"
                              r"|from datetime import .*\bUTC\b|from enum import .*\bStrEnum\b)", re.M)
    files = [p for folder in ("sbir_bench", "baselines", "splip", "configs", "results/paper")
             for p in (ROOT / folder).rglob("*.py")]
    assert len(files) > 50
    for path in files:
        source = path.read_text()
        ast.parse(source, filename=str(path), feature_version=OLDEST_PYTHON)
        assert not newer_stdlib.search(source), f"{path}: a standard-library name newer than Python 3.10"


def test_a_recipe_is_found_by_its_name_from_any_folder_and_a_file_on_disk_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = recipes_folder() / "paper" / "zs" / "tuberlin" / "splip.yaml"
    for name in ("paper/zs/tuberlin/splip", "paper/zs/tuberlin/splip.yaml", "configs/paper/zs/tuberlin/splip.yaml"):
        assert find_config(name) == shipped
    (tmp_path / "configs" / "paper" / "zs" / "tuberlin").mkdir(parents=True)
    mine = tmp_path / "configs" / "paper" / "zs" / "tuberlin" / "splip.yaml"
    mine.write_text("train: {epochs: 1}\n")
    assert find_config("configs/paper/zs/tuberlin/splip.yaml") == Path("configs/paper/zs/tuberlin/splip.yaml")
    with pytest.raises(ConfigError, match="neither a file nor a shipped recipe"):
        find_config("paper/zs/tuberlin/nosuch")


def test_reproduce_reads_the_shipped_recipes_not_a_configs_folder_where_the_user_stands(tmp_path, monkeypatch):
    from sbir_bench.reproduce import cells
    (tmp_path / "configs" / "mini").mkdir(parents=True)
    (tmp_path / "configs" / "mini" / "coop.yaml").write_text("not: [a recipe\n")
    monkeypatch.chdir(tmp_path)
    found = cells("zs", ["mini"], ["coop"])
    assert found[0].path == recipes_folder() / "mini" / "coop.yaml"


# ------------------------------------------------------------------ logs written to files
def test_progress_is_plain_lines_in_a_file_and_a_bar_on_a_terminal(monkeypatch):
    from tqdm.std import tqdm

    from sbir_bench import log
    monkeypatch.setattr(log, "is_quiet", lambda: False)
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setenv(log.PROGRESS_EVERY_ENV, "0.5")
    ticks = iter(range(100))  # a clock that moves a second per reading: one line per item, on any machine
    monkeypatch.setattr(log.time, "monotonic", lambda: float(next(ticks)))
    bar = log.progress(range(3), desc="embedding photos", unit="batch")
    assert isinstance(bar, log.LineProgress)
    bar.set_postfix({"loss": "0.5"})
    assert list(bar) == [0, 1, 2]
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and len(lines) == 3  # a line per item at this interval, none repeated
    assert lines[-1].startswith("embedding photos: 3/3 (100%) [") and lines[-1].endswith("loss=0.5")
    monkeypatch.setattr(stream, "isatty", lambda: True, raising=False)
    assert isinstance(log.progress(range(3), desc="x"), tqdm)


@pytest.mark.parametrize("raw,seconds", [("5", 5.0), ("0.5", 0.5), ("", 30.0), ("soon", 30.0), ("-1", 30.0),
                                         ("nan", 30.0), ("inf", 30.0)])
def test_the_progress_interval_comes_from_the_environment(raw, seconds, monkeypatch):
    from sbir_bench import log
    monkeypatch.setenv(log.PROGRESS_EVERY_ENV, raw)
    assert log.progress_every() == seconds


# ------------------------------------------------------------------ a minimal install
MINIMAL = """
import sys
from pathlib import Path
for name in {optional!r}:
    sys.modules[name] = None  # as if not installed: importing it raises ModuleNotFoundError
from sbir_bench.cli import main
for args in {commands!r}:
    args = [str(next(Path({runs!r}).glob("*/embeddings.npz"))) if a == "EMB" else a for a in args]
    print("=== " + " ".join(args), flush=True)
    print("=== " + " ".join(args), file=sys.stderr, flush=True)
    try:
        main.main(args, standalone_mode=False)
        print("exit 0", flush=True)
    except SystemExit as exc:
        print(f"exit {{exc.code}}", flush=True)
"""


@pytest.mark.slow  # a fresh interpreter runs eight commands
def test_a_minimal_install_runs_evaluates_compares_exports_and_plots_and_names_a_missing_extra(tmp_path):
    """With every optional library hidden, the main command, eval, compare, export and plot work, and
    each feature that needs an extra is one line naming it. stderr is a pipe here, as in a job log:
    progress comes as plain lines, never carriage returns."""
    runs = tmp_path / "runs"
    emb = "EMB"
    commands = [
        ["run", "zeroshot-clip", "--dataset", "mini", "--setting", "zs", "--output-dir", str(runs)],
        ["eval", "--embeddings", emb, "--protocols", "all"],
        ["compare", str(runs), "--ci"],
        ["export", str(runs), "--format", "latex", "-o", str(tmp_path / "t.tex")],
        ["plot", str(runs), "--kind", "pr", "--output-dir", str(tmp_path / "plots")],
        ["eval", "--embeddings", emb, "--backend", "faiss"],
        ["run", "zeroshot-clip", "--dataset", "mini", "--report-to", "tensorboard", "--output-dir", str(runs)],
        ["reproduce", "zs", "--dataset", "mini", "--launcher", "submitit-local", "--output-dir", str(tmp_path / "r")],
    ]
    script = MINIMAL.format(optional=OPTIONAL, commands=commands, runs=str(runs))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SBIR_BENCH_PROGRESS_EVERY": "0.000001"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600,
                          cwd=tmp_path)
    out = dict(zip(done.stdout.split("=== ")[1:], done.stderr.split("=== ")[1:]))
    assert done.returncode == 0 and len(out) == len(commands), done.stdout + done.stderr
    codes = [o.strip().splitlines()[-1] for o in done.stdout.split("=== ")[1:]]
    assert codes == ["exit 0"] * 5 + ["exit 2"] * 3, done.stdout + done.stderr
    errors = [e.strip().splitlines()[1:] for e in done.stderr.split("=== ")[1:][5:]]
    for lines, extra in zip(errors, ("faiss", "track", "cluster")):
        assert len(lines) == 1 and f"pip install 'sbir-bench[{extra}]'" in lines[0], lines
    assert (tmp_path / "t.tex").is_file() and list((tmp_path / "plots").glob("*.png"))
    first = done.stderr.split("=== ")[1]
    assert "\r" not in done.stderr and re.search(r"^\S.*: \d+/\d+ \(\d+%\) \[", first, re.M), first


# ------------------------------------------------------------------ the wheel
def _copy_source(dest: Path) -> Path:
    """The files git would ship (tracked and untracked-not-ignored), so the build leaves the clone untouched."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    return dest


@pytest.mark.slow  # builds a wheel, installs it into a fresh environment and starts three commands there
def test_a_wheel_installed_elsewhere_runs_reproduce_and_adds_only_the_sbir_bench_name(tmp_path):
    src = _copy_source(tmp_path / "src")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    wheel = next((tmp_path / "dist").glob("sbir_bench-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"sbir_bench", wheel.name.split("-py3")[0] + ".dist-info"}
    for shipped in ("sbir_bench/configs/paper/zs/tuberlin/splip.yaml", "sbir_bench/configs/mini/splip.yaml",
                    "sbir_bench/configs/paper/recipes/common.yaml", "sbir_bench/published/splip_eccv2024.csv",
                    "sbir_bench/baselines/coop.py", "sbir_bench/splip/method.py"):
        assert shipped in names, shipped
    assert any(n.startswith("sbir_bench/data/splits/") for n in names)

    # A fresh environment that sees the test environment's libraries (torch, open_clip, ...) through a
    # .pth line, but not its editable sbir-bench: .pth files of a folder a .pth adds are not run.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "test-environment.pth").write_text("\n".join(sorted(ours)) + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
                              "-q", str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr

    empty = tmp_path / "elsewhere"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_CONSTRAINT")}
    env["OMP_NUM_THREADS"] = "1"
    exe = str(venv / "bin" / "sbir-bench")
    where = subprocess.run([str(py), "-c", "import importlib.util as u, sbir_bench; print(sbir_bench.__file__); "
                            "print([m for m in ('baselines', 'splip', 'configs') if u.find_spec(m)])"],
                           cwd=empty, env=env, capture_output=True, text=True, check=True).stdout.splitlines()
    assert where[0].startswith(str(site)) and where[1] == "[]", where
    main = subprocess.run([exe, "run", "zeroshot-clip", "--dataset", "mini", "--setting", "zs"], cwd=empty, env=env,
                          capture_output=True, text=True, timeout=600)
    assert main.returncode == 0 and "mAP@all" in main.stdout, main.stdout + main.stderr
    assert list((empty / "results" / "runs").glob("*.json"))
    dry = subprocess.run([exe, "reproduce", "zs", "--dataset", "mini", "--dry-run"], cwd=empty, env=env,
                         capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0 and "coop" in dry.stdout and "splip" in dry.stdout, dry.stdout + dry.stderr
    listed = subprocess.run([exe, "methods"], cwd=empty, env=env, capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0 and all(m in listed.stdout for m in ("splip", "coop", "clip-at")), listed.stderr


def test_every_environment_variable_is_documented_once_with_its_one_meaning():
    from sbir_bench.locations import ENVIRONMENT
    readme = (ROOT / "README.md").read_text()
    for name in ENVIRONMENT:
        assert len(re.findall(rf"^\| `{name}` \|", readme, re.M)) == 1, name
    used = set(re.findall(r"SBIR_BENCH_[A-Z_]+", "".join(p.read_text() for p in (ROOT / "sbir_bench").rglob("*.py"))))
    assert used <= set(ENVIRONMENT) | {"SBIR_BENCH_TEST_CACHE"}, used - set(ENVIRONMENT)


def test_the_shipped_recipes_are_listed_by_the_name_config_takes():
    from click.testing import CliRunner

    from sbir_bench.cli import main
    listed = CliRunner().invoke(main, ["recipes"]).output.split()
    assert "paper/zs/tuberlin/splip" in listed and "mini/coop" in listed and "paper/recipes/common" in listed
    assert all(find_config(name).is_file() for name in listed)
    assert CliRunner().invoke(main, ["recipes", "paper/gzs"]).output.split() == [n for n in listed
                                                                                 if n.startswith("paper/gzs/")]
