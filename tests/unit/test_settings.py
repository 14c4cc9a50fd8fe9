"""Settings from LINKLEDGER_* variables: a bad or missing one stops start-up with ONE line naming it."""

import base64
import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from service.settings import ConfigError, load_settings

GOOD_DB = "postgresql://linkledger@db.internal:5432/linkledger"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """Nothing from the developer's shell (or the test run's LINKLEDGER_TEST_*) leaks in."""
    for name in list(os.environ):
        if name.upper().startswith("LINKLEDGER_"):
            monkeypatch.delenv(name)
    return monkeypatch


def _seed() -> tuple[bytes, bytes]:
    key = Ed25519PrivateKey.generate()
    return (
        key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()),
        key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw),
    )


def _config_error(**overrides) -> str:
    require = overrides.pop("require", ())
    with pytest.raises(ConfigError) as caught:
        load_settings(require=require, **overrides)
    message = str(caught.value)
    assert message and "\n" not in message, f"not one line: {message!r}"
    return message


def test_missing_required_database_url_names_the_variable(clean_env):
    message = _config_error(require=("database_url",))
    assert message.startswith("LINKLEDGER_DATABASE_URL"), message
    assert "not set" in message


def test_empty_required_database_url_counts_as_missing(clean_env):
    clean_env.setenv("LINKLEDGER_DATABASE_URL", "")
    with pytest.raises(ConfigError, match="LINKLEDGER_DATABASE_URL"):
        load_settings(require=("database_url",))


def test_the_first_missing_required_setting_is_named(clean_env):
    clean_env.setenv("LINKLEDGER_DATABASE_URL", GOOD_DB)
    message = _config_error(require=("database_url", "nats_url"))
    assert message.startswith("LINKLEDGER_NATS_URL"), message


@pytest.mark.parametrize("url", ["mysql://root@db/linkledger", "localhost:5432/linkledger", "http://db:5432/x"])
def test_a_non_postgres_database_url_is_refused(clean_env, url):
    clean_env.setenv("LINKLEDGER_DATABASE_URL", url)
    message = _config_error()
    assert message.startswith("LINKLEDGER_DATABASE_URL:"), message
    assert "postgresql://" in message


def test_a_non_postgres_database_url_is_refused_when_passed_directly(clean_env):
    message = _config_error(database_url="sqlite:///tmp/x.db")
    assert message.startswith("LINKLEDGER_DATABASE_URL:"), message


@pytest.mark.parametrize("url", ["http://nats:4222", "nats://a:4222,redis://b:6379"])
def test_a_non_nats_url_is_refused(clean_env, url):
    clean_env.setenv("LINKLEDGER_NATS_URL", url)
    assert _config_error().startswith("LINKLEDGER_NATS_URL:")


@pytest.mark.parametrize("port", ["eighty", "80.5", "", "70000", "-1"])
def test_a_bad_http_port_is_refused(clean_env, port):
    clean_env.setenv("LINKLEDGER_HTTP_PORT", port)
    message = _config_error()
    assert message.startswith("LINKLEDGER_HTTP_PORT:"), message


def test_a_non_integer_pool_size_is_refused(clean_env):
    clean_env.setenv("LINKLEDGER_POOL_SIZE", "lots")
    assert _config_error().startswith("LINKLEDGER_POOL_SIZE:")


@pytest.mark.parametrize(
    "key",
    [
        "not-a-key",
        base64.urlsafe_b64encode(b"\x01" * 16).decode(),  # too short
        base64.urlsafe_b64encode(b"\x01" * 64).decode(),  # too long
        "ключ",  # not base64 at all
    ],
)
def test_a_bad_signing_key_is_refused_without_echoing_it(clean_env, key):
    clean_env.setenv("LINKLEDGER_LEDGER_SIGNING_KEY", key)
    message = _config_error()
    assert message.startswith("LINKLEDGER_LEDGER_SIGNING_KEY:"), message
    assert key not in message  # a secret never lands in logs, even a mistyped one


def test_a_bad_public_key_is_refused(clean_env):
    clean_env.setenv("LINKLEDGER_LEDGER_PUBLIC_KEY", base64.b64encode(b"\x02" * 31).decode())
    assert _config_error().startswith("LINKLEDGER_LEDGER_PUBLIC_KEY:")


@pytest.mark.parametrize("level", ["LOUD", "trace", "10", ""])
def test_a_bad_log_level_is_refused(clean_env, level):
    clean_env.setenv("LINKLEDGER_LOG_LEVEL", level)
    message = _config_error()
    assert message.startswith("LINKLEDGER_LOG_LEVEL:"), message
    assert "INFO" in message  # says what is allowed


def test_good_values_load(clean_env):
    seed, public = _seed()
    signing = base64.urlsafe_b64encode(seed).decode().rstrip("=")  # url-safe, unpadded
    public_std = base64.b64encode(public).decode()  # standard alphabet, padded
    clean_env.setenv("LINKLEDGER_DATABASE_URL", GOOD_DB)
    clean_env.setenv("LINKLEDGER_NATS_URL", "nats://n1:4222, tls://n2:4222")
    clean_env.setenv("LINKLEDGER_HTTP_HOST", "0.0.0.0")
    clean_env.setenv("LINKLEDGER_HTTP_PORT", "9090")
    clean_env.setenv("LINKLEDGER_LEDGER_SIGNING_KEY", signing)
    clean_env.setenv("LINKLEDGER_LEDGER_PUBLIC_KEY", public_std)
    clean_env.setenv("LINKLEDGER_DIGEST_INTERVAL_SECONDS", "60")
    clean_env.setenv("LINKLEDGER_POOL_SIZE", "8")
    clean_env.setenv("LINKLEDGER_LOG_LEVEL", "debug")
    settings = load_settings(require=("database_url", "nats_url", "ledger_signing_key"))
    assert settings.database_url == GOOD_DB
    assert settings.nats_url == "nats://n1:4222, tls://n2:4222"
    assert settings.http_host == "0.0.0.0"
    assert settings.http_port == 9090
    assert settings.ledger_signing_key == signing
    assert settings.ledger_public_key == public_std
    assert settings.digest_interval_seconds == 60
    assert settings.pool_size == 8
    assert settings.log_level == "DEBUG"


def test_defaults(clean_env):
    settings = load_settings()
    assert settings.database_url is None and settings.nats_url is None
    assert settings.http_port == 8080
    assert settings.database_role == "linkledger_app"
    assert settings.log_level == "INFO"
    assert settings.ledger_signing_key is None


def test_postgres_scheme_alias_and_port_zero_are_accepted(clean_env):
    clean_env.setenv("LINKLEDGER_DATABASE_URL", "postgres://u@h/db")
    clean_env.setenv("LINKLEDGER_HTTP_PORT", "0")
    settings = load_settings(require=("database_url",))
    assert settings.database_url == "postgres://u@h/db"
    assert settings.http_port == 0


def test_overrides_win_over_the_environment(clean_env):
    clean_env.setenv("LINKLEDGER_DATABASE_URL", "postgresql://from-env/db")
    clean_env.setenv("LINKLEDGER_HTTP_PORT", "1234")
    settings = load_settings(database_url=GOOD_DB, http_port=0)
    assert settings.database_url == GOOD_DB
    assert settings.http_port == 0


def test_an_empty_optional_key_means_unset(clean_env):
    clean_env.setenv("LINKLEDGER_LEDGER_SIGNING_KEY", "")
    assert load_settings().ledger_signing_key is None
    with pytest.raises(ConfigError, match="^LINKLEDGER_LEDGER_SIGNING_KEY is not set"):
        load_settings(require=("ledger_signing_key",))
