"""n8n expressions (``={{ $json.field }}``) in our expression language, CEL.

n8n evaluates JavaScript between ``{{ }}``; we run no JavaScript. What has
an exact CEL counterpart is translated: paths into the current item
(``$json.a.b``, ``$json["a b"]``, ``$json.list[0]``), literals, comparison,
arithmetic, logical operators, parentheses and ``? :``. Anything else (other
nodes' data ``$node``/``$()``, ``$now``, function and method calls, ``new``,
regex literals, arrow functions) is refused with the construct named, so the
importer can say which node needs a hand. A text with ``{{ }}`` inside
becomes a string concatenation: ``"=Hi {{ $json.name }}!"`` is
``"Hi " + string(item.name) + "!"``.

Pure: no I/O. The translated source is compiled before it is returned, so
what comes back is a valid CEL program.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Final

from domain.expressions import ExpressionError, compile_expression

__all__ = [
    "Expression",
    "Literal",
    "NotTranslatable",
    "parameter_value",
    "translate_expression",
]

_TOKEN: Final = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<number>\d+(?:\.\d+)?(?![\w$]))
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<name>[A-Za-z_$][\w$]*)
  | (?P<punct>===|!==|==|!=|<=|>=|&&|\|\||\?\.|\?\?|=>|[.\[\]()!<>+\-*/%?:,{}`=])
    """,
    re.VERBOSE,
)
_CEL_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# CEL's reserved words cannot follow a dot; such a key is written as an index.
_CEL_RESERVED: Final = frozenset(
    [
        "as",
        "break",
        "const",
        "continue",
        "else",
        "false",
        "for",
        "function",
        "if",
        "import",
        "in",
        "let",
        "loop",
        "package",
        "namespace",
        "null",
        "return",
        "true",
        "var",
        "void",
        "while",
    ]
)
_OPERATORS: Final = {
    "===": "==",
    "!==": "!=",
    "==": "==",
    "!=": "!=",
    "<=": "<=",
    ">=": ">=",
    "<": "<",
    ">": ">",
    "&&": "&&",
    "||": "||",
    "!": "!",
    "+": "+",
    "-": "-",
    "*": "*",
    "/": "/",
    "%": "%",
    "?": "?",
    ":": ":",
}
_TEMPLATE: Final = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)


class NotTranslatable(Exception):
    """An n8n expression with no CEL equivalent; the message says which construct."""


@dataclass(frozen=True)
class Literal:
    """A parameter that is a plain value, not an expression."""

    value: Any


@dataclass(frozen=True)
class Expression:
    """A translated expression: its CEL source, and the item path when it is only a path."""

    cel: str
    path: tuple[str, ...] | None = None


def parameter_value(value: Any) -> Literal | Expression:
    """An n8n parameter as a literal or a translated expression.

    n8n marks expression parameters with a leading ``=``; without ``{{ }}``
    the rest is literal text. Raises ``NotTranslatable``.
    """
    if not (isinstance(value, str) and value.startswith("=")):
        return Literal(value)
    text = value[1:]
    parts = _TEMPLATE.split(text)  # text, expr, text, expr, ..., text
    if len(parts) == 1:
        return Literal(text)
    if len(parts) == 3 and not parts[0].strip() and not parts[2].strip():
        return translate_expression(parts[1])
    pieces: list[str] = []
    for index, part in enumerate(parts):
        if index % 2 == 0:
            if part:
                pieces.append(json.dumps(part, ensure_ascii=False))
        else:
            pieces.append(f"string({translate_expression(part).cel})")
    return _checked(" + ".join(pieces) or '""', None)


