"""Where sbir-bench finds what it ships and keeps what it generates: path policy in one place.

Shipped files (the recipes, the published tables) are found through the installed package with
:mod:`importlib.resources`, never through the working directory: a wheel installed anywhere and a
clone behave alike, and a folder named ``configs`` in whatever directory the user stands in is not
mistaken for ours. Generated files live under :func:`cache_root`.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from .errors import ConfigError

RECIPES_PACKAGE = "sbir_bench.configs"  # the repository's configs/, mapped into the package
PUBLISHED_PACKAGE = "sbir_bench.published"  # the repository's results/paper/, likewise


def cache_root() -> Path:
    """Where sbir-bench keeps what it generates: ``$SBIR_BENCH_CACHE`` or ``$XDG_CACHE_HOME/sbir-bench``
    (default ``~/.cache/sbir-bench``): the mini set, the tiny backbone, the frozen-feature cache."""
    base = os.environ.get("SBIR_BENCH_CACHE")
    return Path(base) if base else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sbir-bench"


ENVIRONMENT = {  # one variable per meaning (docs/errors.md lists them for users)
    "SBIR_BENCH_CACHE": "what sbir-bench generates: the unpacked mini set, sbir-tiny, the frozen-feature cache",
    "SBIR_BENCH_WEIGHTS": "where open_clip weights are looked for and downloaded (default ~/.cache/clip, open_clip's)",
    "SBIR_BENCH_DATA": "the data root holding the dataset copies (default ~/data/sbir)",
    "SBIR_BENCH_OFFLINE": "1: never try to download weights",
    "SBIR_BENCH_PROGRESS_EVERY": "seconds between progress lines when stderr is not a terminal (default 30)",
}


def weights_folder() -> Path:
    """Where open_clip weights are looked for and downloaded: ``$SBIR_BENCH_WEIGHTS``, else open_clip's
    own ``~/.cache/clip`` (so weights a researcher already has are found)."""
    return Path(os.environ.get("SBIR_BENCH_WEIGHTS") or Path.home() / ".cache" / "clip")


def _package_folder(package: str) -> Path:
    """The folder of a shipped data package on the file system (recipes are read as plain files, since
    a recipe's ``base:`` is a path relative to it)."""
    folder = Path(str(resources.files(package)))
    if not folder.is_dir():  # pragma: no cover - only a zipped install lands here
        raise ConfigError(f"sbir-bench's {package} is not a folder on disk ({folder}); install sbir-bench unzipped")
    return folder


def recipes_folder() -> Path:
    """The shipped recipes: ``mini/``, ``paper/recipes/`` and one ``paper/<setting>/<cell>/`` per table cell.

    >>> (recipes_folder() / "mini" / "coop.yaml").is_file()
    True
    """
    return _package_folder(RECIPES_PACKAGE)


def published_folder() -> Path:
    """The published tables (``*.csv``) that ``--reference paper`` and ``reproduce`` compare against."""
    return _package_folder(PUBLISHED_PACKAGE)


def find_config(name: str | Path) -> Path:
    """The config file ``name`` names: a path to a file (``.yaml`` may be left off), or else a shipped
    recipe by its name under the recipes folder, with or without a leading ``configs/``.

    A file on disk always wins, so a researcher's edited copy is used as given; a bare name such as
    ``paper/zs/tuberlin/splip`` finds the shipped recipe from any folder.

    >>> find_config("paper/zs/tuberlin/splip").relative_to(recipes_folder()).as_posix()
    'paper/zs/tuberlin/splip.yaml'
    """
    given = Path(name)
    for candidate in (given, given.with_name(given.name + ".yaml")):
        if candidate.is_file():
            return candidate
    parts = given.parts[1:] if given.parts[:1] == ("configs",) else given.parts
    if parts and not given.is_absolute():
        shipped = recipes_folder().joinpath(*parts)
        for candidate in (shipped, shipped.with_name(shipped.name + ".yaml")):
            if candidate.is_file():
                return candidate
    raise ConfigError(f"config file not found: {name} (neither a file nor a shipped recipe; "
                      f"`sbir-bench recipes` lists the shipped ones)")
