"""Override documents and how the three levels merge: pure, no I/O.

Levels, lowest first: the integration's base (`config.unified_model`, the rest of `config`), the
environment override, the account override. Each level above the base is a JSON Merge Patch
(RFC 7396) over the one below: objects merge deeply, arrays and scalars replace, null deletes.
Method configurations live under model -> resource -> method.

A level's stored document is itself a merge patch: changes to it are composed (`compose_patches`),
so a null it was given stays in it and deletes that field of the levels below whenever the
configuration is merged. Only replacing the document (a roll-back) removes such a null again.
"""

import hashlib
from typing import Any, Literal

from events.canonical import canonical_json
from events.merge_patch import compose_patches, merge_patch

Level = Literal["integration", "environment", "account"]

# The keys of an override document (environment and account level).
UNIFIED_MODEL_OVERRIDE = "unified_model_override"
INTEGRATION_OVERRIDE = "integration_override"
# Inside an environment override: sections that apply to one integration only.
PER_INTEGRATION = "integrations"
# Inside an integration's config: the base unified model mappings.
UNIFIED_MODEL = "unified_model"


def overridden(document: dict[str, Any], change: Any) -> dict[str, Any]:
    """A level's document after an override change event: its `document` for a roll-back, else
    its `merge_patch` composed on."""
    return change.document if change.document is not None else compose_patches(document, change.merge_patch)


