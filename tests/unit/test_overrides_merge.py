"""Merging override levels (RFC 7396 across integration -> environment -> account), provenance,
the roll-back patch, and the environment aggregate. Pure: no I/O."""

import uuid
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.domain import account as account_domain
from service.domain import environment as environment_domain
from service.domain.account import AccountState
from service.domain.environment import EnvironmentState
from service.domain.errors import AccountIsDeleted, InvalidContext
from service.domain.overrides import (
    compose_patches,
    diff_patch,
    document_hash,
    effective_method_config,
    environment_layer,
    merge_levels,
    merge_patch,
    removed_method_fields,
)

NOW = datetime(2026, 10, 15, 14, 30, tzinfo=timezone.utc)


def _three(base, env, account, **where):
    return effective_method_config(
        integration_config={"unified_model": {"crm": {"contacts": {"list": base}}}},
        environment_override={"unified_model_override": {"crm": {"contacts": {"list": env}}}},
        account_override={"unified_model_override": {"crm": {"contacts": {"list": account}}}},
        integration="salesforce", model="crm", resource="contacts", method="list", **where,
    )


def test_nested_objects_merge_across_three_levels():
    config, provenance = _three(
        {"resource": "contacts", "options": {"page": {"size": 100, "cursor": "next"}, "fields": "all"}},
        {"options": {"page": {"size": 50}}},
        {"options": {"page": {"cursor": "after"}, "extra": {"a": 1}}},
    )
    assert config == {"resource": "contacts", "options": {"page": {"size": 50, "cursor": "after"}, "fields": "all",
                                                          "extra": {"a": 1}}}
    assert provenance == {"resource": "integration", "options.fields": "integration", "options.page.size": "environment",
                          "options.page.cursor": "account", "options.extra.a": "account"}


def test_arrays_replace_whole_at_each_level():
    before_env = [{"name": "describe", "type": "request"}]
    before_account = [{"name": "picklist", "type": "request"}, {"name": "owner", "type": "request"}]
    config, provenance = _three({"before": [{"name": "base"}], "after": [1, 2]}, {"before": before_env},
                                {"before": before_account})
    assert config == {"before": before_account, "after": [1, 2]}
    assert provenance == {"before": "account", "after": "integration"}
    config, _ = _three({"before": [{"name": "base"}]}, {"before": before_env}, {})
    assert config["before"] == before_env


def test_scalars_replace_and_the_highest_level_wins():
    config, provenance = _three({"resource": "a", "method": "get"}, {"resource": "b"}, {"resource": "c"})
    assert config == {"resource": "c", "method": "get"}
    assert provenance == {"resource": "account", "method": "integration"}
    # A scalar replacing an object, and an object replacing a scalar.
    config, provenance = _three({"options": {"x": 1}}, {"options": "none"}, {})
    assert config == {"options": "none"} and provenance == {"options": "environment"}
    config, provenance = _three({"options": "none"}, {}, {"options": {"x": 1}})
    assert config == {"options": {"x": 1}} and provenance == {"options.x": "account"}


def test_null_deletes_what_a_lower_level_set():
    config, provenance = _three({"resource": "a", "query_mapping": "q", "options": {"x": 1, "y": 2}},
                                {"query_mapping": None, "options": {"x": None}}, {"options": None, "z": 3})
    assert config == {"resource": "a", "z": 3}
    assert provenance == {"resource": "integration", "z": "account"}
    # Deleted in the environment, set again by the account.
    config, provenance = _three({"resource": "a"}, {"resource": None}, {"resource": "b"})
    assert config == {"resource": "b"} and provenance == {"resource": "account"}


def test_a_method_no_level_configures_is_none():
    assert _three(None, None, None) == (None, {})
    config, _ = effective_method_config(integration_config={}, environment_override={}, account_override={},
                                        integration="x", model="crm", resource="contacts", method="list")
    assert config is None


def test_an_environments_per_integration_section_applies_to_that_integration_only():
    override = {"unified_model_override": {"crm": {"contacts": {"list": {"resource": "general", "method": "get"}}}},
                "integrations": {"hubspot": {"unified_model_override": {"crm": {"contacts": {"list": {"resource": "hs"}}}}}}}
    assert environment_layer(override, "hubspot")["unified_model_override"]["crm"]["contacts"]["list"] == {
        "resource": "hs", "method": "get"}
    assert environment_layer(override, "salesforce")["unified_model_override"]["crm"]["contacts"]["list"] == {
        "resource": "general", "method": "get"}


