"""Which account a record is: its identity in the system it came from, within an environment.

Account ids are derived from that identity (UUIDv5), so importing the same account twice, even
from two replicas at once, lands on the same stream, and the stream's version check makes the
second import an update instead of a second account.
"""

import functools
import uuid

from events.envelope import uuid5, uuid_text
from service.domain.commands import ImportAccount

_NAMESPACE = uuid.UUID("6f1c1d3e-1b7a-5c55-9a4e-6c696e6b6c65")


def account_identity(environment: str, integration: str, tenant_id: str, external_ref: str | None) -> str:
    """external_ref when the source has one; otherwise one account per tenant and integration."""
    if external_ref:
        return f"{environment}\x1fref\x1f{external_ref}"
    return f"{environment}\x1ftenant\x1f{integration}\x1f{tenant_id}"


def account_id_for(command: ImportAccount) -> uuid.UUID:
    return _account_id(account_identity(command.environment, command.integration, command.tenant_id, command.external_ref))


@functools.lru_cache(maxsize=4096)  # an import asks several times for the same account's id
def _account_id(identity: str) -> uuid.UUID:
    return uuid5(_NAMESPACE, identity)


def account_stream(account_id: uuid.UUID) -> str:
    return f"account-{uuid_text(account_id)}"


def integration_stream(environment: str, name: str) -> str:
    return f"integration-{environment}-{name}"


def environment_stream(environment: str) -> str:
    return f"environment-{environment}"
