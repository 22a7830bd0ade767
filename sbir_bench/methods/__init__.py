"""The method plug-in interface and its registry.

Built-in methods live in the top-level ``baselines`` and ``splip`` packages and register themselves
on import; third-party methods register through the ``sbir_bench.methods`` entry-point group.
"""

from .base import Method, NoConfig, TripletBatch
from .registry import METHODS, get_method, load_builtin_methods

__all__ = ["METHODS", "Method", "NoConfig", "TripletBatch", "get_method", "load_builtin_methods"]