def diff_patch(current: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
    """The merge patch that turns `current` into `target` (both null-free documents):
    merge_patch(current, diff_patch(current, target)) == target. For documents holding nulls it
    only describes the change (a null there may mean "no longer deleted"): a roll-back records the
    restored document itself."""
    patch: dict[str, Any] = {key: None for key in current if key not in target}
    for key, wanted in target.items():
        have = current.get(key)
        if isinstance(wanted, dict) and isinstance(have, dict):
            inner = diff_patch(have, wanted)
            if inner:
                patch[key] = inner
        elif key not in current or have != wanted:
            # A dict replacing a non-dict is merged onto nothing, which gives it back unchanged.
            patch[key] = wanted
    return patch


def document_hash(document: dict[str, Any]) -> str:
    """What an override change records as its resulting configuration: SHA-256 of canonical JSON."""
    return "sha256:" + hashlib.sha256(canonical_json(document, what="override").encode()).hexdigest()


def environment_layer(environment_override: dict[str, Any], integration: str) -> dict[str, Any]:
    """An environment override as it applies to one integration: its general part with the
    integration's own section (`integrations.<name>`) merged on top."""
    general = {k: v for k, v in environment_override.items() if k != PER_INTEGRATION}
    sections = environment_override.get(PER_INTEGRATION)
    own = sections.get(integration) if isinstance(sections, dict) else None
    return compose_patches(general, own) if isinstance(own, dict) else general


def merge_levels(layers: list[tuple[Level, Any]]) -> tuple[Any, dict[str, Level]]:
    """Merge each layer onto the ones before it (a None layer deletes everything below it; leave
    out a level that says nothing); returns the result and, for every leaf of the result (an
    object path whose value is not an object, dotted), the level that set it."""
    result: Any = None
    provenance: dict[str, Level] = {}
    for level, layer in layers:
        result = merge_patch(result, layer)
        if not isinstance(layer, dict):
            provenance.clear()  # the whole value replaced (or deleted) at this level
        _record_provenance(layer, level, "", provenance)
    leaves = set(_leaf_paths(result, ""))
    return result, {path: level for path, level in sorted(provenance.items()) if path in leaves}


def _record_provenance(patch: Any, level: Level, prefix: str, provenance: dict[str, Level]) -> None:
    if not isinstance(patch, dict):
        provenance[prefix] = level
        return
    for key, value in patch.items():
        path = f"{prefix}.{key}" if prefix else key
        if value is None or not isinstance(value, dict):
            # Replacing (or deleting) a subtree: nothing below it comes from a lower level now.
            for stale in [p for p in provenance if p.startswith(path + ".")]:
                del provenance[stale]
            if value is None:
                provenance.pop(path, None)
            else:
                provenance[path] = level
        else:
            provenance.pop(path, None)  # now an object: its leaves carry the levels
            _record_provenance(value, level, path, provenance)
            if not any(p.startswith(path + ".") for p in provenance):
                provenance[path] = level  # an empty object is a leaf of its own


def removals(layers: list[tuple[Level, Any]]) -> dict[str, Level]:
    """Which level's null deleted each path (dotted) that a level below had set, for the paths
    that no level above it touched again."""
    below: Any = None
    removed: dict[str, Level] = {}
    for level, layer in layers:
        for path, value in _patch_leaves(layer, ""):
            for stale in [p for p in removed if _related(p, path)]:
                del removed[stale]
            if value is None and path and _holds(below, path):
                removed[path] = level
        below = merge_patch(below, layer)
    return dict(sorted(removed.items()))


def _patch_leaves(patch: Any, prefix: str):
    """(path, value) of what a patch sets or deletes: its values that are not objects."""
    if isinstance(patch, dict):
        for key, value in patch.items():
            yield from _patch_leaves(value, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix, patch


def _related(one: str, other: str) -> bool:
    """One path is the other, or lies above or below it."""
    return one == other or not one or not other or one.startswith(other + ".") or other.startswith(one + ".")


def _holds(document: Any, path: str) -> bool:
    for key in path.split("."):
        if not isinstance(document, dict) or key not in document:
            return False
        document = document[key]
    return True


def _leaf_paths(value: Any, prefix: str):
    if isinstance(value, dict) and (value or not prefix):
        for key, item in value.items():
            yield from _leaf_paths(item, f"{prefix}.{key}" if prefix else key)
    elif prefix:
        yield prefix


_SILENT = object()  # a level that says nothing about a path


def _method_layer(unified_model: Any, model: str, resource: str, method: str) -> Any:
    """What one level's unified model does to model/resource/method, as a merge patch of the
    method's configuration: _SILENT, or a patch (None when it deletes or replaces the method
    configuration or anything above it)."""
    if unified_model is _SILENT:
        return _SILENT
    node = unified_model
    for key in (model, resource, method):
        if not isinstance(node, dict):
            return None
        if key not in node:
            return _SILENT
        node = node[key]
    return node if isinstance(node, dict) else None


def _method_layers(integration_config: dict[str, Any], environment_override: dict[str, Any],
                   account_override: dict[str, Any], integration: str, model: str, resource: str,
                   method: str) -> list[tuple[Level, Any]]:
    env_layer = environment_layer(environment_override, integration)
    layers: list[tuple[Level, Any]] = [
        ("integration", _method_layer(integration_config.get(UNIFIED_MODEL, _SILENT), model, resource, method)),
        ("environment", _method_layer(env_layer.get(UNIFIED_MODEL_OVERRIDE, _SILENT), model, resource, method)),
        ("account", _method_layer(account_override.get(UNIFIED_MODEL_OVERRIDE, _SILENT), model, resource, method)),
    ]
    return [(level, layer) for level, layer in layers if layer is not _SILENT]


def effective_method_config(
    *,
    integration_config: dict[str, Any],
    environment_override: dict[str, Any],
    account_override: dict[str, Any],
    integration: str,
    model: str,
    resource: str,
    method: str,
) -> tuple[dict[str, Any] | None, dict[str, Level]]:
    """The merged configuration of model/resource/method for an account, with provenance;
    (None, {}) when no level configures it (or the last that did was deleted above it)."""
    merged, provenance = merge_levels(_method_layers(integration_config, environment_override, account_override,
                                                     integration, model, resource, method))
    if not isinstance(merged, dict):
        return None, {}
    return merged, provenance


def removed_method_fields(
    *,
    integration_config: dict[str, Any],
    environment_override: dict[str, Any],
    account_override: dict[str, Any],
    integration: str,
    model: str,
    resource: str,
    method: str,
) -> dict[str, Level]:
    """The fields of model/resource/method a level below set and a level above deleted, with the
    level that deleted each."""
    return removals(_method_layers(integration_config, environment_override, account_override,
                                   integration, model, resource, method))


def effective_integration_settings(
    *, integration_config: dict[str, Any], environment_override: dict[str, Any], account_override: dict[str, Any],
    integration: str,
) -> tuple[dict[str, Any], dict[str, Level]]:
    """The integration's own settings (its config without the unified model) with the
    environment's and the account's `integration_override` merged on top, with provenance."""
    layers: list[tuple[Level, Any]] = [
        ("integration", {k: v for k, v in integration_config.items() if k != UNIFIED_MODEL}),
        ("environment", environment_layer(environment_override, integration).get(INTEGRATION_OVERRIDE, _SILENT)),
        ("account", account_override.get(INTEGRATION_OVERRIDE, _SILENT)),
    ]
    merged, provenance = merge_levels([(level, layer) for level, layer in layers if layer is not _SILENT])
    return (merged if isinstance(merged, dict) else {}), provenance
