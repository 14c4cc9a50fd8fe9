"""Settings, read from LINKLEDGER_* environment variables and validated at start-up."""

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "LINKLEDGER_"


class ConfigError(Exception):
    """A setting is missing or malformed; the message is one line naming it."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    database_url: str | None = Field(None, description="PostgreSQL URL, e.g. postgresql://user@host:5432/linkledger")
    nats_url: str | None = Field(None, description="NATS URL with JetStream, e.g. nats://host:4222")
    database_role: str = Field("linkledger_app", description="role the service acts as (may not change events); empty to disable")
    http_host: str = Field("127.0.0.1", description="address the gateway listens on")
    http_port: int = Field(8080, ge=0, le=65535, description="port the gateway listens on (0: any free port)")
    ledger_signing_key: str | None = Field(None, description="base64 Ed25519 seed (32 bytes) that signs ledger digests")
    ledger_public_key: str | None = Field(None, description="base64 Ed25519 public key verify trusts (default: the signing key's)")
    digest_interval_seconds: int = Field(900, ge=0, description="how often the service signs a ledger digest (0: never)")
    keyring: str | None = Field(None, description='key-encryption keys as JSON: {"primary": id, "keys": {id: base64 32 bytes}}')
    keyring_file: str | None = Field(None, description="path of a file holding the keyring JSON (instead of LINKLEDGER_KEYRING)")
    audit_key: str | None = Field(None, description="base64 32-byte HMAC key for token fingerprints (stable across key rotations)")
    refresh_worker: bool = Field(True, description="run the proactive refresh worker in this process")
    oauth_timeout_seconds: float = Field(10.0, gt=0, le=120, description="timeout of every call to a provider")
    clock_rate: float = Field(1.0, gt=0, le=10000, description="tests and benchmarks only: run time this many times as fast")
    clock_epoch: float | None = Field(None, description="tests and benchmarks only: Unix time at which the fast clock equals real time")
    relay: bool = Field(True, description="run the relay that publishes the log to NATS JetStream in this process")
    nats_stream: str = Field("LINKLEDGER", description="the JetStream stream events are published to")
    nats_subject_prefix: str = Field("linkledger", description="first token of every subject published")
    webhook_dispatcher: bool = Field(True, description="run the webhook dispatcher in this process")
    pool_size: int = Field(20, ge=2, le=500, description="PostgreSQL connections per process")
    preview_concurrency: int = Field(2, ge=1, le=64, description="mapping previews evaluated at once (each in a child process)")
    import_workers: int = Field(2, ge=0, le=64, description="processes that prepare the new accounts of large bulk imports"
                                " (0: the serving process prepares them itself)")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must start with postgresql:// or postgres://")
        hosts = value.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0].rpartition("@")[2]
        for host in filter(None, hosts.split(",")):
            port = host.rpartition("]")[2].rpartition(":")[2] if ":" in host.rpartition("]")[2] else ""
            if port and not (port.isdigit() and 1 <= int(port) <= 65535):
                raise ValueError(f"port {port!r} is not a number from 1 to 65535")
        return value

    @field_validator("nats_url")
    @classmethod
    def _nats_url(cls, value: str | None) -> str | None:
        if value is not None and not all(part.strip().startswith(("nats://", "tls://")) for part in value.split(",")):
            raise ValueError("must be nats://host:port (comma-separated for a cluster)")
        return value

    @field_validator("ledger_signing_key")
    @classmethod
    def _signing_key(cls, value: str | None) -> str | None:
        if value:
            from events.integrity import load_signing_key

            load_signing_key(value)
        return value or None

    @field_validator("ledger_public_key")
    @classmethod
    def _public_key(cls, value: str | None) -> str | None:
        if value:
            from events.integrity import load_public_key

            load_public_key(value)
        return value or None

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return value.upper()


def load_settings(*, require: tuple[str, ...] = (), **overrides) -> Settings:
    """Read the environment (overrides win); raise ConfigError naming the first bad setting."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = ENV_PREFIX + str(error["loc"][0]).upper() if error["loc"] else "settings"
        message = error["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{name}: {message}") from None
    for name in require:
        if getattr(settings, name) in (None, ""):
            field = Settings.model_fields[name]
            raise ConfigError(f"{ENV_PREFIX}{name.upper()} is not set ({field.description})")
    return settings
