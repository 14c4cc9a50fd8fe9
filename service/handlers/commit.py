"""The one way a handler changes an aggregate: load, decide, append at the loaded version (the
optimistic fence), and on a conflict load and decide again."""

from datetime import datetime
from typing import Any, Awaitable, Callable, TypeVar

from events.catalog.base import Event
from events.envelope import NewEvent
from events.errors import ConcurrencyError
from service.handlers.uow import UnitOfWork, snapshot_json

State = TypeVar("State")
ATTEMPTS = 10


async def decide_and_append(
    uow: UnitOfWork,
    stream: str,
    *,
    load: Callable[[], Awaitable[State]],
    decide: Callable[[State, datetime], list[Event]],
    evolve: Callable[[State, Event], State],
    encode: Callable[[list[Event], datetime], list[NewEvent]] | None = None,
    initial: State | None = None,
    decided: tuple[datetime, list[Event]] | None = None,
    attempts: int = ATTEMPTS,
) -> tuple[State, list[Event]]:
    """Returns the new state and the events appended ([] when the decision changed nothing).

    `encode` turns the events into what is appended (e.g. with an encrypted secret); by default each
    event as is. `initial` is a state the caller has just loaded, used for the first attempt;
    `decided` is (now, events), the caller's own decision on `initial`, so it is not made twice.
    """
    state: Any = initial
    for attempt in range(attempts):
        if state is None:
            state = await load()
        if decided is not None and attempt == 0 and initial is not None:
            now, events = decided
        else:
            now = uow.clock()
            events = decide(state, now)
        if not events:
            return state, []
        new_state = state
        for event in events:
            new_state = evolve(new_state, event)
        appended = encode(events, now) if encode else [uow.new_event(e, now) for e in events]
        try:
            await uow.store.append(stream, appended, state.version, snapshot=snapshot_json(new_state))
        except ConcurrencyError:
            state = None
            continue
        return new_state, events
    raise ConcurrencyError(stream, getattr(state, "version", -1), -1)
