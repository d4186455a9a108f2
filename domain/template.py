"""Templates: a workflow revision published for reuse, with declared parameters.

A template freezes one revision's definition (later edits or the deletion of
the source workflow change nothing) together with the parameters it
declares. The definition refers to a parameter with a placeholder inside any
JSON string of it::

    "{{ params.threshold }}"          the whole string: replaced by the typed value
    "Hello {{ params.name }}!"        inside a string: the value as text

A string that is exactly one placeholder becomes the parameter's value with
its type (a number stays a number, an object an object); that is how a
template fills a ``set`` field or a condition's ``value`` with a typed value.
Inside a longer string only scalar parameters may appear (a number as its
JSON text). Object keys are never substituted: they are the definition's
structure (dotted paths, case names), not its values.

The source revision was itself a valid workflow with the placeholders in it,
so a template is publishable only where placeholders fit (strings); after
substitution the definition is validated again when a workflow is created
from it, and any problem a value causes is named by that parameter.

Public methods validate and decide; the ``@event`` methods only apply.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.errors import DomainError, Problem
from domain.meta import EventMeta
from domain.values import check_value, format_path

__all__ = [
    "MAX_PARAMETERS",
    "PARAMETER_TYPES",
    "VISIBILITIES",
    "Template",
    "TemplateNotVisible",
    "TemplateParametersInvalid",
    "TemplateUnpublished",
    "check_parameter_values",
    "parameter_references",
    "parse_parameters",
    "substitute",
]

ParameterType = Literal["string", "number", "integer", "boolean", "object", "array"]
PARAMETER_TYPES: Final[tuple[str, ...]] = (
    "string",
    "number",
    "integer",
    "boolean",
    "object",
    "array",
)
VISIBILITIES: Final[tuple[str, ...]] = ("organisation", "public")
MAX_PARAMETERS: Final = 50
MAX_PARAMETER_DESCRIPTION_CHARS: Final = 1_000
PARAMETER_KEYS: Final = frozenset({"name", "type", "default", "required", "description"})

_NAME = r"[A-Za-z_][A-Za-z0-9_]{0,63}"
_PARAMETER_NAME = re.compile(_NAME)
_PLACEHOLDER = re.compile(r"\{\{\s*params\.(" + _NAME + r")\s*\}\}")
_SCALARS = ("string", "number", "integer", "boolean")


class TemplateParametersInvalid(DomainError):
    """Parameter declarations or values broke the rules; carries every problem."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(str(problem) for problem in self.problems))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.problems,))


class TemplateUnpublished(DomainError):
    """An unpublished template makes no new workflows (the ones it made stay)."""

    def __init__(self, template_id: UUID | str) -> None:
        self.template_id = template_id
        super().__init__(f"template {template_id} was unpublished")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.template_id,))


class TemplateNotVisible(DomainError):
    """Another organisation's template that is not public: as if it did not exist."""

    def __init__(self, template_id: UUID | str) -> None:
        self.template_id = template_id
        super().__init__(f"template {template_id} not found")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.template_id,))


@dataclass(frozen=True)
class Parameter:
    """One declared parameter; ``default`` is absent (``has_default`` False) or a value."""

    name: str
    type: ParameterType
    required: bool
    description: str
    has_default: bool
    default: Any = None

    def as_dict(self) -> dict[str, Any]:
        stored: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "required": self.required,
            "description": self.description,
        }
        if self.has_default:
            stored["default"] = self.default
        return stored


def type_problem(kind: str, value: Any) -> str | None:
    """Why ``value`` is not of parameter type ``kind``; None if it is."""
    ok = {
        "string": isinstance(value, str),
        # JSON has one number type; a bool is not one (Python says it is an int).
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "integer": (isinstance(value, int) and not isinstance(value, bool))
        or (isinstance(value, float) and value.is_integer()),
        "boolean": isinstance(value, bool),
        "object": isinstance(value, dict),
        "array": isinstance(value, list),
    }[kind]
    if ok and isinstance(value, float) and not math.isfinite(value):
        ok = False
    return None if ok else f"must be of type {kind}, got {_json_type(value)}"


