"""Account command handlers: load, decide, append. Secrets are encrypted here, under the account's
own data key, bound to the event they travel in; the domain only ever sees fingerprints."""

import asyncio
import itertools
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, AsyncIterator, Iterable, Iterator, Literal

import asyncpg

from events.batching import Coalescer
from events.catalog.account import TokensImported
from events.envelope import NewEvent, uuid7
from events.errors import EventStoreError
from events.store import Companion, CreationBatch, PreparedStream, creation_batch, prepare_creation
from service.crypto.datakeys import DataKey
from service.crypto.envelope import decrypt, encrypt, event_aad
from service.domain import account as account_domain
from service.domain.account import AccountState
from service.domain.commands import DeleteAccount, ExportTokens, ImportAccount
from service.domain.errors import DomainError
from service.domain.identity import account_id_for, account_stream, integration_stream
from service.domain.integration import IntegrationState
from service.handlers.import_profiles import ParsedRecord, export_record
from service.handlers.repositories import load_account, load_account_and_integration, load_integration
from service.handlers.commit import decide_and_append
from service.handlers.uow import UnitOfWork, snapshot_json
from service.runtime import collector_paused

Outcome = Literal["imported", "updated", "unchanged"]


@dataclass(frozen=True)
class ImportOutcome:
    account_id: uuid.UUID
    outcome: Outcome
    state: AccountState


@dataclass(frozen=True)
class RecordResult:
    line: int
    outcome: Literal["imported", "updated", "unchanged", "rejected"]
    account_id: uuid.UUID | None = None
    status: str | None = None
    field: str | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"line": self.line, "outcome": self.outcome}
        if self.account_id:
            out["account_id"] = str(self.account_id)
            out["status"] = self.status
        if self.outcome == "rejected":
            out["field"] = self.field
            out["reason"] = self.reason
        return out


class AccountNotFound(DomainError):
    pass


def _to_new_events(uow: UnitOfWork, stream: str, events, now: datetime, plaintext: dict, data_key) -> list[NewEvent]:
    """The events as the store takes them, the imported credentials (`plaintext`) encrypted into
    TokensImported under the account's data key."""
    out = []
    for event in events:
        if isinstance(event, TokensImported):
            event_id = uuid7()
            ciphertext = encrypt(data_key.key, plaintext, event_aad(stream, event_id))
            out.append(uow.new_event(event, now, event_id=event_id, secret=ciphertext, key_id=data_key.key_id))
        else:
            out.append(uow.new_event(event, now))
    return out


async def import_account(
    cmd: ImportAccount, uow: UnitOfWork, *, integration: IntegrationState | None = None
) -> ImportOutcome:
    """Import one account: a new account, newer tokens for a known one, or nothing when unchanged."""
    account_id = account_id_for(cmd)
    stream = account_stream(account_id)
    if integration is None and stream not in uow.shared.existing_streams:
        created = await _create_on_held_integration(uow, cmd, account_id, stream)
        if created is not None:
            return created
    plaintext = cmd.credentials.plaintext()
    fingerprints = uow.fingerprinter.fingerprints(plaintext)
    if integration is None:
        state, integration = await load_account_and_integration(
            uow.store, uow.shared.integrations, account_id, cmd.environment, cmd.integration)
    else:
        state = await load_account(uow.store, account_id)
    if state.exists:
        uow.shared.existing_streams.add(stream)

    def decide(state: AccountState, now: datetime):
        return account_domain.decide(state, cmd, now, integration=integration, fingerprints=fingerprints)

    now = uow.clock()
    events = decide(state, now)
    if not events:
        return ImportOutcome(account_id, "unchanged", state)
    if state.status is None:
        created = await _create_account(uow, plaintext, stream, state, now, events)
        if created is not None:
            return created
        # Created meanwhile by someone else, or its key was: the ordinary way, as an update.
        state = await load_account(uow.store, account_id)
        now = uow.clock()
        events = decide(state, now)
        if not events:
            return ImportOutcome(account_id, "unchanged", state)
    data_key = await uow.data_keys.get_or_create(stream, likely_new=state.status is None)
    loaded = [state]

    async def load() -> AccountState:
        loaded.append(await load_account(uow.store, account_id))
        return loaded[-1]

    def encode(events, now):
        return _to_new_events(uow, stream, events, now, plaintext, data_key)

    new_state, events = await decide_and_append(uow, stream, load=load, decide=decide, evolve=account_domain.evolve,
                                                encode=encode, initial=state, decided=(now, events))
    if not events:
        return ImportOutcome(account_id, "unchanged", new_state)
    await schedule_accounts(uow, [new_state])
    return ImportOutcome(account_id, "imported" if loaded[-1].status is None else "updated", new_state)


