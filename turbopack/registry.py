"""A name -> object registry whose unknown-name error lists what is registered.

Formats, layouts and architectures are registered data: the key is a ``str`` enum value that is
also the string written to disk, so looking up a name read from a file is a dict lookup, never an
if-chain on strings.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from turbopack.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        key = str(getattr(name, "value", name))
        if key in self._items:
            raise ValueError(f"{self.kind} {key!r} registered twice")
        self._items[key] = item
        return item

    def get(self, name: str) -> T:
        key = str(getattr(name, "value", name))
        try:
            return self._items[key]
        except KeyError:
            known = ", ".join(sorted(self._items))
            raise UnknownNameError(f"unknown {self.kind} {key!r}; registered: {known}") from None

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return str(getattr(name, "value", name)) in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)