def parse_parameters(raw: Any) -> list[Parameter]:
    """The declarations as parameters; ``TemplateParametersInvalid`` naming every problem."""
    problems: list[Problem] = []
    if not isinstance(raw, list):
        raise TemplateParametersInvalid([Problem("parameters", "must be an array")])
    if len(raw) > MAX_PARAMETERS:
        raise TemplateParametersInvalid(
            [Problem("parameters", f"has {len(raw)} entries, at most {MAX_PARAMETERS} allowed")]
        )
    parsed: list[Parameter] = []
    seen: set[str] = set()
    for index, item in enumerate(raw):
        loc = f"parameters[{index}]"
        if not isinstance(item, dict):
            problems.append(Problem(loc, f"must be an object, got {_json_type(item)}"))
            continue
        unknown = sorted(set(item) - PARAMETER_KEYS)
        if unknown:
            problems.append(
                # ascii(): a key may hold anything, and the answer must still encode.
                Problem(loc, f"unknown keys {unknown!a}; allowed: {sorted(PARAMETER_KEYS)}")
            )
        name, kind = item.get("name"), item.get("type")
        if not isinstance(name, str) or not _PARAMETER_NAME.fullmatch(name):
            problems.append(
                Problem(f"{loc}.name", "must be an identifier (letters, digits, '_'; 1-64)")
            )
            continue
        if name in seen:
            problems.append(Problem(f"{loc}.name", f"parameter '{name}' is declared twice"))
        seen.add(name)
        if kind not in PARAMETER_TYPES:
            problems.append(Problem(f"{loc}.type", f"must be one of {list(PARAMETER_TYPES)}"))
            continue
        required = item.get("required", False)
        if not isinstance(required, bool):
            problems.append(Problem(f"{loc}.required", "must be true or false"))
        description = item.get("description", "")
        if not isinstance(description, str) or len(description) > (MAX_PARAMETER_DESCRIPTION_CHARS):
            problems.append(
                Problem(
                    f"{loc}.description",
                    f"must be a string of at most {MAX_PARAMETER_DESCRIPTION_CHARS} characters",
                )
            )
        has_default = "default" in item
        default = item.get("default")
        if has_default:
            if required is True:
                problems.append(
                    Problem(f"{loc}.default", "a required parameter has no default: drop one")
                )
            wrong = type_problem(kind, default)
            if wrong is not None:
                problems.append(Problem(f"{loc}.default", wrong))
            problems += [
                Problem(f"{loc}.default{_suffix(p.loc)}", p.msg) for p in check_value(default)
            ]
            if kind == "integer" and isinstance(default, float):
                default = int(default)
        parsed.append(
            Parameter(
                name=name,
                type=kind,
                required=required is True,
                description=description if isinstance(description, str) else "",
                has_default=has_default,
                default=default,
            )
        )
    if problems:
        raise TemplateParametersInvalid(problems)
    return parsed


def parameter_references(definition: Mapping[str, Any]) -> Iterator[tuple[str, str, bool]]:
    """``(parameter name, loc, whole string)`` for every placeholder in the definition."""
    pending: list[tuple[Any, tuple[str | int, ...]]] = [
        (value, (key,)) for key, value in definition.items()
    ]
    while pending:
        value, path = pending.pop()
        if isinstance(value, str):
            whole = _PLACEHOLDER.fullmatch(value) is not None
            for match in _PLACEHOLDER.finditer(value):
                yield match.group(1), format_path(path), whole
        elif isinstance(value, list):
            pending.extend((child, (*path, i)) for i, child in enumerate(value))
        elif isinstance(value, dict):
            pending.extend((child, (*path, key)) for key, child in value.items())


def check_references(definition: Mapping[str, Any], parameters: list[Parameter]) -> None:
    """Every placeholder names a declared parameter, fits its type, and every one is used."""
    declared = {parameter.name: parameter for parameter in parameters}
    used: set[str] = set()
    problems: list[Problem] = []
    for name, loc, whole in sorted(parameter_references(definition)):
        used.add(name)
        parameter = declared.get(name)
        if parameter is None:
            problems.append(Problem(loc, f"refers to parameter '{name}', which is not declared"))
        elif not whole and parameter.type not in _SCALARS:
            problems.append(
                Problem(
                    loc,
                    f"parameter '{name}' is of type {parameter.type}: it can only fill a whole "
                    'string ("{{ params.' + name + ' }}"), not part of one',
                )
            )
    for index, parameter in enumerate(parameters):
        if parameter.name not in used:
            problems.append(
                Problem(
                    f"parameters[{index}].name",
                    f"parameter '{parameter.name}' is never used: the definition has no "
                    "{{ params." + parameter.name + " }}",
                )
            )
    if problems:
        raise TemplateParametersInvalid(problems)


def check_parameter_values(parameters: list[Parameter], given: Any) -> dict[str, Any]:
    """Every parameter's value (given, else its default); problems named by parameter."""
    if not isinstance(given, dict):
        raise TemplateParametersInvalid([Problem("parameters", "must be an object")])
    declared = {parameter.name for parameter in parameters}
    problems = [
        Problem(
            format_path(("parameters", name)),  # quoted and escaped unless an identifier
            f"is not a parameter of this template; it has {sorted(declared) or 'none'}",
        )
        for name in sorted(set(given) - declared)
    ]
    values: dict[str, Any] = {}
    for parameter in parameters:
        loc = f"parameters.{parameter.name}"
        if parameter.name not in given:
            if parameter.required:
                problems.append(Problem(loc, f"is required ({parameter.type})"))
            elif parameter.has_default:
                values[parameter.name] = parameter.default
            else:
                problems.append(Problem(loc, f"has no default: give a value ({parameter.type})"))
            continue
        value = given[parameter.name]
        wrong = type_problem(parameter.type, value)
        if wrong is not None:
            problems.append(Problem(loc, wrong))
            continue
        contract = check_value(value)
        if contract:
            problems += [Problem(f"{loc}{_suffix(p.loc)}", p.msg) for p in contract]
            continue
        if parameter.type == "integer" and isinstance(value, float):
            value = int(value)
        values[parameter.name] = value
    if problems:
        raise TemplateParametersInvalid(problems)
    return values