# A new account's refresh schedule row, written with its stream (events.store.Companion).
_SCHEDULE_WITH_STREAM = (
    "INSERT INTO refresh_schedule (account_id, due_at) SELECT account_id, due_at FROM {rows} WHERE due_at IS NOT NULL"
    " ON CONFLICT (account_id) DO UPDATE SET due_at = excluded.due_at, attempt = 0"
)
_SCHEDULE_COLUMNS = (("account_id", "uuid"), ("due_at", "timestamptz"))


# Admits a new account only while its integration's stream is at the version it was decided on
# (a probe per row, not a join: see the note on lookups in events.store).
_INTEGRATION_AT = (
    "SELECT rows.stream_id FROM {rows} CROSS JOIN LATERAL (SELECT FROM stream_heads h"
    " WHERE h.stream_id = rows.integration_stream AND h.version = rows.integration_version LIMIT 1) AS held"
)
_INTEGRATION_AT_COLUMNS = (("integration_stream", "text"), ("integration_version", "int"))


async def _create_on_held_integration(
    uow: UnitOfWork, cmd: ImportAccount, account_id: uuid.UUID, stream: str
) -> ImportOutcome | None:
    """The usual import, of an account not seen before, in one round trip instead of two: decided
    as a new account on the integration state this process holds, and created only if the account
    does not exist and the integration is still at that version (checked by the creating
    statement). Concurrent ones are prepared together and written by one statement
    (_create_held). None: nothing was written, take the ordinary way."""
    integration = uow.shared.integrations.get(integration_stream(cmd.environment, cmd.integration))
    if integration is None or not integration.configured:
        return None
    batcher = uow.shared.batcher("held_accounts", lambda: Coalescer(
        _create_held, alone_on=_ALONE_ON, min_share=_HELD_MIN_SHARE))
    return await batcher.submit(stream, (uow, cmd, account_id, stream, integration, uow.clock()))


# New accounts of concurrent commands are not split into batches smaller than this across idle
# connections: each creating statement costs PostgreSQL 0.3-0.4 ms whatever it holds, besides
# ~0.13 ms per account, and the two vCPUs it was measured on gain nothing from running two small
# statements at once. Measured with 16 tasks: batches of 2-6 went away, the serving thread's idle
# time fell, and commands/s rose (up to a fifth). A lone command still goes at once.
_HELD_MIN_SHARE = 8
# Errors after which each command of a shared batch is tried alone, and meets its own error there.
_ALONE_ON = (asyncpg.PostgresError, OSError, asyncio.TimeoutError, EventStoreError, ValueError)


async def _create_held(items: list[tuple]) -> dict[str, ImportOutcome]:
    """New accounts of concurrent commands, each (unit of work, command, account id, stream, held
    integration state, now): decided, prepared stage by stage (see _new_account_streams) and
    created by one statement. An account refused on the held state, or not created, is left out."""
    # One refused on the held state is left out: decided again on the current one, to be sure.
    decided, _ = _decide_new_accounts([
        (acting, cmd, account_id, stream, integration, now, (Companion(
            _INTEGRATION_AT, _INTEGRATION_AT_COLUMNS,
            (integration_stream(integration.environment, integration.name), integration.version), gate=True),))
        for acting, cmd, account_id, stream, integration, now in items
    ])
    if not decided:
        return {}
    made = _new_account_streams(decided)
    created = await decided[0][0].store.create_batch_streams(creation_batch([prepared for _, _, prepared in made]))
    outcomes = {}
    for (acting, *_), (state, key, prepared) in zip(decided, made):
        if prepared.stream_id in created:
            acting.data_keys.created(key)
            acting.shared.existing_streams.add(prepared.stream_id)
            outcomes[prepared.stream_id] = ImportOutcome(state.account_id, "imported", state)
    return outcomes


