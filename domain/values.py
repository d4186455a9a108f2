"""The value contract: which JSON values may enter the log.

Whatever the write side acknowledges, every follower must be able to derive:
PostgreSQL's jsonb (the views), orjson (our encoder everywhere), asyncpg
(the read API's driver) and Redis (the bus) each refuse or alter some values
that plain JSON allows. The first release accepted an integer above 2**64 in
a node parameter; the workflows projector then failed on it forever, and
every organisation's views stalled behind it. So a value is admitted only if
all of them carry it losslessly:

- strings and keys hold no U+0000 (jsonb refuses it) and no lone surrogate
  (neither UTF-8 nor orjson can encode one);
- integers fit in signed 64 bits (orjson refuses larger ones; jsonb keeps
  them, but then no reader can re-encode what it reads back);
- floats are finite (NaN and Infinity are not JSON) and, when they are
  whole numbers, smaller than 2**63 in magnitude: jsonb prints ``1e20`` as
  the integer numeral ``100000000000000000000``, which a reader decodes as
  an integer that breaks the rule above;
- objects have string keys, arrays are lists, nothing else is a value;
- nesting is at most ``MAX_DEPTH`` deep and a value holds at most
  ``MAX_ELEMENTS`` elements, so checking (and every later walk) is bounded.

Pure: no I/O. Every door (definitions, execution inputs, webhook bodies,
filter and pipeline constants, values the engine produces) calls
``check_value`` and answers with the problems it names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Final

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
# Whole floats at or past this magnitude come back from jsonb as integer
# numerals outside 64 bits.
_FLOAT_WHOLE_LIMIT: Final = float(2**63)
MAX_DEPTH: Final = 64
MAX_ELEMENTS: Final = 1_000_000
# Enough to show a client what to fix without building a huge answer.
MAX_PROBLEMS: Final = 20

Path = tuple[str | int, ...]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class ValueProblem:
    """One value the contract refuses: where it is (keys and indexes) and why."""

    path: Path
    msg: str

    @property
    def loc(self) -> str:
        return format_path(self.path)

    def __str__(self) -> str:
        return f"{self.loc}: {self.msg}"


class ValueContractError(ValueError):
    """A value broke the contract; carries every problem found (up to a cap)."""

    def __init__(self, problems: list[ValueProblem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(str(problem) for problem in self.problems))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.problems,))


def format_path(path: Iterable[str | int]) -> str:
    """``nodes[2].parameters.url``; keys that are not identifiers as ``["odd key"]``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _IDENTIFIER.fullmatch(part):
            text += f".{part}" if text else part
        else:
            text += f"[{json.dumps(part, ensure_ascii=True)}]"
    return text or "value"


def check_value(
    value: Any,
    path: Path = (),
    *,
    max_depth: int = MAX_DEPTH,
    max_elements: int = MAX_ELEMENTS,
    max_problems: int = MAX_PROBLEMS,
) -> list[ValueProblem]:
    """Every place ``value`` breaks the contract, empty if it holds.

    Iterative, so a deeply nested value cannot exhaust the stack; stops after
    ``max_problems`` problems or at the first element past ``max_elements``.
    """
    problems: list[ValueProblem] = []
    # (value, path, depth); depth counts the containers around the value.
    pending: list[tuple[Any, Path, int]] = [(value, path, 0)]
    seen = 0
    while pending and len(problems) < max_problems:
        item, where, depth = pending.pop()
        seen += 1
        if seen > max_elements:
            problems.append(ValueProblem(path, f"holds more than {max_elements} elements"))
            break
        if isinstance(item, str):
            reason = _string_problem(item)
            if reason:
                problems.append(ValueProblem(where, reason))
        elif item is None or isinstance(item, bool):
            continue
        elif isinstance(item, int):
            if not INT64_MIN <= item <= INT64_MAX:
                problems.append(ValueProblem(where, _int_problem(item)))
        elif isinstance(item, float):
            reason = _float_problem(item)
            if reason:
                problems.append(ValueProblem(where, reason))
        elif isinstance(item, dict | list):
            if depth >= max_depth:
                problems.append(ValueProblem(where, f"is nested deeper than {max_depth} levels"))
                continue
            if isinstance(item, list):
                # Reversed, so problems come out in document order.
                for index in range(len(item) - 1, -1, -1):
                    pending.append((item[index], (*where, index), depth + 1))
                continue
            children = []
            for key, child in item.items():
                if not isinstance(key, str):
                    problems.append(ValueProblem(where, f"has a key that is not a string: {key!r}"))
                    continue
                key_reason = _string_problem(key)
                if key_reason:
                    problems.append(ValueProblem((*where, key), f"key {key_reason}"))
                    continue
                children.append((child, (*where, key), depth + 1))
            pending.extend(reversed(children))
        else:
            problems.append(ValueProblem(where, f"is not a JSON value ({type(item).__name__})"))
    return problems[:max_problems]


def ensure_value(value: Any, path: Path = ()) -> Any:
    """``value`` itself when it holds the contract; raise ``ValueContractError`` otherwise."""
    problems = check_value(value, path)
    if problems:
        raise ValueContractError(problems)
    return value


def _string_problem(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL character (U+0000), which cannot be stored"
    if text.isascii():  # the common case, and no surrogate is ASCII
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains invalid Unicode (a lone surrogate)"
    return None


def _storable(text: str) -> str:
    reason = _string_problem(text)
    if reason:
        raise PydanticCustomError("unstorable_text", reason)
    return text


StorableText = Annotated[str, AfterValidator(_storable)]
"""A free-text field of a request body (a name, a reason): refused (422) where the
value contract could not store it, as every value of a definition is."""


def _int_problem(number: int) -> str:
    if abs(number).bit_length() > 14_000:  # past 4,214 digits: Python will not print it
        shown = "an integer of more than 4,000 digits"
    else:
        digits = len(str(abs(number)))
        shown = f"integer {number}" if digits <= 30 else f"an integer of {digits} digits"
    return f"{shown} is outside the signed 64-bit range [-2**63, 2**63 - 1]"


def _float_problem(number: float) -> str | None:
    if number != number or number in (float("inf"), float("-inf")):
        return "is not a finite number (NaN and Infinity are not JSON)"
    if number.is_integer() and abs(number) >= _FLOAT_WHOLE_LIMIT:
        return (
            f"number {number!r} is a whole number of magnitude 2**63 or more, which "
            "cannot be stored without losing its value"
        )
    return None
