"""Immutable value types that are cheap to build: immutability checked by mypy, not at run time.

The request path builds a handful of value objects per request (a sample per phase,
a finding per detector, a verdict per phase). As ``@dataclass(frozen=True,
slots=True)`` each field of each object is set through ``object.__setattr__``, which
made a frozen ``Finding`` four times as costly to build as the same slotted class
without the freeze (1.23 us against 0.31 us, nine fields) and put a verdict at
about 25,000 machine instructions: frozen construction was about a tenth of all
instructions the proxy spent on a default request (``valgrind --tool=callgrind``
on ``serve`` under load, see ``loadtests/README.md``).

:func:`value_type` keeps the promise where it is checked: the type checker reads a
class it decorates as a frozen dataclass (``typing.dataclass_transform`` with
``frozen_default``), so ``mypy --strict``, which the test command runs, rejects any
assignment to a field. At run time the class is a plain slotted dataclass, hashable
from its fields as a frozen one is, and ``dataclasses.replace`` builds changed
copies as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar, dataclass_transform

__all__ = ["value_type"]

T = TypeVar("T")


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def value_type(cls: type[T]) -> type[T]:
    """Make ``cls`` a slotted dataclass that the type checker treats as frozen."""
    return dataclass(slots=True, unsafe_hash=True)(cls)
