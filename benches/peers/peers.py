"""Topology loaded by floe and by the tools a user would otherwise pick.

Each peer produces the same table floe does (created LIKE floe's, so the
same types, primary key and GiST index) from the same parquet file, geometry
made by PostGIS from the coordinates:

- incumbent: psycopg2 `execute_batch` of INSERTs with
  ST_SetSRID(ST_MakeLine(ST_MakePoint(..), ST_MakePoint(..)), 4326) per row
  into the live table after a TRUNCATE, as the stored procedure floe
  replaces does;
- pgpq: psycopg 3 binary COPY of pgpq-encoded Arrow into a staging table,
  then INSERT ... SELECT with the geometry;
- adbc: ADBC's PostgreSQL driver `adbc_ingest` into a staging table, then
  the same INSERT ... SELECT.

Runs are alternated; the median of --repeats is reported with min-max.
"""

import argparse
import json
import statistics
import subprocess
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq

COLUMNS = [
    "connection_id", "from_asset_id", "to_asset_id", "from_asset_type", "to_asset_type",
    "circuit_id", "feeder_id", "substation_id", "phase", "voltage_kv",
    "from_latitude", "from_longitude", "to_latitude", "to_longitude", "length_m",
    "is_energized", "installed_date", "updated_at", "attributes",
]
GEOM = ("ST_SetSRID(ST_MakeLine(ST_MakePoint({flon}, {flat}), "
        "ST_MakePoint({tlon}, {tlat})), 4326)")


def reset(conn, table):
    with conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {table}; "
                    f"CREATE TABLE {table} (LIKE topology_connections_cache INCLUDING ALL)")
    conn.commit()


def incumbent(url, parquet, table):
    import psycopg2
    from psycopg2.extras import execute_batch
    conn = psycopg2.connect(url)
    reset(conn, table)
    started = time.perf_counter()
    rows = pq.read_table(parquet).to_pylist()
    placeholders = ", ".join(["%s"] * 18 + ["%s::jsonb"])
    geom = GEOM.format(flon="%s", flat="%s", tlon="%s", tlat="%s")
    sql = f"INSERT INTO {table} ({', '.join(COLUMNS)}, geom) VALUES ({placeholders}, {geom})"
    params = [
        [r[c.upper()] for c in COLUMNS]
        + [r["FROM_LONGITUDE"], r["FROM_LATITUDE"], r["TO_LONGITUDE"], r["TO_LATITUDE"]]
        for r in rows
    ]
    with conn.cursor() as cur:
        cur.execute(f"TRUNCATE {table}")
        execute_batch(cur, sql, params, page_size=1000)
    conn.commit()
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


def plain(data):
    """pgpq takes neither Decimal128 nor nanosecond timestamps, and ADBC
    0.x/1.x writes Decimal128 unscaled: plain types, cast back in SQL."""
    def simple(t):
        if pa.types.is_decimal(t):
            return pa.float64()
        if pa.types.is_timestamp(t) and t.unit == "ns":
            return pa.timestamp("us", t.tz)
        return t
    return data.cast(pa.schema([pa.field(f.name, simple(f.type)) for f in data.schema]))


def insert_select(staging, table):
    casts = {"attributes": "::jsonb", "voltage_kv": "::numeric(6,2)"}
    cols = ", ".join(f'"{c.upper()}"{casts.get(c, "")}' for c in COLUMNS)
    geom = GEOM.format(flon='"FROM_LONGITUDE"', flat='"FROM_LATITUDE"',
                       tlon='"TO_LONGITUDE"', tlat='"TO_LATITUDE"')
    return f"INSERT INTO {table} ({', '.join(COLUMNS)}, geom) SELECT {cols}, {geom} FROM {staging}"


