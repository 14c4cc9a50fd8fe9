"""Overrides over HTTP: the EXAMPLES.md shapes end to end, validation that leaves the log untouched,
effective configuration with provenance and ETags, previews, history and roll-back."""

import asyncio
import uuid

import asyncpg

PROBLEM_JSON = "application/problem+json"
BASE_LIST = {
    "resource": "contacts",
    "method": "get",
    "query_mapping": "{ 'limit': query.limit }",
    "response_mapping": "response.{ 'id': $string(Id), 'first_name': FirstName, 'last_name': LastName }",
}
SF_RECORD = {"Id": 17, "FirstName": "Ada", "LastName": "Lovelace", "Custom_Tier__c": "gold",
             "Renewal_Date__c": "2027-01-01", "First_Name__c": "Grace", "Last_Name__c": "Hopper", "Category__c": "c2"}
SHIM = ('response.{ "individual_id": id, "first_name": first_name, "last_name": last_name, '
        '"department": { "name": department }, "manager": { "id": manager_id }, '
        '"is_active": employment_status = "active" }')


def _truto(tenant: str) -> dict:
    return {
        "integration_name": "salesforce", "tenant_id": tenant, "authentication_method": "oauth2",
        "context": {"oauth": {"token": {"access_token": f"at-{uuid.uuid4().hex}", "refresh_token": f"rt-{uuid.uuid4().hex}",
                                        "expires_at": "2031-10-15T14:30:00Z", "token_type": "Bearer"}},
                    "instance_url": f"https://{tenant}.my.salesforce.com"},
    }


class Api:
    def __init__(self, gateway, headers):
        self.client = gateway.client
        self.headers = headers
        self.database_url = gateway.database_url

    async def call(self, method: str, path: str, expect: int | None = 200, **kwargs):
        response = await self.client.request(method, path, headers={**self.headers, **kwargs.pop("headers", {})}, **kwargs)
        body = await response.json() if response.status != 304 else None
        if expect is not None:
            assert response.status == expect, (method, path, response.status, body)
        return response, body

    async def setup(self, *tenants: str, unified_model: dict | None = None) -> list[str]:
        body = {"oauth_client": {"client_id": "c", "client_secret": "s3cret-client",
                                 "token_url": "https://login.salesforce.com/services/oauth2/token"},
                "unified_model": unified_model or {"crm": {"contacts": {"list": BASE_LIST}}}}
        await self.call("PUT", "/v1/environments/prod/integrations/salesforce", json=body)
        ids = []
        for tenant in tenants:
            _, created = await self.call("POST", "/v1/environments/prod/accounts", 201, json=_truto(tenant))
            ids.append(created["account"]["id"])
        return ids

    async def effective(self, account_id: str, path: str = "crm/contacts/list", **kwargs):
        return await self.call("GET", f"/v1/accounts/{account_id}/effective-config/{path}", **kwargs)

    async def preview(self, expect: int = 200, **body):
        return (await self.call("POST", "/v1/mappings:preview", expect, json=body))[1]

    async def event_count(self) -> int:
        conn = await asyncpg.connect(self.database_url)
        try:
            return await conn.fetchval("SELECT count(*) FROM events")
        finally:
            await conn.close()


async def _api(gateway, role: str = "operator") -> Api:
    admin = Api(gateway, await gateway.headers("admin"))
    return admin if role == "admin" else Api(gateway, await gateway.headers(role))


async def test_a_custom_field_mapping_for_one_account_only(gateway):
    api = await _api(gateway, "admin")
    custom, other = await api.setup("acme", "globex")
    mapping = ("response.{ 'id': $string(Id), 'first_name': FirstName, 'last_name': LastName, "
               "'custom_tier': Custom_Tier__c, 'renewal_date': Renewal_Date__c }")
    _, patched = await api.call("PATCH", f"/v1/accounts/{custom}",
                                json={"unified_model_override": {"crm": {"contacts": {"list": {"response_mapping": mapping}}}}})
    assert patched["changed"] is True and patched["override_hash"].startswith("sha256:")

    _, mine = await api.effective(custom)
    assert mine["config"]["response_mapping"] == mapping and mine["provenance"]["response_mapping"] == "account"
    assert mine["provenance"]["resource"] == "integration" and mine["config"]["query_mapping"] == BASE_LIST["query_mapping"]
    _, theirs = await api.effective(other)
    assert theirs["config"] == BASE_LIST and set(theirs["provenance"].values()) == {"integration"}

    for account_id, expected in ((custom, {"id": "17", "first_name": "Ada", "last_name": "Lovelace",
                                           "custom_tier": "gold", "renewal_date": "2027-01-01"}),
                                 (other, {"id": "17", "first_name": "Ada", "last_name": "Lovelace"})):
        result = await api.preview(account_id=account_id, model="crm", resource="contacts", method="list", sample=[SF_RECORD])
        assert result["error"] is None and result["result"] == expected, result
    result = await api.preview(account_id=custom, model="crm", resource="contacts", method="list", sample=[SF_RECORD])
    assert result["level"] == "account"


