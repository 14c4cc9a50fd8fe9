"""What the API shows of an account or an integration: never a secret, at most a fingerprint."""

from typing import Any

from service.domain.account import AccountState
from service.domain.integration import IntegrationState


def account_view(state: AccountState) -> dict[str, Any]:
    data = state.model_dump(mode="json")
    data["id"] = data.pop("account_id")
    return data


def stored_account_view(payload: dict[str, Any]) -> dict[str, Any]:
    """The same view from a projected (already JSON) account."""
    data = dict(payload)
    data["id"] = data.pop("account_id")
    return data


def integration_view(state: IntegrationState) -> dict[str, Any]:
    return state.model_dump(mode="json")
