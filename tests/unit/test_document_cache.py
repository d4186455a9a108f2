"""The bulk load's write-behind cache (projections/store.py), without a database."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from projections.store import (
    Document,
    DocumentCache,
    ViewBatch,
    _copy_field,
    _copy_line,
    jsonb_text,
)

AT = datetime(2026, 1, 1, tzinfo=UTC)


def doc(doc_id: str, version: int = 1) -> Document:
    return Document(doc_id, "org", {"id": doc_id, "v": version}, version, version, AT, AT)


class NoCursor:
    """A view whose every document is known to the cache never asks the table."""

    def __getattr__(self, name: str) -> None:
        raise AssertionError(f"the table was asked ({name})")


def test_a_document_never_seen_is_absent_without_asking_the_table() -> None:
    cache = DocumentCache(capacity=10)
    assert cache.lookup("c", "a") == (True, None)
    view = ViewBatch(NoCursor(), {}, cache)  # type: ignore[arg-type]
    assert view.get("c", "a") is None


def test_an_evicted_document_is_written_once_as_new_then_read_back() -> None:
    cache = DocumentCache(capacity=1)
    assert cache.put("c", doc("a")) == []
    assert cache.put("c", doc("b")) == [(doc("a"), False)]  # new: COPYed straight in
    assert cache.lookup("c", "a") == (False, None)  # only the table has it now
    cache.remember("c", doc("a", 2), "a")  # read back
    evicted = cache.put("c", doc("a", 3))
    assert evicted == [(doc("b"), False)]
    assert cache.put("c", doc("b", 2)) == [(doc("a", 3), True)]  # stored: upserted


def test_drain_splits_new_from_stored_and_forgets_deleted() -> None:
    cache = DocumentCache(capacity=1)
    cache.put("c", doc("a"))
    cache.put("c", doc("b"))  # evicts a (now stored)
    cache.remember("c", doc("a"), "a")
    cache.put("c", doc("a", 2))  # evicts b (now stored)
    cache.put("c", doc("x"))  # evicts a again
    assert cache.delete("c", "b") is True  # the table holds b: the caller deletes it
    assert cache.delete("c", "never") is False
    new, stored = cache.drain()["c"]
    assert [d.id for d in new] == ["x"] and stored == []
    assert cache.lookup("c", "b") == (True, None)


def test_write_once_documents_go_straight_to_the_batch_not_the_cache() -> None:
    cache = DocumentCache(capacity=10, write_once=["versions"])
    view = ViewBatch(NoCursor(), {}, cache)  # type: ignore[arg-type]
    view.put("versions", doc("a:1"))
    view.put("versions", doc("a:2"))
    view.put("docs", doc("a"))
    assert [d.id for d in view._new["versions"]] == ["a:1", "a:2"]
    assert cache.drain() == {"docs": ([doc("a")], [])}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=12,
)


@given(value=json_values, doc_id=st.text(min_size=1))
def test_a_copy_line_is_the_documents_jsonb_text_as_copy_fields(value: Any, doc_id: str) -> None:
    """The bytes fast path says what the text one says (NUL, backslashes, tabs)."""
    document = Document(doc_id, "org\t1", {"v": value}, 2, 3, AT, AT)
    fields = [_copy_field(doc_id), "org\\t1", _copy_field(jsonb_text({"v": value}))]
    expected = "\t".join([*fields, "2", "3", AT.isoformat(), AT.isoformat()]) + "\n"
    assert _copy_line(document) == expected.encode()
