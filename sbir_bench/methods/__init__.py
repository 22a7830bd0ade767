"""The method plug-in interface (:class:`Method`) and its registry.

Built-in methods live in the top-level ``baselines`` and ``splip`` packages and register themselves
on import; third-party methods register through the ``sbir_bench.methods`` entry-point group.
"""

from ..data.triplets import TripletBatch
from ..plugins import METHODS
from .base import Method, NoConfig, Stage, check_choice


def get_method(name: str):
    """The method class registered as ``name`` (built-ins and plug-ins)."""
    return METHODS.get(name)


def load_builtin_methods() -> None:
    """Import the packages whose modules register the built-in methods."""
    METHODS.names()


__all__ = ["METHODS", "Method", "NoConfig", "Stage", "TripletBatch", "check_choice", "get_method", "load_builtin_methods"]
