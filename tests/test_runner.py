"""The run pipeline (runner.py) as a library: it leaves its caller's logging alone."""

from __future__ import annotations

import logging


def test_a_run_leaves_the_callers_logger_level_alone(tmp_path, mini_root):
    from sbir_bench.config import build_run_config
    from sbir_bench.runner import run
    logger = logging.getLogger("sbir_bench")
    before = logger.level
    try:
        logger.setLevel(logging.ERROR)  # the caller's choice
        run(build_run_config({}, {"method": "zeroshot-clip", "output_dir": str(tmp_path), "quiet": False,
                                  "eval.save_embeddings": False}))
        assert logger.level == logging.ERROR
    finally:
        logger.setLevel(before)
