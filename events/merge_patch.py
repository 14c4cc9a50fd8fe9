"""JSON Merge Patch (RFC 7396), as the log's payloads carry it: both the domain and the
projections fold override and context changes with these, so they can never disagree."""

from typing import Any


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


def compose_patches(document: Any, patch: Any) -> Any:
    """An override level's document after a change: `patch` composed onto it, keeping explicit
    nulls (each deletes that field of the levels below). Objects compose deeply, anything else
    replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(document) if isinstance(document, dict) else {}
    for key, value in patch.items():
        result[key] = compose_patches(result.get(key), value) if isinstance(value, dict) else value
    return result
