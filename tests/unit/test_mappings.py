"""JSONata mappings: validation naming paths, the compile cache, evaluation with step results and
budgets. Pure: no I/O."""

import time

import pytest
from jsonata import JException

from service.domain import mappings
from service.domain.mappings import InvalidMapping, compile_expression, evaluate, mapping_strings, validate_mappings


def test_every_mapping_string_is_found_at_any_depth_lists_included():
    document = {"unified_model_override": {"crm": {"contacts": {"list": {
        "response_mapping": "r", "resource": "x",
        "before": [{"name": "s", "config": {"query_mapping": "q"}}, {"request_body_mapping": "b"}],
        "after": [{"response_mapping": "a"}]}}}}}
    assert dict(mapping_strings(document)) == {
        "unified_model_override.crm.contacts.list.response_mapping": "r",
        "unified_model_override.crm.contacts.list.before[0].config.query_mapping": "q",
        "unified_model_override.crm.contacts.list.before[1].request_body_mapping": "b",
        "unified_model_override.crm.contacts.list.after[0].response_mapping": "a",
    }
    assert dict(mapping_strings({"x": {"response_mapping": None}})) == {}  # null: a deletion, nothing to compile


def test_invalid_expressions_are_named_by_path_with_the_parsers_message():
    document = {"crm": {"contacts": {"list": {"response_mapping": "response.{ 'id': ", "query_mapping": "{ 'a': 1 }",
                                              "before": [{"config": {"query_mapping": "$foo("}}]}}}}
    with pytest.raises(InvalidMapping) as caught:
        validate_mappings(document, "unified_model_override")
    problems = {p.path: p for p in caught.value.problems}
    assert set(problems) == {"unified_model_override.crm.contacts.list.response_mapping",
                             "unified_model_override.crm.contacts.list.before[0].config.query_mapping"}
    first = problems["unified_model_override.crm.contacts.list.response_mapping"]
    assert first.code.startswith("S0") and first.message and first.position is not None
    assert caught.value.field == "unified_model_override.crm.contacts.list.response_mapping"
    with pytest.raises(InvalidMapping) as caught:
        validate_mappings({"response_mapping": 42})
    assert caught.value.problems[0].path == "response_mapping"


def test_compiled_expressions_are_cached_by_text_in_a_bounded_lru(monkeypatch):
    cache = mappings._LruCache(2)
    monkeypatch.setattr(mappings, "compiled_cache", cache)
    first = compile_expression("a.b")
    assert compile_expression("a.b") is first
    compile_expression("c")
    compile_expression("a.b")  # touched: now the most recent
    compile_expression("d")  # evicts "c", the least recent
    assert len(cache) == 2 and cache.get("a.b") is first and cache.get("c") is None



def test_compile_failures_are_cached_by_text_and_named_by_each_callers_path(monkeypatch):
    cache = mappings._LruCache(4)
    monkeypatch.setattr(mappings, "compiled_cache", cache)
    with pytest.raises(InvalidMapping) as first:
        compile_expression("(", "a.response_mapping")
    parsed = []
    monkeypatch.setattr(mappings, "Jsonata", lambda text: parsed.append(text))
    with pytest.raises(InvalidMapping) as again:
        compile_expression("(", "b.query_mapping")
    assert parsed == []  # answered from the cache, not parsed again
    assert again.value.problems[0].path == "b.query_mapping"
    assert again.value.problems[0].message == first.value.problems[0].message


def test_expressions_longer_than_8_kib_are_refused_before_parsing(monkeypatch):
    monkeypatch.setattr(mappings, "compiled_cache", mappings._LruCache(4))
    assert mappings.MAX_EXPRESSION_LENGTH == 8 * 1024
    compile_expression("1+" * 4000 + "1")
    parsed = []
    monkeypatch.setattr(mappings, "Jsonata", lambda text: parsed.append(text))
    with pytest.raises(InvalidMapping) as refused:
        compile_expression("1+" * 16000 + "1", "x.response_mapping")
    assert parsed == [] and "8 KiB" in refused.value.problems[0].message
    assert refused.value.problems[0].path == "x.response_mapping"


def test_step_results_are_readable_by_name_from_inside_response_records():
    compiled = compile_expression(
        "response.{ 'id': $string(Id), 'category_label': $lookup(step.picklist_values.labels, Category__c) }")
    steps = {"picklist_values": {"labels": {"c1": "Prospect"}}}
    records = [{"Id": 1, "Category__c": "c1"}, {"Id": 2, "Category__c": "c9"}]
    assert evaluate(compiled, {"response": records, "step": steps}) == [
        {"id": "1", "category_label": "Prospect"}, {"id": "2"}]
    # Also at the root and as a variable; a record's own `step` field wins.
    assert evaluate(compile_expression("step.picklist_values.labels.c1"), {"step": steps}) == "Prospect"
    assert evaluate(compile_expression("$step.picklist_values.labels.c1"), {"step": steps}) == "Prospect"
    assert evaluate(compile_expression("response.step"), {"response": {"step": 3}, "step": steps}) == 3
    # The result is plain JSON: nothing of the step lookup leaks into returned records.
    result = evaluate(compile_expression("response"), {"response": {"a": 1}, "step": steps})
    assert result == {"a": 1} and type(result) is dict and "step" not in result


def test_runaway_expressions_stop_within_their_budget():
    compiled = compile_expression("( $f := function($n){ $n > 0 ? $f($n-1) + $f($n-1) : 1 }; $f(60) )")
    started = time.monotonic()
    with pytest.raises(JException) as caught:
        evaluate(compiled, {}, timeout_ms=200)
    assert caught.value.error in ("D1012", "D1011") and time.monotonic() - started < 2
    # The budget is per evaluation: the cached expression still has its whole budget the next time.
    time.sleep(0.3)
    quick = compile_expression("( $f := function($n){ $n > 0 ? $f($n-1) : 0 }; $f(10) )")
    assert evaluate(quick, {}, timeout_ms=200) == 0
    deep = compile_expression("( $f := function($n){ $n > 0 ? 1 + $f($n-1) : 0 }; $f(100000) )")
    with pytest.raises(JException):
        evaluate(deep, {}, max_depth=100)
