"""Environment events: stream `environment-<env>`."""

from typing import ClassVar
from uuid import UUID

from pydantic import Field

from events.catalog.base import Event, Instant, JsonObject


class EnvironmentEvent(Event):
    family: ClassVar[str] = "environment"


class EnvironmentOverrideChanged(EnvironmentEvent):
    """The environment-level override changed by a JSON Merge Patch (RFC 7396), composed onto the
    override keeping its nulls; a roll-back gives the whole restored override as `document`."""

    type: ClassVar[str] = "EnvironmentOverrideChanged"

    environment: str
    merge_patch: JsonObject
    resulting_hash: str  # hash of the environment override after the patch
    restored_version: int | None = Field(default=None, ge=0)  # set by a roll-back: the version restored
    document: JsonObject | None = None  # set by a roll-back: the override restored, replacing the last


class WebhookEndpointDisabled(EnvironmentEvent):
    """A webhook endpoint kept failing for the whole retry period and was disabled."""

    type: ClassVar[str] = "WebhookEndpointDisabled"

    environment: str
    endpoint_id: UUID
    host: str  # the endpoint URL's host only: a URL may carry credentials in its path or query
    reason: str
    failing_since: Instant
