"""Sample source schema and a live workload, for the demo, the tests and the benchmarks.

Three tables with varied types (``customers``, ``products``, ``orders``) in a schema of the
source PostgreSQL, filled with deterministic pseudo-random rows, and a workload of inserts,
updates (some touching a large TOASTed column, some leaving it unchanged) and deletes in
transactions that span tables.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable
from typing import Any

import psycopg2
import psycopg2.extras

SAMPLE_TABLES = ("customers", "products", "orders")


def ddl(schema: str) -> list[str]:
    """Statements creating the sample schema (idempotent)."""
    s = f'"{schema}"'
    return [
        f"CREATE SCHEMA IF NOT EXISTS {s}",
        f"""DO $$ BEGIN
            CREATE TYPE {s}.order_status AS ENUM ('new', 'paid', 'shipped', 'cancelled');
        EXCEPTION WHEN duplicate_object THEN NULL; END $$""",
        f"""CREATE TABLE IF NOT EXISTS {s}.customers (
            id bigserial PRIMARY KEY,
            name text NOT NULL,
            email varchar(200),
            created_at timestamptz NOT NULL DEFAULT now(),
            balance numeric(12, 2),
            active boolean NOT NULL DEFAULT true,
            profile jsonb
        )""",
        f"""CREATE TABLE IF NOT EXISTS {s}.products (
            id serial PRIMARY KEY,
            sku uuid NOT NULL,
            title text NOT NULL,
            price numeric(10, 2) NOT NULL,
            tags text[],
            weight real,
            available_from date,
            description text
        )""",
        f"""CREATE TABLE IF NOT EXISTS {s}.orders (
            id bigserial PRIMARY KEY,
            customer_id bigint NOT NULL,
            product_id integer NOT NULL,
            quantity smallint NOT NULL,
            total numeric(14, 2) NOT NULL,
            status {s}.order_status NOT NULL DEFAULT 'new',
            placed_at timestamp NOT NULL,
            ship_window interval,
            note text
        )""",
    ]


def _customer(rng: random.Random) -> tuple[Any, ...]:
    n = rng.randrange(10**9)
    return (
        f"customer {n}",
        f"c{n}@example.com" if rng.random() < 0.9 else None,
        f"{rng.randrange(2015, 2026)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d} "
        f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}.{rng.randrange(10**6):06d}+00",
        f"{rng.randrange(-(10**6), 10**8) / 100:.2f}",
        rng.random() < 0.8,
        psycopg2.extras.Json(
            {"tier": rng.choice(["gold", "silver", None]), "n": n, "tags": ["a", "b"][: rng.randrange(3)]}
        ),
    )


def _product(rng: random.Random) -> tuple[Any, ...]:
    long = rng.random() < 0.05
    return (
        f"{rng.getrandbits(128):032x}",
        f"product {rng.randrange(10**6)}",
        f"{rng.randrange(1, 10**6) / 100:.2f}",
        [rng.choice(["red", "blue", "big", "small", "new"]) for _ in range(rng.randrange(4))],
        round(rng.random() * 100, 3),
        f"{rng.randrange(2020, 2027)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}",
        # a few descriptions large and random enough for PostgreSQL to TOAST them out of line
        "".join(rng.choice("abcdefghij ") for _ in range(9000)) if long else "short description",
    )


def _order(rng: random.Random, max_customer: int, max_product: int) -> tuple[Any, ...]:
    q = rng.randrange(1, 20)
    return (
        rng.randrange(1, max(2, max_customer)),
        rng.randrange(1, max(2, max_product)),
        q,
        f"{q * rng.randrange(100, 10**5) / 100:.2f}",
        rng.choice(["new", "paid", "shipped", "cancelled"]),
        f"2025-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d} {rng.randrange(24):02d}:{rng.randrange(60):02d}:00",
        f"{rng.randrange(0, 10)} days {rng.randrange(24)} hours" if rng.random() < 0.7 else None,
        None if rng.random() < 0.5 else "note " * rng.randrange(1, 5),
    )


INSERT = {
    "customers": "INSERT INTO {s}.customers (name, email, created_at, balance, active, profile) VALUES %s",
    "products": "INSERT INTO {s}.products (sku, title, price, tags, weight, available_from, description) VALUES %s",
    "orders": (
        "INSERT INTO {s}.orders (customer_id, product_id, quantity, total, status, placed_at, ship_window, note) "
        "VALUES %s"
    ),
}


def create_sample(
    dsn: str, schema: str, rows: int, seed: int = 1, progress: Callable[[int], None] | None = None
) -> dict[str, int]:
    """Create the sample tables in ``schema`` and fill them with about ``rows`` rows in all."""
    rng = random.Random(seed)
    per = {"customers": rows // 4, "products": rows // 4, "orders": rows - 2 * (rows // 4)}
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            for stmt in ddl(schema):
                cur.execute(stmt)
        s = f'"{schema}"'
        for table, n in per.items():
            done = 0
            while done < n:
                chunk = min(5000, n - done)
                if table == "customers":
                    values = [_customer(rng) for _ in range(chunk)]
                elif table == "products":
                    values = [_product(rng) for _ in range(chunk)]
                else:
                    values = [_order(rng, per["customers"], per["products"]) for _ in range(chunk)]
                with conn, conn.cursor() as cur:
                    psycopg2.extras.execute_values(cur, INSERT[table].format(s=s), values, page_size=1000)
                done += chunk
                if progress is not None:
                    progress(chunk)
    finally:
        conn.close()
    return per


@dataclasses.dataclass
class WorkloadStats:
    transactions: int = 0
    inserts: int = 0
    updates: int = 0
    deletes: int = 0
    commit_times: list[float] = dataclasses.field(default_factory=list)


def run_workload(
    dsn: str,
    schema: str,
    *,
    transactions: int | None = None,
    seconds: float | None = None,
    seed: int = 2,
    rate: float | None = None,
    stop: Callable[[], bool] | None = None,
) -> WorkloadStats:
    """Random inserts, updates and deletes over the sample tables, 1-5 changes per transaction.

    Runs for ``transactions`` transactions or ``seconds`` seconds (whichever comes first),
    at most ``rate`` transactions per second when given.
    """
    rng = random.Random(seed)
    stats = WorkloadStats()
    s = f'"{schema}"'
    conn = psycopg2.connect(dsn)
    deadline = time.monotonic() + seconds if seconds is not None else None
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT coalesce(max(id), 1) FROM {s}.customers")
            max_c = cur.fetchone()[0]
            cur.execute(f"SELECT coalesce(max(id), 1) FROM {s}.products")
            max_p = cur.fetchone()[0]
        conn.commit()
        while True:
            if transactions is not None and stats.transactions >= transactions:
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            if stop is not None and stop():
                break
            started = time.monotonic()
            with conn, conn.cursor() as cur:
                for _ in range(rng.randrange(1, 6)):
                    table = rng.choice(SAMPLE_TABLES)
                    action = rng.random()
                    if action < 0.45:
                        if table == "customers":
                            psycopg2.extras.execute_values(cur, INSERT[table].format(s=s), [_customer(rng)])
                            max_c += 1
                        elif table == "products":
                            psycopg2.extras.execute_values(cur, INSERT[table].format(s=s), [_product(rng)])
                            max_p += 1
                        else:
                            psycopg2.extras.execute_values(
                                cur, INSERT[table].format(s=s), [_order(rng, max_c, max_p)]
                            )
                        stats.inserts += 1
                    elif action < 0.85:
                        target = rng.randrange(1, max(2, max_c if table == "customers" else max_p))
                        if table == "customers":
                            cur.execute(
                                f"UPDATE {s}.customers SET balance = balance + %s, active = NOT active, "
                                "profile = jsonb_set(coalesce(profile, '{}'), '{n}', to_jsonb(%s::int)) WHERE id = %s",
                                (f"{rng.randrange(-10000, 10000) / 100:.2f}", rng.randrange(1000), target),
                            )
                        elif table == "products":
                            if rng.random() < 0.1:  # rewrite the large column too
                                cur.execute(
                                    f"UPDATE {s}.products SET description = %s, price = price + 1 WHERE id = %s",
                                    ("".join(rng.choice("klmnop ") for _ in range(9000)), target),
                                )
                            else:  # leaves description (possibly TOASTed) unchanged
                                cur.execute(
                                    f"UPDATE {s}.products SET price = price + 0.01, tags = array_append(tags, 'upd') "
                                    "WHERE id = %s",
                                    (target,),
                                )
                        else:
                            cur.execute(
                                f"UPDATE {s}.orders SET status = 'paid', quantity = quantity + 1, "
                                "total = total * 1.1 WHERE id = (SELECT id FROM {s}.orders ORDER BY random() LIMIT 1)".replace(
                                    "{s}", s
                                )
                            )
                        stats.updates += 1
                    else:
                        cur.execute(
                            f"DELETE FROM {s}.{table} WHERE id = (SELECT min(id) + %s FROM {s}.{table})",
                            (rng.randrange(0, 50),),
                        )
                        stats.deletes += 1
            stats.transactions += 1
            stats.commit_times.append(time.time())
            if rate:
                pause = 1.0 / rate - (time.monotonic() - started)
                if pause > 0:
                    time.sleep(pause)
    finally:
        conn.close()
    return stats
