"""The filter compiler without a database: errors, SQL shape, regexes, instants."""

from __future__ import annotations

import re
from typing import Any

import pytest

from projections.errors import QueryError
from projections.filters import Regex, compile_filter, iso_instant, translate_regex


def _nested(depth: int) -> dict[str, Any]:
    filter_: dict[str, Any] = {"a": 1}
    for _ in range(depth):
        filter_ = {"$and": [filter_]}
    return filter_


@pytest.mark.parametrize(
    ("filter_", "message"),
    [
        # the filter's shape and the logical operators
        ([1], "a filter must be a JSON object, not an array"),
        (None, "a filter must be a JSON object, not null"),
        ({1: 2}, "field names must be strings, not a number"),
        ({"$where": "1"}, "unknown top-level operator '$where'"),
        ({"$not": {"a": 1}}, "unknown top-level operator '$not'"),
        ({"$or": []}, "$or needs a non-empty array of filters"),
        ({"$and": {"a": 1}}, "$and needs a non-empty array of filters"),
        ({"$nor": [1]}, "a filter must be a JSON object, not a number"),
        (_nested(20), "filter nested deeper than 16 levels"),
        # paths
        ({"": 1}, "invalid field path '': empty segment"),
        ({"a..b": 1}, "invalid field path 'a..b': empty segment"),
        ({"a.$b": 1}, "invalid field path 'a.$b': a segment starts with '$'"),
        ({"a.0.1.2.3.4": 1}, "more than 4 numeric segments at 'a.0.1.2.3.4'"),
        ({"a" + ".a" * 40: 1}, "field path longer than 32 segments"),
        ({"a\x00": 1}, "strings cannot hold NUL or unpaired surrogates at 'a\x00'"),
        # field operators
        ({"a.b": {"$foo": 1}}, "unknown operator '$foo' at 'a.b'"),
        ({"a": {"$and": [{"b": 1}]}}, "unknown operator '$and' at 'a'"),
        ({"a": {"$gt": 1, "b": 2}}, "cannot mix operators and fields at 'a'"),
        ({"tags": {"$in": "a"}}, "$in needs an array at 'tags'"),
        ({"tags": {"$nin": {"a": 1}}}, "$nin needs an array at 'tags'"),
        ({"tags": {"$all": "a"}}, "$all needs an array at 'tags'"),
        ({"tags": {"$in": [{"$gt": 1}]}}, "$in cannot hold operators at 'tags'"),
        ({"n": {"$gt": [1]}}, "$gt needs a number, a string, a boolean or null at 'n'"),
        ({"n": {"$lte": {"a": 1}}}, "$lte needs a number, a string, a boolean or null at 'n'"),
        ({"n": {"$eq": float("nan")}}, "invalid value at 'n': is not a finite number"),
        ({"n": float("inf")}, "invalid value at 'n': is not a finite number"),
        (
            {"n": {"$in": [[float("-inf")]]}},
            "invalid value at 'n' (at [0] inside it): is not a finite",
        ),
        ({"n": {"$ne": object()}}, "invalid value at 'n': is not a JSON value (object)"),
        ({"n": {"$eq": {1: 2}}}, "invalid value at 'n': has a key that is not a string"),
        ({"n": "\ud800"}, "invalid value at 'n': contains invalid Unicode (a lone surrogate)"),
        ({"n": {"$in": ["a\x00"]}}, "invalid value at 'n': contains a NUL"),
        ({"n": 2**63}, "invalid value at 'n': integer 9223372036854775808 is outside the signed"),
        ({"n": {"$gt": 1e20}}, "invalid value at 'n': number 1e+20 is a whole number"),
        ({"n": 10**5000}, "invalid value at 'n': an integer of more than 4,000 digits"),
        ({"n": {"$in": list(range(1001))}}, "$in may list at most 1000 values, not 1001, at 'n'"),
        ({"n": {"$exists": 1}}, "$exists needs true or false at 'n'"),
        ({"tags": {"$size": -1}}, "$size needs a non-negative integer at 'tags'"),
        ({"tags": {"$size": 1.0}}, "$size needs a non-negative integer at 'tags'"),
        ({"tags": {"$size": True}}, "$size needs a non-negative integer at 'tags'"),
        ({"n": {"$not": 3}}, "$not needs an operator object at 'n'"),
        ({"n": {"$not": "x"}}, "$not needs an operator object at 'n'"),
        ({"n": {"$not": {}}}, "$not needs an operator object at 'n'"),
        ({"n": {"$not": {"a": 1}}}, "$not needs an operator object at 'n'"),
        ({"n": {"$not": {"$foo": 1}}}, "unknown operator '$foo' at 'n'"),
        ({"nodes": {"$elemMatch": 1}}, "$elemMatch needs an object at 'nodes'"),
        (
            {"nodes": {"$elemMatch": {"$gt": 1, "type": "x"}}},
            "$elemMatch cannot mix operators and fields at 'nodes'",
        ),
        (
            {"nodes": {"$elemMatch": {"type": {"$foo": 1}}}},
            "unknown operator '$foo' at 'nodes.type'",
        ),
        ({"nodes": {"$elemMatch": {"$bar": 1}}}, "unknown operator '$bar' at 'nodes'"),
        ({"nodes": {"$elemMatch": {"$where": 1, "a": 1}}}, "cannot mix operators and fields"),
        # regexes
        ({"name": {"$regex": 1}}, "$regex needs a string at 'name'"),
        ({"name": {"$regex": "("}}, "invalid regex at 'name': missing ')'"),
        ({"name": {"$regex": "a" * 257}}, "regex longer than 256 characters at 'name'"),
        ({"name": {"$regex": "a", "$options": "u"}}, "unsupported $options 'u' at 'name'"),
        ({"name": {"$regex": "a", "$options": 1}}, "$options needs a string at 'name'"),
        ({"name": {"$options": "i"}}, "$options needs $regex at 'name'"),
        (
            {"name": {"$not": {"$regex": "\\b"}}},
            "invalid regex at 'name': unsupported escape '\\b'",
        ),
    ],
)
def test_bad_filters_raise_a_query_error_naming_the_problem(filter_: Any, message: str) -> None:
    with pytest.raises(QueryError) as error:
        compile_filter(filter_)
    assert message in str(error.value)