async def _create_account(
    uow: UnitOfWork, plaintext: dict, stream: str, blank: AccountState, now: datetime, events: list,
) -> ImportOutcome | None:
    """A new account in one statement, shared with concurrent ones: its data key, its stream and
    its refresh schedule, all or nothing. None when its stream or its key exists already."""
    [(state, data_key, prepared)] = _new_account_streams([(uow, plaintext, stream, blank, now, events, ())])
    stored = await uow.store.create_prepared_stream(prepared)
    if stored is None:
        return None
    uow.data_keys.created(data_key)
    uow.shared.existing_streams.add(stream)
    return ImportOutcome(state.account_id, "imported", state)


def _decide_new_accounts(
    accounts: list[tuple[UnitOfWork, ImportAccount, uuid.UUID, str, IntegrationState, datetime, tuple[Companion, ...]]],
) -> tuple[list[tuple], list[tuple[int, DomainError]]]:
    """Each (unit of work acting, command, account id, stream, integration state, now, gates)
    fingerprinted, then decided as a new account, stage by stage (see _new_account_streams): the
    decided ones as _new_account_streams takes them, in order, and each refused one's index and error."""
    plaintexts = [cmd.credentials.plaintext() for _, cmd, *_ in accounts]
    prints = [uow.fingerprinter.fingerprints(plaintext) for (uow, *_), plaintext in zip(accounts, plaintexts)]
    decided, refused = [], []
    for index, ((uow, cmd, account_id, stream, integration, now, gates), plaintext, fingerprints) in enumerate(
            zip(accounts, plaintexts, prints)):
        blank = AccountState.blank(account_id)
        try:
            events = account_domain.decide(blank, cmd, now, integration=integration, fingerprints=fingerprints)
        except DomainError as error:
            refused.append((index, error))
            continue
        decided.append((uow, plaintext, stream, blank, now, events, gates))
    return decided, refused


def _new_account_streams(
    accounts: list[tuple[UnitOfWork, dict, str, AccountState, datetime, list, tuple[Companion, ...]]],
) -> list[tuple[AccountState, DataKey, PreparedStream]]:
    """New accounts' streams made ready to create, each (unit of work acting, the credentials'
    plaintext, stream, blank state, now, decided events, gates): folded, under a new data key, its
    events encrypted and encoded, its key and refresh schedule as companions (after its gates).

    The work goes stage by stage over all of them (every fold, then every data key, ...): each
    stage's code stays in the processor's caches, which makes a bulk import's chunk about a third
    faster to prepare than going account by account."""
    states = [account_domain.fold(blank, events) for _, _, _, blank, _, events, _ in accounts]
    keys = [uow.data_keys.new_key(stream) for uow, _, stream, *_ in accounts]
    snapshots = [snapshot_json(state) for state in states]
    encoded = [_to_new_events(uow, stream, events, now, plaintext, key)
               for (uow, plaintext, stream, _, now, events, _), (key, _) in zip(accounts, keys)]
    schedules = [_schedule_row(uow, state) for (uow, *_), state in zip(accounts, states)]
    return [
        (state, key, prepare_creation(stream, new_events, snapshot, (*gates, key_row, schedule)))
        for (_, _, stream, _, _, _, gates), state, (key, key_row), snapshot, new_events, schedule
        in zip(accounts, states, keys, snapshots, encoded, schedules)
    ]


def _schedule_row(uow: UnitOfWork, state: AccountState) -> Companion:
    return Companion(_SCHEDULE_WITH_STREAM, _SCHEDULE_COLUMNS, (state.account_id, _due_at(uow, state)))


@dataclass(frozen=True)
class NewAccount:
    """A new account of a bulk import, prepared: its stream, status and new data key."""

    line: int
    stream: str
    status: str
    key: DataKey


@dataclass(frozen=True)
class Rejection:
    line: int
    field: str | None
    reason: str