async def test_a_resource_reroute_with_its_own_mapping(gateway):
    api = await _api(gateway, "admin")
    (account,) = await api.setup("acme")
    mapping = "response.{ 'id': $string(Id), 'first_name': First_Name__c, 'last_name': Last_Name__c }"
    await api.call("PATCH", f"/v1/accounts/{account}", json={"unified_model_override": {"crm": {"contacts": {"list": {
        "resource": "business_contacts", "response_mapping": mapping}}}}})
    _, effective = await api.effective(account)
    assert effective["config"]["resource"] == "business_contacts"
    assert effective["provenance"] == {"method": "integration", "query_mapping": "integration", "resource": "account",
                                       "response_mapping": "account"}
    result = await api.preview(account_id=account, model="crm", resource="contacts", method="list",
                               sample=[SF_RECORD, {**SF_RECORD, "Id": 18, "First_Name__c": "Alan"}])
    assert result["result"] == [{"id": "17", "first_name": "Grace", "last_name": "Hopper"},
                                {"id": "18", "first_name": "Alan", "last_name": "Hopper"}]


async def test_a_before_step_read_as_step_name_previewed_with_a_sample_result(gateway):
    api = await _api(gateway, "admin")
    (account,) = await api.setup("acme")
    before = [{"name": "picklist_values", "type": "request",
               "config": {"type": "proxy", "resource": "contact_describe", "method": "get"}}]
    mapping = "response.{ 'id': $string(Id), 'category_label': $lookup(step.picklist_values.labels, Category__c) }"
    await api.call("PATCH", f"/v1/accounts/{account}", json={"unified_model_override": {"crm": {"contacts": {"list": {
        "before": before, "response_mapping": mapping}}}}})
    _, effective = await api.effective(account)
    assert effective["config"]["before"] == before and effective["provenance"]["before"] == "account"
    steps = {"picklist_values": {"labels": {"c1": "Prospect", "c2": "Customer"}}}
    result = await api.preview(account_id=account, model="crm", resource="contacts", method="list",
                               sample=[SF_RECORD, {**SF_RECORD, "Id": 5, "Category__c": "c1"}], steps=steps)
    assert result["error"] is None
    assert result["result"] == [{"id": "17", "category_label": "Customer"}, {"id": "5", "category_label": "Prospect"}]


async def test_an_environment_compatibility_shim_gives_the_legacy_shape(gateway):
    api = await _api(gateway, "admin")
    account, untouched = await api.setup("acme", "globex")
    operator = await _api(gateway, "operator")
    _, env = await operator.call("PUT", "/v1/environments/prod/overrides", json={
        "unified_model_override": {"crm": {"contacts": {"list": {"response_mapping": SHIM}}}}})
    assert env["changed"] is True and env["version"] == 1
    for account_id in (account, untouched):
        _, effective = await api.effective(account_id)
        assert effective["config"]["response_mapping"] == SHIM
        assert effective["provenance"]["response_mapping"] == "environment"
        assert effective["versions"]["environment"] == 1
    sample = {"id": "e-1", "first_name": "Jane", "last_name": "Doe", "department": "Engineering",
              "manager_id": "e-2", "employment_status": "active"}
    legacy = {"individual_id": "e-1", "first_name": "Jane", "last_name": "Doe", "department": {"name": "Engineering"},
              "manager": {"id": "e-2"}, "is_active": True}
    result = await operator.preview(account_id=account, model="crm", resource="contacts", method="list", sample=sample)
    assert result["result"] == legacy and result["level"] == "environment"
    # The same shim given as an expression, no account needed.
    assert (await operator.preview(expression=SHIM, sample=sample))["result"] == legacy
    # An account override still wins over the environment for that account only.
    await api.call("PATCH", f"/v1/accounts/{account}", json={"unified_model_override": {"crm": {"contacts": {"list": {
        "response_mapping": "response.{'id': id}"}}}}})
    assert (await api.effective(account))[1]["provenance"]["response_mapping"] == "account"
    assert (await api.effective(untouched))[1]["provenance"]["response_mapping"] == "environment"


