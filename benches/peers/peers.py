"""A grid table loaded by floe and by the tools a user would otherwise pick.

Each peer produces the same table floe does (created LIKE floe's, so the
same types, primary key and GiST index) from the same parquet file, geometry
made by PostGIS (topology: ST_MakeLine of ST_MakePoints from the coordinates;
building footprints: ST_GeomFromGeoJSON, its centroid and geodesic area):

- incumbent: psycopg2 `execute_batch` of INSERTs computing the geometry per
  row into the live table after a TRUNCATE, as the stored procedure floe
  replaces does;
- pgpq: psycopg 3 binary COPY of pgpq-encoded Arrow into a staging table,
  then INSERT ... SELECT with the geometry;
- adbc: ADBC's PostgreSQL driver `adbc_ingest` into a staging table, then
  the same INSERT ... SELECT.

Runs are alternated; the median of --repeats is reported with min-max.
"""

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq

# Per table: floe's target (which the peers' tables are created LIKE), the
# parquet columns copied as they are (with casts back to floe's types), and
# the computed columns as PostGIS expressions over parquet columns ({NAME}).
TABLES = {
    "topology": {
        "parquet": "FLUX_OPS_CENTER_TOPOLOGY",
        "target": "topology_connections_cache",
        "columns": [
            "connection_id", "from_asset_id", "to_asset_id", "from_asset_type", "to_asset_type",
            "circuit_id", "feeder_id", "substation_id", "phase", "voltage_kv",
            "from_latitude", "from_longitude", "to_latitude", "to_longitude", "length_m",
            "is_energized", "installed_date", "updated_at", "attributes",
        ],
        "casts": {"attributes": "::jsonb", "voltage_kv": "::numeric(6,2)"},
        "computed": {
            "geom": "ST_SetSRID(ST_MakeLine(ST_MakePoint({FROM_LONGITUDE}, {FROM_LATITUDE}), "
                    "ST_MakePoint({TO_LONGITUDE}, {TO_LATITUDE})), 4326)",
        },
    },
    "building_footprints": {
        "parquet": "BUILDING_FOOTPRINTS",
        "target": "building_footprints",
        "columns": ["building_id", "building_type", "height_m", "levels"],
        "casts": {"building_id": "::bigint", "levels": "::integer"},
        "computed": {
            "geom": "ST_SetSRID(ST_GeomFromGeoJSON({FOOTPRINT}), 4326)",
            "centroid": "ST_Centroid(ST_SetSRID(ST_GeomFromGeoJSON({FOOTPRINT}), 4326))",
            "area_m2": "ST_Area(ST_SetSRID(ST_GeomFromGeoJSON({FOOTPRINT}), 4326)::geography)",
        },
    },
}
PLACEHOLDER = re.compile(r"\{([A-Z_]+)\}")


def reset(conn, spec, table):
    with conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {table}; "
                    f"CREATE TABLE {table} (LIKE {spec['target']} INCLUDING ALL)")
    conn.commit()


def incumbent(url, spec, parquet, table):
    """One INSERT per row, geometry made by PostGIS per row, after a TRUNCATE."""
    import psycopg2
    from psycopg2.extras import execute_batch
    conn = psycopg2.connect(url)
    reset(conn, spec, table)
    started = time.perf_counter()
    rows = pq.read_table(parquet).to_pylist()
    columns, computed = spec["columns"], spec["computed"]
    values = [f"%s{spec['casts'].get(c, '')}" for c in columns]
    params_from = []
    for expr in computed.values():
        params_from += PLACEHOLDER.findall(expr)
        values.append(PLACEHOLDER.sub("%s", expr))
    sql = (f"INSERT INTO {table} ({', '.join(columns + list(computed))}) "
           f"VALUES ({', '.join(values)})")
    params = [[r[c.upper()] for c in columns] + [r[c] for c in params_from] for r in rows]
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


