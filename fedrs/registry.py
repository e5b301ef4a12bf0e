"""Components by name: one small registry type for strategies, partitions, codecs, distortions.

    STRATEGIES: Registry[type[Strategy]] = Registry("strategy")

    @STRATEGIES.register("fedavg")
    class FedAvgStrategy(Strategy): ...

    STRATEGIES.lookup("fedsgd")  # InputError: unknown strategy 'fedsgd'; known: fedavg

A registry is a read-mostly mapping: a name is registered once (a second entry under a taken
name is refused with ``ValueError``, a programming error), :meth:`Registry.lookup` turns an
unknown name, which comes from a user, into the registry's typed error (an ``InputError`` by
default: exit code 2 in the CLI) that names it and lists the known ones.  The options a user
gives an entry are checked the same way (:meth:`Registry.options`), by default against the
parameters it is called with (:meth:`Registry.parameters`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from typing import Any, Generic, TypeVar, cast

from fedrs.errors import InputError

T = TypeVar("T")


def store_name(name: str, entry: Any) -> None:
    """An ``on_register`` that stores the registered name on the entry as its ``name`` (a class
    that says which name built it)."""
    entry.name = name


class Registry(MutableMapping[str, T], Generic[T]):
    """Entries of one kind by name.

    Args:
        noun: What an entry is, for messages (``"strategy"``, ``"update codec"``).
        error: Exception class of an unknown name; called with the message.
        on_register: Called with the name and the entry after each registration (e.g. to store
            the name on a class).
    """

    def __init__(
        self,
        noun: str,
        *,
        error: Callable[[str], Exception] = InputError,
        on_register: Callable[[str, T], object] | None = None,
    ) -> None:
        self.noun = noun
        self._error = error
        self._on_register = on_register
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers its argument under ``name`` and returns it unchanged.

        Raises:
            ValueError: ``name`` is empty or already taken.
        """
        if not name or not isinstance(name, str):
            raise ValueError(f"{self.noun} name must be a non-empty string, got {name!r}")

        def decorator(entry: T) -> T:
            self[name] = entry
            return entry

        return decorator

    def lookup(self, name: str) -> T:
        """The entry registered as ``name``.

        Raises:
            The registry's error (``InputError`` by default): no entry has that name; the
            message lists the known names.
        """
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(self.names()) or "(none registered)"
            raise self._error(f"unknown {self.noun} {name!r}; known: {known}") from None

    def parameters(self, name: str) -> list[str]:
        """The parameters the entry ``name`` is called with (a class: its constructor's), in
        order; ``*args`` and ``**kwargs`` are left out.

        Raises:
            The registry's error: no entry has that name.
        """
        entry = cast(Callable[..., object], self.lookup(name))
        return [
            p.name
            for p in inspect.signature(entry).parameters.values()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]

    def options(
        self, name: str, options: Mapping[str, Any], accepted: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """``options`` as keyword arguments of the entry ``name``: ``-`` in a name is read as ``_``.

        Args:
            name: The entry, for messages (and for the default ``accepted``).
            options: Option name -> value, as the user gave them.
            accepted: The option names the entry takes; ``None`` for its :meth:`parameters`.

        Raises:
            InputError: An option not in ``accepted`` (the message lists them) or one given
                twice (as ``a-b`` and ``a_b``).
            The registry's error: ``accepted`` is ``None`` and no entry has that name.
        """
        if accepted is None:
            accepted = self.parameters(name)
        normalised: dict[str, Any] = {}
        for key, value in options.items():
            option = key.replace("-", "_")
            if option not in accepted:
                raise InputError(
                    f"{self.noun} {name!r} has no option {key!r}; accepted: {', '.join(accepted)}"
                )
            if option in normalised:
                raise InputError(f"{self.noun} {name!r}: option {option!r} given twice")
            normalised[option] = value
        return normalised

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def __setitem__(self, name: str, entry: T) -> None:
        if name in self._entries:
            taken = self._entries[name]
            owner = getattr(taken, "__qualname__", repr(taken))
            raise ValueError(f"{self.noun} {name!r} is already registered to {owner}")
        self._entries[name] = entry
        if self._on_register is not None:
            self._on_register(name, entry)

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.noun!r}: {', '.join(self.names())})"
