"""fedrs.registry: the Registry every component chosen by name goes through."""

from __future__ import annotations

import pytest

from fedrs.errors import InputError
from fedrs.registry import Registry


class NoSuchThing(InputError):
    pass


def test_register_lookup_names_and_membership() -> None:
    things: Registry[type] = Registry("thing")

    @things.register("b")
    class B:
        pass

    things.register("a")(int)
    assert things.lookup("b") is B and things["a"] is int
    assert things.names() == ["a", "b"]
    assert list(things) == ["b", "a"]  # registration order
    assert "a" in things and "c" not in things and len(things) == 2
    del things["a"]
    assert things.names() == ["b"]


def test_unknown_name_raises_the_registry_error_listing_known_names() -> None:
    things: Registry[int] = Registry("thing", error=NoSuchThing)
    with pytest.raises(NoSuchThing, match=r"unknown thing 'x'; known: \(none registered\)"):
        things.lookup("x")
    things["one"] = 1
    things["two"] = 2
    with pytest.raises(NoSuchThing, match=r"^unknown thing 'x'; known: one, two$"):
        things.lookup("x")
    with pytest.raises(InputError):  # the default error
        Registry[int]("thing").lookup("x")


def test_a_taken_or_empty_name_is_refused() -> None:
    things: Registry[type] = Registry("thing")
    things.register("a")(int)
    with pytest.raises(ValueError, match="thing 'a' is already registered to int"):
        things.register("a")(int)
    with pytest.raises(ValueError, match="already registered"):
        things["a"] = str
    assert things["a"] is int
    with pytest.raises(ValueError, match="non-empty string"):
        things.register("")


def test_on_register_sees_each_entry_with_its_name() -> None:
    seen: list[tuple[str, int]] = []
    things: Registry[int] = Registry("thing", on_register=lambda name, n: seen.append((name, n)))
    things.register("one")(1)
    things["two"] = 2
    assert seen == [("one", 1), ("two", 2)]


def test_options_read_dashes_as_underscores_and_refuse_unknown_or_repeated_names() -> None:
    things: Registry[int] = Registry("thing")
    accepted = ["top_k", "step"]
    assert things.options("t", {"top-k": 3, "step": 0.5}, accepted) == {"top_k": 3, "step": 0.5}
    with pytest.raises(InputError, match=r"^thing 't' has no option 'bits'; accepted: top_k, step"):
        things.options("t", {"bits": 4}, accepted)
    with pytest.raises(InputError, match=r"thing 't': option 'top_k' given twice"):
        things.options("t", {"top-k": 3, "top_k": 4}, accepted)
