"""The ``code`` node's expression language: CEL (Common Expression Language).

CEL is a small, side-effect-free language: no statements, no assignment, no
loops, no I/O, no access to Python. An expression sees exactly one variable,
``item``, bound to the current item (a JSON object)::

    item.price * 2
    item.name.startsWith("A") && size(item.tags) > 0
    has(item.discount) ? item.price - item.discount : item.price
    item.lines.map(line, line.qty * line.unit_price)

Design choices:

- Only ``item`` is bound (top-level fields are not also bound by name), so an
  expression never depends on which fields happen to exist; ``has(item.x)``
  tests for a field, and ``item.x`` on a missing field is an evaluation error.
- CEL is strictly typed: ``1 + 1.5`` and ``1 == 1.0`` are errors (use
  ``double(1) + 1.5``); ``string()``, ``int()``, ``double()`` convert.
- Standard functions: ``size``, ``contains``, ``startsWith``, ``endsWith``,
  ``matches`` (RE2, linear time), conversions, the ``map/filter/all/exists/
  exists_one`` macros. ``lowerAscii()`` and ``upperAscii()`` (from CEL's
  strings extension) are added here because celpy lacks them.
- Results are converted to plain JSON (``None``, ``bool``, ``int``, ``float``,
  ``str``, ``list``, ``dict`` with string keys). Timestamps and durations
  become their CEL string form; bytes, types and non-finite numbers are
  refused.

Bounds. CEL has no loops or recursion, so cost is at most the expression size
times the data size per macro nesting level. To keep even nested macros over
large data in check, evaluation counts interpreter steps (syntax-tree visits,
including inside macros) and stops after ``MAX_EVALUATION_STEPS``. One step
can still touch a whole collection (``x in item.list``, ``==``), so every
value a step yields is also charged its size (8 bytes per list or map
element, 1 per string character) against ``MAX_EVALUATION_BYTES``: a
``map`` that looks through a big list for each element, or builds a big
value per element, stops there, which also bounds the memory an evaluation
builds. The caller's ``out_of_time`` is polled at every step, so a run's
deadline holds inside an expression (``ExpressionTimeout``). ``+`` refuses
to build strings or lists longer than ``MAX_CONCAT_LENGTH`` (repeated
doubling inside ``map`` would otherwise exhaust memory in a few steps); and
the result's JSON size is capped at ``MAX_RESULT_BYTES``, checked while
converting so a huge result is abandoned early. Sources are capped at
``MAX_SOURCE_CHARS``, as in the node's parameters.
"""

from __future__ import annotations

import functools
import logging
import math
import operator
import re
import string
import sys
from collections.abc import Callable, Mapping
from typing import Any, Final

import celpy
import lark
from celpy import celtypes
from celpy.evaluation import (
    Activation,
    CELEvalError,
    CELSyntaxError,
    CELUnsupportedError,
    Evaluator,
)

__all__ = [
    "MAX_CONCAT_LENGTH",
    "MAX_EVALUATION_BYTES",
    "MAX_EVALUATION_STEPS",
    "MAX_RESULT_BYTES",
    "MAX_SOURCE_CHARS",
    "CompiledExpression",
    "ExpressionError",
    "ExpressionTimeout",
    "compile_expression",
]

MAX_SOURCE_CHARS: Final = 10_000
MAX_EVALUATION_STEPS: Final = 50_000
MAX_EVALUATION_BYTES: Final = 8 * 1024 * 1024
MAX_CONCAT_LENGTH: Final = 1_000_000
MAX_RESULT_BYTES: Final = 1024 * 1024
_MAX_MESSAGE_CHARS: Final = 500
_STEPS_PER_BINDING: Final = 10


class ExpressionError(Exception):
    """An expression that does not compile, fails while evaluating, or breaks a bound."""


class ExpressionTimeout(ExpressionError):
    """The caller's ``out_of_time`` said so during the evaluation."""


def _never_out_of_time() -> bool:
    return False


