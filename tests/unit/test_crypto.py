"""Keyring, envelope encryption and fingerprints: no I/O."""

import base64
import json
import os
import uuid

import pytest

from service.crypto.envelope import DecryptionError, EnvelopeError, decrypt, encrypt, event_aad
from service.crypto.fingerprint import AuditKeyError, Fingerprinter
from service.crypto.keyring import Keyring, KeyringError, UnwrapError

TOKEN = "ya29.a0AfH6SMBx-secret-access-token-0123456789"
REFRESH = "1//0g-secret-refresh-token-abcdefghijklmnop"
CREDENTIALS = {"access_token": TOKEN, "refresh_token": REFRESH, "token_type": "Bearer", "expires_in": 3599}
STREAM = "account-7d0f6b0e-3a2c-4f57-9a51-1f0c2b7b9e10"


def b64(raw: bytes, urlsafe: bool = False, pad: bool = True) -> str:
    text = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(raw).decode()
    return text if pad else text.rstrip("=")


def keyring_json(keys: dict[str, str], primary: str) -> str:
    return json.dumps({"primary": primary, "keys": keys})


@pytest.fixture
def data_key() -> bytes:
    return os.urandom(32)


# -- envelope ---------------------------------------------------------------------------------------


def test_encrypt_decrypt_roundtrip_and_format(data_key):
    event_id = uuid.uuid4()
    aad = event_aad(STREAM, event_id)
    assert aad == f"{STREAM}\x1f{event_id}".encode()
    blob = encrypt(data_key, CREDENTIALS, aad)
    assert blob[0] == 0x01
    assert len(blob) > 1 + 12 + 16
    assert decrypt(data_key, blob, aad) == CREDENTIALS
    # A random nonce each time: the same plaintext never gives the same ciphertext.
    assert encrypt(data_key, CREDENTIALS, aad) != blob


def test_event_aad_accepts_the_id_as_text_in_any_spelling():
    event_id = uuid.uuid4()
    assert event_aad(STREAM, str(event_id).upper()) == event_aad(STREAM, event_id)


def test_a_ciphertext_moved_to_another_event_or_another_stream_does_not_decrypt(data_key):
    event_id = uuid.uuid4()
    blob = encrypt(data_key, CREDENTIALS, event_aad(STREAM, event_id))
    with pytest.raises(DecryptionError):
        decrypt(data_key, blob, event_aad(STREAM, uuid.uuid4()))
    with pytest.raises(DecryptionError):
        decrypt(data_key, blob, event_aad("account-00000000-0000-4000-8000-000000000000", event_id))


@pytest.mark.parametrize("where", [0, 1, 13, 20, -1])
def test_any_altered_byte_is_refused(data_key, where):
    aad = event_aad(STREAM, uuid.uuid4())
    blob = bytearray(encrypt(data_key, CREDENTIALS, aad))
    blob[where] ^= 0x01
    with pytest.raises(DecryptionError):
        decrypt(data_key, bytes(blob), aad)


def test_truncated_ciphertext_is_refused(data_key):
    aad = event_aad(STREAM, uuid.uuid4())
    blob = encrypt(data_key, CREDENTIALS, aad)
    for cut in (0, 1, 13, 28, len(blob) - 1):
        with pytest.raises(DecryptionError):
            decrypt(data_key, blob[:cut], aad)


def test_another_data_key_does_not_decrypt(data_key):
    aad = event_aad(STREAM, uuid.uuid4())
    blob = encrypt(data_key, CREDENTIALS, aad)
    with pytest.raises(DecryptionError) as caught:
        decrypt(os.urandom(32), blob, aad)
    message = str(caught.value)
    assert TOKEN not in message and "\n" not in message
    assert data_key.hex() not in message and b64(data_key) not in message


def test_ciphertext_never_contains_the_token_bytes(data_key):
    blob = encrypt(data_key, CREDENTIALS, event_aad(STREAM, uuid.uuid4()))
    for secret in (TOKEN, REFRESH):
        assert secret.encode() not in blob
        assert secret[:12].encode() not in blob
        assert base64.b64encode(secret.encode()) not in blob


