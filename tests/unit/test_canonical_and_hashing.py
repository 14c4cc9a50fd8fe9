"""Canonical JSON, the event header, body hashes and uuid7: the bytes every chain is built from.

No I/O. An auditor must be able to recompute every hash from the stored columns alone, so the
encodings are pinned down exactly here.
"""

import hashlib
import json
import struct
import pickle
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events.canonical import MAX_PAYLOAD_BYTES, canonical_json, typed_json
import dataclasses

from events.envelope import NewEvent, uuid5, uuid7, uuid_text
from events.errors import InvalidEventError
from events.hashing import GENESIS_HASH, body_hash, chain_hash, format_instant, header_bytes

UTC = timezone.utc


# --------------------------------------------------------------------------- canonical_json


def test_canonical_json_sorts_keys_at_every_level_and_has_no_whitespace():
    value = {"b": 1, "a": {"d": [3, {"z": True, "y": None}], "c": "x y"}, "A": False}
    assert canonical_json(value) == '{"A":false,"a":{"c":"x y","d":[3,{"y":null,"z":true}]},"b":1}'


def test_canonical_json_is_independent_of_insertion_order():
    first = {"scope": "read write", "expires_at": "2030-01-01T00:00:00.000000Z", "n": 3}
    second = {"n": 3, "expires_at": "2030-01-01T00:00:00.000000Z", "scope": "read write"}
    assert canonical_json(first) == canonical_json(second)


def test_canonical_json_keeps_non_ascii_as_utf8():
    text = canonical_json({"name": "Zoë Ünïcødé 日本 🚀"})
    assert text == '{"name":"Zoë Ünïcødé 日本 🚀"}'
    assert "\\u" not in text


def test_canonical_json_escapes_quotes_backslashes_and_control_characters_as_json_requires():
    value = {"q": 'say "hi"\\', "c": "tab\there\nnl\x00nul"}
    text = canonical_json(value)
    assert json.loads(text) == value
    assert "\n" not in text and "\t" not in text and "\x00" not in text


def test_canonical_json_accepts_exact_values():
    value = {"i": -(2**70), "b": True, "n": None, "s": "", "l": [], "o": {}}
    assert json.loads(canonical_json(value)) == value


@pytest.mark.parametrize(
    "value, path",
    [
        ({"amount": 1.5}, "data.amount"),
        ({"a": {"b": [1, 2, {"c": 2.0}]}}, "data.a.b[2].c"),
        ({"a": [0.0]}, "data.a[0]"),
        ({"ttl": float("nan")}, "data.ttl"),
        ({"ttl": float("inf")}, "data.ttl"),
        ({"a": {"b": -float("inf")}}, "data.a.b"),
    ],
)
def test_canonical_json_refuses_floats_anywhere_naming_the_path(value, path):
    with pytest.raises(InvalidEventError) as caught:
        canonical_json(value)
    message = str(caught.value)
    assert message.startswith(f"{path}:"), message
    assert "float" in message


def test_canonical_json_names_the_payload_it_was_given():
    with pytest.raises(InvalidEventError, match=r"^TokenRefreshed\.data\.ratio:"):
        canonical_json({"ratio": 0.5}, what="TokenRefreshed.data")


@pytest.mark.parametrize(
    "value, path, kind",
    [
        ({"scopes": {"read", "write"}}, "data.scopes", "set"),
        ({"token": b"secret"}, "data.token", "bytes"),
        ({"at": datetime(2024, 1, 1, tzinfo=UTC)}, "data.at", "datetime"),
        ({"a": [{"b": timedelta(seconds=3)}]}, "data.a[0].b", "timedelta"),
        ({"id": uuid.UUID(int=1)}, "data.id", "UUID"),
    ],
)
def test_canonical_json_refuses_non_json_values_naming_path_and_type(value, path, kind):
    with pytest.raises(InvalidEventError) as caught:
        canonical_json(value)
    message = str(caught.value)
    assert message.startswith(f"{path}:"), message
    assert kind in message


@pytest.mark.parametrize("value", [{1: "x"}, {None: "x"}, {("a",): 1}])
def test_canonical_json_refuses_non_string_keys_at_top_level(value):
    with pytest.raises(InvalidEventError, match="keys must be strings"):
        canonical_json(value)