class CompiledExpression:
    """A parsed CEL program, reusable across items and threads (it holds no per-run state)."""

    def __init__(self, source: str, ast: lark.Tree) -> None:
        self.source = source
        self._ast = ast

    def evaluate(
        self, item: Mapping[str, Any], *, out_of_time: Callable[[], bool] = _never_out_of_time
    ) -> Any:
        """Evaluate with ``item`` bound; return the result as plain JSON.

        Raises ``ExpressionError`` for any evaluation problem (missing field,
        division by zero, type mismatch, unknown function, exceeded bound),
        ``ExpressionTimeout`` as soon as ``out_of_time()`` (polled at every
        step) is true.
        """
        try:
            variables = {"item": _Conversion(out_of_time).to_cel(item)}
        except (ValueError, TypeError, RecursionError) as exc:
            raise ExpressionError(f"item cannot be passed to the expression: {exc}") from None
        evaluator = _BudgetedEvaluator(self._ast, _BASE_ACTIVATION, _StepBudget(out_of_time))
        try:
            value = evaluator.evaluate(variables)
        except CELEvalError as exc:
            raise ExpressionError(_describe(exc)) from None
        except (CELSyntaxError, CELUnsupportedError) as exc:
            # Parsed but malformed, e.g. a macro with the wrong arguments: `l.map(x)`.
            raise ExpressionError(f"unsupported expression {_where(exc)}") from None
        except RecursionError:
            raise ExpressionError("expression or item is nested too deeply") from None
        except (ValueError, TypeError, LookupError, AttributeError, ArithmeticError) as exc:
            # celpy lets a few Python errors escape on odd input (e.g. `l.map(x)`).
            raise ExpressionError(f"expression could not be evaluated: {exc}") from None
        try:
            return _to_json(value, _SizeBudget())
        except RecursionError:
            raise ExpressionError("result is nested too deeply") from None

    def __repr__(self) -> str:
        return f"CompiledExpression({self.source!r})"


@functools.lru_cache(maxsize=1024)
def compile_expression(source: str) -> CompiledExpression:
    """Parse ``source`` once (cached by source text); raise ``ExpressionError`` if invalid."""
    if len(source) > MAX_SOURCE_CHARS:
        raise ExpressionError(
            f"expression is {len(source)} characters, at most {MAX_SOURCE_CHARS} allowed"
        )
    if not source.strip():
        raise ExpressionError("expression is empty")
    try:
        ast = _ENVIRONMENT.compile(source)
    except celpy.CELParseError as exc:
        raise ExpressionError(_describe_syntax_error(exc)) from None
    except RecursionError:
        raise ExpressionError("expression is nested too deeply") from None
    return CompiledExpression(source, ast)


# -- evaluation with bounds ----------------------------------------------------


class _StepBudget:
    """Steps and bytes left for one evaluation, shared with macro sub-evaluators.

    Exceeding either is raised, not returned as a CEL error value: `||`, `&&`
    and has() swallow error values, and a budget must not be swallowed.
    """

    __slots__ = ("bytes_left", "last_charged", "left", "out_of_time")

    def __init__(self, out_of_time: Callable[[], bool]) -> None:
        self.left = MAX_EVALUATION_STEPS
        self.bytes_left = MAX_EVALUATION_BYTES
        self.out_of_time = out_of_time
        self.last_charged: Any = None

    def spend(self, steps: int) -> None:
        self.left -= steps
        if self.left < 0:
            raise ExpressionError(f"expression evaluation exceeded {MAX_EVALUATION_STEPS} steps")
        if self.out_of_time():
            raise ExpressionTimeout("the execution's deadline passed during the evaluation")

    def spend_on(self, value: Any) -> None:
        """Charge the size of a value a step yielded (shared or new: both cost work).

        The grammar wraps every value in a chain of one-child rules (``expr``,
        ``conditionalor``, ..., ``primary``) that pass it up unchanged: the
        same object yielded again is charged once.
        """
        if value is self.last_charged:
            return
        self.last_charged = value
        if isinstance(value, list | dict):
            self.bytes_left -= 8 * len(value)
        elif isinstance(value, str | bytes):
            self.bytes_left -= len(value)
        else:
            return
        if self.bytes_left < 0:
            raise ExpressionError(
                f"expression evaluation handled more than {MAX_EVALUATION_BYTES} bytes of values"
            )


class _BudgetedEvaluator(Evaluator):
    """celpy's tree-walking interpreter, charging every node visit to a step budget."""

    def __init__(self, ast: lark.Tree, activation: Activation, budget: _StepBudget) -> None:
        super().__init__(ast, activation)
        self._budget = budget

    def sub_evaluator(self, ast: lark.Tree) -> Evaluator:
        # Macros (map, filter, ...) evaluate their body with a sub-evaluator per item.
        return _BudgetedEvaluator(ast, self.activation, self._budget)

    def set_activation(self, values: Any) -> Evaluator:
        # Binding variables clones the activation: called once per element by
        # macros, and costlier than a plain visit, so charged as several steps.
        self._budget.spend(_STEPS_PER_BINDING)
        return super().set_activation(values)

    def visit(self, tree: lark.Tree) -> Any:
        self._budget.spend(1)
        return super().visit(tree)

    def visit_children(self, tree: lark.Tree) -> list[Any]:
        self._budget.spend(len(tree.children))
        return super().visit_children(tree)

    def _visit_tree(self, tree: lark.Tree) -> Any:
        # Every subtree's evaluation passes here (lark's visit and
        # visit_children both do), so each value a step yields is charged.
        value = super()._visit_tree(tree)
        self._budget.spend_on(value)
        return value