def test_the_empty_filter_is_true() -> None:
    fragment = compile_filter({})
    assert (fragment.sql, fragment.params) == ("TRUE", {})


@pytest.mark.parametrize(("column", "prefix"), [("Data", "f"), ("data; --", "f"), ("data", "f-")])
def test_column_and_prefix_must_be_plain_identifiers(column: str, prefix: str) -> None:
    with pytest.raises(ValueError, match="invalid"):
        compile_filter({"a": 1}, column=column, param_prefix=prefix)


def test_column_and_prefix_name_what_the_sql_uses() -> None:
    fragment = compile_filter({"a": 1, "b": {"$gt": 2}}, column="doc", param_prefix="q_")
    assert "doc @> CAST(:q_0 AS jsonb)" in fragment.sql
    assert "data" not in fragment.sql
    assert all(name.startswith("q_") for name in fragment.params)
    assert all(f":{name}" in fragment.sql for name in fragment.params)


def test_scalar_equality_uses_containment_the_gin_index_serves() -> None:
    fragment = compile_filter({"nodes.type": "http_request"})
    assert fragment.sql.count("data @> CAST(") == 4  # each level may be an array
    assert set(fragment.params.values()) == {
        '{"nodes":{"type":"http_request"}}',
        '{"nodes":{"type":["http_request"]}}',
        '{"nodes":[{"type":"http_request"}]}',
        '{"nodes":[{"type":["http_request"]}]}',
    }
    assert "jsonb_path" not in fragment.sql


def test_numeric_segments_are_indexes_and_keys() -> None:
    paths = {v for v in compile_filter({"nodes.0.type": "x"}).params.values() if v.startswith("$")}
    assert paths == {
        '$."nodes"."0"."type" ? (@.type() == "string" && @ == $v0)',
        '$ ? (@.type() == "object" && @."nodes".type() == "array")."nodes"[0]."type"'
        ' ? (@.type() == "string" && @ == $v0)',
    }


