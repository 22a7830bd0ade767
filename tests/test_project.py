"""Project files a newcomer relies on: the README's two set-up commands and the citation file."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_readme_has_exactly_the_two_setup_commands_ci_runs():
    out = subprocess.run(["awk", '/^## Set up/{s=1} s&&/^```bash/{b=1;next} b&&/^```/{exit} b', "README.md"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(out) == 2
    assert "pip install -e" in out[0] and "sbir-bench run zeroshot-clip --dataset mini --setting zs" in out[0]
    assert "pytest" in out[1]


def test_citation_cites_toolkit_and_method_papers():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["title"].startswith("sbir-bench")
    ids = " ".join(i["value"] for r in cff["references"] for i in r.get("identifiers", []))
    for arxiv in ("2407.04207", "2103.00020", "2109.01134", "2210.03117"):
        assert arxiv in ids
