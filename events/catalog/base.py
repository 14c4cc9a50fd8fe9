"""The event base class, the catalog registry, and the encoding of events to stored payloads.

An event is a frozen pydantic model named in the past tense. Its `type` and `schema_version` are
class attributes, not payload fields: the log stores them in their own columns. Payloads are
secret-free and canonical-JSON safe: times are ISO-8601 UTC strings ending in "Z" (microseconds,
as events.hashing.format_instant writes them), durations are integers, and free-form objects may
not hold floats. Token identity appears only as fingerprints ("fp_..."); ciphertext travels beside
the payload in the store's `secret` column.
"""

from datetime import datetime, timezone
from typing import Annotated, Any, Callable, ClassVar, TypeVar

import orjson
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, PlainSerializer, StringConstraints, WithJsonSchema

from events.canonical import CanonicalJson, canonical_json, typed_json, within_limit
from events.hashing import format_instant


class CatalogError(ValueError):
    """An event type or schema version the catalog does not know."""


def _to_utc(value: datetime) -> datetime:
    return value if value.tzinfo is timezone.utc else value.astimezone(timezone.utc)


def _json_exact(value: dict[str, Any]) -> dict[str, Any]:
    canonical_json(value, what="object")  # raises InvalidEventError (a ValueError) naming the path
    return value


