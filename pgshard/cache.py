"""A least-recently-used cache bounded by the total weight (bytes) of its entries, pure."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

_MISSING = object()


class ByteLRU:
    """Entries weigh what the caller says (e.g. the bytes of the text they were made
    from); the total never exceeds max_bytes. A hit makes an entry the newest; a put
    drops the oldest entries until the new one fits; an entry heavier than the whole
    budget is not stored at all (so one huge input cannot flush everything else)."""

    __slots__ = ("max_bytes", "_bytes", "_data")

    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = max_bytes
        self._bytes = 0
        self._data: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()

    @property
    def bytes(self) -> int:
        """The total weight of the entries held now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._data

    def get(self, key: Hashable, default: Any = None) -> Any:
        item = self._data.get(key, _MISSING)
        if item is _MISSING:
            return default
        self._data.move_to_end(key)
        return item[0]

    def put(self, key: Hashable, value: Any, weight: int) -> None:
        if weight < 0:
            raise ValueError("weight must be >= 0")
        data = self._data
        old = data.pop(key, None)
        if old is not None:
            self._bytes -= old[1]
        if weight > self.max_bytes:
            return
        while data and self._bytes + weight > self.max_bytes:
            _, (_, w) = data.popitem(last=False)
            self._bytes -= w
        data[key] = (value, weight)
        self._bytes += weight

    def pop(self, key: Hashable, default: Any = None) -> Any:
        item = self._data.pop(key, _MISSING)
        if item is _MISSING:
            return default
        self._bytes -= item[1]
        return item[0]

    def resize(self, max_bytes: int) -> None:
        """A new budget; the oldest entries go until the rest fits."""
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = max_bytes
        data = self._data
        while data and self._bytes > max_bytes:
            _, (_, w) = data.popitem(last=False)
            self._bytes -= w

    def clear(self) -> None:
        self._data.clear()
        self._bytes = 0