def test_comparisons_are_type_guarded_and_take_values_as_variables() -> None:
    fragment = compile_filter({"n": {"$gt": 9}})
    assert fragment.sql == "jsonb_path_exists(data, CAST(:f1 AS jsonpath), CAST(:f0 AS jsonb))"
    assert fragment.params == {
        "f0": '{"v":9}',
        "f1": '$."n" ? (@.type() == "number" && @ > $v)',
    }


def test_keys_are_quoted_as_path_strings() -> None:
    fragment = compile_filter({'we"ird\\key.x': {"$exists": True}})
    assert fragment.params == {"f0": '$."we\\"ird\\\\key"."x"'}


def test_a_fragment_is_one_term_safe_to_embed() -> None:
    sql = compile_filter({"$or": [{"a": 1}, {"b": 2}]}).sql
    assert sql.startswith("(") and sql.endswith(")")
    assert compile_filter({"a": 1, "b": 2}).sql.startswith("(")


def test_values_never_enter_the_sql_text() -> None:
    sentinel = "Sentinel'\"); DROP TABLE users; --"
    filter_ = {
        sentinel: sentinel,
        "a": {"$ne": sentinel, "$gt": sentinel, "$in": [sentinel, [sentinel]], "$all": [sentinel]},
        "b": {"$nin": [{"k": sentinel}], "$lte": "2026-01-01T00:00:00Z", "$eq": [sentinel]},
        "c": {"$regex": "Sentinel_regex", "$options": "i"},
        "d": {"$elemMatch": {sentinel: sentinel, "e": {"$not": {"$eq": sentinel}}}},
        "e.0": {"$elemMatch": {"$eq": sentinel}},
        "f": {"$size": 123456789},
    }
    fragment = compile_filter(filter_)
    for value in (sentinel, "DROP", "Sentinel_regex", "2026-01-01", "123456789"):
        assert value not in fragment.sql
    params = " ".join(str(v) for v in fragment.params.values())
    assert sentinel.replace('"', '\\"') in params and "Sentinel_regex" in params


def test_compiling_is_deterministic() -> None:
    filter_ = {"a.0": {"$in": [1, None, [2]], "$regex": "x"}, "$nor": [{"b": {"$size": 1}}]}
    assert compile_filter(filter_) == compile_filter(filter_)