# An aware instant, normalised to UTC, written as "2026-10-15T14:30:00.000000Z".
Instant = Annotated[
    AwareDatetime,
    AfterValidator(_to_utc),
    PlainSerializer(format_instant, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
# A free-form JSON object that canonical JSON can hold exactly (no floats, string keys).
JsonObject = Annotated[dict[str, Any], AfterValidator(_json_exact)]
# An HMAC fingerprint of a secret, never the secret.
Fingerprint = Annotated[str, StringConstraints(pattern=r"^fp_[A-Za-z0-9_-]{8,128}$")]
Fingerprints = dict[str, Fingerprint]

_REGISTRY: dict[str, type["Event"]] = {}
# (type, from_version) -> function turning a payload of from_version into one of from_version + 1
_UPCASTERS: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {}


class Event(BaseModel):
    """Base of every event. Subclasses that set `type` are registered in the catalog."""

    # hide_input_in_errors: a validation error must never echo a value that might be a secret.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    type: ClassVar[str]
    schema_version: ClassVar[int] = 1
    family: ClassVar[str] = ""  # "account", "integration", "environment": the stream it lives in

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "type" not in cls.__dict__:
            return  # an abstract family base
        existing = _REGISTRY.get(cls.type)
        if existing is not None and existing is not cls:
            raise TypeError(f"event type {cls.type!r} is already registered by {existing.__qualname__}")
        if not isinstance(cls.schema_version, int) or cls.schema_version < 1:
            raise TypeError(f"{cls.__qualname__}.schema_version must be a positive int")
        _REGISTRY[cls.type] = cls

    @classmethod
    def from_checked(cls, **fields: Any) -> "Event":
        """The event from values its maker has checked already, every field given, instants in
        UTC: built without validating them a second time. For the domain's busiest decision (an
        import makes three events per account out of a validated command, and pydantic's checks
        would repeat the command's); everything else builds events the validating way, cls(...).
        The catalog's round-trip tests hold both ways to the same events."""
        if fields.keys() != cls.__pydantic_fields__.keys():  # model_fields, without its descriptor's Python call
            missing, extra = cls.model_fields.keys() - fields.keys(), fields.keys() - cls.model_fields.keys()
            raise TypeError(f"{cls.__name__}.from_checked needs every field: missing {sorted(missing)}, unknown {sorted(extra)}")
        return assembled(cls, fields)


_new_object = object.__new__
_set_attribute = object.__setattr__
_Model = TypeVar("_Model", bound=BaseModel)


def assembled(cls: type[_Model], fields: dict[str, Any], fields_set: set[str] | None = None) -> _Model:
    """An instance of the pydantic model `cls` holding `fields` (all of its fields, values already
    valid), made without validating: what model_construct makes, without its walk over the fields
    for defaults and aliases. For the hottest paths only (states folded, commands rebuilt, events
    of checked values), where that walk was a measurable part of each account's cost."""
    made = _new_object(cls)
    _set_attribute(made, "__dict__", fields)
    _set_fields_set(made, set(fields) if fields_set is None else fields_set)
    _set_extra(made, None)
    _set_private(made, None)
    return made


# BaseModel's slots, set through their descriptors: object.__setattr__ would look each one up by
# name first (a third of assembled()'s cost).
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__


def register_upcaster(type: str, from_version: int) -> Callable[[Callable[[dict[str, Any]], dict[str, Any]]], Callable[[dict[str, Any]], dict[str, Any]]]:
    """Register a function that turns a stored payload of `from_version` into `from_version + 1`."""

    def wrap(function: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[[dict[str, Any]], dict[str, Any]]:
        _UPCASTERS[(type, from_version)] = function
        return function

    return wrap


def encode(event: Event) -> dict[str, Any]:
    """The event's stored payload: JSON types only, times as ISO-8601 UTC strings with "Z"."""
    return event.model_dump(mode="json")


def encode_json(event: Event) -> CanonicalJson:
    """The stored payload as the canonical text the store writes, encoded once: every field is
    typed and free-form objects were checked when the event was built.

    Encoded from the fields as they are, with instants written as format_instant writes them:
    the text of encode(), without building its dict first (an import encodes three events per
    account). Anything orjson does not take that way goes through encode()."""
    try:
        encoded = orjson.dumps(event.__dict__, option=_FIELDS_AS_THEY_ARE, default=instant_text)
    except (TypeError, orjson.JSONEncodeError):
        return typed_json(event.model_dump(mode="json"), what=f"{event.type}.data")
    return within_limit(encoded, f"{event.type}.data")


_FIELDS_AS_THEY_ARE = orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME


def instant_text(value: Any) -> str:
    """orjson's hook for the datetimes of a model's fields (Instants): written as format_instant
    writes them. Anything else, and a naive datetime, makes orjson refuse the whole value."""
    if isinstance(value, datetime):
        return format_instant(value)
    raise TypeError(f"{type(value).__name__} is not encoded here")


def event_class(type: str) -> type[Event]:
    _load_families()
    try:
        return _REGISTRY[type]
    except KeyError:
        raise CatalogError(f"unknown event type {type!r}") from None


def decode(type: str, schema_version: int, data: dict[str, Any]) -> Event:
    """Rebuild an event from its stored type, schema version and payload (upcasting old versions)."""
    cls = event_class(type)
    if schema_version > cls.schema_version or schema_version < 1:
        raise CatalogError(f"{type} has no schema version {schema_version} (current {cls.schema_version})")
    for version in range(schema_version, cls.schema_version):
        upcaster = _UPCASTERS.get((type, version))
        if upcaster is None:
            raise CatalogError(f"no upcaster for {type} from schema version {version}")
        data = upcaster(data)
    return cls.model_validate(data)


def catalog() -> list[type[Event]]:
    """Every registered event class, by family then type name."""
    _load_families()
    return sorted(_REGISTRY.values(), key=lambda cls: (cls.family, cls.type))


def schemas() -> list[dict[str, Any]]:
    """What `linkledger events catalog` prints: each type with its version, family and JSON Schema."""
    return [
        {
            "type": cls.type,
            "schema_version": cls.schema_version,
            "family": cls.family,
            "description": (cls.__doc__ or "").strip(),
            "schema": cls.model_json_schema(mode="serialization"),
        }
        for cls in catalog()
    ]


def _load_families() -> None:
    # Importing the family modules registers their classes; done lazily to avoid an import cycle.
    import events.catalog.account  # noqa: F401
    import events.catalog.environment  # noqa: F401
    import events.catalog.integration  # noqa: F401
