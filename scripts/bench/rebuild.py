"""`linkledger bench rebuild`: a full blue/green rebuild of account_view and audit_trail over a seeded
log (default 1,000,000 events), against the raw ordered scan with json decoding of the same log in
the same run (the ceiling: a rebuild cannot read faster than that). Rounds alternate.

Options: --events N (1000000), --accounts N (50000), --rounds N (2).
"""

import argparse
import asyncio
import json
import time

import asyncpg

from events.envelope import LogPosition
from projections import PROJECTIONS
from projections.rebuild import rebuild
from projections.source import READ_AFTER
from scripts.bench.common import median, result_line, scratch_database, servers
from scripts.bench.seed import seed_events

PAGE = 20_000


async def raw_scan(conn: asyncpg.Connection) -> tuple[int, float]:
    """The same ordered keyset scan a rebuild does, decoding each payload, and nothing else."""
    started = time.perf_counter()
    after, count, loads = LogPosition.start(), 0, json.loads
    while True:
        rows = await conn.fetch(READ_AFTER, after.tx, after.position, PAGE)
        for row in rows:
            loads(row[6])
        count += len(rows)
        if len(rows) < PAGE:
            return count, time.perf_counter() - started
        after = LogPosition(rows[-1][0], rows[-1][1])


async def run(events: int, accounts: int, rounds: int) -> str:
    chosen = [PROJECTIONS["account_view"], PROJECTIONS["audit_trail"]]
    with servers() as (server_dsn, _nats):
        async with scratch_database(server_dsn) as dsn:
            conn = await asyncpg.connect(dsn)
            try:
                started = time.perf_counter()
                await seed_events(conn, events, accounts)
                seeded = await conn.fetchval("SELECT count(*) FROM events")
                print(f"seeded {seeded:,} events in {time.perf_counter() - started:.1f} s", flush=True)
                ceilings, rates = [], []
                for round_no in range(rounds):
                    count, elapsed = await raw_scan(conn)
                    ceilings.append(count / elapsed)
                    started = time.perf_counter()
                    done = await rebuild(dsn, chosen, page=PAGE)
                    rates.append(done / (time.perf_counter() - started))
                    print(f"round {round_no + 1}: raw scan {ceilings[-1]:,.0f} events/s, "
                          f"rebuild {rates[-1]:,.0f} events/s", flush=True)
                rows = await conn.fetchval("SELECT count(*) FROM audit_trail")
                views = await conn.fetchval("SELECT count(*) FROM account_view")
            finally:
                await conn.close()
    return result_line("rebuild", median(rates), "events/s", median(ceilings), events=seeded, rounds=rounds,
                       projections=[p.name for p in chosen], audit_rows=rows, accounts=views,
                       rates=[round(r) for r in rates], ceilings=[round(c) for c in ceilings])


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="linkledger bench rebuild")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--accounts", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    print(asyncio.run(run(args.events, args.accounts, args.rounds)))