def pgpq_copy(url, parquet, table):
    import psycopg
    from pgpq import ArrowToPostgresBinaryEncoder
    with psycopg.connect(url) as conn:
        reset(conn, table)
        started = time.perf_counter()
        data = pq.read_table(parquet)
        data = plain(data)
        encoder = ArrowToPostgresBinaryEncoder(data.schema)
        ddl = ", ".join(f'"{name}" {col.data_type.ddl()}' for name, col in encoder.schema().columns)
        with conn.cursor() as cur:
            cur.execute(f"CREATE TEMP TABLE staging ({ddl})")
            with cur.copy("COPY staging FROM STDIN WITH (FORMAT BINARY)") as copy:
                copy.write(encoder.write_header())
                for batch in data.to_batches():
                    copy.write(encoder.write_batch(batch))
                copy.write(encoder.finish())
            cur.execute(f"TRUNCATE {table}")
            cur.execute(insert_select("staging", table))
        conn.commit()
        return time.perf_counter() - started


def adbc_ingest(url, parquet, table):
    import adbc_driver_postgresql.dbapi as adbc
    import psycopg
    with psycopg.connect(url) as conn:
        reset(conn, table)
    with adbc.connect(url) as conn:
        started = time.perf_counter()
        data = plain(pq.read_table(parquet))
        with conn.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS adbc_staging")
            cur.adbc_ingest("adbc_staging", data, mode="create")
            cur.execute(f"TRUNCATE {table}")
            cur.execute(insert_select("adbc_staging", table))
            cur.execute("DROP TABLE adbc_staging")
        conn.commit()
        return time.perf_counter() - started


def floe_run(floe, config, url, data_dir):
    started = time.perf_counter()
    subprocess.run([floe, "run", "--config", config, "--table", "topology", "--target", url,
                    "--parquet", data_dir, "--no-snapshot", "--allow-shrink", "--output", "json"],
                   check=True, capture_output=True)
    return time.perf_counter() - started


def count(url, table):
    import psycopg
    with psycopg.connect(url) as conn:
        return conn.execute(f"SELECT count(*), count(geom) FROM {table}").fetchone()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--target", required=True)
    p.add_argument("--floe", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--rows", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--output", choices=["text", "json"], default="text")
    a = p.parse_args()
    data = tempfile.mkdtemp(prefix="floe-peers-")
    gen = [a.floe, "generate", "--out", data, "--table", "topology"]
    if a.rows:
        gen += ["--rows", str(a.rows)]
    subprocess.run(gen, check=True, capture_output=True)
    parquet = f"{data}/FLUX_OPS_CENTER_TOPOLOGY.parquet"
    rows = pq.ParquetFile(parquet).metadata.num_rows
    runs = {
        "floe": lambda: floe_run(a.floe, a.config, a.target, data),
        "incumbent_psycopg2_execute_batch": lambda: incumbent(a.target, parquet, "peer_incumbent"),
        "psycopg3_pgpq_copy": lambda: pgpq_copy(a.target, parquet, "peer_pgpq"),
        "adbc_ingest": lambda: adbc_ingest(a.target, parquet, "peer_adbc"),
    }
    runs["floe"]()  # creates topology_connections_cache, which the peers copy
    times = {k: [] for k in runs}
    for i in range(a.repeats):
        names = list(runs)
        for name in names[i % len(names):] + names[:i % len(names)]:
            times[name].append(runs[name]())
    for table in ["topology_connections_cache", "peer_incumbent", "peer_pgpq", "peer_adbc"]:
        n, g = count(a.target, table)
        assert n == rows and g == rows, f"{table}: {n} rows, {g} geometries, expected {rows}"
    floe = statistics.median(times["floe"])
    results = [
        {
            "name": k,
            "median_seconds": statistics.median(v),
            "min_seconds": min(v),
            "max_seconds": max(v),
            "rows_per_sec": rows / statistics.median(v),
            "ratio_to_floe": floe / statistics.median(v),
        }
        for k, v in times.items()
    ]
    if a.output == "json":
        print(json.dumps({"table": "topology", "rows": rows, "repeats": a.repeats, "results": results}, indent=2))
        return
    print(f"topology: {rows} rows, {a.repeats} repeats (ratio_to_floe: floe's time / the tool's; < 1 is slower)")
    for r in results:
        print(f"{r['name']:<34} {r['median_seconds']:8.2f} s ({r['min_seconds']:.2f}-{r['max_seconds']:.2f})"
              f" {r['rows_per_sec']:10.0f} rows/s  ratio {r['ratio_to_floe']:.3f}")


if __name__ == "__main__":
    main()