@dataclass(frozen=True)
class PreparedChunk:
    """New accounts ready to be written by one statement (`batch`: their events encrypted,
    encoded and hashed, with each one's data key and refresh schedule), and the refused records."""

    accounts: list[NewAccount]
    rejections: list[Rejection]
    batch: CreationBatch | None


def prepare_new_accounts(
    uow: UnitOfWork, job: list[tuple[int, ImportAccount, uuid.UUID, str]],
    integrations: dict[tuple[str, str], IntegrationState], now: datetime,
) -> PreparedChunk:
    """The CPU-bound part of creating new accounts, (line, command, account id, stream) each: no
    I/O, so it runs in this process or in an import worker's (service.handlers.import_workers)."""
    decided, refused = _decide_new_accounts([
        (uow, cmd, account_id, stream, integrations[(cmd.environment, cmd.integration)], now, ())
        for _, cmd, account_id, stream in job
    ])
    rejections = [Rejection(job[index][0], error.field, str(error)) for index, error in refused]
    left_out = {index for index, _ in refused}
    lines = [line for index, (line, *_) in enumerate(job) if index not in left_out]
    made = _new_account_streams(decided)
    accounts = [NewAccount(line, prepared.stream_id, state.status, key) for line, (state, key, prepared) in zip(lines, made)]
    return PreparedChunk(accounts, rejections, creation_batch([prepared for _, _, prepared in made]) if made else None)


_INTEGRATION_FIELD = {"truto": "integration_name", "nango": "provider_config_key", "canonical": "integration"}


# Which of these streams exist (a probe per stream: see the note on lookups in events.store).
_EXISTING = (
    "SELECT h.stream_id FROM unnest($1::text[]) AS k(stream_id)"
    " CROSS JOIN LATERAL (SELECT stream_id FROM stream_heads WHERE stream_id = k.stream_id LIMIT 1) AS h"
)


# Below this many new accounts in a chunk, handing it to a worker costs more than it saves.
_WORKER_MINIMUM = 100


async def import_accounts(
    records: Iterable[ParsedRecord], uow: UnitOfWork, *, profile: str = "canonical", chunk: int = 250,
    concurrency: int = 16,
) -> list[RecordResult]:
    """Bulk import. New accounts go in together (one statement per chunk); known ones one by one.
    Every record gets its own result; a bad one never stops or hides the others.

    `records` may be a lazy iterator (import_profiles.iter_parse_import): the records are taken a
    chunk at a time, so parsing the next chunk overlaps preparing and writing the earlier ones.
    The cyclic garbage collector is paused meanwhile (service.runtime.collector_paused)."""
    with collector_paused():
        return await _import_accounts(records, uow, profile=profile, chunk=chunk, concurrency=concurrency)


