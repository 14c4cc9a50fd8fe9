"""`linkledger bench command`: single-account ImportAccount commands through the handler (no HTTP)
from 16 concurrent tasks, against the raw asyncpg INSERT, one row per transaction, through the
same kind of pool (`ceiling`) and on dedicated connections (`ceiling_dedicated`)."""

import asyncio
import time
import uuid

import asyncpg

from events.database import create_pool
from scripts.bench.accounts import account_uow, truto_record
from scripts.bench.append import RAW_TABLE, _raw_round
from scripts.bench.common import median, percentile_ms, result_line, run_for, scratch_database, servers
from service.handlers.accounts import import_account
from service.handlers.import_profiles import to_command



async def run(seconds: float = 5.0, workers: int = 16, rounds: int = 5) -> str:
    with servers() as (server_dsn, _nats):
        async with scratch_database(server_dsn) as dsn:
            connections = [await asyncpg.connect(dsn) for _ in range(workers)]
            raw_pool = await create_pool(dsn, role=None, min_size=workers, max_size=workers)
            await connections[0].execute(RAW_TABLE)
            try:
                async with account_uow(dsn, pool_size=workers) as uow:
                    counter = iter(range(10**9))
                    run_id = uuid.uuid4().hex[:6]

                    async def step(worker: int) -> None:
                        record = truto_record(next(counter), run_id)  # as a caller holds it: no HTTP, no JSON
                        command = to_command(record, environment="bench", profile="truto", now=uow.clock())
                        outcome = await import_account(command, uow)
                        assert outcome.outcome == "imported"

                    command_rates, pooled_rates, dedicated_rates, latencies, cpu_per_command = [], [], [], [], []
                    for round_no in range(rounds):
                        ops, elapsed, _ = await _raw_round([raw_pool] * workers, seconds, workers, 4000)
                        pooled_rates.append(ops / elapsed)
                        print(f"raw insert (pool)      round {round_no + 1}: {ops / elapsed:,.0f} txn/s", flush=True)
                        ops, elapsed, _ = await _raw_round(connections, seconds, workers, 4000)
                        dedicated_rates.append(ops / elapsed)
                        print(f"raw insert (dedicated) round {round_no + 1}: {ops / elapsed:,.0f} txn/s", flush=True)
                        cpu = time.process_time()
                        ops, elapsed, lat = await run_for(seconds, workers, step)
                        cpu_per_command.append((time.process_time() - cpu) / ops)
                        command_rates.append(ops / elapsed)
                        latencies.extend(lat)
                        print(f"import command         round {round_no + 1}: {ops / elapsed:,.0f} commands/s", flush=True)
            finally:
                await raw_pool.close()
                for conn in connections:
                    await conn.close()
    value, dedicated = median(command_rates), median(dedicated_rates)
    return result_line("command", value, "commands/s", median(pooled_rates),
                       ceiling_dedicated=round(dedicated, 1), ratio_dedicated=round(value / dedicated, 3),
                       p50_ms=percentile_ms(latencies, 0.5), p99_ms=percentile_ms(latencies, 0.99), workers=workers,
                       cpu_us_per_command=round(median(cpu_per_command) * 1e6, 1))


def main(argv: list[str]) -> None:
    print(asyncio.run(run()))
