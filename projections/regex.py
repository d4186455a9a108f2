"""Regexes of the filter language: a subset PostgreSQL and Python read alike.

``translate_regex`` checks a ``$regex`` against the supported subset and
spells it for both engines (PostgreSQL's ARE for the SQL, Python's ``re`` for
the reference evaluator), with MongoDB's (PCRE's) handling of newlines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from projections.errors import QueryError

MAX_REGEX_CHARS = 256
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")


@dataclass(frozen=True)
class Regex:
    """One accepted pattern, spelled for each engine; both match the same strings.

    ``postgres`` is an ARE with embedded options, for ``text COLLATE "C" ~``;
    ``python`` carries inline flags, for ``re.search``.
    """

    postgres: str
    python: str


# m -> PostgreSQL's newline mode. MongoDB's PCRE lets a negated class match a
# newline, whatever the options, so only "s" (ends only) and "w" (^ and $ at
# newlines too) fit; a dot without the s option is spelled [^\n] instead.
_PG_NEWLINE_MODE = {False: "s", True: "w"}
_MAX_REGEX_SIZE = 1000  # bounded repetitions multiplied out; PostgreSQL refuses huge ones
_ESCAPED_CONTROLS = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v"}
_CONTROL_ESCAPES = {v: k for k, v in _ESCAPED_CONTROLS.items()}
_BOUNDS = re.compile(r"\{([0-9]{1,3})(,([0-9]{1,3})?)?\}")


def translate_regex(pattern: str, options: str = "", where: str = "") -> Regex:
    """Check ``pattern`` against the supported subset and spell it for both engines.

    Supported: literals (escape any of ``\\^$.|?*+()[]{}``; ``\\`` before other
    punctuation is allowed too), ``.``, ``^``, ``$``, ``\\d \\D \\s \\S \\w \\W``
    (ASCII), ``\\n \\t \\r \\f \\v``, classes ``[...]``/``[^...]`` of literals,
    ranges and ``\\d \\s \\w`` (``[``, ``]`` and ``-`` escaped inside), groups
    ``(...)``/``(?:...)``, ``|``, and ``* + ? {m} {m,} {m,n}`` (bounds up to 255),
    each optionally lazy. Not supported (refused): backreferences, lookaround,
    word boundaries, POSIX classes, inline flags, empty alternatives.
    Options: ``i`` (ASCII case folding), ``m`` (^/$ at line breaks), ``s`` (dot
    matches a newline), ``x`` (whitespace and ``#`` comments ignored outside
    classes).
    """
    if len(pattern) > MAX_REGEX_CHARS:
        raise QueryError(f"regex longer than {MAX_REGEX_CHARS} characters at '{where}'")
    unsupported = sorted(set(options) - set("imsx"))
    if unsupported:
        raise QueryError(
            f"unsupported $options '{unsupported[0]}' at '{where}' (supported: i, m, s, x)"
        )
    if _BAD_TEXT.search(pattern):
        raise QueryError(f"strings cannot hold NUL or unpaired surrogates at '{where}'")
    multiline, dotall = "m" in options, "s" in options
    parser = _RegexParser(pattern, where, "x" in options, multiline, dotall)
    postgres, python = parser.parse()
    fold = "i" if "i" in options else ""
    python_flags = "a" + fold + ("m" if multiline else "") + ("s" if dotall else "")
    return Regex(
        postgres=f"(?{fold}{_PG_NEWLINE_MODE[multiline]}){postgres}",
        python=f"(?{python_flags}){python}",
    )


@dataclass(frozen=True)
class _Piece:
    postgres: str
    python: str
    size: int = 1
    anchored: bool = False  # holds ^ or $: never repeated


def _literal(char: str) -> str:
    if char in _CONTROL_ESCAPES:
        return "\\" + _CONTROL_ESCAPES[char]
    if char.isascii() and not char.isalnum() and char not in " _" and char.isprintable():
        return "\\" + char
    return char


class _RegexParser:
    def __init__(
        self, text: str, where: str, extended: bool, multiline: bool, dotall: bool
    ) -> None:
        self.text = text
        self.where = where
        self.extended = extended
        self.multiline = multiline
        self.dotall = dotall
        self.pos = 0

    def fail(self, problem: str) -> QueryError:
        return QueryError(f"invalid regex at '{self.where}': {problem}")

    def peek(self) -> str | None:
        while self.extended and self.pos < len(self.text):
            if self.text[self.pos] in " \t\n\r\f\v":
                self.pos += 1
            elif self.text[self.pos] == "#":
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end + 1
            else:
                break
        return self.text[self.pos] if self.pos < len(self.text) else None

    def parse(self) -> tuple[str, str]:
        if self.peek() is None:
            return "", ""
        piece = self.alternation(0)
        char = self.peek()
        if char is not None:
            raise self.fail(f"unbalanced '{char}'")
        if piece.size > _MAX_REGEX_SIZE:
            raise self.fail("too complex (bounded repetitions multiply out too far)")
        return piece.postgres, piece.python

    def alternation(self, depth: int) -> _Piece:
        branches = [self.sequence(depth)]
        while self.peek() == "|":
            self.pos += 1
            branches.append(self.sequence(depth))
        return _Piece(
            "|".join(b.postgres for b in branches),
            "|".join(b.python for b in branches),
            sum(b.size for b in branches),
            any(b.anchored for b in branches),
        )

    def sequence(self, depth: int) -> _Piece:
        items = []
        while (char := self.peek()) is not None and char not in "|)":
            items.append(self.repeat(depth))
        if not items:
            raise self.fail("missing ')'" if char is None and depth else "empty alternative")
        return _Piece(
            "".join(i.postgres for i in items),
            "".join(i.python for i in items),
            sum(i.size for i in items),
            any(i.anchored for i in items),
        )

    def repeat(self, depth: int) -> _Piece:
        char = self.peek()
        if char in ("^", "$"):
            self.pos += 1
            if self.peek() in ("*", "+", "?", "{"):
                raise self.fail(f"nothing to repeat after '{char}'")
            # PCRE's (and Python's) $ without m also matches before a final newline.
            postgres = char if char == "^" or self.multiline else "(?=\\n?$)"
            return _Piece(postgres, char, 1, True)
        atom = self.atom(depth)
        quantifier = self.quantifier()
        if quantifier is None:
            return atom
        text, factor = quantifier
        if atom.anchored:
            raise self.fail("a group holding ^ or $ cannot be repeated")
        if self.peek() in ("*", "+", "?", "{"):
            raise self.fail("multiple repeat")
        return _Piece(atom.postgres + text, atom.python + text, atom.size * factor)

    def quantifier(self) -> tuple[str, int] | None:
        char = self.peek()
        if char in ("*", "+", "?"):
            self.pos += 1
            text, factor = char, 1
        elif char == "{":
            bounds = _BOUNDS.match(self.text, self.pos)
            if bounds is None:
                raise self.fail("malformed {m,n} repetition")
            self.pos = bounds.end()
            low = int(bounds[1])
            high = None if bounds[2] and bounds[3] is None else int(bounds[3] or low)
            if low > 255 or (high is not None and not low <= high <= 255):
                raise self.fail("repetition bounds must satisfy m <= n <= 255")
            if high is None:
                text, factor = f"{{{low},}}", low + 1
            elif high == low:
                text, factor = f"{{{low}}}", max(low, 1)
            else:
                text, factor = f"{{{low},{high}}}", max(high, 1)
        else:
            return None
        if self.peek() == "?":
            self.pos += 1
            text += "?"
        return text, factor

    def atom(self, depth: int) -> _Piece:
        char = self.peek()
        if char == "(":
            return self.group(depth)
        if char == "[":
            return self.bracket()
        if char == "\\":
            kind, value = self.escape(inside_class=False)
            spelled = value if kind == "class" else _literal(value)
            return _Piece(spelled, spelled)
        self.pos += 1
        if char == ".":
            return _Piece("." if self.dotall else "[^\\n]", ".")
        if char in ("*", "+", "?", "{"):
            raise self.fail(f"nothing to repeat before '{char}'")
        if char in ("]", "}"):
            raise self.fail(f"'{char}' must be escaped")
        assert char is not None
        return _Piece(_literal(char), _literal(char))

    def group(self, depth: int) -> _Piece:
        if depth >= 16:
            raise self.fail("groups nested too deeply")
        self.pos += 1
        if self.text.startswith("?", self.pos):
            if not self.text.startswith("?:", self.pos):
                raise self.fail("only (...) and (?:...) groups are supported")
            self.pos += 2
        inner = self.alternation(depth + 1)
        if self.peek() != ")":
            raise self.fail("missing ')'")
        self.pos += 1
        return _Piece(f"(?:{inner.postgres})", f"(?:{inner.python})", inner.size, inner.anchored)

    def escape(self, *, inside_class: bool) -> tuple[str, str]:
        """After a backslash: ("class", "\\d") or ("literal", char)."""
        self.pos += 1
        if self.pos >= len(self.text):
            raise self.fail("trailing backslash")
        char = self.text[self.pos]
        self.pos += 1
        if char in "dsw" or (char in "DSW" and not inside_class):
            return "class", "\\" + char
        if char in "DSW":
            raise self.fail(f"'\\{char}' is not supported inside [...]")
        if char in _ESCAPED_CONTROLS:
            return "literal", _ESCAPED_CONTROLS[char]
        if char.isascii() and not char.isalnum():
            return "literal", char
        raise self.fail(f"unsupported escape '\\{char}'")

    def class_member(self) -> tuple[str, str]:
        char = self.text[self.pos]
        if char == "\\":
            return self.escape(inside_class=True)
        if char in "[-":
            raise self.fail(f"'{char}' inside [...] must be escaped")
        self.pos += 1
        return "literal", char

    def bracket(self) -> _Piece:
        self.pos += 1
        negated = self.text.startswith("^", self.pos)
        self.pos += negated
        members = []
        while True:
            if self.pos >= len(self.text):
                raise self.fail("missing ']'")
            if self.text[self.pos] == "]":
                self.pos += 1
                break
            kind, start = self.class_member()
            if kind == "class":
                members.append(start)
            elif self.text.startswith("-", self.pos) and not self.text.startswith("-]", self.pos):
                self.pos += 1
                if self.pos >= len(self.text):
                    raise self.fail("missing ']'")
                kind, end = self.class_member()
                if kind == "class":
                    raise self.fail("a range cannot end in a class escape")
                if end < start:
                    raise self.fail(f"reversed range in [...]: {start!r}-{end!r}")
                members.append(f"{_literal(start)}-{_literal(end)}")
            else:
                members.append(_literal(start))
        if not members:
            raise self.fail("empty [...]")
        body = "".join(members)
        caret = "^" if negated else ""
        return _Piece(f"[{caret}{body}]", f"[{caret}{body}]")