async def _import_accounts(
    records: Iterable[ParsedRecord], uow: UnitOfWork, *, profile: str, chunk: int, concurrency: int,
) -> list[RecordResult]:
    results: dict[int, RecordResult] = {}
    lines: list[int] = []
    integrations: dict[tuple[str, str], IntegrationState] = {}
    known: list[tuple[ParsedRecord, ImportAccount]] = []
    by_line: dict[int, tuple[ParsedRecord, ImportAccount, uuid.UUID]] = {}
    workers = uow.shared.import_workers

    def reject(record: ParsedRecord, field: str | None, reason: str) -> None:
        if field == "integration":
            field = _INTEGRATION_FIELD.get(profile, "integration")
        results[record.line] = RecordResult(record.line, "rejected", field=field, reason=reason)

    async def write(prepared: PreparedChunk) -> None:
        created = await uow.store.create_batch_streams(prepared.batch) if prepared.batch else set()
        for new in prepared.accounts:
            record, cmd, account_id = by_line[new.line]
            if new.stream not in created:
                known.append((record, cmd))  # created meanwhile by someone else, or its key was: an update
            else:
                uow.data_keys.created(new.key)
                results[record.line] = RecordResult(record.line, "imported", account_id, new.status)

    # New accounts go in chunks, each decided, encrypted, encoded and hashed (the CPU-bound part:
    # in the import workers' processes when there are any, else here), then written in one
    # statement with every account's data key and refresh schedule. Taking the next chunk's
    # records (parsing them) overlaps the workers' preparing; at most two writes are in flight.
    preparing: list[asyncio.Future | PreparedChunk] = []
    writes: list[asyncio.Task] = []

    async def write_next() -> None:
        nonlocal writes
        prepared = preparing.pop(0)
        if isinstance(prepared, asyncio.Future):
            prepared = await prepared
        for rejection in prepared.rejections:
            reject(by_line[rejection.line][0], rejection.field, rejection.reason)
        writes = [w for w in writes if not w.done()]
        if len(writes) >= 2:
            await asyncio.wait(writes, return_when=asyncio.FIRST_COMPLETED)
        writes.append(asyncio.create_task(write(prepared)))
        await asyncio.sleep(0)  # let the write start before the next chunk's preparing

    for wave in _chunks(records, chunk):
        commands: list[tuple[ParsedRecord, ImportAccount, uuid.UUID, str]] = []  # with the account id and stream
        for record in wave:
            lines.append(record.line)
            if record.error is not None:
                results[record.line] = RecordResult(record.line, "rejected", field=record.error.field,
                                                    reason=record.error.reason)
                continue
            account_id = account_id_for(record.command)
            commands.append((record, record.command, account_id, account_stream(account_id)))
            key = (record.command.environment, record.command.integration)
            if key not in integrations:
                integrations[key] = await load_integration(uow.store, *key)
        existing = {row["stream_id"] for row in await uow.pool.fetch(_EXISTING, [c[3] for c in commands])}
        job = []
        for record, cmd, account_id, stream in commands:
            if stream in existing:
                known.append((record, cmd))
            else:
                by_line[record.line] = (record, cmd, account_id)
                job.append((record.line, cmd, account_id, stream))
        if workers is not None and len(job) >= _WORKER_MINIMUM:
            preparing.append(asyncio.ensure_future(workers.prepare(uow, job, integrations, uow.clock())))
        else:
            preparing.append(prepare_new_accounts(uow, job, integrations, uow.clock()))
        while len(preparing) > (2 if workers is not None else 0):  # keep the workers busy meanwhile
            await write_next()
    while preparing:
        await write_next()
    await asyncio.gather(*writes)

    limit = asyncio.Semaphore(concurrency)

    async def one(record: ParsedRecord, cmd: ImportAccount) -> None:
        async with limit:
            try:
                outcome = await import_account(cmd, uow, integration=integrations[(cmd.environment, cmd.integration)])
            except DomainError as error:
                reject(record, error.field, str(error))
                return
            results[record.line] = RecordResult(record.line, outcome.outcome, outcome.account_id, outcome.state.status)

    await asyncio.gather(*(one(r, c) for r, c in known))
    return [results[line] for line in lines]


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


async def schedule_accounts(uow: UnitOfWork, states: list[AccountState]) -> None:
    """Due for a proactive refresh at a random moment 60-180 s before expiry (oauth2 tokens that
    expire); accounts still connecting are due at once, for their health check."""
    due = _due(uow, states)
    if len(due) == 1:
        # One account (a single command): written together with concurrent commands' accounts.
        batcher = uow.shared.batcher("refresh_schedule", lambda: Coalescer(
            lambda batch: _write_schedule(uow.pool, batch), alone_on=(asyncpg.PostgresError, OSError, asyncio.TimeoutError)))
        if await batcher.submit(due[0][0], due[0]):
            return
    if due:
        await _write_schedule(uow.pool, due)


def _due(uow: UnitOfWork, states: list[AccountState]) -> list[tuple[uuid.UUID, datetime]]:
    return [(state.account_id, at) for state in states if (at := _due_at(uow, state)) is not None]


def _due_at(uow: UnitOfWork, state: AccountState) -> datetime | None:
    """When the account's refresh is due: at once while connecting (its first refresh validates
    it), a few minutes before its token expires, or never (no expiry, not oauth2, deleted)."""
    if state.status == "connecting":
        return uow.clock()
    if state.status != "deleted" and state.authentication_method == "oauth2" and state.expires_at:
        return state.expires_at - timedelta(seconds=random.uniform(60, 180))
    return None


