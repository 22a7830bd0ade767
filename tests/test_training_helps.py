"""Training is worth it: on the mini set with the shipped tiny backbone, each trained method's
seen-class validation mAP@all beats zero-shot CLIP's on the same partition by MARGIN, using the
shipped recipes (configs/mini/*.yaml), each run well under five minutes on two cores.

Why MARGIN holds on any CPU: every machine loads the same weights and images (shipped bytes), so a
CPU change only moves training in its last bits, not the world it trains in. Over seeds 0-2 (on one
AMD EPYC) the smallest gain over zero-shot was 0.08 (linear probe and CoOp) and 0.09 (MaPLe, CLIP-AT
and CoCoOp): MARGIN = 0.05 leaves a last-bit drift of training more than half the smallest gain. SpLIP's mini
recipe gains less, +0.021 on seeds 0 and 1 alike, and no variant we tried did better (lr 0.003 and
0.01, lambda_cls 1, lambda_triplet 3, 8 + 4 visual tokens, no jigsaw: 0.288-0.316 against the
recipe's 0.318); its margin is SPLIP_MARGIN = 0.01, half its gain, which a change of seed (a far
larger perturbation than a CPU's last bits) did not move.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sbir_bench.config import build_run_config, load_yaml
from sbir_bench.runner import run

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "mini"
MARGIN = 0.05
SPLIP_MARGIN = 0.01


def val_map(method: str, tmp_path: Path) -> tuple[float, float]:
    cfg = build_run_config(load_yaml(CONFIGS / f"{method}.yaml"),
                           {"method": method, "output_dir": str(tmp_path / method), "quiet": True,
                            "eval.save_embeddings": False, "train.val_every": 0})  # validated once, at the end
    record = run(cfg)
    return record["val_metrics"]["mAP@all"], record["timings"]["total_seconds"]


@pytest.fixture(scope="module")
def zero_shot(tmp_path_factory, mini_root) -> float:
    return val_map("zeroshot-clip", tmp_path_factory.mktemp("zs"))[0]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["linear-probe", "coop", "cocoop", "maple", "clip-at", "splip"])
def test_trained_method_beats_zero_shot_on_seen_validation(method, zero_shot, tmp_path):
    trained, seconds = val_map(method, tmp_path)
    margin = SPLIP_MARGIN if method == "splip" else MARGIN
    assert trained > zero_shot + margin, f"{method}: {trained:.4f} vs zero-shot {zero_shot:.4f}"
    assert seconds < 300
