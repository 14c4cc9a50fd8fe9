"""The `linkledger` command as a user runs it: as a separate process, from a shell environment."""

import sys
import asyncio
import os
import re
import signal
import time
from pathlib import Path

import aiohttp
import pytest

ROOT = Path(__file__).resolve().parents[2]
LINKLEDGER = Path(sys.executable).parent / "linkledger"  # the console script of the running environment


def _env(**linkledger_vars: str) -> dict[str, str]:
    """The caller's environment without any LINKLEDGER_* variable, plus the ones given."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("LINKLEDGER_")}
    env.update({f"LINKLEDGER_{k.upper()}": v for k, v in linkledger_vars.items()})
    return env


async def _run(*args: str, env: dict[str, str], timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(LINKLEDGER), *args, env=env, cwd=str(ROOT),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"linkledger {' '.join(args)} did not finish within {timeout} s") from None
    return proc.returncode, out.decode(), err.decode()


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected exactly one line on stderr, got:\n{err}"
    assert "Traceback" not in err
    return lines[0]


# --------------------------------------------------------------------------- configuration errors


async def test_serve_without_a_database_url_exits_2_with_one_line_naming_it():
    code, out, err = await _run("serve", env=_env())
    assert code == 2, (out, err)
    assert "LINKLEDGER_DATABASE_URL" in _one_line(err)


async def test_serve_with_a_database_url_but_no_nats_url_names_nats():
    code, _, err = await _run("serve", env=_env(database_url="postgresql://u@127.0.0.1:1/x"))
    assert code == 2
    assert "LINKLEDGER_NATS_URL" in _one_line(err)


@pytest.mark.parametrize(
    "url",
    [
        "not-a-url",
        "mysql://root@127.0.0.1/linkledger",
        # Looks like PostgreSQL, but the port is not a number.
        "postgresql://postgres@127.0.0.1:fivefourthreetwo/linkledger",
    ],
)
async def test_migrate_with_a_malformed_database_url_exits_2_with_one_line(url):
    code, out, err = await _run("migrate", env=_env(database_url=url))
    assert code == 2, (out, err)
    assert "LINKLEDGER_DATABASE_URL" in _one_line(err)


async def test_migrate_without_a_database_url_exits_2_naming_it():
    code, _, err = await _run("migrate", env=_env())
    assert code == 2
    assert "LINKLEDGER_DATABASE_URL" in _one_line(err)


async def test_a_bad_setting_is_reported_before_anything_starts():
    code, _, err = await _run(
        "serve", env=_env(database_url="postgresql://u@127.0.0.1:1/x", nats_url="nats://127.0.0.1:1",
                          log_level="chatty"),
    )
    assert code == 2
    assert "LINKLEDGER_LOG_LEVEL" in _one_line(err)


# --------------------------------------------------------------------------- migrate against a database


async def test_migrate_applies_then_reports_up_to_date(servers):
    import uuid

    import asyncpg

    from events.database import database_url_for

    name = f"ll_cli_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(servers.database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = database_url_for(servers.database_url, name)
        code, out, err = await _run("migrate", env=_env(database_url=url))
        assert code == 0, (out, err)
        assert "events/0001_event_log.sql" in out
        code, out, err = await _run("migrate", env=_env(database_url=url))
        assert code == 0, (out, err)
        assert "up to date" in out
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


# --------------------------------------------------------------------------- the quickstart

DEV_START_TIMEOUT = 90
DEV_STOP_TIMEOUT = 30


async def test_dev_starts_everything_itself_serves_readyz_and_stops_on_ctrl_c(tmp_path):
    """`linkledger dev` with nothing configured: embedded PostgreSQL and NATS, the gateway, a URL."""
    stderr_path = tmp_path / "dev.stderr"
    with open(stderr_path, "wb") as stderr_file:
        proc = await asyncio.create_subprocess_exec(
            str(LINKLEDGER), "dev", "--port", "0", env=_env(), cwd=str(tmp_path),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=stderr_file,
            start_new_session=True,  # Ctrl-C goes to the dev process only, as the test sends it
        )
    printed: list[str] = []

    async def read_until(pattern: str, timeout: float) -> re.Match | None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = await asyncio.wait_for(proc.stdout.readline(), timeout=left)
            except TimeoutError:
                return None
            if not line:
                return None
            printed.append(line.decode())
            if match := re.search(pattern, printed[-1]):
                return match
        return None

    def context() -> str:
        return "stdout:\n" + "".join(printed) + "\nstderr:\n" + stderr_path.read_text(errors="replace")[-4000:]

    try:
        match = await read_until(r"(http://[0-9A-Za-z.\-\[\]:]+:\d+)", DEV_START_TIMEOUT)
        assert match, f"no gateway URL printed within {DEV_START_TIMEOUT} s\n{context()}"
        url = match.group(1)

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
            async with http.get(f"{url}/readyz") as response:
                body = await response.json(content_type=None)
                assert response.status == 200, f"{body}\n{context()}"
                assert body["checks"]["postgres"] == "ok"
                assert body["checks"]["nats"] == "ok"

        proc.send_signal(signal.SIGINT)
        try:
            code = await asyncio.wait_for(proc.wait(), timeout=DEV_STOP_TIMEOUT)
        except TimeoutError:
            raise AssertionError(f"linkledger dev did not stop within {DEV_STOP_TIMEOUT} s of SIGINT\n{context()}")
        rest = await proc.stdout.read()
        printed.append(rest.decode())
        assert code == 0, context()
        assert "stopped." in "".join(printed), context()
    finally:
        if proc.returncode is None:
            # Only our own process group: the dev process and the servers it started.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await proc.wait()


# --------------------------------------------------------------------------- import and export


async def test_import_a_file_then_export_it_from_the_command_line(database_url, servers, tmp_path):
    """`linkledger import` (more than a thousand records: its import workers share them out) reports
    each rejected line on stderr and a summary; `linkledger export` gives every account back."""
    import json as jsonlib

    from events.database import create_pool
    from service.bootstrap import bootstrap
    from service.crypto.fingerprint import generate_audit_key
    from service.crypto.keyring import Keyring
    from service.domain.commands import ConfigureIntegration
    from service.handlers.integrations import configure_integration
    from tests.conftest import gateway_settings

    keyring, audit_key = Keyring.generate("kek-cli"), generate_audit_key()
    pool = await create_pool(database_url, max_size=2)
    try:
        uow = bootstrap(gateway_settings(database_url, servers.nats_url, keyring=keyring, audit_key=audit_key), pool)
        await configure_integration(ConfigureIntegration(environment="prod", name="hubspot"), uow.acting_as("test"))
    finally:
        await pool.close()
    records = [{"integration_name": "hubspot", "tenant_id": f"t{i}", "authentication_method": "oauth2",
                "context": {"oauth": {"token": {"access_token": f"at-{i}", "refresh_token": f"rt-{i}",
                                                "expires_at": "2027-01-01T00:00:00Z"}}}} for i in range(1200)]
    records[10]["context"]["oauth"]["token"]["expires_at"] = "someday"
    source = tmp_path / "truto.ndjson"
    source.write_text("\n".join(jsonlib.dumps(r) for r in records) + "\n")
    env = _env(database_url=database_url, keyring=keyring, audit_key=audit_key)
    code, out, err = await _run("import", str(source), "--env", "prod", "--profile", "truto", env=env, timeout=120)
    assert code == 1, (out, err)  # a rejected line makes the exit status say so
    assert "1199 imported, 0 updated, 0 unchanged, 1 rejected" in out
    assert "line 11: rejected: context.oauth.token.expires_at:" in err
    code, out, err = await _run("import", str(source), "--env", "prod", "--profile", "truto", env=env, timeout=120)
    assert "0 imported, 0 updated, 1199 unchanged, 1 rejected" in out, (out, err)
    exported = tmp_path / "export.ndjson"
    code, out, err = await _run("export", "--env", "prod", "--purpose", "test", "-o", str(exported), env=env, timeout=120)
    assert code == 0, (out, err)
    lines = [jsonlib.loads(line) for line in exported.read_text().splitlines()]
    assert len(lines) == 1199
    assert {line["credentials"]["access_token"] for line in lines} == {f"at-{i}" for i in range(1200) if i != 10}