def translate_expression(source: str) -> Expression:
    """One ``{{ }}`` body as CEL; raises ``NotTranslatable`` naming what has no equivalent."""
    tokens = _tokens(source)
    if not tokens:
        raise NotTranslatable("the expression is empty")
    out: list[str] = []
    path: list[str] | None = None
    only_path = True
    index = 0
    previous = ""  # kind of the previous emitted token: "value" or "operator"
    while index < len(tokens):
        kind, text = tokens[index]
        if kind == "name" and text == "$json":
            segments, index = _json_path(tokens, index + 1)
            out.append("item" + "".join(_cel_segment(segment) for segment in segments))
            if path is None and not out[:-1]:
                path = [str(segment) for segment in segments]
            else:
                only_path = False
            previous = "value"
            continue
        only_path = False
        if kind == "name":
            if text in ("true", "false", "null"):
                out.append(text)
            elif text == "undefined":
                raise NotTranslatable("uses 'undefined', which CEL has no counterpart for")
            else:
                raise NotTranslatable(f"uses '{text}', which has no CEL equivalent")
            previous = "value"
        elif kind == "number":
            out.append(text)
            previous = "value"
        elif kind == "string":
            out.append(json.dumps(_js_string(text), ensure_ascii=False))
            previous = "value"
        elif text == "(":
            if previous == "value":
                raise NotTranslatable("calls a function, which has no CEL equivalent")
            out.append("(")
            previous = "operator"
        elif text == ")":
            out.append(")")
            previous = "value"
        elif text in _OPERATORS:
            out.append(_OPERATORS[text])
            previous = "operator"
        else:
            raise NotTranslatable(f"uses '{text}', which has no CEL equivalent")
        index += 1
    cel = " ".join(out)
    return _checked(cel, tuple(path) if only_path and path is not None else None)


def _checked(cel: str, path: tuple[str, ...] | None) -> Expression:
    try:
        compile_expression(cel)
    except ExpressionError as exc:
        raise NotTranslatable(f"its CEL translation does not compile ({exc})") from None
    return Expression(cel, path)


def _tokens(source: str) -> list[tuple[str, str]]:
    tokens = []
    position = 0
    while position < len(source):
        match = _TOKEN.match(source, position)
        if match is None:
            raise NotTranslatable(f"uses '{source[position]}', which has no CEL equivalent")
        kind = match.lastgroup or ""
        if kind != "ws":
            tokens.append((kind, match.group()))
        position = match.end()
    return tokens


def _json_path(tokens: list[tuple[str, str]], index: int) -> tuple[list[str | int], int]:
    """The segments after ``$json`` and the index of the first token past them."""
    segments: list[str | int] = []
    while index < len(tokens):
        text = tokens[index][1]
        if text == "." and index + 1 < len(tokens) and tokens[index + 1][0] == "name":
            name = tokens[index + 1][1]
            if index + 2 < len(tokens) and tokens[index + 2][1] == "(":
                raise NotTranslatable(f"calls the method '{name}()', which has no CEL equivalent")
            if name == "length":
                raise NotTranslatable("uses '.length' (in CEL that is size(), not a field)")
            segments.append(name)
            index += 2
        elif (
            text == "["
            and index + 2 < len(tokens)
            and tokens[index + 1][0] in ("string", "number")
            and tokens[index + 2][1] == "]"
        ):
            key_kind, key = tokens[index + 1]
            if key_kind == "string":
                segments.append(_js_string(key))
            elif key.isdigit():
                segments.append(int(key))
            else:
                raise NotTranslatable(f"indexes with {key}, which is not an array position")
            index += 3
        elif text in (".", "[", "?."):
            raise NotTranslatable("reads the item with a computed or optional path")
        else:
            break
    return segments, index


def _cel_segment(segment: str | int) -> str:
    if isinstance(segment, int):
        return f"[{segment}]"
    if _CEL_IDENTIFIER.fullmatch(segment) and segment not in _CEL_RESERVED:
        return f".{segment}"
    return f"[{json.dumps(segment, ensure_ascii=False)}]"


def _js_string(literal: str) -> str:
    """The value of a JavaScript string literal (either quote)."""
    body = literal[1:-1]
    if literal[0] == "'":
        body = body.replace('\\"', '"').replace('"', '\\"').replace("\\'", "'")
    try:
        value = json.loads(f'"{body}"', strict=False)  # JS strings may hold tabs and the like
    except json.JSONDecodeError:
        raise NotTranslatable(f"has a string literal {literal} CEL cannot read") from None
    return str(value)
