"""What runs inside a preview's child process: limits first, then one evaluation with an
expression compiled for it alone, then the outcome as JSON on the pipe.

Python's `re` holds the GIL, a string can grow by gigabytes within one step, and jsonata-python
keeps the running input on the compiled object: no budget checked between steps covers those, so
each preview runs in its own process that the kernel limits and the parent may kill. Kept small:
the fork server imports it ahead, so a child starts with it ready."""

import json
import resource
from typing import Any

from jsonata import JException

from service.domain.mappings import evaluate, fresh_expression

MAX_RESULT_BYTES = 1024 * 1024
# Address space a child may add to what it holds on starting (the interpreter and the sample).
MEMORY_BUDGET_BYTES = 64 * 1024 * 1024
# The kernel sends SIGXCPU past this much CPU time (in seconds), whatever the expression does.
CPU_BUDGET_SECONDS = 3
ERROR_MESSAGE_CHARS = 500


def _limit_resources() -> None:
    with open("/proc/self/statm") as statm:
        in_use = int(statm.read().split()[0]) * resource.getpagesize()
    limit = in_use + MEMORY_BUDGET_BYTES
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_BUDGET_SECONDS, CPU_BUDGET_SECONDS + 1))


def _error(code: Any, message: str, position: int | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message[:ERROR_MESSAGE_CHARS], "position": position}}


def outcome_of(expression: str, bindings: dict[str, Any]) -> dict[str, Any]:
    """{"result": ...} or {"error": {code, message, position}}: every failure is an outcome."""
    try:
        result = evaluate(fresh_expression(expression), bindings)
    except JException as error:
        location = getattr(error, "location", None)
        return _error(getattr(error, "error", None), str(error),
                      location if isinstance(location, int) and location >= 0 else None)
    except MemoryError:
        return _error("out-of-memory", f"the evaluation needed more than {MEMORY_BUDGET_BYTES // 2**20} MiB")
    except Exception as error:  # the library raises KeyError, OSError, RuntimeError... on odd input
        return _error(type(error).__name__, str(error))
    try:
        encoded = json.dumps({"result": result}, allow_nan=False)
    except (TypeError, ValueError):
        return _error("not-json", "the result is not a JSON value (a function?)")
    except MemoryError:
        return _error("out-of-memory", f"the result needed more than {MEMORY_BUDGET_BYTES // 2**20} MiB")
    if len(encoded) > MAX_RESULT_BYTES:
        return _error("too-large", f"the result is larger than {MAX_RESULT_BYTES} bytes")
    return {"result": result}


def run(expression: str, bindings: dict[str, Any], sender) -> None:
    """The child's entry point: `sender` is the write end of the pipe to the parent."""
    _limit_resources()
    outcome = outcome_of(expression, bindings)
    try:
        sender.send_bytes(json.dumps(outcome).encode())
    finally:
        sender.close()
