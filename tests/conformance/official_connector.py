"""The official snowflake-connector-python against floe's Snowflake emulator.

Reads every grid table with fetch_arrow_all() and fetchall() and compares
values and types with the parquet file the emulator serves. Run by the
integration test `official_connector_reads_every_table_as_the_parquet_holds_it`
(tests/it/conformance.rs), which starts the emulator; exits non-zero and
says what differs on any mismatch.

usage: official_connector.py --port N --data DIR --user U --password P
                             [--private-key FILE --passphrase P] [--expect-chunks N]
"""

import argparse
import datetime
import decimal
import glob
import json
import os
import sys
import urllib.request

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import snowflake.connector

failures = []


def fail(msg):
    failures.append(msg)
    print("MISMATCH:", msg, file=sys.stderr)


def connect(args, **extra):
    params = dict(
        account="emulator",
        user=args.user,
        host="127.0.0.1",
        port=args.port,
        protocol="http",
        database="GRID",
        schema="PUBLIC",
        warehouse="EMULATOR_WH",
        login_timeout=60,
        network_timeout=120,
    )
    params.update(extra)
    return snowflake.connector.connect(**params)


def arm(port, faults):
    """Arms emulator faults through its control endpoint."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/floe/faults",
        data=json.dumps(faults).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(request, timeout=10).read()


def snowflake_type(field):
    md = field.metadata or {}
    return md.get(b"floe.snowflake_type", b"").decode()


def expected_arrow_kind(sf_type, parquet_type):
    """What fetch_arrow_all(arrow_number_to_decimal=True) should give for a column."""
    if sf_type.startswith("NUMBER(") and sf_type.endswith(",0)"):
        return "integer"
    if sf_type.startswith("NUMBER("):
        return "decimal"
    if sf_type == "FLOAT":
        return "double"
    if sf_type == "BOOLEAN":
        return "bool"
    if sf_type == "DATE":
        return "date"
    if sf_type.startswith("TIMESTAMP_NTZ"):
        return "timestamp_naive"
    if sf_type.startswith("TIMESTAMP_LTZ") or sf_type.startswith("TIMESTAMP_TZ"):
        return "timestamp_zoned"
    return "string"  # VARCHAR, VARIANT (JSON text), GEOGRAPHY (GeoJSON text)


def arrow_kind(t):
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_decimal(t):
        return "decimal"
    if pa.types.is_floating(t):
        return "double"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_date32(t):
        return "date"
    if pa.types.is_timestamp(t):
        return "timestamp_zoned" if t.tz else "timestamp_naive"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    return str(t)


def comparable(column):
    """A column as plain values: instants in UTC ns, decimals exact, JSON text as text."""
    t = column.type
    if isinstance(t, pa.ExtensionType):
        column = column.cast(t.storage_type) if hasattr(column, "cast") else column
        t = t.storage_type
    if pa.types.is_timestamp(t):
        return pc.cast(column.cast(pa.timestamp("ns", tz=t.tz)), pa.int64()).to_pylist()
    if pa.types.is_integer(t):
        return pc.cast(column, pa.int64()).to_pylist()
    return column.to_pylist()


def storage(column):
    if isinstance(column.type, pa.ExtensionType):
        return pa.chunked_array([c.storage for c in column.chunks], type=column.type.storage_type)
    return column


def check_arrow(name, expected, got):
    if got.num_rows != expected.num_rows:
        fail(f"{name}: fetch_arrow_all gave {got.num_rows} rows, parquet holds {expected.num_rows}")
        return
    if got.column_names != expected.column_names:
        fail(f"{name}: columns {got.column_names} != {expected.column_names}")
        return
    for field in expected.schema:
        sf = snowflake_type(field)
        want = expected_arrow_kind(sf, field.type)
        have = arrow_kind(got.schema.field(field.name).type)
        if want != have:
            fail(f"{name}.{field.name} ({sf}): fetch_arrow_all type {got.schema.field(field.name).type} is {have}, expected {want}")
            continue
        gt = got.schema.field(field.name).type
        if want == "decimal" and (gt.scale != field.type.scale):
            fail(f"{name}.{field.name}: decimal scale {gt.scale} != {field.type.scale}")
        a = comparable(storage(expected.column(field.name)))
        b = comparable(storage(got.column(field.name)))
        if a != b:
            i = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
            fail(f"{name}.{field.name} ({sf}) row {i}: fetch_arrow_all {b[i]!r} != parquet {a[i]!r}")


def check_rows(name, expected, rows):
    if len(rows) != expected.num_rows:
        fail(f"{name}: fetchall gave {len(rows)} rows, parquet holds {expected.num_rows}")
        return
    for ci, field in enumerate(expected.schema):
        sf = snowflake_type(field)
        column = storage(expected.column(field.name))
        if pa.types.is_timestamp(column.type) and column.type.tz:
            # Compare instants: a wall clock in a DST fold is ambiguous.
            column = column.cast(pa.timestamp(column.type.unit, tz="UTC"))
        want = column.to_pylist()
        for ri, (w, g) in enumerate(zip(want, (r[ci] for r in rows))):
            if w is None or g is None:
                ok = w is None and g is None
            elif isinstance(w, datetime.datetime):
                ok = isinstance(g, datetime.datetime) and (w.tzinfo is None) == (g.tzinfo is None)
                if ok and w.tzinfo is not None:
                    ok = g.astimezone(datetime.timezone.utc) == w
                elif ok:
                    ok = w == g
            elif isinstance(w, decimal.Decimal):
                ok = isinstance(g, decimal.Decimal) and w == g
            elif isinstance(w, float):
                ok = isinstance(g, float) and w == g
            elif isinstance(w, bool):
                ok = isinstance(g, bool) and w == g
            elif isinstance(w, int):
                ok = isinstance(g, int) and w == g
            else:
                ok = type(w) is type(g) and w == g
            if not ok:
                fail(f"{name}.{field.name} ({sf}) row {ri}: fetchall {g!r} ({type(g).__name__}) != parquet {w!r} ({type(w).__name__})")
                break


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--private-key")
    ap.add_argument("--passphrase")
    ap.add_argument("--expect-chunks", type=int, default=0)
    args = ap.parse_args()

    report = {"connector": snowflake.connector.__version__, "tables": {}}
    files = sorted(glob.glob(os.path.join(args.data, "*.parquet")))
    if not files:
        fail(f"no parquet files in {args.data}")
    with connect(args, password=args.password, arrow_number_to_decimal=True) as con:
        cur = con.cursor()
        for path in files:
            name = os.path.basename(path)[: -len(".parquet")]
            expected = pq.read_table(path)
            cur.execute(f"SELECT * FROM {name}")
            got = cur.fetch_arrow_all()
            if got is None:
                fail(f"{name}: fetch_arrow_all returned nothing")
                continue
            check_arrow(name, expected, got)
            cur.execute(f"SELECT * FROM {name}")
            check_rows(name, expected, cur.fetchall())
            report["tables"][name] = expected.num_rows

        # Faults the connector must ride out: a chunk answering 503, an expired session token.
        for fault in ({"chunk_503": 2}, {"expire_session": True}):
            arm(args.port, fault)
            cur.execute("SELECT * FROM FLUX_OPS_CENTER_TOPOLOGY")
            n = cur.fetch_arrow_all().num_rows
            if n != report["tables"].get("FLUX_OPS_CENTER_TOPOLOGY"):
                fail(f"after fault {fault}: {n} rows")
        report["faults_survived"] = ["chunk_503", "expire_session"]

        # Geography in the other output formats.
        cur.execute("ALTER SESSION SET GEOGRAPHY_OUTPUT_FORMAT = 'WKT'")
        cur.execute("SELECT FOOTPRINT FROM BUILDING_FOOTPRINTS LIMIT 1")
        wkt = cur.fetchone()[0]
        if not (isinstance(wkt, str) and wkt.startswith("POLYGON")):
            fail(f"GEOGRAPHY_OUTPUT_FORMAT=WKT gave {wkt!r}")
        cur.execute("ALTER SESSION SET GEOGRAPHY_OUTPUT_FORMAT = 'WKB'")
        cur.execute("SELECT FOOTPRINT FROM BUILDING_FOOTPRINTS LIMIT 1")
        wkb = cur.fetchone()[0]
        # little-endian WKB polygon: 01 03000000
        if not (isinstance(wkb, (bytes, bytearray)) and bytes(wkb[:5]) == b"\x01\x03\x00\x00\x00"):
            fail(f"GEOGRAPHY_OUTPUT_FORMAT=WKB gave {wkb[:16]!r}")
        report["geography_formats"] = ["WKT", "WKB"]

        # Change tracking: DML answers (row counts as the connector reads
        # them) and CHANGES as the net delta between two points in time.
        cur.execute("ALTER TABLE TRANSFORMERS SET CHANGE_TRACKING = TRUE")
        cur.execute("SELECT CURRENT_TIMESTAMP()")
        t0 = cur.fetchone()[0]
        cur.execute("SELECT TRANSFORMER_ID FROM TRANSFORMERS ORDER BY TRANSFORMER_ID LIMIT 3")
        a, b, c = [r[0] for r in cur.fetchall()]
        for sql, rowcount, answer in (
            (f"UPDATE TRANSFORMERS SET LOAD_PCT = 12.5 WHERE TRANSFORMER_ID = '{a}'", 1, [(1, 0)]),
            (f"DELETE FROM TRANSFORMERS WHERE TRANSFORMER_ID = '{b}'", 1, [(1,)]),
            (
                "INSERT INTO TRANSFORMERS SELECT 'NEW-1', KVA_RATING, PHASE, LOAD_PCT, LAT, LON, "
                f"FEEDER_ID, LAST_READING_AT FROM TRANSFORMERS WHERE TRANSFORMER_ID = '{c}'",
                1,
                [(1,)],
            ),
        ):
            cur.execute(sql)
            if cur.rowcount != rowcount:
                fail(f"{sql}: rowcount {cur.rowcount}, expected {rowcount}")
            got = cur.fetchall()
            if got != answer:
                fail(f"{sql}: answered {got}, expected {answer}")
        cur.execute("SELECT CURRENT_TIMESTAMP()")
        t1 = cur.fetchone()[0]
        cur.execute(
            "SELECT TRANSFORMER_ID, METADATA$ACTION, METADATA$ISUPDATE FROM TRANSFORMERS "
            f"CHANGES(INFORMATION => DEFAULT) AT(TIMESTAMP => '{t0.isoformat()}'::TIMESTAMP_TZ) "
            f"END(TIMESTAMP => '{t1.isoformat()}'::TIMESTAMP_TZ)"
        )
        got = sorted(cur.fetchall())
        want = sorted([(a, "DELETE", True), (a, "INSERT", True), (b, "DELETE", False), ("NEW-1", "INSERT", False)])
        if got != want:
            fail(f"CHANGES gave {got}, expected {want}")
        try:
            cur.execute(
                "SELECT ZONE_ID FROM VEGETATION_RISK_ZONES CHANGES(INFORMATION => DEFAULT) "
                f"AT(TIMESTAMP => '{t0.isoformat()}'::TIMESTAMP_TZ)"
            )
            fail("CHANGES on a table without change tracking did not raise")
        except snowflake.connector.errors.ProgrammingError as e:
            if e.errno != 91930 or e.sqlstate != "2F003":
                fail(f"change tracking off: errno {e.errno} sqlstate {e.sqlstate}")
        report["change_tracking"] = True

        # A view of a geospatial table's keys: its change data is the
        # table's, projected to the view's columns (no GEOGRAPHY refusal).
        cur.execute("CREATE VIEW VEGETATION_KEYS AS SELECT ZONE_ID FROM VEGETATION_RISK_ZONES")
        cur.execute("ALTER VIEW VEGETATION_KEYS SET CHANGE_TRACKING = TRUE")
        cur.execute("SELECT CURRENT_TIMESTAMP()")
        t2 = cur.fetchone()[0]
        cur.execute("SELECT ZONE_ID FROM VEGETATION_KEYS ORDER BY ZONE_ID LIMIT 1")
        zone = cur.fetchone()[0]
        cur.execute(f"DELETE FROM VEGETATION_RISK_ZONES WHERE ZONE_ID = {zone}")
        if cur.rowcount != 1:
            fail(f"DELETE through the view's table: rowcount {cur.rowcount}")
        cur.execute("SELECT CURRENT_TIMESTAMP()")
        t3 = cur.fetchone()[0]
        cur.execute(
            "SELECT ZONE_ID, METADATA$ACTION, METADATA$ISUPDATE FROM VEGETATION_KEYS "
            f"CHANGES(INFORMATION => DEFAULT) AT(TIMESTAMP => '{t2.isoformat()}'::TIMESTAMP_TZ) "
            f"END(TIMESTAMP => '{t3.isoformat()}'::TIMESTAMP_TZ)"
        )
        got = cur.fetchall()
        if got != [(zone, "DELETE", False)]:
            fail(f"CHANGES of a view gave {got}, expected {[(zone, 'DELETE', False)]}")
        cur.execute("SELECT SYSTEM$LAST_CHANGE_COMMIT_TIME('VEGETATION_KEYS')")
        view_token = cur.fetchone()[0]
        cur.execute("SELECT SYSTEM$LAST_CHANGE_COMMIT_TIME('VEGETATION_RISK_ZONES')")
        if cur.fetchone()[0] != view_token:
            fail("a view's change token is not its table's")
        report["views"] = True

        # Errors keep Snowflake's code and SQL state.
        try:
            cur.execute("SELECT * FROM NO_SUCH_TABLE")
            fail("a missing table did not raise")
        except snowflake.connector.errors.ProgrammingError as e:
            if e.errno != 2003 or e.sqlstate != "42S02":
                fail(f"missing table: errno {e.errno} sqlstate {e.sqlstate}")

    try:
        connect(args, password="wrong-" + args.password).close()
        fail("a wrong password logged in")
    except snowflake.connector.errors.DatabaseError as e:
        if e.errno != 390100:
            fail(f"wrong password: errno {e.errno}, expected 390100")

    if args.private_key:
        extra = dict(authenticator="SNOWFLAKE_JWT", private_key_file=args.private_key)
        if args.passphrase:
            extra["private_key_file_pwd"] = args.passphrase
        with connect(args, **extra) as con:
            cur = con.cursor()
            cur.execute("SELECT COUNT(*) AS N FROM FLUX_OPS_CENTER_TOPOLOGY")
            n = cur.fetchone()[0]
            want = report["tables"].get("FLUX_OPS_CENTER_TOPOLOGY")
            if n != want:
                fail(f"key-pair session: COUNT(*) {n} != {want}")
        report["key_pair_login"] = True

    report["failures"] = failures
    print(json.dumps(report))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
