"""Envelope encryption's primitives (``infrastructure/crypto.py``), without I/O."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.values import check_value
from infrastructure.crypto import (
    MasterKey,
    MasterKeyError,
    SealBroken,
    keyed_digest,
    new_data_key,
    open_sealed,
    seal,
    unwrap_data_key,
    wrap_data_key,
)
from infrastructure.keyring import DataKey
from infrastructure.sealing import ERASED, is_sealed, open_value, seal_value, sealed_key_ids


@given(plaintext=st.binary(max_size=4096), associated=st.binary(max_size=64))
def test_sealing_then_opening_gives_the_plaintext(plaintext: bytes, associated: bytes) -> None:
    key = new_data_key()
    sealed = seal(key, plaintext, associated)
    assert open_sealed(key, sealed, associated) == plaintext


def test_a_seal_opens_only_under_its_key_and_associated_data() -> None:
    key = new_data_key()
    sealed = seal(key, b"secret", b"org:a")
    with pytest.raises(SealBroken):
        open_sealed(new_data_key(), sealed, b"org:a")
    with pytest.raises(SealBroken):
        open_sealed(key, sealed, b"org:b")
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(SealBroken):
        open_sealed(key, tampered, b"org:a")
    with pytest.raises(SealBroken):
        open_sealed(key, b"short", b"org:a")


def test_two_seals_of_one_value_differ() -> None:
    key = new_data_key()
    assert seal(key, b"same", b"") != seal(key, b"same", b"")


def test_a_master_key_reads_back_from_each_written_form() -> None:
    key = MasterKey.generate()
    assert MasterKey.parse(key.encoded()) == key
    assert MasterKey.parse(key.secret.hex() + "\n") == key
    assert MasterKey.parse(base64.b64encode(key.secret).decode()) == key
    assert key.secret.hex() not in repr(key) and key.encoded() not in repr(key)


@pytest.mark.parametrize(
    "text", ["", "   ", "not a key", "00" * 31, "zz" * 32, base64.b64encode(b"x" * 31).decode()]
)
def test_a_malformed_master_key_is_refused_saying_what_a_key_is(text: str) -> None:
    with pytest.raises(MasterKeyError, match="master key"):
        MasterKey.parse(text)


def test_a_data_key_unwraps_only_under_the_master_key_and_id_that_wrapped_it() -> None:
    master, other = MasterKey.generate(), MasterKey.generate()
    data_key = new_data_key()
    wrapped = wrap_data_key(master, "k1", data_key)
    assert unwrap_data_key(master, "k1", wrapped) == data_key
    with pytest.raises(MasterKeyError, match="does not open"):
        unwrap_data_key(other, "k1", wrapped)
    with pytest.raises(MasterKeyError):
        unwrap_data_key(master, "k2", wrapped)


def test_a_keyed_digest_depends_on_key_purpose_and_value() -> None:
    key = new_data_key()
    digest = keyed_digest(key, "data subject", "alice@example.com")
    assert "alice" not in digest and len(digest) == 64
    assert digest == keyed_digest(key, "data subject", "alice@example.com")
    assert digest != keyed_digest(new_data_key(), "data subject", "alice@example.com")
    assert digest != keyed_digest(key, "other", "alice@example.com")


# Every value the contract admits, as the value strategy of the contract tests draws them.
_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False, max_value=2.0**62, min_value=-(2.0**62))
    | st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(
            st.text(
                alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
            ),
            inner,
            max_size=5,
        )
    ),
    max_leaves=20,
)


@given(value=_values)
def test_a_sealed_value_opens_to_itself_and_is_a_value_itself(value: object) -> None:
    day, subject = DataKey("d", new_data_key()), DataKey("s", new_data_key())
    sealed = seal_value(value, [day, subject], "org/exec/input")
    assert check_value(sealed) == []
    assert is_sealed(sealed) and sealed_key_ids(sealed) == ["d", "s"]
    assert open_value(sealed, [day, subject], "org/exec/input") == value


def test_a_sealed_value_with_a_destroyed_key_reads_as_erased() -> None:
    day, subject = DataKey("d", new_data_key()), DataKey("s", new_data_key())
    sealed = seal_value({"email": "a@example.com"}, [day, subject], "ctx")
    assert "a@example.com" not in str(sealed)
    assert open_value(sealed, [day, None], "ctx") == ERASED
    with pytest.raises(SealBroken):
        open_value(sealed, [day, subject], "another execution")
    with pytest.raises(SealBroken):
        open_value(sealed, [subject, day], "ctx")