async def _write_schedule(pool: asyncpg.Pool, due: list[tuple[uuid.UUID, datetime]]) -> list[bool]:
    await pool.execute(
        "INSERT INTO refresh_schedule (account_id, due_at) SELECT * FROM unnest($1::uuid[], $2::timestamptz[])"
        " ON CONFLICT (account_id) DO UPDATE SET due_at = excluded.due_at, attempt = 0",
        [d[0] for d in due], [d[1] for d in due],
    )
    return [True] * len(due)


async def current_credentials(uow: UnitOfWork, account_id: uuid.UUID) -> dict[str, Any]:
    """The account's current secrets: those of the latest event that carries any."""
    stream = account_stream(account_id)
    row = await uow.pool.fetchrow(
        "SELECT event_id, secret FROM events WHERE stream_id = $1 AND secret IS NOT NULL ORDER BY version DESC LIMIT 1",
        stream,
    )
    if row is None:
        raise AccountNotFound(f"account {account_id} holds no credentials", field="account_id")
    data_key = await uow.data_keys.get(stream)
    return decrypt(data_key.key, bytes(row["secret"]), event_aad(stream, row["event_id"]))


async def load_existing_account(uow: UnitOfWork, account_id: uuid.UUID) -> AccountState:
    state = await load_account(uow.store, account_id)
    if state.status is None:
        raise AccountNotFound(f"account {account_id} does not exist", field="account_id")
    return state


async def record_account_command(uow: UnitOfWork, account_id: uuid.UUID, command, **context) -> AccountState:
    """Decide `command` against the account and append what it produces (retrying on conflicts)."""
    state, _ = await decide_and_append(
        uow, account_stream(account_id),
        load=lambda: load_existing_account(uow, account_id),
        decide=lambda state, now: account_domain.decide(state, command, now, **context),
        evolve=account_domain.evolve,
    )
    return state


async def export_accounts(
    uow: UnitOfWork, *, environment: str, purpose: str, integration: str | None = None
) -> AsyncIterator[dict[str, Any]]:
    """Every live account of an environment in the canonical import format, each one's
    TokensExported written before its tokens are handed out: no record without its event."""
    after = ""
    while True:
        rows = await uow.pool.fetch(
            "SELECT stream_id, snapshot FROM stream_heads WHERE stream_id LIKE 'account-%'"
            " AND snapshot->>'environment' = $1 AND ($2::text IS NULL OR snapshot->>'integration' = $2)"
            " AND snapshot->>'status' <> 'deleted' AND stream_id > $3 ORDER BY stream_id LIMIT 500",
            environment, integration, after,
        )
        if not rows:
            return
        for row in rows:
            after = row["stream_id"]
            state = AccountState.model_validate_json(row["snapshot"]) if isinstance(row["snapshot"], str) \
                else AccountState.model_validate(row["snapshot"])
            secrets = await current_credentials(uow, state.account_id)
            await record_account_command(uow, state.account_id, ExportTokens(account_id=state.account_id, purpose=purpose))
            yield export_record(
                integration=state.integration, tenant_id=state.tenant_id,
                authentication_method=state.authentication_method, external_ref=state.external_ref,
                secrets=secrets, token_type=state.token_type, expires_at=state.expires_at,
                scopes=tuple(state.scopes), context=state.context,
            )


async def delete_account(cmd: DeleteAccount, uow: UnitOfWork) -> AccountState:
    """Deleting destroys the account's data key, then records the deletion: history stays, secrets
    go. The key goes first, so a crash in between never leaves a deleted account's secrets readable;
    a retry records the event."""
    stream = account_stream(cmd.account_id)
    state = await load_existing_account(uow, cmd.account_id)
    if state.status == "deleted":
        return state
    row = await uow.pool.fetchrow("SELECT key_id FROM data_keys WHERE owner = $1", stream)
    await uow.data_keys.shred(stream)
    return await record_account_command(uow, cmd.account_id, cmd, data_key_id=row["key_id"] if row else "none")
