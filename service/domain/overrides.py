"""Override documents and how the three levels merge: pure, no I/O.

Levels, lowest first: the integration's base (`config.unified_model`, the rest of `config`), the
environment override, the account override. Each level above the base is a JSON Merge Patch
(RFC 7396) over the one below: objects merge deeply, arrays and scalars replace, null deletes.
Method configurations live under model -> resource -> method.
"""

import hashlib
from typing import Any, Literal

from events.canonical import canonical_json

Level = Literal["integration", "environment", "account"]

# The keys of an override document (environment and account level).
UNIFIED_MODEL_OVERRIDE = "unified_model_override"
INTEGRATION_OVERRIDE = "integration_override"
# Inside an environment override: sections that apply to one integration only.
PER_INTEGRATION = "integrations"
# Inside an integration's config: the base unified model mappings.
UNIFIED_MODEL = "unified_model"


def merge_patch(target: Any, patch: Any) -> Any:
    """JSON Merge Patch (RFC 7396): objects merge deeply, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def diff_patch(current: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
    """The merge patch that turns `current` into `target` (both null-free documents):
    merge_patch(current, diff_patch(current, target)) == target."""
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


def method_config(unified_model: Any, model: str, resource: str, method: str) -> dict[str, Any] | None:
    """One level's configuration of model/resource/method; None when that level says nothing."""
    node = unified_model
    for key in (model, resource, method):
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node if isinstance(node, dict) else None


def environment_layer(environment_override: dict[str, Any], integration: str) -> dict[str, Any]:
    """An environment override as it applies to one integration: its general part with the
    integration's own section (`integrations.<name>`) merged on top."""
    general = {k: v for k, v in environment_override.items() if k != PER_INTEGRATION}
    sections = environment_override.get(PER_INTEGRATION)
    own = sections.get(integration) if isinstance(sections, dict) else None
    return merge_patch(general, own) if isinstance(own, dict) else general


def merge_levels(layers: list[tuple[Level, Any]]) -> tuple[Any, dict[str, Level]]:
    """Merge each layer onto the ones before it; returns the result and, for every leaf of the
    result (an object path whose value is not an object, dotted), the level that set it."""
    result: Any = None
    provenance: dict[str, Level] = {}
    for level, layer in layers:
        if layer is None:
            continue
        result = merge_patch(result, layer)
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


def _leaf_paths(value: Any, prefix: str):
    if isinstance(value, dict) and (value or not prefix):
        for key, item in value.items():
            yield from _leaf_paths(item, f"{prefix}.{key}" if prefix else key)
    elif prefix:
        yield prefix


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
    (None, {}) when no level configures it."""
    env_layer = environment_layer(environment_override, integration)
    layers: list[tuple[Level, Any]] = [
        ("integration", method_config(integration_config.get(UNIFIED_MODEL), model, resource, method)),
        ("environment", method_config(env_layer.get(UNIFIED_MODEL_OVERRIDE), model, resource, method)),
        ("account", method_config(account_override.get(UNIFIED_MODEL_OVERRIDE), model, resource, method)),
    ]
    merged, provenance = merge_levels(layers)
    if not isinstance(merged, dict):
        return None, {}
    return merged, provenance


def effective_integration_settings(
    *, integration_config: dict[str, Any], environment_override: dict[str, Any], account_override: dict[str, Any],
    integration: str,
) -> tuple[dict[str, Any], dict[str, Level]]:
    """The integration's own settings (its config without the unified model) with the
    environment's and the account's `integration_override` merged on top, with provenance."""
    merged, provenance = merge_levels([
        ("integration", {k: v for k, v in integration_config.items() if k != UNIFIED_MODEL}),
        ("environment", environment_layer(environment_override, integration).get(INTEGRATION_OVERRIDE)),
        ("account", account_override.get(INTEGRATION_OVERRIDE)),
    ])
    return (merged if isinstance(merged, dict) else {}), provenance