@pytest.mark.parametrize(
    "value",
    [
        {"a": {1: "x"}},  # json.dumps would silently write "1"
        {"a": {1.5: "x"}},  # ... and "1.5": a float smuggled in as a key
        {"a": [{None: "x"}]},  # ... and "null"
        {"a": {True: "x"}},  # ... and "true"
    ],
)
def test_canonical_json_refuses_non_string_keys_when_nested(value):
    """A nested int/float/None/bool key must be refused like a top-level one, not silently turned
    into a string: otherwise the stored payload does not read back as what the caller appended,
    and {1: ..} and {"1": ..} hash to the same bytes."""
    with pytest.raises(InvalidEventError, match=r"^data\.a.*keys must be strings"):
        canonical_json(value)


def test_canonical_json_refuses_duplicate_keys_after_coercion():
    with pytest.raises(InvalidEventError):
        canonical_json({"a": {1: "x", "1": "y"}})


@pytest.mark.parametrize("value", [[], [1, 2], "text", 3, None, True])
def test_canonical_json_requires_an_object(value):
    with pytest.raises(InvalidEventError):
        canonical_json(value)


def test_canonical_json_refuses_lone_surrogates_as_an_invalid_event():
    """A JSON request body may carry "\\ud800"; Python decodes it to a lone surrogate that has no
    UTF-8 encoding. That must be an InvalidEventError (a 422), not a UnicodeEncodeError (a 500)."""
    with pytest.raises(InvalidEventError):
        canonical_json({"name": "\ud800"})


def test_canonical_json_size_limit_is_one_mebibyte_of_utf8():
    overhead = len('{"a":""}')
    at_limit = {"a": "x" * (MAX_PAYLOAD_BYTES - overhead)}
    assert len(canonical_json(at_limit).encode()) == MAX_PAYLOAD_BYTES
    with pytest.raises(InvalidEventError, match="limit"):
        canonical_json({"a": "x" * (MAX_PAYLOAD_BYTES - overhead + 1)})
    # The limit counts bytes, not characters: 600k two-byte characters are 1.2 MB.
    with pytest.raises(InvalidEventError, match="limit"):
        canonical_json({"a": "é" * 600_000})
    with pytest.raises(InvalidEventError, match="limit"):
        canonical_json({"a": "x" * 200}, limit=100)


def test_max_payload_is_one_mebibyte():
    assert MAX_PAYLOAD_BYTES == 1024 * 1024


# --------------------------------------------------------------------------- header_bytes

HEADER_FIELDS = dict(
    event_id=uuid.UUID("0190a2b4-6c1e-7abc-8def-0123456789ab"),
    stream_id="account-1",
    version=3,
    type="TokenRefreshed",
    schema_version=1,
    occurred_at=datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
    actor="system:refresher",
    correlation_id=None,
    causation_id=None,
    key_id=None,
)


def _reference_header(**fields) -> bytes:
    as_json = {
        "actor": fields["actor"],
        "causation_id": str(fields["causation_id"]) if fields["causation_id"] is not None else None,
        "correlation_id": str(fields["correlation_id"]) if fields["correlation_id"] is not None else None,
        "event_id": str(fields["event_id"]),
        "key_id": fields["key_id"],
        "occurred_at": format_instant(fields["occurred_at"]),
        "schema_version": fields["schema_version"],
        "stream_id": fields["stream_id"],
        "type": fields["type"],
        "version": fields["version"],
    }
    return json.dumps(as_json, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def test_header_bytes_known_value():
    assert header_bytes(**HEADER_FIELDS) == (
        b'{"actor":"system:refresher","causation_id":null,"correlation_id":null,'
        b'"event_id":"0190a2b4-6c1e-7abc-8def-0123456789ab","key_id":null,'
        b'"occurred_at":"2024-05-06T07:08:09.123456Z","schema_version":1,'
        b'"stream_id":"account-1","type":"TokenRefreshed","version":3}'
    )


# Arbitrary unicode (hypothesis' text() leaves out lone surrogates, which have no UTF-8 form),
# biased towards what breaks hand-built JSON: quotes, backslashes and control characters.
_tricky = st.text(
    alphabet=st.one_of(st.sampled_from('"\\/\x00\x01\x1f\x7f\n\r\t\u2028\u2029é日🚀'), st.characters(codec="utf-8")),
    max_size=40,
)
_uuids = st.one_of(st.none(), st.uuids(), st.just(uuid.UUID(int=0)))
_instants = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1),
    timezones=st.builds(timezone, st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23))),
)


