"""What an auditor reads: an account's history, its state as of an instant, the audit trail with its
filters (JSON pages and CSV), migration health, all scoped to the key's environments."""

import asyncio
import csv
import io
import os
import sys
from datetime import timedelta
from pathlib import Path

from events.envelope import NewEvent
from events.hashing import format_instant
from service.gateway.keys import UOW
from tests.e2e.test_authorization_matrix import _integration_body, _truto


async def _import(client, env: str, tenant: str, headers: dict) -> dict:
    response = await client.post(f"/v1/environments/{env}/accounts", json=_truto(tenant), headers=headers)
    assert response.status == 201, await response.text()
    return (await response.json())["account"]


async def test_history_as_of_audit_trail_and_health(gateway):
    client, admin = gateway.client, await gateway.headers("admin")
    for env in ("prod", "staging"):
        assert (await client.put(f"/v1/environments/{env}/integrations/salesforce", json=_integration_body(),
                                 headers=admin)).status == 200
    healthy, lost = await _import(client, "prod", "t-healthy", admin), await _import(client, "prod", "t-lost", admin)
    await _import(client, "staging", "t-staging", admin)

    # The grant of one account died; it has needed re-authentication for eight days by the service's
    # clock (its `since`), so it counts as stuck.
    uow = client.app[UOW]
    died = uow.clock()
    since = died - timedelta(days=8)
    now = died + timedelta(seconds=1)
    before_death = format_instant(died - timedelta(microseconds=1))
    await uow.store.append(f"account-{lost['id']}", [
        NewEvent("TokenRefreshFailed", {"at": format_instant(died), "attempt": 1, "failure_class": "invalid_grant",
                                        "http_status": 400, "provider_error": "invalid_grant", "retry_at": None},
                 occurred_at=died, actor="system:refresher"),
        NewEvent("AccountNeedsReauth", {"at": format_instant(died), "reason": "invalid_grant",
                                        "since": format_instant(since)}, occurred_at=died, actor="system:refresher"),
    ], lost["version"])
    await uow.store.append(f"account-{healthy['id']}", [NewEvent(
        "TokenRefreshed", {"at": format_instant(now), "expires_at": None, "fingerprints": healthy["fingerprints"],
                           "rotated": False, "scopes": [], "scopes_changed": False}, occurred_at=now,
        actor="system:refresher")], healthy["version"])
    auditor = await gateway.headers("auditor")

    history = await (await client.get(f"/v1/accounts/{lost['id']}/events", headers=auditor)).json()
    events = history["events"]
    assert [e["version"] for e in events] == list(range(1, len(events) + 1))
    assert [e["type"] for e in events][-2:] == ["TokenRefreshFailed", "AccountNeedsReauth"]
    assert all(e["prev_hash"] == previous["hash"] for previous, e in zip(events, events[1:]))
    assert events[0]["actor"].startswith("key:") and events[0]["correlation_id"]
    assert events[1]["encrypted_secret"] is True and "secret" not in events[1]

    past = await (await client.get(f"/v1/accounts/{lost['id']}?as_of={before_death}", headers=auditor)).json()
    current = await (await client.get(f"/v1/accounts/{lost['id']}", headers=auditor)).json()
    assert (past["status"], current["status"]) == ("active", "needs_reauth")

    page = await (await client.get("/v1/audit?environment=prod&type=AccountNeedsReauth", headers=auditor)).json()
    assert [(r["account_id"], r["outcome"], r["actor"]) for r in page["data"]] == [
        (lost["id"], "failure", "system:refresher")]
    everything, cursor = [], None
    while True:
        body = await (await client.get("/v1/audit?limit=2" + (f"&cursor={cursor}" if cursor else ""),
                                       headers=auditor)).json()
        everything += body["data"]
        if not (cursor := body["next_cursor"]):
            break
    assert len(everything) == len({r["position"] for r in everything}) >= 11
    assert {r["environment"] for r in everything} >= {"prod", "staging"}
    window = await (await client.get(f"/v1/audit?since={format_instant(died)}&until={format_instant(died)}",
                                     headers=auditor)).json()
    assert [r["action"] for r in window["data"]] == ["TokenRefreshFailed", "AccountNeedsReauth"]
    response = await client.get("/v1/audit?environment=prod", headers={**auditor, "Accept": "text/csv"})
    assert response.content_type == "text/csv"
    rows = list(csv.DictReader(io.StringIO(await response.text())))
    assert len(rows) == sum(1 for r in everything if r["environment"] == "prod")
    assert {r["action"] for r in rows} >= {"AccountConnecting", "TokensImported", "TokenRefreshed"}

    staging_only = await gateway.headers("auditor", "staging")
    scoped = await (await client.get("/v1/audit", headers=staging_only)).json()
    assert scoped["data"] and {r["environment"] for r in scoped["data"]} == {"staging"}
    assert (await client.get(f"/v1/accounts/{lost['id']}/events", headers=staging_only)).status == 404

    health = await (await client.get("/v1/environments/prod/health", headers=auditor)).json()
    figures = health["integrations"]["salesforce"]
    assert (figures["imported"], figures["active"], figures["needs_reauth"]) == (2, 1, 1)
    assert figures["stuck_needs_reauth_over_7_days"] == 1
    assert (figures["refreshes_succeeded"], figures["refreshes_failed"], figures["refresh_success_rate"]) == (1, 1, 0.5)
    assert (await client.get("/v1/environments/prod/health", headers=staging_only)).status == 404

    verdict = await (await client.post("/v1/ledger/verify", headers=auditor)).json()
    assert verdict["ok"] and verdict["events"] == len(everything)

    timeline = await _replay(gateway.database_url, lost["id"])
    assert "AccountNeedsReauth" in timeline and "-> needs_reauth (invalid_grant)" in timeline
    assert timeline.strip().splitlines()[-1].endswith("status needs_reauth, version 5")
    earlier = await _replay(gateway.database_url, lost["id"], "--until", before_death)
    assert "AccountNeedsReauth" not in earlier and earlier.strip().splitlines()[-1].endswith("status active, version 3")


async def _replay(database_url: str, *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "linkledger"), "replay", *args,
        env={**os.environ, "LINKLEDGER_DATABASE_URL": database_url}, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return out.decode()
