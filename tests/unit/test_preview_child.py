"""What a preview's child process answers: every evaluation failure as an error outcome. Pure."""

from service.handlers.preview_child import MAX_RESULT_BYTES, outcome_of


def test_every_evaluation_exception_is_an_error_outcome():
    for expression, code in (('$parseInteger("x","w")', "KeyError"), ('$toMillis("x","[Y")', "RuntimeError"),
                             ("$fromMillis(1e20)", "OSError"), ("$undefinedFn()", "T1006")):
        outcome = outcome_of(expression, {})
        assert set(outcome) == {"error"} and outcome["error"]["code"] == code and outcome["error"]["message"], outcome


def test_results_must_be_json_and_at_most_a_megabyte():
    assert outcome_of("function($x){$x}", {})["error"]["code"] == "not-json"
    big = f'$pad("", {MAX_RESULT_BYTES + 1})'
    assert outcome_of(big, {})["error"]["code"] == "too-large"
    assert outcome_of("response.a", {"response": {"a": [1, "x"]}}) == {"result": [1, "x"]}