def test_rfc_7396_appendix_a_examples():
    cases = [
        ({"a": "b"}, {"a": "c"}, {"a": "c"}), ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}), ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}), ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}), (["a", "b"], ["c", "d"], ["c", "d"]),
        ({"a": "b"}, ["c"], ["c"]), ({"a": "foo"}, None, None), ({"a": "foo"}, "bar", "bar"),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}), ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ]
    for target, patch, expected in cases:
        assert merge_patch(target, patch) == expected, (target, patch)


def test_document_hash_is_stable_and_order_free():
    assert document_hash({"a": 1, "b": {"c": [1, 2]}}) == document_hash({"b": {"c": [1, 2]}, "a": 1})
    assert document_hash({}) != document_hash({"a": None})


# --------------------------------------------------------------------------- properties

_keys = st.sampled_from(["a", "b", "c", "resource", "response_mapping"])
_scalars = st.one_of(st.integers(-5, 5), st.text(max_size=3), st.booleans())
_values = st.recursive(_scalars | st.lists(_scalars, max_size=3),
                       lambda inner: st.dictionaries(_keys, inner, max_size=4), max_leaves=12)
_documents = st.dictionaries(_keys, _values, max_size=4)  # null-free: what a level stores
_patches = st.recursive(st.none() | _scalars | st.lists(_scalars, max_size=3),
                        lambda inner: st.dictionaries(_keys, inner, max_size=4), max_leaves=12)


def _leaves(value, prefix=""):
    if isinstance(value, dict) and value:
        out = {}
        for key, item in value.items():
            out.update(_leaves(item, f"{prefix}.{key}" if prefix else key))
        return out
    return {prefix: value} if prefix else {}


def _lookup(document, path):
    for key in path.split("."):
        document = document[key]
    return document


@settings(max_examples=300, deadline=None)
@given(_documents, _documents)
def test_diff_patch_turns_one_document_into_the_other(current, target):
    assert merge_patch(current, diff_patch(current, target)) == target


@settings(max_examples=300, deadline=None)
@given(_documents, _patches, _patches)
def test_merging_levels_equals_patching_in_order_and_each_leaf_names_the_highest_level_that_set_it(base, env, account):
    env = env if isinstance(env, dict) else {}
    account = account if isinstance(account, dict) else {}
    merged, provenance = merge_levels([("integration", base), ("environment", env), ("account", account)])
    assert merged == merge_patch(merge_patch(base, env), account)
    assert set(provenance) == set(_leaves(merged))
    for path, level in provenance.items():
        layer = {"integration": base, "environment": env, "account": account}[level]
        # The value really comes from that level (as a patch: its nulls deleted).
        assert merge_patch(None, _lookup(layer, path)) == _lookup(merged, path)
        higher = {"integration": (env, account), "environment": (account,), "account": ()}[level]
        for above in higher:  # and no level above it touched that leaf
            try:
                _lookup(above, path)
            except (KeyError, TypeError):
                continue
            raise AssertionError(f"{path} is set above {level}")


@settings(max_examples=200, deadline=None)
@given(_documents, _patches)
def test_patching_is_idempotent(document, patch):
    once = merge_patch(document, patch)
    assert merge_patch(once, patch) == once


def test_environment_override_changes_fold_and_unchanged_patches_append_nothing():
    state = EnvironmentState.blank("prod")
    patch = {"unified_model_override": {"crm": {"contacts": {"list": {"response_mapping": "response"}}}}}
    events = environment_domain.change_override(state, patch, document_hash(patch), NOW)
    assert len(events) == 1 and events[0].environment == "prod" and events[0].merge_patch == patch
    state = environment_domain.evolve(state, events[0])
    assert (state.version, state.override, state.override_hash) == (1, patch, document_hash(patch))
    assert environment_domain.change_override(state, patch, document_hash(patch), NOW) == []
    restore = diff_patch(state.override, {})
    events = environment_domain.change_override(state, restore, document_hash({}), NOW, restored_version=0, document={})
    state = environment_domain.evolve(state, events[0])
    assert state.override == {} and events[0].restored_version == 0 and state.version == 2