def test_encrypt_refuses_bad_keys_and_non_json_plaintext_without_echoing_it(data_key):
    aad = b"x"
    with pytest.raises(EnvelopeError):
        encrypt(os.urandom(16), CREDENTIALS, aad)
    with pytest.raises(EnvelopeError) as caught:
        encrypt(data_key, {"access_token": TOKEN, "n": float("nan")}, aad)
    assert TOKEN not in str(caught.value)
    with pytest.raises(EnvelopeError):
        encrypt(data_key, {"access_token": {TOKEN}}, aad)
    with pytest.raises(EnvelopeError):
        encrypt(data_key, ["not", "a", "dict"], aad)  # type: ignore[arg-type]
    with pytest.raises(DecryptionError):
        decrypt(os.urandom(31), encrypt(data_key, CREDENTIALS, aad), aad)


def test_canonical_plaintext_key_order_does_not_matter(data_key):
    aad = b"a"
    swapped = dict(reversed(list(CREDENTIALS.items())))
    assert decrypt(data_key, encrypt(data_key, swapped, aad), aad) == CREDENTIALS


# -- keyring ----------------------------------------------------------------------------------------


def test_keyring_parses_standard_and_urlsafe_base64_with_or_without_padding():
    raw = {f"kek-{i}": os.urandom(32) for i in range(4)}
    text = keyring_json(
        {
            "kek-0": b64(raw["kek-0"]),
            "kek-1": b64(raw["kek-1"], pad=False),
            "kek-2": b64(raw["kek-2"], urlsafe=True),
            "kek-3": b64(raw["kek-3"], urlsafe=True, pad=False),
        },
        "kek-2",
    )
    keyring = Keyring.from_json(text)
    assert keyring.primary == "kek-2"
    assert keyring.keys == raw


def test_keyring_repr_shows_ids_only():
    raw = os.urandom(32)
    keyring = Keyring({"kek-a": raw}, "kek-a")
    for shown in (repr(keyring), str(keyring), f"{keyring}"):
        assert "kek-a" in shown
        assert b64(raw) not in shown and raw.hex() not in shown and repr(raw) not in shown


SHORT = os.urandom(16)
GOOD = os.urandom(32)


@pytest.mark.parametrize(
    "text, expected",
    [
        (keyring_json({"kek-1": b64(SHORT)}, "kek-1"), 'keyring: key "kek-1" is 16 bytes, expected 32'),
        (keyring_json({"kek-1": b64(GOOD)}, "x"), 'keyring: primary "x" is not among the keys'),
        (keyring_json({"kek-1": b64(GOOD) + "!!"}, "kek-1"), 'keyring: key "kek-1" is not base64'),
        (keyring_json({"kek-1": b64(GOOD)[:-5] + "*" + b64(GOOD)[-4:]}, "kek-1"), 'keyring: key "kek-1" is not base64'),
        (keyring_json({"kek-1": 12345}, "kek-1"), 'keyring: key "kek-1" must be a base64 string'),
        (keyring_json({}, "kek-1"), 'keyring: "keys" must be a non-empty object'),
        (json.dumps({"keys": {"kek-1": b64(GOOD)}}), 'keyring: "primary" is missing'),
        (json.dumps({"primary": "kek-1"}), 'keyring: "keys" is missing'),
        (json.dumps({"primary": "kek-1", "keys": {"kek-1": b64(GOOD)}, "primry": 1}), 'keyring: unknown field "primry"'),
        ('{"primary": "kek-1", "keys": {"kek-1": "' + b64(GOOD) + '", "kek-1": "' + b64(GOOD) + '"}}', 'keyring: "kek-1" appears twice'),
        ('{"primary": "kek-1", "keys": {"kek-1": "' + b64(GOOD) + '",', "keyring: not valid JSON"),
        ("[]", "keyring: expected a JSON object"),
        # Key material pasted where an id belongs is not echoed back.
        (keyring_json({b64(GOOD): "kek-1"}, "kek-1"), "keyring: a key id is not"),
        (keyring_json({"kek-1": b64(GOOD)}, b64(GOOD)), 'keyring: "primary" is not among the keys'),
    ],
)
def test_keyring_errors_are_one_line_and_never_contain_key_material(text, expected):
    with pytest.raises(KeyringError) as caught:
        Keyring.from_json(text)
    message = str(caught.value)
    assert message.startswith(expected), message
    assert "\n" not in message
    for material in (SHORT, GOOD):
        for encoded in (b64(material), b64(material, urlsafe=True), b64(material, pad=False), material.hex()):
            assert encoded not in message
        assert b64(material)[:16] not in message


