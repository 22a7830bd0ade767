"""The ``sbir-bench`` command line: one CLI over methods x datasets x settings (CLIP_benchmark-style).

Every command turns a :class:`~sbir_bench.errors.SbirError` into one ``error:`` line on stderr and
the error's exit code (docs/errors.md), so a wrong path or flag never shows a stack trace. Commands
live in ``running`` (run, reproduce), ``evaluating`` (eval), ``catalogs`` (methods, backbones,
datasets, cache) and ``reporting`` (compare, export, plot).
"""

from __future__ import annotations

import click

from ..log import configure_cli_logging
from .common import OneLineGroup


@click.group(cls=OneLineGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="sbir-bench")
def main() -> None:
    """Train, evaluate and compare CLIP prompt-learning methods for zero-shot sketch-based image retrieval.

    \b
    Quick start (no downloads: the mini dataset and the sbir-tiny weights ship with the package):
      sbir-bench run zeroshot-clip --dataset mini --setting zs
      sbir-bench methods
      sbir-bench datasets
    """
    configure_cli_logging()


from . import catalogs, evaluating, reporting, running  # noqa: E402,F401  (register the commands)

__all__ = ["main"]