async def test_a_per_integration_environment_section_applies_to_that_integration_only(gateway):
    api = await _api(gateway, "admin")
    (account,) = await api.setup("acme")
    await api.call("PUT", "/v1/environments/prod/overrides", json={"integrations": {
        "hubspot": {"unified_model_override": {"crm": {"contacts": {"list": {"resource": "hs"}}}}},
        "salesforce": {"unified_model_override": {"crm": {"contacts": {"list": {"method": "post"}}}}}}})
    _, effective = await api.effective(account)
    assert effective["config"]["resource"] == "contacts" and effective["config"]["method"] == "post"
    assert effective["provenance"]["method"] == "environment"


async def test_integration_overrides_merge_over_the_integrations_own_settings(gateway):
    api = await _api(gateway, "admin")
    (account,) = await api.setup("acme")
    await api.call("PUT", "/v1/environments/prod/integrations/salesforce", json={
        "config": {"page_size": 200, "api_version": "v58.0"}, "unified_model": {"crm": {"contacts": {"list": BASE_LIST}}}})
    await api.call("PUT", "/v1/environments/prod/overrides", json={"integrations": {"salesforce": {
        "integration_override": {"api_version": "v60.0"}}}})
    await api.call("PATCH", f"/v1/accounts/{account}", json={"integration_override": {"page_size": 50}})
    _, effective = await api.effective(account)
    assert effective["integration_settings"] == {"page_size": 50, "api_version": "v60.0"}
    assert effective["integration_settings_provenance"] == {"page_size": "account", "api_version": "environment"}


async def test_an_invalid_expression_is_refused_with_its_path_and_nothing_is_appended(gateway):
    api = await _api(gateway, "admin")
    (account,) = await api.setup("acme")
    before = await api.event_count()
    cases = [
        ("PATCH", f"/v1/accounts/{account}", {"unified_model_override": {"crm": {"contacts": {"list": {
            "response_mapping": "response.{ 'id': "}}}}}, "unified_model_override.crm.contacts.list.response_mapping"),
        ("PATCH", f"/v1/accounts/{account}", {"unified_model_override": {"crm": {"contacts": {"list": {
            "before": [{"name": "x", "config": {"query_mapping": "$foo("}}]}}}}},
         "unified_model_override.crm.contacts.list.before[0].config.query_mapping"),
        ("PUT", "/v1/environments/prod/overrides", {"unified_model_override": {"hris": {"employees": {"list": {
            "request_body_mapping": "a."}}}}}, "unified_model_override.hris.employees.list.request_body_mapping"),
        ("PUT", "/v1/environments/prod/integrations/salesforce", {"unified_model": {"crm": {"contacts": {"get": {
            "response_mapping": "{"}}}}}, "unified_model.crm.contacts.get.response_mapping"),
        ("POST", "/v1/mappings:preview", {"expression": "response.{", "sample": {}}, "expression"),
    ]
    for method, path, body, field in cases:
        response, problem = await api.call(method, path, 422, json=body)
        assert response.content_type == PROBLEM_JSON
        assert problem["type"].endswith("/invalid-mapping"), problem
        assert problem["errors"][0]["field"] == field, problem
        assert problem["errors"][0]["reason"] and problem["errors"][0]["code"].startswith("S0"), problem
        assert field in problem["detail"]
    # Good and bad together: the good part is not applied either.
    await api.call("PATCH", f"/v1/accounts/{account}", 422, json={
        "context": {"region": "eu"},
        "unified_model_override": {"crm": {"contacts": {"list": {"resource": "ok", "response_mapping": "("}}}}})
    assert await api.event_count() == before
    _, effective = await api.effective(account)
    assert effective["config"] == BASE_LIST