def test_keyring_load_takes_exactly_one_source(tmp_path):
    text = Keyring.generate("kek-file")
    path = tmp_path / "keyring.json"
    path.write_text(text)
    assert Keyring.load(None, str(path)) == Keyring.from_json(text)
    assert Keyring.load(text, None) == Keyring.from_json(text)
    assert Keyring.load(text, "") == Keyring.from_json(text)
    for args in ((None, None), ("", ""), (text, str(path))):
        with pytest.raises(KeyringError) as caught:
            Keyring.load(*args)
        assert "exactly one" in str(caught.value)
        assert "\n" not in str(caught.value)
    with pytest.raises(KeyringError) as caught:
        Keyring.load(None, str(tmp_path / "missing.json"))
    assert "missing.json" in str(caught.value) and "\n" not in str(caught.value)


def test_generate_makes_a_fresh_usable_keyring():
    first, second = Keyring.from_json(Keyring.generate("kek-2026-11")), Keyring.from_json(Keyring.generate("kek-2026-11"))
    assert first.primary == "kek-2026-11" and list(first.keys) == ["kek-2026-11"]
    assert len(first.keys["kek-2026-11"]) == 32
    assert first.keys != second.keys
    assert Keyring.from_json(Keyring.generate()).primary.startswith("kek-")
    with pytest.raises(KeyringError):
        Keyring.generate("bad id with spaces")


def test_keyring_constructor_checks_lengths_and_primary():
    with pytest.raises(KeyringError, match='key "a" is 31 bytes, expected 32'):
        Keyring({"a": os.urandom(31)}, "a")
    with pytest.raises(KeyringError, match='primary "b" is not among the keys'):
        Keyring({"a": os.urandom(32)}, "b")
    with pytest.raises(KeyringError):
        Keyring({}, "a")


def test_wrap_unwrap_roundtrip_under_the_primary(data_key):
    keyring = Keyring({"kek-old": os.urandom(32), "kek-new": os.urandom(32)}, "kek-new")
    kek_id, wrapped = keyring.wrap(data_key)
    assert kek_id == "kek-new"
    assert len(wrapped) == 12 + 32 + 16
    assert data_key not in wrapped
    assert keyring.unwrap(kek_id, wrapped) == data_key
    assert keyring.wrap(data_key)[1] != wrapped  # fresh nonce


def test_unwrap_is_bound_to_the_kek_id_and_refuses_alterations(data_key):
    shared = os.urandom(32)
    keyring = Keyring({"kek-a": shared, "kek-b": shared}, "kek-a")
    kek_id, wrapped = keyring.wrap(data_key)
    # Same key bytes under another id: the id is associated data, so it does not open.
    with pytest.raises(UnwrapError, match='"kek-b"'):
        keyring.unwrap("kek-b", wrapped)
    altered = bytearray(wrapped)
    altered[-1] ^= 0x80
    with pytest.raises(UnwrapError) as caught:
        keyring.unwrap(kek_id, bytes(altered))
    assert '"kek-a"' in str(caught.value) and "\n" not in str(caught.value)
    assert b64(shared) not in str(caught.value) and b64(data_key) not in str(caught.value)
    with pytest.raises(UnwrapError):
        keyring.unwrap(kek_id, wrapped[:-1])
    # A different key under the same id.
    impostor = Keyring({"kek-a": os.urandom(32)}, "kek-a")
    with pytest.raises(UnwrapError):
        impostor.unwrap(kek_id, wrapped)


