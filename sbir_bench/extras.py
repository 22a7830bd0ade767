"""Optional libraries: imported only where a feature needs them, and named by their extra when absent.

``pip install sbir-bench`` without extras runs, evaluates, compares, exports and plots. The libraries
below serve one feature each; asking for that feature without them is one line naming the extra
(``pip install 'sbir-bench[faiss]'``), never an ``ImportError`` traceback at start-up.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType
from typing import Dict, Tuple

from .errors import ConfigError

# module -> (the extra that installs it, the PyPI distribution that provides it)
EXTRAS: Dict[str, Tuple[str, str]] = {
    "faiss": ("faiss", "faiss-cpu"),
    "submitit": ("cluster", "submitit"),
    "tensorboard": ("track", "tensorboard"),
    "wandb": ("track", "wandb"),
    "mlflow": ("track", "mlflow"),
}


class MissingExtra(ConfigError):
    """A feature's optional library is not installed (exit 2, like any other option that cannot be met)."""


def missing(module: str, feature: str) -> MissingExtra:
    """The one-line error for ``feature`` lacking ``module``, naming the extra and the package.

    >>> str(missing("faiss", "--backend faiss"))
    "--backend faiss needs faiss-cpu, the 'faiss' extra: pip install 'sbir-bench[faiss]' (or pip install faiss-cpu)"
    """
    extra, dist = EXTRAS[module]
    return MissingExtra(f"{feature} needs {dist}, the '{extra}' extra: pip install 'sbir-bench[{extra}]' "
                        f"(or pip install {dist})")


def is_installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (cheap; used to check before work)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that is missing, or a module set to None
        return False


def require(module: str, feature: str) -> ModuleType:
    """Import optional ``module`` for ``feature``; its absence is :func:`missing`'s one line.

    Only the module's own absence is turned into that line: an ``ImportError`` from inside an
    installed library (a broken build, a missing shared object) propagates as it is.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.split(".")[0] == module.split(".")[0]:
            raise missing(module, feature) from None
        raise