def test_account_override_and_context_changes_fold_with_their_versions():
    state = AccountState(account_id=uuid.uuid4(), version=4, status="active", environment="prod",
                         integration="salesforce", context={"instance_url": "https://a.example", "region": "us"})
    patch = {"unified_model_override": {"crm": {"contacts": {"list": {"resource": "business_contacts"}}}}}
    events = account_domain.change_override(state, patch, document_hash(patch), NOW, restored_version=None)
    events += account_domain.change_context(state, {"region": "eu", "instance_url": None},
                                            document_hash({"region": "eu"}), NOW)
    assert [e.type for e in events] == ["AccountOverrideChanged", "AccountContextChanged"]
    state = account_domain.fold(state, events)
    assert (state.version, state.override_version, state.override) == (6, 5, patch)
    assert state.context == {"region": "eu"}
    assert account_domain.change_context(state, {"region": "eu"}, document_hash({"region": "eu"}), NOW) == []
    with pytest.raises(InvalidContext) as refused:
        account_domain.change_context(state, {"auth": {"password": "hunter2"}}, "h", NOW)
    assert refused.value.field == "context.auth.password" and "hunter2" not in str(refused.value)
    deleted = state.model_copy(update={"status": "deleted"})
    with pytest.raises(AccountIsDeleted):
        account_domain.change_override(deleted, {"x": 1}, document_hash({"x": 1}), NOW)


def _environment_changed(state: EnvironmentState, patch: dict, **roll_back) -> EnvironmentState:
    """The environment after a change, decided and folded as the handler does."""
    result = roll_back.get("document", compose_patches(state.override, patch))
    events = environment_domain.change_override(state, patch, document_hash(result), NOW, **roll_back)
    for event in events:
        state = environment_domain.evolve(state, event)
    return state


def _account_changed(state: AccountState, patch: dict) -> AccountState:
    events = account_domain.change_override(state, patch, document_hash(compose_patches(state.override, patch)), NOW)
    return account_domain.fold(state, events)


def test_a_null_in_a_levels_change_deletes_that_field_of_the_levels_below_until_rolled_back():
    base = {"unified_model": {"crm": {"contacts": {"list": {
        "resource": "contacts", "query_mapping": "q", "response_mapping": "r", "options": {"page": 100}}}}}}
    environment = EnvironmentState.blank("prod")
    account = AccountState(account_id=uuid.uuid4(), version=1, status="active", environment="prod", integration="salesforce")

    def effective():
        where = dict(integration_config=base, environment_override=environment.override,
                     account_override=account.override, integration="salesforce",
                     model="crm", resource="contacts", method="list")
        return (*effective_method_config(**where), removed_method_fields(**where))

    environment = _environment_changed(environment, {"unified_model_override": {"crm": {"contacts": {"list": {
        "query_mapping": None}}}}})
    account = _account_changed(account, {"unified_model_override": {"crm": {"contacts": {"list": {
        "options": None, "response_mapping": "mine"}}}}})
    config, provenance, removed = effective()
    assert config == {"resource": "contacts", "response_mapping": "mine"}
    assert provenance == {"resource": "integration", "response_mapping": "account"}
    assert removed == {"query_mapping": "environment", "options": "account"}

    # Later changes of the level keep the null they do not mention; a value set above wins over it.
    environment = _environment_changed(environment, {"unified_model_override": {"crm": {"contacts": {"list": {
        "method": "get"}}}}})
    assert environment.override["unified_model_override"]["crm"]["contacts"]["list"] == {
        "query_mapping": None, "method": "get"}
    account = _account_changed(account, {"unified_model_override": {"crm": {"contacts": {"list": {
        "query_mapping": "q2"}}}}})
    config, provenance, removed = effective()
    assert config["query_mapping"] == "q2" and provenance["query_mapping"] == "account"
    assert removed == {"options": "account"}

    # A level deleting all above the method: only what the levels above it set is left.
    environment = _environment_changed(environment, {"unified_model_override": {"crm": {"contacts": None}}})
    config, provenance, _ = effective()
    assert config == {"response_mapping": "mine", "query_mapping": "q2"} and set(provenance.values()) == {"account"}

    # Rolling the environment back to no override removes its nulls: the base shows again.
    environment = _environment_changed(environment, diff_patch(environment.override, {}), restored_version=0,
                                       document={})
    assert environment.override == {}
    config, provenance, removed = effective()
    assert config == {"resource": "contacts", "query_mapping": "q2", "response_mapping": "mine"}
    assert removed == {"options": "account"}