def _bounded_add(left: Any, right: Any) -> Any:
    """CEL ``+``, refusing to build an over-long string, bytes or list."""
    if isinstance(left, str | bytes | list) and isinstance(right, str | bytes | list):
        length = len(left) + len(right)
        if length > MAX_CONCAT_LENGTH:
            raise ExpressionError(
                f"'+' would build a value of length {length}, at most {MAX_CONCAT_LENGTH} allowed"
            )
    return operator.add(left, right)


# CEL's lowerAscii/upperAscii change ASCII letters only (str.lower would fold "É" too).
_ASCII_LOWER: Final = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_ASCII_UPPER: Final = str.maketrans(string.ascii_lowercase, string.ascii_uppercase)


def _lower_ascii(text: Any) -> Any:
    if not isinstance(text, str):
        return CELEvalError("lowerAscii() applies to a string", TypeError, None)
    return celtypes.StringType(text.translate(_ASCII_LOWER))


def _upper_ascii(text: Any) -> Any:
    if not isinstance(text, str):
        return CELEvalError("upperAscii() applies to a string", TypeError, None)
    return celtypes.StringType(text.translate(_ASCII_UPPER))


_EXTRA_FUNCTIONS: Final[dict[str, Any]] = {
    "_+_": _bounded_add,
    "lowerAscii": _lower_ascii,
    "upperAscii": _upper_ascii,
}


def _make_environment() -> celpy.Environment:
    # celpy sets the process-wide recursion limit to 2500, which its recursive
    # interpreter needs (about 20 nested parentheses already exceed Python's
    # default 1000). Keep that, but never lower a limit the application raised.
    previous_limit = sys.getrecursionlimit()
    environment = celpy.Environment()
    sys.setrecursionlimit(max(previous_limit, sys.getrecursionlimit()))
    return environment


_ENVIRONMENT: Final = _make_environment()
# celpy logs every interpreter step at DEBUG with a dump of all variables: the
# whole item, into the logs, many times over, and ten times slower. Item data
# must not reach logs, so its loggers stay quiet whatever the root level is.
logging.getLogger("celpy").setLevel(logging.WARNING)
# Read-only template: each evaluation clones it before binding ``item``.
_BASE_ACTIVATION: Final = Activation(
    package=_ENVIRONMENT.package,
    annotations=_ENVIRONMENT.annotations,
    functions=_EXTRA_FUNCTIONS,
)


# -- conversions ---------------------------------------------------------------


# celpy's IntType() builds a range-checking wrapper per call (about 40 us, so
# an item holding 40,000 numbers took 1.5 s to bind); int.__new__ after our own
# range check makes the same value in a fraction of that.
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
# How many converted values between two looks at the clock.
_VALUES_PER_CLOCK_READ: Final = 4096


class _Conversion:
    """Converts a JSON value to CEL values, watching the deadline as it goes."""

    __slots__ = ("converted", "out_of_time")

    def __init__(self, out_of_time: Callable[[], bool]) -> None:
        self.out_of_time = out_of_time
        self.converted = 0

    def to_cel(self, value: Any) -> Any:
        """A JSON value as CEL values (bool before int: bool is an int subclass)."""
        self.converted += 1
        if self.converted % _VALUES_PER_CLOCK_READ == 0 and self.out_of_time():
            raise ExpressionTimeout("the execution's deadline passed while binding the item")
        if value is None:
            return None
        if isinstance(value, bool):
            return celtypes.BoolType(value)
        if isinstance(value, int):
            if not _INT64_MIN <= value <= _INT64_MAX:
                raise ValueError(f"integer {value} is outside the 64-bit range")
            return int.__new__(celtypes.IntType, value)
        if isinstance(value, float):
            return celtypes.DoubleType(value)
        if isinstance(value, str):
            return celtypes.StringType(value)
        if isinstance(value, list | tuple):
            return celtypes.ListType([self.to_cel(element) for element in value])
        if isinstance(value, Mapping):
            return celtypes.MapType(
                {celtypes.StringType(key): self.to_cel(element) for key, element in value.items()}
            )
        raise TypeError(f"{type(value).__name__} is not a JSON value")