def test_unwrap_under_a_kek_not_loaded_names_it(data_key):
    old = Keyring({"kek-2026-01": os.urandom(32)}, "kek-2026-01")
    kek_id, wrapped = old.wrap(data_key)
    current = Keyring({"kek-2026-11": os.urandom(32)}, "kek-2026-11")
    with pytest.raises(KeyringError) as caught:
        current.unwrap(kek_id, wrapped)
    assert not isinstance(caught.value, UnwrapError)
    message = str(caught.value)
    assert '"kek-2026-01"' in message and "not loaded" in message and "\n" not in message


def test_wrap_refuses_a_key_of_the_wrong_size():
    keyring = Keyring({"k": os.urandom(32)}, "k")
    with pytest.raises(KeyringError):
        keyring.wrap(os.urandom(16))


def test_with_new_key_and_without_support_rotation(data_key):
    keyring = Keyring.from_json(Keyring.generate("kek-1"))
    old_kek, wrapped = keyring.wrap(data_key)
    rotated = keyring.with_new_key("kek-2")
    assert rotated.primary == "kek-2" and set(rotated.keys) == {"kek-1", "kek-2"}
    assert rotated.unwrap(old_kek, wrapped) == data_key
    new_kek, rewrapped = rotated.wrap(rotated.unwrap(old_kek, wrapped))
    retired = rotated.without("kek-1")
    assert retired.unwrap(new_kek, rewrapped) == data_key
    assert Keyring.from_json(retired.to_json()) == retired
    with pytest.raises(KeyringError):
        retired.without("kek-2")  # the primary


# -- fingerprints -----------------------------------------------------------------------------------


def test_fingerprints_are_stable_and_distinguish_values_and_audit_keys():
    key = os.urandom(32)
    fp = Fingerprinter(key)
    first = fp.fingerprint(TOKEN)
    assert first == Fingerprinter(key).fingerprint(TOKEN)
    assert first.startswith("fp_") and len(first) == 3 + 16
    int(first[3:], 16)
    assert fp.fingerprint(REFRESH) != first
    assert fp.fingerprint(TOKEN + "x") != first
    assert Fingerprinter(os.urandom(32)).fingerprint(TOKEN) != first
    assert TOKEN not in first and TOKEN[:8] not in first


def test_fingerprints_of_a_credentials_dict_cover_secret_fields_only():
    fp = Fingerprinter(os.urandom(32))
    credentials = {
        "access_token": TOKEN,
        "refresh_token": REFRESH,
        "api_key": "key-123",
        "password": "hunter2-very-secret",
        "username": "alice@example.com",
        "token_type": "Bearer",
        "extra": {"instance_secret": "s3cr3t-instance", "signing_key": "sig-abc"},
    }
    prints = fp.fingerprints(credentials)
    assert set(prints) == {"access_token", "refresh_token", "api_key", "password", "extra.instance_secret", "extra.signing_key"}
    assert prints["access_token"] == fp.fingerprint(TOKEN)
    assert prints["extra.signing_key"] == fp.fingerprint("sig-abc")
    assert fp.fingerprints(dict(reversed(list(credentials.items())))) == prints
    text = json.dumps(prints)
    for value in (TOKEN, REFRESH, "key-123", "hunter2", "alice", "s3cr3t", "sig-abc", "Bearer"):
        assert value not in text
    assert fp.fingerprints({"access_token": None, "username": "bob"}) == {}
    assert set(fp.fingerprints({"access_token": "", "extra": {"x": ""}})) == {"access_token", "extra.x"}


def test_audit_key_checks_and_repr():
    key = os.urandom(32)
    assert Fingerprinter.from_base64(b64(key, urlsafe=True, pad=False)).fingerprint("a") == Fingerprinter(key).fingerprint("a")
    with pytest.raises(AuditKeyError):
        Fingerprinter(os.urandom(8))
    with pytest.raises(AuditKeyError) as caught:
        Fingerprinter.from_base64(b64(os.urandom(20)))
    assert "20 bytes" in str(caught.value)
    assert key.hex() not in repr(Fingerprinter(key)) and repr(key) not in repr(Fingerprinter(key))
