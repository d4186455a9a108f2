"""A NUL in any string of any documented request body is a 4xx, never a 500.

Schemathesis draws no NUL (its positive-data check would count our refusal
of a schema-valid string as a defect), and by hand five doors answered 500
over a NUL in a name: PostgreSQL refuses it in text, and the value contract
(``domain/values.py``) had not been checked there. This walks every body
example the OpenAPI document gives, putting a NUL into each of its strings
in turn, as an owner and as a platform administrator.
"""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx

Path = tuple[str | int, ...]


def _string_paths(value: Any, path: Path = ()) -> Iterator[Path]:
    if isinstance(value, str):
        yield path
    elif isinstance(value, dict):
        for key, child in value.items():
            yield from _string_paths(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _string_paths(child, (*path, index))


def _with(value: Any, path: Path, new: str) -> Any:
    changed = copy.deepcopy(value)
    holder = changed
    for step in path[:-1]:
        holder = holder[step]
    holder[path[-1]] = new
    return changed


def _value(schema: dict[str, Any]) -> Any:
    """A small valid-looking value of ``schema`` (required properties only, for objects)."""
    if "examples" in schema:
        return copy.deepcopy(schema["examples"][0])
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for union in ("anyOf", "oneOf"):
        if union in schema:
            options = [o for o in schema[union] if o.get("type") != "null"]
            return _value(options[0]) if options else None
    kind = schema.get("type")
    if kind == "object":
        properties = schema.get("properties", {})
        return {name: _value(properties[name]) for name in schema.get("required", [])}
    if kind == "array":
        return [_value(schema.get("items", {}))] * max(1, schema.get("minItems", 1))
    if kind == "integer":
        return max(1, schema.get("minimum", 1))
    if kind == "number":
        return 1.0
    if kind == "boolean":
        return True
    if schema.get("format") == "uuid":
        return str(uuid.uuid4())
    if schema.get("format") == "date-time":
        return "2030-01-01T00:00:00Z"
    return "x" * max(1, schema.get("minLength", 1))


def _is_string(schema: dict[str, Any]) -> bool:
    options = schema.get("anyOf", [schema])
    return any(o.get("type") == "string" and "format" not in o and "enum" not in o for o in options)


def _bodies(schema: dict[str, Any]) -> Iterator[tuple[Path, Any]]:
    """(where, body) with a NUL at ``where``: each string of the documented examples, and
    each top-level string property beside only the required ones."""
    for example in schema.get("examples", [])[:2]:
        for where in _string_paths(example):
            yield where, _with(example, where, "a\x00b")
    if schema.get("type") == "object":
        required = _value({k: v for k, v in schema.items() if k != "examples"})
        for name, property_schema in schema.get("properties", {}).items():
            if _is_string(property_schema):
                yield (name,), {**required, name: "a\x00b"}


def _concrete(path: str, org: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "org_id":
            return org
        return str(uuid.uuid4()) if name.endswith("_id") else "x"

    return re.sub(r"\{([^}]+)\}", value, path)


def test_a_nul_in_any_string_of_any_documented_body_is_a_4xx(
    api_url: str, make_key: Callable[[str, str], str], org: str
) -> None:
    owner = make_key(org, "owner")
    admin = make_key(f"platform-{uuid.uuid4().hex[:8]}", "platform_admin")
    document = httpx.get(f"{api_url}/openapi.json").json()
    tried: set[str] = set()
    failures: list[str] = []
    with httpx.Client(base_url=api_url, timeout=30) as client:
        for path, operations in document["paths"].items():
            key = admin if path.startswith("/v1/admin/") else owner
            headers = {"Authorization": f"Bearer {key}", "If-Match": '"1"'}
            for method, operation in operations.items():
                content = operation.get("requestBody", {}).get("content", {})
                schema = content.get("application/json", {}).get("schema", {})
                for where, body in _bodies(schema):
                    answer = client.request(
                        method, _concrete(path, org), json=body, headers=headers
                    )
                    tried.add(f"{method.upper()} {path}")
                    if answer.status_code >= 500:
                        failures.append(
                            f"{method.upper()} {path} {list(where)}: {answer.status_code}"
                        )
    assert not failures, failures
    # Every door that documents an example body was walked (keep this honest as doors come).
    assert len(tried) >= 15, sorted(tried)