@settings(max_examples=300, deadline=None)
@given(
    event_id=st.uuids(),
    stream_id=_tricky,
    version=st.integers(min_value=1, max_value=2**31 - 1),
    type=_tricky,
    schema_version=st.integers(min_value=1, max_value=32767),
    occurred_at=_instants,
    actor=_tricky,
    correlation_id=_uuids,
    causation_id=_uuids,
    key_id=st.one_of(st.none(), _tricky),
)
def test_header_bytes_is_exactly_canonical_json_of_the_fields(**fields):
    produced = header_bytes(**fields)
    assert produced == _reference_header(**fields)
    decoded = json.loads(produced)
    assert decoded["stream_id"] == fields["stream_id"]
    assert decoded["actor"] == fields["actor"]
    assert decoded["key_id"] == fields["key_id"]


def test_header_bytes_changes_with_every_field():
    base = header_bytes(**HEADER_FIELDS)
    changes = dict(
        event_id=uuid.UUID(int=5),
        stream_id="account-2",
        version=4,
        type="TokenRefreshFailed",
        schema_version=2,
        occurred_at=HEADER_FIELDS["occurred_at"] + timedelta(microseconds=1),
        actor="system:other",
        correlation_id=uuid.UUID(int=7),
        causation_id=uuid.UUID(int=8),
        key_id="kek-1",
    )
    for name, value in changes.items():
        assert header_bytes(**{**HEADER_FIELDS, name: value}) != base, name
    assert header_bytes(**{**HEADER_FIELDS, "key_id": ""}) != base  # "" is not null


def test_format_instant_is_utc_with_microseconds_and_refuses_naive_times():
    plus_two = timezone(timedelta(hours=2))
    assert format_instant(datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2024-01-02T03:04:05.000000Z"
    assert format_instant(datetime(2024, 1, 2, 3, 4, 5, 7, tzinfo=plus_two)) == "2024-01-02T01:04:05.000007Z"
    with pytest.raises(ValueError):
        format_instant(datetime(2024, 1, 2, 3, 4, 5))


# --------------------------------------------------------------------------- body_hash / chain_hash

HEADER = header_bytes(**HEADER_FIELDS)
DATA = canonical_json({"expires_at": "2030-01-01T00:00:00.000000Z", "rotated": True, "who": "Zoë"})
SECRET = bytes(range(40))


def _framed(part: bytes) -> bytes:
    return struct.pack(">Q", len(part)) + part


def test_body_hash_is_sha256_of_length_framed_parts_as_documented():
    expected = hashlib.sha256(_framed(HEADER) + _framed(DATA.encode()) + b"\x01" + _framed(SECRET)).digest()
    assert body_hash(HEADER, DATA, SECRET) == expected
    without = hashlib.sha256(_framed(HEADER) + _framed(DATA.encode()) + b"\x00").digest()
    assert body_hash(HEADER, DATA, None) == without
    assert len(expected) == 32


def test_no_secret_and_an_empty_secret_hash_differently():
    assert body_hash(HEADER, DATA, None) != body_hash(HEADER, DATA, b"")


def test_chain_hash_is_sha256_of_previous_hash_and_body():
    body = body_hash(HEADER, DATA, SECRET)
    assert chain_hash(GENESIS_HASH, body) == hashlib.sha256(bytes(32) + body).digest()
    assert GENESIS_HASH == bytes(32)
    assert chain_hash(b"\x01" * 32, body) != chain_hash(GENESIS_HASH, body)


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1:]


def test_body_hash_changes_when_any_byte_of_the_header_changes():
    original = body_hash(HEADER, DATA, SECRET)
    for i in range(len(HEADER)):
        assert body_hash(_flip(HEADER, i), DATA, SECRET) != original, i


def test_body_hash_changes_when_any_byte_of_the_data_changes():
    data = canonical_json({"expires_at": "2030-01-01T00:00:00.000000Z", "rotated": True, "n": 42})
    original = body_hash(HEADER, data, SECRET)
    raw = data.encode()
    for i in range(len(raw)):
        assert body_hash(HEADER, _flip(raw, i).decode("ascii"), SECRET) != original, i
    assert body_hash(HEADER, data + " ", SECRET) != original


def test_body_hash_changes_when_a_letter_of_the_data_changes():
    original = body_hash(HEADER, DATA, SECRET)
    for i, char in enumerate(DATA):
        if char.isalpha():
            changed = DATA[:i] + (char.upper() if char.islower() else char.lower()) + DATA[i + 1:]
            assert body_hash(HEADER, changed, SECRET) != original, i