class _SizeBudget:
    """Approximate JSON bytes the result may still take."""

    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = MAX_RESULT_BYTES

    def spend(self, size: int) -> None:
        self.left -= size
        if self.left < 0:
            raise ExpressionError(f"expression result is larger than {MAX_RESULT_BYTES} bytes")


def _to_json(value: Any, budget: _SizeBudget) -> Any:
    """A CEL result as plain JSON, charging its approximate serialized size."""
    if isinstance(value, CELEvalError):
        # An error can sit inside a map literal without having been raised.
        raise ExpressionError(_describe(value))
    if value is None:
        budget.spend(4)
        return None
    if isinstance(value, bool | celtypes.BoolType):  # before int: both subclass int
        budget.spend(5)
        return bool(value)
    if isinstance(value, int):
        budget.spend(20)
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ExpressionError(f"expression result {float(value)} is not a JSON number")
        budget.spend(24)
        return float(value)
    if isinstance(value, str):
        budget.spend(len(value) + 2)
        return str(value)
    if isinstance(value, celtypes.TimestampType | celtypes.DurationType):
        text = str(value)  # what CEL's string() gives, e.g. 2024-01-31T12:00:00Z
        budget.spend(len(text) + 2)
        return text
    if isinstance(value, list):
        budget.spend(2 + len(value))
        return [_to_json(element, budget) for element in value]
    if isinstance(value, dict):
        result: dict[str, Any] = {}
        budget.spend(2 + len(value))
        for key, element in value.items():
            if not isinstance(key, str):
                raise ExpressionError(
                    f"expression result has a non-string map key {_cel_type_name(key)}: "
                    "JSON object keys must be strings"
                )
            budget.spend(len(key) + 3)
            result[str(key)] = _to_json(element, budget)
        return result
    if isinstance(value, bytes):
        raise ExpressionError("expression result is bytes, not JSON: convert with string()")
    raise ExpressionError(f"expression result of type {_cel_type_name(value)} is not JSON")


# -- messages ------------------------------------------------------------------

_OPERATORS: Final = {
    "addition_add": "+",
    "addition_sub": "-",
    "multiplication_mul": "*",
    "multiplication_div": "/",
    "multiplication_mod": "%",
    "relation_lt": "<",
    "relation_le": "<=",
    "relation_gt": ">",
    "relation_ge": ">=",
    "relation_eq": "==",
    "relation_ne": "!=",
    "relation_in": "in",
    "unary_neg": "-",
    "unary_not": "!",
}
_RULE_TOKEN = re.compile(r"Token\('RULE', '(\w+)'\)")
_PYTHON_CLASS = re.compile(r"<class '(?:[\w.]+\.)?(\w+)'>")


def _cel_type_name(value: Any) -> str:
    return _type_name_from_class(type(value).__name__)


def _type_name_from_class(name: str) -> str:
    """``StringType`` -> ``string``, ``NoneType`` -> ``null``: the names CEL users know."""
    if name == "NoneType":
        return "null"
    return name.removesuffix("Type").lower() or name


def _describe(error: CELEvalError) -> str:
    """celpy's error text made readable: operators and CEL type names, no internals."""
    message = str(error.args[0]) if error.args else "evaluation error"
    # Unknown names carry a dump of the whole activation; the name is enough.
    message = message.split(" (in activation", 1)[0]
    message = _RULE_TOKEN.sub(lambda match: repr(_OPERATORS.get(match[1], match[1])), message)
    message = _PYTHON_CLASS.sub(lambda match: _type_name_from_class(match[1]), message)
    detail = error.args[2] if len(error.args) > 2 else None
    generic = not message.startswith(("found no matching overload", "undeclared reference"))
    if generic and isinstance(detail, tuple) and detail:
        message = f"{message} ({'; '.join(str(part) for part in detail)})"
    if len(message) > _MAX_MESSAGE_CHARS:
        message = message[:_MAX_MESSAGE_CHARS] + "..."
    return message


def _where(error: CELSyntaxError | CELUnsupportedError) -> str:
    if error.line is None:
        return "(malformed macro or call)"
    return f"at line {error.line}, column {error.column}"


def _describe_syntax_error(error: celpy.CELParseError) -> str:
    context = str(error.args[0]).splitlines()[0] if error.args else ""
    where = f"line {error.line}, column {error.column}" if error.line is not None else "?"
    return f"syntax error at {where} near {context.strip()!r}"