def substitute(value: Any, values: Mapping[str, Any]) -> Any:
    """``value`` with every placeholder replaced: a whole string by the typed value."""
    if isinstance(value, str):
        whole = _PLACEHOLDER.fullmatch(value)
        if whole is not None:
            return values[whole.group(1)]
        return _PLACEHOLDER.sub(lambda match: _as_text(values[match.group(1)]), value)
    if isinstance(value, list):
        return [substitute(child, values) for child in value]
    if isinstance(value, dict):
        return {key: substitute(child, values) for key, child in value.items()}
    return value


def blame(problems: list[Problem], definition: Mapping[str, Any]) -> list[Problem]:
    """Definition problems after substitution, each named by the parameter that caused it.

    A problem at (or inside) a placeholder's spot is the value's; the rest
    are reported as they are.
    """
    spots = [(loc, name) for name, loc, _ in parameter_references(definition)]
    named: list[Problem] = []
    for problem in problems:
        culprit = next((name for loc, name in spots if _within(problem.loc, loc)), None)
        named.append(
            problem
            if culprit is None
            else Problem(f"parameters.{culprit}", f"at {problem.loc}: {problem.msg}")
        )
    return named


class Template(Aggregate):
    """A published workflow revision. Its events are its audit trail."""

    @classmethod
    def publish(
        cls,
        *,
        template_id: UUID,
        name: str,
        description: str,
        visibility: str,
        parameters: Any,
        definition: dict[str, Any],
        source_workflow_id: UUID,
        source_revision: int,
        meta: EventMeta,
    ) -> Template:
        """Freeze ``definition`` (the source revision's) with its parameter declarations."""
        problems: list[Problem] = []
        if visibility not in VISIBILITIES:
            problems.append(Problem("visibility", f"must be one of {list(VISIBILITIES)}"))
        if not name.strip():
            problems.append(Problem("name", "must not be empty or only whitespace"))
        # What the log cannot carry (NUL, a lone surrogate) is named, never stored.
        problems += [Problem("name", p.msg) for p in check_value(name)]
        problems += [Problem("description", p.msg) for p in check_value(description)]
        if problems:
            raise TemplateParametersInvalid(problems)
        declared = parse_parameters(parameters)
        check_references(definition, declared)
        return cls(
            id=template_id,
            name=name,
            description=description,
            visibility=visibility,
            parameters=[parameter.as_dict() for parameter in declared],
            definition=definition,
            source={"workflow_id": str(source_workflow_id), "revision": source_revision},
            meta=meta.as_dict(),
        )

    @event("Published")
    def __init__(
        self,
        *,
        id: UUID,
        name: str,
        description: str,
        visibility: str,
        parameters: list[dict[str, Any]],
        definition: dict[str, Any],
        source: dict[str, Any],
        meta: dict[str, Any],
    ) -> None:
        self.org_id: str = meta["org_id"]
        self.name = name
        self.description = description
        self.visibility = visibility
        self.parameters = parameters
        self.definition = definition
        self.source = source
        self.published_by: str = meta["actor"]
        self.unpublished: bool = False

    def declared(self) -> list[Parameter]:
        return parse_parameters(self.parameters)

    def ensure_visible_to(self, org_id: str) -> None:
        """Its own organisation sees it, and every organisation sees a public one."""
        if self.org_id != org_id and self.visibility != "public":
            raise TemplateNotVisible(self.id)

    def instantiate(self, given: Any) -> dict[str, Any]:
        """The definition with the given values (or defaults) in place of its placeholders."""
        if self.unpublished:
            raise TemplateUnpublished(self.id)
        values = check_parameter_values(self.declared(), given)
        substituted: dict[str, Any] = substitute(self.definition, values)
        return substituted

    def unpublish(self, meta: EventMeta) -> bool:
        """Stop new instantiations; False (and nothing recorded) if already unpublished."""
        if self.unpublished:
            return False
        self._unpublished(meta=meta.as_dict())
        return True

    @event("Unpublished")
    def _unpublished(self, meta: dict[str, Any]) -> None:
        self.unpublished = True


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _within(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer + ".") or inner.startswith(outer + "[")


def _suffix(loc: str) -> str:
    """A value problem's path below the value itself (``value`` is the top)."""
    return "" if loc == "value" else ("" if loc.startswith("[") else ".") + loc


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


TemplatePublishedEvent: Any = Template.Published  # type: ignore[attr-defined]
TemplateUnpublishedEvent: Any = Template.Unpublished  # type: ignore[attr-defined]