# --- regexes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "options", "expected"),
    [
        ("", "", Regex("(?s)", "(?a)")),
        # PCRE: $ also before a final newline, a dot not at a newline, [^a] at one
        ("^a.b$", "", Regex("(?s)^a[^\\n]b(?=\\n?$)", "(?a)^a.b$")),
        ("^a.b$", "ms", Regex("(?w)^a.b$", "(?ams)^a.b$")),
        ("^a$", "m", Regex("(?w)^a$", "(?am)^a$")),
        ("a", "si", Regex("(?is)a", "(?ais)a")),
        ("[^a-c]x", "", Regex("(?s)[^a-c]x", "(?a)[^a-c]x")),
        ("[^a-c]x", "s", Regex("(?s)[^a-c]x", "(?as)[^a-c]x")),
        ("(a|b)+?(?:c)", "", Regex("(?s)(?:a|b)+?(?:c)", "(?a)(?:a|b)+?(?:c)")),
        ("a{2}b{1,}c{0,3}d{02}", "", Regex("(?s)a{2}b{1,}c{0,3}d{2}", "(?a)a{2}b{1,}c{0,3}d{2}")),
        ("\\d\\W[\\w\\-\\]]\\n", "", Regex("(?s)\\d\\W[\\w\\-\\]]\\n", "(?a)\\d\\W[\\w\\-\\]]\\n")),
        ("\\#~", "", Regex("(?s)\\#\\~", "(?a)\\#\\~")),
        ("a b # comment\n c", "x", Regex("(?s)abc", "(?a)abc")),
        ("[ ]\\ ", "x", Regex("(?s)[ ] ", "(?a)[ ] ")),
        ("é😀_", "", Regex("(?s)é😀_", "(?a)é😀_")),
    ],
)
def test_accepted_regexes_are_spelled_for_both_engines(
    pattern: str, options: str, expected: Regex
) -> None:
    regex = translate_regex(pattern, options)
    assert regex == expected
    re.compile(regex.python)


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("(", "missing ')'"),
        ("a)", "unbalanced ')'"),
        ("a|", "empty alternative"),
        ("()", "empty alternative"),
        ("*a", "nothing to repeat before '*'"),
        ("a**", "multiple repeat"),
        ("a{2}{3}", "multiple repeat"),
        ("a{256}", "repetition bounds"),
        ("a{3,2}", "repetition bounds"),
        ("a{,3}", "malformed {m,n} repetition"),
        ("a{x}", "malformed {m,n} repetition"),
        ("^*", "nothing to repeat after '^'"),
        ("(^a)*", "a group holding ^ or $ cannot be repeated"),
        ("\\b", "unsupported escape '\\b'"),
        ("\\1", "unsupported escape '\\1'"),
        ("\\y", "unsupported escape '\\y'"),
        ("a\\", "trailing backslash"),
        ("(?=a)", "only (...) and (?:...) groups"),
        ("(?i)a", "only (...) and (?:...) groups"),
        ("[a", "missing ']'"),
        ("[a-", "missing ']'"),
        ("[]", "empty [...]"),
        ("[[:alpha:]]", "'[' inside [...] must be escaped"),
        ("[a-]", "'-' inside [...] must be escaped"),
        ("[-a]", "'-' inside [...] must be escaped"),
        ("[z-a]", "reversed range"),
        ("[a-\\d]", "a range cannot end in a class escape"),
        ("[\\D]", "'\\D' is not supported inside [...]"),
        ("]", "']' must be escaped"),
        ("}", "'}' must be escaped"),
        ("(" * 17 + "a" + ")" * 17, "groups nested too deeply"),
        ("(a{200}){200}", "too complex"),
    ],
)
def test_regexes_outside_the_subset_are_refused(pattern: str, problem: str) -> None:
    with pytest.raises(QueryError) as error:
        compile_filter({"name": {"$regex": pattern}})
    assert str(error.value).startswith("invalid regex at 'name': ")
    assert problem in str(error.value)


# --- instants ---------------------------------------------------------------------

_EPOCH = iso_instant("1970-01-01T00:00:00Z")


@pytest.mark.parametrize(
    ("text", "micros_since_epoch"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("1970-01-01T01:00:00+01:00", 0),
        ("1969-12-31T23:00:00-01:00", 0),
        ("1970-01-01T00:00:00.5Z", 500_000),
        ("1970-01-01T00:00:00.0000019Z", 1),  # digits past microseconds are ignored
        ("2024-02-29T12:00:00+00:00", 1_709_208_000_000_000),
        ("0001-01-01T00:00:00+14:00", -62_135_647_200_000_000),
        ("9999-12-31T23:59:59.999999-23:59", 253_402_387_139_999_999),
    ],
)
def test_instants_are_microseconds_on_one_scale(text: str, micros_since_epoch: int) -> None:
    assert _EPOCH is not None
    assert iso_instant(text) == _EPOCH + micros_since_epoch


@pytest.mark.parametrize(
    "text",
    [
        "2026-01-02T03:04:05",  # no offset
        "2026-01-02 03:04:05Z",
        "2026-01-02t03:04:05Z",
        "2026-01-02T03:04:05z",
        "2026-01-02T03:04Z",
        "2026-01-02T03:04:05.Z",
        "2026-01-02T03:04:05+0200",
        "2026-01-02T24:00:00Z",
        "2026-01-02T23:60:00Z",
        "2026-12-31T23:59:60Z",  # no leap seconds
        "2023-02-29T00:00:00Z",
        "1900-02-29T00:00:00Z",
        "2026-04-31T00:00:00Z",
        "2026-13-01T00:00:00Z",
        "0000-01-01T00:00:00Z",
        "2026-01-02T03:04:05+24:00",
        "2026-01-02T03:04:05+01:60",
        "２０２６-01-02T03:04:05Z",  # only ASCII digits
        "2026-01-02T03:04:05Z\n",
        "now",
    ],
)
def test_other_strings_are_not_instants(text: str) -> None:
    assert iso_instant(text) is None
