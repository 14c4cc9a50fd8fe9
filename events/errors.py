"""Errors raised by the event log. Callers map them to API problems or CLI messages."""


class EventStoreError(Exception):
    """Base class for every error the event log raises on purpose."""


class ConcurrencyError(EventStoreError):
    """The stream was not at the expected version: someone else appended first."""

    def __init__(self, stream_id: str, expected_version: int, actual_version: int):
        super().__init__(
            f"stream {stream_id!r} is at version {actual_version}, expected {expected_version}"
        )
        self.stream_id = stream_id
        self.expected_version = expected_version
        self.actual_version = actual_version


class InvalidEventError(EventStoreError, ValueError):
    """An event cannot be stored as given (bad payload, empty batch, mixed duplicates...)."""


class AppendOrderError(EventStoreError):
    """An append was not the first write of its transaction (DESIGN invariant 2)."""


class RetryableAppendError(EventStoreError):
    """This transaction got its id before the stream's previous writer: retry in a new transaction."""
