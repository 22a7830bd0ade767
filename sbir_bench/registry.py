"""A tiny name -> class registry (timm-style) that also reads a package entry-point group.

Third-party packages add a method by declaring, in their own ``pyproject.toml``::

    [project.entry-points."sbir_bench.methods"]
    my-method = "my_package.module:MyMethod"

and sbir-bench finds it without being edited.
"""

from __future__ import annotations

from importlib import metadata
from typing import Callable, Dict, Generic, List, Optional, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to classes; entry points of ``group`` are loaded lazily on first lookup."""

    def __init__(self, kind: str, group: Optional[str] = None) -> None:
        self.kind = kind
        self.group = group
        self._items: Dict[str, T] = {}
        self._entry_points_loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator registering the class under ``name``."""

        def decorator(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            setattr(obj, "name", name)
            return obj

        return decorator

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded or self.group is None:
            return
        self._entry_points_loaded = True
        for ep in metadata.entry_points(group=self.group):
            if ep.name not in self._items:
                obj = ep.load()
                self._items[ep.name] = obj
                setattr(obj, "name", ep.name)

    def get(self, name: str) -> T:
        """Return the class registered as ``name`` or raise a one-line error listing the choices."""
        self._load_entry_points()
        if name not in self._items:
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}")
        return self._items[name]

    def names(self) -> List[str]:
        """Sorted registered names."""
        self._load_entry_points()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return name in self._items
