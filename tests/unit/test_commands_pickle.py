"""Import commands cross to import worker processes pickled: they must arrive as they left."""

import pickle
from datetime import datetime, timezone

import pytest

from service.domain.commands import Credentials, ImportAccount


@pytest.mark.parametrize("credentials", [
    {"access_token": "at-1", "refresh_token": "rt-1", "extra": {"token_secret": "ts-1", "id_token": "it-1"}},
    {"api_key": "key-1"},
    {"username": "ana", "password": "pw-1"},
])
def test_an_import_command_survives_pickling(credentials):
    command = ImportAccount(
        environment="prod", integration="crm", tenant_id="t-1", authentication_method="oauth2",
        external_ref="ref-1", credentials=Credentials(**credentials), token_type="Bearer",
        expires_at=datetime(2026, 12, 15, 14, 30, tzinfo=timezone.utc), scopes=("api", "refresh_token"),
        context={"instance_url": "https://acme.example.com", "nested": {"a": [1, 2]}}, source="import:truto",
    )
    copy = pickle.loads(pickle.dumps(command, protocol=pickle.HIGHEST_PROTOCOL))
    assert copy == command
    assert copy.credentials.plaintext() == command.credentials.plaintext()
    assert copy.model_dump() == command.model_dump()
    assert type(copy.credentials.extra.get("token_secret", None)) is type(command.credentials.extra.get("token_secret", None))
