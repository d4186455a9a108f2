"""EventMeta's stored form (domain/meta.py), without I/O."""

from dataclasses import asdict, fields

from hypothesis import given
from hypothesis import strategies as st

from domain.meta import EventMeta

_optional = st.none() | st.text()


@given(st.text(), st.text(), st.text(), _optional, _optional)
def test_the_stored_form_names_every_field_as_the_dataclass_does(
    org_id: str, actor: str, correlation: str, causation: str | None, key: str | None
) -> None:
    meta = EventMeta(org_id, actor, correlation, causation, key)
    stored = meta.as_dict()
    # Without a trace context the stored form has no traceparent key (older events read the same).
    expected = {name: value for name, value in asdict(meta).items() if name != "traceparent"}
    assert stored == expected
    assert list(stored) == [f.name for f in fields(EventMeta) if f.name != "traceparent"]
    traced = EventMeta(org_id, actor, correlation, causation, key, traceparent="00-" + "1" * 32)
    assert traced.as_dict() == asdict(traced)
