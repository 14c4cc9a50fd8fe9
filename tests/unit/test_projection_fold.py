"""The projections' own account fold (plain dicts, no service import) against the domain's fold, and
state "as of" an instant against the fold of the stream up to that instant."""

import json
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events.canonical import canonical_json
from events.catalog.base import encode
from projections import account_fold
from service.domain import account as domain
from service.domain.account import AccountState
from service.domain.errors import DomainError
from tests.unit.test_account_domain import ACCOUNT_ID, DATA_KEY, T0, fingerprints_of, steps

PATCHES = [{"unified_model_override": {"crm": {"contacts": {"list": {"response_mapping": "$.records"}}}}},
           {"unified_model_override": {"crm": {"contacts": None}}}, {"label": "eu"}, {"label": None},
           {"context": {"instance_url": "https://eu.example.com"}}, {"context": {"instance_url": None}},
           {"restore": {"label": "us"}}]  # a roll-back: the whole document replaced


def _stored(event) -> dict:
    """The payload as the log stores it and hands it back."""
    return json.loads(canonical_json(encode(event)))


def _run(step_list, threshold, overrides):
    """Decide every step against the domain; returns [(occurred_at, event)] in stream order."""
    state, log, now = AccountState.blank(ACCOUNT_ID), [], None
    for index, (command, integration, seconds) in enumerate(step_list):
        now = (now or T0) + timedelta(seconds=seconds)
        context = {"integration": integration, "refresh_unavailable_after": threshold, "data_key_id": DATA_KEY}
        if getattr(command, "credentials", None) is not None:
            context["fingerprints"] = fingerprints_of(command.credentials)
        patch = overrides[index % len(overrides)] if overrides else None
        try:
            if patch is not None and state.exists and state.status != "deleted" and "context" in patch:
                resulting = canonical_json(domain.merge_patch(state.context, patch["context"]))
                events = domain.change_context(state, patch["context"], resulting, now)
            elif patch is not None and state.exists and state.status != "deleted" and "restore" in patch:
                document = patch["restore"]
                events = domain.change_override(state, {}, canonical_json(document), now, restored_version=1,
                                                document=document)
            elif patch is not None and state.exists and state.status != "deleted":  # an override change instead
                resulting = canonical_json(domain.merge_patch(state.override, patch))
                events = domain.change_override(state, patch, resulting, now)
            else:
                events = domain.decide(state, command, now, **context)
        except DomainError:
            continue
        for event in events:
            state = domain.evolve(state, event)
            log.append((now, event))
    return log


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(step_list=steps, threshold=st.integers(1, 4),
       overrides=st.lists(st.sampled_from([None, None, *PATCHES]), max_size=6))
def test_state_as_of_each_event_equals_the_fold_up_to_it(step_list, threshold, overrides):
    log = _run(step_list, threshold, overrides)
    stored = [(at, event.type, _stored(event)) for at, event in log]
    expected, plain = AccountState.blank(ACCOUNT_ID), account_fold.blank(str(ACCOUNT_ID))
    for index, (at, event) in enumerate(log):
        expected = domain.evolve(expected, event)
        plain = account_fold.evolve(plain, event.type, stored[index][2])
        assert plain == expected.model_dump(mode="json")
        # As of this event's time: everything that happened at or before it, nothing after.
        last = max(i for i, (when, _) in enumerate(log) if when <= at)
        through = AccountState.blank(ACCOUNT_ID)
        for _, earlier in log[: last + 1]:
            through = domain.evolve(through, earlier)
        assert account_fold.as_of(str(ACCOUNT_ID), stored, at) == through.model_dump(mode="json")
    if log:
        assert account_fold.as_of(str(ACCOUNT_ID), stored, log[0][0] - timedelta(microseconds=1)) is None
