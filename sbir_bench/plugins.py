"""Plug-in registries: methods and datasets are found by name, built-in or from installed packages.

A third-party package adds a method or a dataset without editing sbir-bench, by declaring in its own
``pyproject.toml``::

    [project.entry-points."sbir_bench.methods"]
    my-method = "my_package.module:MyMethod"          # a Method subclass

    [project.entry-points."sbir_bench.datasets"]
    my-sketches = "my_package.data:MY_SPEC"           # a DatasetSpec

Entry points are loaded lazily, on the first lookup that needs them.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import Callable, Dict, Generic, List, Optional, Tuple, Type, TypeVar

from .errors import ConfigError, SbirError
from .log import get_logger

log = get_logger(__name__)

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to plug-ins (classes or objects); ``group`` names the entry-point group."""

    def __init__(self, kind: str, group: Optional[str] = None, builtin: Tuple[str, ...] = (),
                 error: Type[SbirError] = ConfigError) -> None:
        self.kind, self.group, self.builtin, self.error = kind, group, builtin, error
        self._items: Dict[str, T] = {}
        self._broken: Dict[str, str] = {}  # entry-point name -> why it failed to load
        self._loaded = False

    def add(self, name: str, obj: T) -> T:
        """Register ``obj`` under ``name`` (its ``name`` attribute is set to it)."""
        if name in self._items and self._items[name] is not obj:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj
        setattr(obj, "name", name)
        return obj

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator registering the class under ``name``."""
        return lambda obj: self.add(name, obj)

    def _load(self) -> None:
        """Import the built-in modules, then the installed entry points (first definition wins).

        The registry counts as loaded only once every entry point has been tried, so a caller that
        catches an error never continues with half a registry. A plug-in that fails to import is one
        warning naming its package and error; every other plug-in works, and asking for the broken
        one by name is a one-line error saying why it failed.
        """
        if self._loaded:
            return
        for module in self.builtin:
            importlib.import_module(module)
        for ep in metadata.entry_points(group=self.group) if self.group else ():
            if ep.name in self._items or ep.name in self._broken:
                continue
            try:
                self.add(ep.name, ep.load())
            except Exception as exc:  # a third party's import error must not take every command down
                package = ep.dist.name if getattr(ep, "dist", None) is not None else ep.value.split(":")[0]
                why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
                self._broken[ep.name] = f"the plug-in package {package} ({ep.value}) failed to load: {why}"
                log.warning(f"{self.kind} {ep.name!r}: {self._broken[ep.name]}; the other {self.kind}s work")
        self._loaded = True

    def get(self, name: str) -> T:
        """The plug-in registered as ``name``, or a one-line error listing the choices."""
        self._load()
        if name in self._broken:
            raise self.error(f"{self.kind} {name!r} is unavailable: {self._broken[name]}")
        if name not in self._items:
            raise self.error(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}")
        return self._items[name]

    def names(self) -> List[str]:
        """Registered names, sorted."""
        self._load()
        return sorted(self._items)

    def items(self) -> List[Tuple[str, T]]:
        """(name, plug-in) pairs in registration order: built-ins first, then entry points."""
        self._load()
        return list(self._items.items())

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._items


METHODS: Registry = Registry("method", "sbir_bench.methods", builtin=("sbir_bench.baselines", "sbir_bench.splip"))
DATASETS: Registry = Registry("dataset", "sbir_bench.datasets", builtin=("sbir_bench.data.catalog",))
TRACKERS: Registry = Registry("tracker", "sbir_bench.trackers", builtin=("sbir_bench.tracking",))