def test_body_hash_changes_when_any_byte_of_the_secret_changes():
    original = body_hash(HEADER, DATA, SECRET)
    for i in range(len(SECRET)):
        assert body_hash(HEADER, DATA, _flip(SECRET, i)) != original, i
    assert body_hash(HEADER, DATA, SECRET[:-1]) != original
    assert body_hash(HEADER, DATA, SECRET + b"\x00") != original
    assert body_hash(HEADER, DATA, None) != original


def test_framing_keeps_part_boundaries_apart():
    assert body_hash(b"ab", "c", None) != body_hash(b"a", "bc", None)
    assert body_hash(b"h", "ab", b"c") != body_hash(b"h", "a", b"bc")
    assert body_hash(b"", "ab", None) != body_hash(b"ab", "", None)
    assert body_hash(b"h", "", b"x") != body_hash(b"h", "x", None)


# --------------------------------------------------------------------------- uuid7


def test_uuid7_is_version_7_with_the_rfc_4122_variant():
    for _ in range(1000):
        value = uuid7()
        assert value.version == 7
        assert value.variant == uuid.RFC_4122


def test_uuid7_is_an_ordinary_uuid():
    value = uuid7()
    same = uuid.UUID(str(value))
    assert value == same and hash(value) == hash(same) and value.is_safe == same.is_safe
    assert pickle.loads(pickle.dumps(value)) == value and {value: 1}[same] == 1


def test_uuid7_carries_the_current_unix_millisecond():
    before = time.time_ns() // 1_000_000
    value = uuid7()
    after = time.time_ns() // 1_000_000
    assert before <= value.int >> 80 <= after


def test_uuid7_increases_over_time():
    ids = []
    for _ in range(30):
        ids.append(uuid7())
        time.sleep(0.0015)  # past the millisecond the previous one was made in
    assert ids == sorted(ids)
    assert [i.bytes for i in ids] == sorted(i.bytes for i in ids)  # also as stored (uuid bytes)
    assert len(set(ids)) == len(ids)


def test_uuid7_is_unique_within_a_millisecond():
    ids = [uuid7() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)


@given(st.text(max_size=80))
def test_uuid5_is_the_standard_librarys(name):
    for namespace in (uuid.NAMESPACE_URL, uuid.UUID("6f1c1d3e-1b7a-5c55-9a4e-6c696e6b6c65")):
        try:
            expected = uuid.uuid5(namespace, name)
        except UnicodeEncodeError:  # a lone surrogate: neither makes an id of it
            with pytest.raises(UnicodeEncodeError):
                uuid5(namespace, name)
            continue
        made = uuid5(namespace, name)
        assert made == expected and made.version == 5 and hash(made) == hash(expected) and str(made) == str(expected)


def test_uuid_text_is_str():
    for value in [uuid7(), uuid.uuid4(), uuid.UUID(int=0), uuid.UUID(int=(1 << 128) - 1)]:
        assert uuid_text(value) == str(value)


def test_uuid7_random_bits_are_all_used():
    # 74 random bits: 12 after the version nibble, 62 after the variant bits
    ors, ands = 0, (1 << 128) - 1
    for _ in range(2000):
        value = uuid7().int
        ors, ands = ors | value, ands & value
    random_bits = ((1 << 12) - 1) << 64 | ((1 << 62) - 1)
    assert ors & random_bits == random_bits and ands & random_bits == 0


def test_new_event_from_values_is_the_event_its_constructor_makes():
    values = dict(type="TokensImported", data='{"a":1}', schema_version=2, event_id=uuid7(),
                  occurred_at=datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc), actor="key:ak_1",
                  correlation_id=uuid7(), causation_id=None, secret=b"\x01ciphertext", key_id="dk_1")
    made, built = NewEvent.from_values(**values), NewEvent(**values)
    assert made == built and hash(made) == hash(built) and repr(made) == repr(built)
    assert dataclasses.asdict(made) == values and dataclasses.replace(made, actor="system") == NewEvent(**values | {"actor": "system"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.actor = "someone else"


_json_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | _json_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_json_text, inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(_json_text, _json_values, max_size=6))
def test_canonical_text_is_the_standard_librarys_sorted_compact_utf8_encoding(value):
    # Stored payloads were hashed over this exact text, whichever encoder produced it.
    expected = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert canonical_json(value) == expected
    assert typed_json(value) == expected


@pytest.mark.parametrize("value", [{"a": 1.5}, {"a": [float("nan")]}, {"a": (1, 2)}, {1: "a"}, {"a": {"b": object()}}])
def test_what_json_cannot_hold_exactly_is_refused(value):
    with pytest.raises(InvalidEventError):
        canonical_json(value)