async def test_roll_back_appends_one_event_restoring_an_earlier_version(gateway):
    api = await _api(gateway, "admin")
    (account,) = await api.setup("acme")
    versions = []
    for resource in ("first", "second", "third"):
        await api.call("PATCH", f"/v1/accounts/{account}", json={
            "unified_model_override": {"crm": {"contacts": {"list": {"resource": resource, f"note_{resource}": "x"}}}}})
        _, effective = await api.effective(account)
        assert effective["config"]["resource"] == resource  # visible to the very next query
        versions.append(effective)
    _, history = await api.call("GET", f"/v1/accounts/{account}/overrides/history")
    assert [v["merge_patch"]["unified_model_override"]["crm"]["contacts"]["list"]["resource"]
            for v in history["versions"]] == ["first", "second", "third"]
    assert all(v["actor"].startswith("key:") for v in history["versions"])
    first = history["versions"][0]

    before = await api.event_count()
    _, rolled = await api.call("POST", f"/v1/accounts/{account}/overrides:rollback", json={"version": first["version"]})
    assert rolled["changed"] is True and await api.event_count() == before + 1
    assert rolled["override_hash"] == first["resulting_hash"]
    _, effective = await api.effective(account)
    assert effective["config"] == versions[0]["config"] and effective["provenance"] == versions[0]["provenance"]
    assert effective["hashes"] == versions[0]["hashes"] and effective["versions"]["account"] > versions[2]["versions"]["account"]

    _, history = await api.call("GET", f"/v1/accounts/{account}/overrides/history")
    assert len(history["versions"]) == 4
    last = history["versions"][-1]
    assert last["restored_version"] == first["version"] and last["resulting_hash"] == first["resulting_hash"]
    conn = await asyncpg.connect(api.database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM events WHERE type = 'AccountOverrideChanged'") == 4
    finally:
        await conn.close()
    # To version 0: no override at all.
    await api.call("POST", f"/v1/accounts/{account}/overrides:rollback", json={"version": 0})
    assert (await api.effective(account))[1]["config"] == BASE_LIST
    # An unknown version is refused, nothing appended.
    count = await api.event_count()
    _, problem = await api.call("POST", f"/v1/accounts/{account}/overrides:rollback", 422, json={"version": 2})
    assert problem["errors"][0]["field"] == "version" and await api.event_count() == count


async def test_environment_history_and_roll_back(gateway):
    api = await _api(gateway, "admin")
    (account,) = await api.setup("acme")
    for mapping in ("response.{'a': Id}", "response.{'b': Id}"):
        await api.call("PUT", "/v1/environments/prod/overrides",
                       json={"unified_model_override": {"crm": {"contacts": {"list": {"response_mapping": mapping}}}}})
    _, unchanged = await api.call("PUT", "/v1/environments/prod/overrides",
                                  json={"unified_model_override": {"crm": {"contacts": {"list": {"response_mapping": "response.{'b': Id}"}}}}})
    assert unchanged["changed"] is False and unchanged["version"] == 2
    _, history = await api.call("GET", "/v1/environments/prod/overrides/history")
    assert [v["version"] for v in history["versions"]] == [1, 2]
    before = await api.event_count()
    _, rolled = await api.call("POST", "/v1/environments/prod/overrides:rollback", json={"version": 1})
    assert rolled["version"] == 3 and rolled["override_hash"] == history["versions"][0]["resulting_hash"]
    assert await api.event_count() == before + 1
    _, effective = await api.effective(account)
    assert effective["config"]["response_mapping"] == "response.{'a': Id}"
    _, history = await api.call("GET", "/v1/environments/prod/overrides/history")
    assert [v["restored_version"] for v in history["versions"]] == [None, None, 1]


async def test_effective_config_etag_and_304(gateway):
    api = await _api(gateway, "admin")
    (account,) = await api.setup("acme")
    auditor = await _api(gateway, "auditor")
    response, first = await auditor.effective(account)
    etag = response.headers["ETag"]
    assert etag == first["etag"] and first["versions"]["integration"] >= 1
    response, _ = await auditor.effective(account, expect=304, headers={"If-None-Match": etag})
    assert response.headers["ETag"] == etag
    # A change the account's config does not see leaves the ETag alone; one it sees changes it.
    await api.call("PATCH", f"/v1/accounts/{account}", json={"context": {"region": "eu"}})
    await auditor.effective(account, expect=304, headers={"If-None-Match": etag})
    await api.call("PATCH", f"/v1/accounts/{account}", json={"unified_model_override": {"crm": {"contacts": {"list": {
        "resource": "x"}}}}})
    response, changed = await auditor.effective(account, headers={"If-None-Match": etag})
    assert changed["etag"] != etag and changed["versions"]["account"] > 0
    # Nothing configured at any level: 404.
    await auditor.effective(account, "crm/deals/list", expect=404)


async def test_context_changes_are_merge_patches_and_never_take_secrets(gateway):
    api = await _api(gateway, "admin")
    (account,) = await api.setup("acme")
    _, patched = await api.call("PATCH", f"/v1/accounts/{account}", json={"context": {"region": "eu", "instance_url": None}})
    assert patched["context"] == {"region": "eu"}
    before = await api.event_count()
    _, problem = await api.call("PATCH", f"/v1/accounts/{account}", 422, json={"context": {"api_key": "leaky-secret-value"}})
    assert "leaky-secret-value" not in str(problem) and await api.event_count() == before
    # Overrides are stored in clear: no secret-named value there either.
    _, problem = await api.call("PATCH", f"/v1/accounts/{account}", 422, json={
        "integration_override": {"auth": {"client_secret": "leaky-secret-value"}}})
    assert problem["errors"][0]["field"] == "integration_override.auth.client_secret"
    assert "leaky-secret-value" not in str(problem) and await api.event_count() == before
    # The service reads the changed context with the token.
    service = await _api(gateway, "service")
    _, token = await service.call("GET", f"/v1/accounts/{account}/token")
    assert token["context"] == {"region": "eu"}


async def test_preview_reports_evaluation_errors_in_the_body_and_stops_runaway_expressions(gateway):
    api = await _api(gateway, "admin")
    result = await api.preview(expression="$number('not a number') + $undefinedFn()", sample={})
    assert result["result"] is None and result["error"]["code"], result
    runaway = "( $f := function($n){ $n > 0 ? $f($n-1) + $f($n-1) : 1 }; $f(60) )"
    started = asyncio.get_running_loop().time()
    result = await api.preview(expression=runaway, sample={})
    assert result["error"]["code"] in ("D1012", "D1011") and asyncio.get_running_loop().time() - started < 5
    # The server still answers afterwards.
    assert (await api.preview(expression="response.a", sample={"a": 1}))["result"] == 1
    result = await api.preview(expression="function($x){$x}", sample={})
    assert result["error"]["code"] == "not-json"
    # Neither an expression nor an account: refused, not evaluated.
    await api.preview(422, sample={})


async def test_a_roll_back_racing_other_changes_still_restores_exactly_that_version(gateway):
    api = await _api(gateway, "admin")
    (account,) = await api.setup("acme")
    _, first = await api.call("PATCH", f"/v1/accounts/{account}", json={"unified_model_override": {"crm": {"contacts": {
        "list": {"resource": "v1"}}}}})
    target_document = first["override"]
    # A change after the target, so that the roll-back has work whatever it races with.
    await api.call("PATCH", f"/v1/accounts/{account}", json={"unified_model_override": {"crm": {"contacts": {"list": {
        "resource": "v2"}}}}})
    _, history = await api.call("GET", f"/v1/accounts/{account}/overrides/history")
    target = history["versions"][0]

    async def patch(i: int):
        await api.call("PATCH", f"/v1/accounts/{account}", json={"unified_model_override": {"crm": {"contacts": {
            "list": {f"field_{i}": str(i)}}}}})

    *_, (_, rolled) = await asyncio.gather(
        *(patch(i) for i in range(8)),
        api.call("POST", f"/v1/accounts/{account}/overrides:rollback", json={"version": target["version"]}))
    assert rolled["changed"] is True
    assert rolled["override"] == target_document and rolled["override_hash"] == target["resulting_hash"]
    _, history = await api.call("GET", f"/v1/accounts/{account}/overrides/history")
    (restoring,) = [v for v in history["versions"] if v["restored_version"] == target["version"]]
    assert restoring["resulting_hash"] == target["resulting_hash"] and restoring["version"] == rolled["override_version"]
    key_id = "_".join(api.headers["Authorization"].removeprefix("Bearer ").split("_")[2:4])
    assert {v["actor"] for v in history["versions"]} == {f"key:{key_id}"}

# Exponential backtracking: minutes of work inside `re`, which holds the GIL all along.
CATASTROPHIC = '$contains("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!", /^(a+)+$/)'


async def test_the_server_answers_other_requests_while_a_catastrophic_regex_preview_runs(gateway):
    api = await _api(gateway, "admin")
    loop = asyncio.get_running_loop()
    started = loop.time()
    slow = asyncio.create_task(api.preview(expression=CATASTROPHIC, sample={}))
    await asyncio.sleep(0.2)  # let it start: the point is what happens while it runs
    assert (await api.preview(expression="response.a", sample={"a": 1}))["result"] == 1
    # Generous: a frozen server answers only once the regex is done, minutes later.
    assert loop.time() - started < 20 and not slow.done()
    result = await slow
    assert result["result"] is None and result["error"]["code"] == "D1012", result


async def test_a_preview_cannot_exhaust_memory(gateway):
    api = await _api(gateway, "admin")
    doubling = '( $f := function($s, $n){ $n = 0 ? $s : $f($s & $s, $n - 1) }; $length($f("ab", 40)) )'
    for expression in ('$length($pad("", 50000000))', doubling):
        result = await api.preview(expression=expression, sample={})
        assert result["result"] is None and result["error"]["code"] in ("out-of-memory", "D1012"), result
    assert (await api.preview(expression="response.a", sample={"a": 2}))["result"] == 2


async def test_concurrent_previews_never_see_each_others_data(gateway):
    api = await _api(gateway, "admin")
    # $eval reads the running input and bindings from the compiled expression object.
    expression = '[1..400].$eval("$context.tok")'

    async def one(i: int):
        token = f"t{i}"
        result = await api.preview(expression=expression, sample={"tok": token}, context={"tok": token})
        return token, result

    for token, result in await asyncio.gather(*(one(i) for i in range(2))):
        assert result["error"] is None, result
        assert set(result["result"]) == {token}, (token, set(result["result"]))


async def test_any_evaluation_exception_is_an_error_in_the_body(gateway, caplog):
    api = await _api(gateway, "admin")
    for expression in ('$parseInteger("x","w")', '$toMillis("x","[Y")', '$fromMillis(1e20)'):
        result = await api.preview(expression=expression, sample={"secret_looking_sample": "s4mple-v4lue"})
        assert result["result"] is None and result["error"]["code"] and result["error"]["message"], result
    assert "s4mple-v4lue" not in caplog.text


async def test_previews_beyond_the_concurrency_bound_are_refused_with_retry_after(gateway):
    api = await _api(gateway, "admin")
    bound = gateway.settings.preview_concurrency
    responses = await asyncio.gather(*(
        api.client.post("/v1/mappings:preview", headers=api.headers, json={"expression": CATASTROPHIC, "sample": {}})
        for _ in range(bound + 2)))
    statuses = sorted(response.status for response in responses)
    assert statuses.count(200) >= 1 and statuses.count(503) >= 1, statuses
    for response in responses:
        if response.status == 503:
            assert response.content_type == PROBLEM_JSON and int(response.headers["Retry-After"]) >= 1
            assert (await response.json())["type"].endswith("/previews-busy")
    assert (await api.preview(expression="response.a", sample={"a": 3}))["result"] == 3


async def test_a_deleted_account_refuses_override_changes_even_of_nothing_and_its_config_and_previews(gateway):
    api = await _api(gateway, "admin")
    (account,) = await api.setup("acme")
    patch = {"unified_model_override": {"crm": {"contacts": {"list": {"resource": "x"}}}}}
    await api.call("PATCH", f"/v1/accounts/{account}", json=patch)
    _, history = await api.call("GET", f"/v1/accounts/{account}/overrides/history")
    await api.call("DELETE", f"/v1/accounts/{account}")
    before = await api.event_count()
    for method, path, body in (
        ("PATCH", f"/v1/accounts/{account}", patch),  # the override already is so: a change of nothing
        ("PATCH", f"/v1/accounts/{account}", {}),
        ("POST", f"/v1/accounts/{account}/overrides:rollback", {"version": history["versions"][-1]["version"]}),
        ("POST", "/v1/mappings:preview", {"account_id": account, "model": "crm", "resource": "contacts",
                                          "method": "list", "sample": [SF_RECORD]}),
    ):
        response, problem = await api.call(method, path, 409, json=body)
        assert response.content_type == PROBLEM_JSON and problem["type"].endswith("/state-conflict"), problem
    response, problem = await api.effective(account, expect=409)
    assert response.content_type == PROBLEM_JSON and problem["type"].endswith("/state-conflict"), problem
    assert await api.event_count() == before
    # Its history stays readable: it is the audit trail.
    await api.call("GET", f"/v1/accounts/{account}/overrides/history")


async def test_a_null_in_an_environment_override_deletes_the_integrations_field_until_rolled_back(gateway):
    api = await _api(gateway, "admin")
    (account,) = await api.setup("acme")
    _, env = await api.call("PUT", "/v1/environments/prod/overrides", json={
        "unified_model_override": {"crm": {"contacts": {"list": {"query_mapping": None}}}}})
    assert env["changed"] is True
    _, effective = await api.effective(account)
    assert "query_mapping" not in effective["config"] and "query_mapping" not in effective["provenance"]
    assert effective["config"]["response_mapping"] == BASE_LIST["response_mapping"]
    assert effective["removed"] == {"query_mapping": "environment"}
    # Another change of the environment keeps the null; the account may still set the field.
    await api.call("PUT", "/v1/environments/prod/overrides", json={
        "unified_model_override": {"crm": {"contacts": {"list": {"method": "post"}}}}})
    await api.call("PATCH", f"/v1/accounts/{account}", json={"unified_model_override": {"crm": {"contacts": {"list": {
        "response_mapping": None}}}}})
    _, effective = await api.effective(account)
    assert set(effective["config"]) == {"resource", "method"} and effective["config"]["method"] == "post"
    assert effective["removed"] == {"query_mapping": "environment", "response_mapping": "account"}
    result = await api.preview(422, account_id=account, model="crm", resource="contacts", method="list", sample=[])
    assert result["errors"][0]["field"] == "mapping"
    # Rolling back is how a null goes away again: the integration's field shows once more.
    await api.call("POST", "/v1/environments/prod/overrides:rollback", json={"version": 0})
    await api.call("POST", f"/v1/accounts/{account}/overrides:rollback", json={"version": 0})
    _, effective = await api.effective(account)
    assert effective["config"] == BASE_LIST and effective["removed"] == {}


async def test_secret_named_keys_are_refused_however_they_are_spelled(gateway):
    api = await _api(gateway, "admin")
    (account,) = await api.setup("acme")
    before = await api.event_count()
    for body, field in (
        ({"context": {"X-Api-Key": "leaky-secret-value"}}, "context.X-Api-Key"),
        ({"context": {"headers": {"Authorization": "Bearer leaky-secret-value"}}}, "context.headers.Authorization"),
        ({"context": {"oauthToken": "leaky-secret-value"}}, "context.oauthToken"),
        ({"integration_override": {"auth": {"private_key": "leaky-secret-value"}}}, "integration_override.auth.private_key"),
        ({"integration_override": {"clientSecretValue": "leaky-secret-value"}}, "integration_override.clientSecretValue"),
        ({"unified_model_override": {"crm": {"contacts": {"list": {"session_credentials": "leaky-secret-value"}}}}},
         "unified_model_override.crm.contacts.list.session_credentials"),
    ):
        _, problem = await api.call("PATCH", f"/v1/accounts/{account}", 422, json=body)
        assert problem["errors"][0]["field"] == field and "leaky-secret-value" not in str(problem), problem
    _, problem = await api.call("PUT", "/v1/environments/prod/overrides", 422, json={
        "integrations": {"salesforce": {"integration_override": {"Refresh-Token": "leaky-secret-value"}}}})
    assert problem["errors"][0]["field"] == "integrations.salesforce.integration_override.Refresh-Token"
    assert await api.event_count() == before
    # Names that only say where or how a token is obtained are not secrets.
    _, patched = await api.call("PATCH", f"/v1/accounts/{account}", json={
        "integration_override": {"token_url": "https://test.salesforce.com/services/oauth2/token",
                                 "authorization_url": "https://test.salesforce.com/services/oauth2/authorize"},
        "context": {"token_type": "Bearer"}})
    assert patched["changed"] is True and patched["context"]["token_type"] == "Bearer"
