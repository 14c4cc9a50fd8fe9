"""JSONata mappings: compile (cached by text, failures too), validate every `*_mapping` string of
a document, and evaluate one against a sample within a time and depth budget.

A compiled expression keeps the input and bindings of the evaluation running on it: the cached
ones are for validation only, and each evaluation gets its own (`fresh_expression`).

Evaluation input: an object with `response`, `query`, `body`, `context` and `step` (the results
of `before` steps by name). The same values are bound as variables too ($response, $step, ...).
`step` is also reachable by name from inside any object of the input (`response.{ 'x':
step.lookup.labels }` reads the step results although the path context is a response record),
because mappings written for the examples in EXAMPLES.md read it that way; a record's own field
named `step` wins.
"""

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from jsonata import Jsonata, JException

from service.domain.errors import DomainError

MAPPING_SUFFIX = "_mapping"
CACHE_SIZE = 1024
TIMEOUT_MS = 1000
MAX_DEPTH = 300
# Parsing is recursive and slow on deep input ("1+1+..." of 8 KiB takes ~0.4 s); longer is refused.
MAX_EXPRESSION_LENGTH = 8 * 1024


@dataclass(frozen=True)
class MappingProblem:
    """What is wrong with one expression: where it sits, and the parser's or evaluator's words."""

    path: str
    message: str
    code: str | None = None
    position: int | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"field": self.path, "reason": self.message}
        if self.code:
            out["code"] = self.code
        if self.position is not None:
            out["position"] = self.position
        return out


class InvalidMapping(DomainError):
    """One or more mapping expressions do not compile. `problems` names each by its path."""

    def __init__(self, problems: list[MappingProblem]):
        first = problems[0]
        super().__init__(f"{first.path}: {first.message}", field=first.path)
        self.problems = problems


class _LruCache:
    """Compile outcomes by text (the compiled expression, or the problem with a bad one): compiling
    costs far more than looking up, and a refused expression sent again is refused at once."""

    def __init__(self, size: int):
        self._size = size
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, text: str) -> Any:
        with self._lock:
            found = self._items.get(text)
            if found is not None:
                self._items.move_to_end(text)
            return found

    def put(self, text: str, compiled: Any) -> None:
        with self._lock:
            self._items[text] = compiled
            self._items.move_to_end(text)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


compiled_cache = _LruCache(CACHE_SIZE)


def _problem(path: str, error: Exception) -> MappingProblem:
    if isinstance(error, JException):
        location = getattr(error, "location", None)
        return MappingProblem(path, str(error), getattr(error, "error", None),
                              location if isinstance(location, int) and location >= 0 else None)
    return MappingProblem(path, f"{type(error).__name__}: {error}")


def _parse(text: str, path: str) -> Jsonata | MappingProblem:
    if len(text) > MAX_EXPRESSION_LENGTH:
        return MappingProblem(path, f"longer than {MAX_EXPRESSION_LENGTH} characters: "
                                    f"an expression may be at most {MAX_EXPRESSION_LENGTH // 1024} KiB")
    try:
        compiled = Jsonata(text)
    except Exception as error:  # the parser raises JException, and on odd input other errors
        return _problem(path, error)
    errors = compiled.get_errors()
    return _problem(path, errors[0]) if errors else compiled


def compile_expression(text: str, path: str = "expression") -> Jsonata:
    """The compiled expression (from the cache when seen before); InvalidMapping if it does not
    parse. For validating: never evaluate the returned object while another evaluation may use it."""
    found = compiled_cache.get(text)
    if found is None:
        found = _parse(text, path)
        compiled_cache.put(text, found)
    if isinstance(found, MappingProblem):
        raise InvalidMapping([MappingProblem(path, found.message, found.code, found.position)])
    return found


def fresh_expression(text: str) -> Jsonata:
    """The expression compiled for one evaluation alone; InvalidMapping if it does not parse."""
    compiled = _parse(text, "expression")
    if isinstance(compiled, MappingProblem):
        raise InvalidMapping([compiled])
    return compiled


def mapping_strings(document: Any, path: str = ""):
    """(path, value) of every `*_mapping` key at any depth, lists included (`before[0].x_mapping`)."""
    if isinstance(document, dict):
        for key, value in document.items():
            here = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and key.endswith(MAPPING_SUFFIX) and value is not None:
                yield here, value
            else:
                yield from mapping_strings(value, here)
    elif isinstance(document, list):
        for index, item in enumerate(document):
            yield from mapping_strings(item, f"{path}[{index}]")


def validate_mappings(document: Any, path: str = "") -> None:
    """Compile every mapping string of `document`; InvalidMapping naming each one that fails."""
    problems = []
    for where, value in mapping_strings(document, path):
        if not isinstance(value, str):
            problems.append(MappingProblem(where, "a mapping is a JSONata expression: a string"))
            continue
        try:
            compile_expression(value, where)
        except InvalidMapping as invalid:
            problems.extend(invalid.problems)
    if problems:
        raise InvalidMapping(problems)


class _Record(dict):
    """A dict that answers `step` from the evaluation's step results when it has no such key."""

    __slots__ = ("_steps",)

    def get(self, key, default=None):
        if key == "step" and not dict.__contains__(self, key):
            return self._steps
        return dict.get(self, key, default)

    def __contains__(self, key) -> bool:
        return dict.__contains__(self, key) or key == "step"


def _with_steps(value: Any, steps: Any) -> Any:
    if isinstance(value, dict):
        record = _Record((k, _with_steps(v, steps)) for k, v in value.items())
        record._steps = steps
        return record
    if isinstance(value, list):
        return [_with_steps(item, steps) for item in value]
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def evaluate(
    compiled: Jsonata, bindings: dict[str, Any], *, timeout_ms: int = TIMEOUT_MS, max_depth: int = MAX_DEPTH
) -> Any:
    """Evaluate against the input object `bindings` (response, query, body, context, step).
    Raises JException (D1012 past the time budget, D1011 past the depth budget) or, on odd input,
    whatever the library raises. `compiled` must not be in use by another evaluation."""
    steps = bindings.get("step")
    document = dict(bindings)
    if steps is not None:
        document = {name: value if name == "step" else _with_steps(value, steps) for name, value in bindings.items()}
    frame = compiled.create_frame(compiled.environment)
    # The budget starts now: a Timebox counts from its creation, so each evaluation gets its own.
    frame.set_runtime_bounds(timeout_ms, max_depth)
    for name, value in bindings.items():
        frame.bind(name, value)
    Jsonata.CURRENT.jsonata = compiled  # $now(), $eval() and friends read the running expression per thread
    return _plain(compiled.evaluate(document, frame))