def insert_select(spec, staging, table):
    columns, computed = spec["columns"], spec["computed"]
    cols = [f'"{c.upper()}"{spec["casts"].get(c, "")}' for c in columns]
    cols += [PLACEHOLDER.sub(lambda m: f'"{m.group(1)}"', e) for e in computed.values()]
    return (f"INSERT INTO {table} ({', '.join(columns + list(computed))}) "
            f"SELECT {', '.join(cols)} FROM {staging}")


def pgpq_copy(url, spec, parquet, table):
    import psycopg
    from pgpq import ArrowToPostgresBinaryEncoder
    with psycopg.connect(url) as conn:
        reset(conn, spec, table)
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
            cur.execute(insert_select(spec, "staging", table))
        conn.commit()
        return time.perf_counter() - started


def adbc_ingest(url, spec, parquet, table):
    import adbc_driver_postgresql.dbapi as adbc
    import psycopg
    with psycopg.connect(url) as conn:
        reset(conn, spec, table)
    with adbc.connect(url) as conn:
        started = time.perf_counter()
        data = plain(pq.read_table(parquet))
        with conn.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS adbc_staging")
            cur.adbc_ingest("adbc_staging", data, mode="create")
            cur.execute(f"TRUNCATE {table}")
            cur.execute(insert_select(spec, "adbc_staging", table))
            cur.execute("DROP TABLE adbc_staging")
        conn.commit()
        return time.perf_counter() - started


def floe_run(floe, config, table, url, data_dir):
    started = time.perf_counter()
    subprocess.run([floe, "run", "--config", config, "--table", table, "--target", url,
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
    p.add_argument("--table", choices=list(TABLES), default="topology")
    p.add_argument("--rows", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--output", choices=["text", "json"], default="text")
    p.add_argument("--skip-incumbent", action="store_true",
                   help="leave out the row-by-row incumbent (minutes per repeat on large tables)")
    a = p.parse_args()
    spec = TABLES[a.table]
    data = tempfile.mkdtemp(prefix="floe-peers-")
    gen = [a.floe, "generate", "--out", data, "--table", a.table]
    if a.rows:
        gen += ["--rows", str(a.rows)]
    subprocess.run(gen, check=True, capture_output=True)
    parquet = f"{data}/{spec['parquet']}.parquet"
    rows = pq.ParquetFile(parquet).metadata.num_rows
    runs = {
        "floe": lambda: floe_run(a.floe, a.config, a.table, a.target, data),
        "incumbent_psycopg2_execute_batch": lambda: incumbent(a.target, spec, parquet, "peer_incumbent"),
        "psycopg3_pgpq_copy": lambda: pgpq_copy(a.target, spec, parquet, "peer_pgpq"),
        "adbc_ingest": lambda: adbc_ingest(a.target, spec, parquet, "peer_adbc"),
    }
    if a.skip_incumbent:
        del runs["incumbent_psycopg2_execute_batch"]
    runs["floe"]()  # creates floe's table, which the peers' tables copy
    times = {k: [] for k in runs}
    for i in range(a.repeats):
        names = list(runs)
        for name in names[i % len(names):] + names[:i % len(names)]:
            times[name].append(runs[name]())
        print(f"repeat {i + 1}/{a.repeats} done", file=sys.stderr)
    checked = [spec["target"], "peer_pgpq", "peer_adbc"]
    if not a.skip_incumbent:
        checked.append("peer_incumbent")
    for table in checked:
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
        print(json.dumps({"table": a.table, "rows": rows, "repeats": a.repeats, "results": results}, indent=2))
        return
    print(f"{a.table}: {rows} rows, {a.repeats} repeats (ratio_to_floe: floe's time / the tool's; < 1 is slower)")
    for r in results:
        print(f"{r['name']:<34} {r['median_seconds']:8.2f} s ({r['min_seconds']:.2f}-{r['max_seconds']:.2f})"
              f" {r['rows_per_sec']:10.0f} rows/s  ratio {r['ratio_to_floe']:.3f}")


if __name__ == "__main__":
    main()
