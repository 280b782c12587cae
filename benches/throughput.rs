//! Criterion benches of floe's CPU stages, on data from the deterministic
//! generator (nothing is downloaded):
//!
//! - `encode/<table>`: the binary COPY encoder over each grid table's
//!   transformed batches (rows/s and bytes/s of COPY data);
//! - `encode_type/<type>`: the encoder on one column of each Arrow type;
//! - `checksum/<table>`: the content checksum (lookup3, as Postgres hashes)
//!   over each grid table's encoded tuples;
//! - `udf/<function>`: geometry functions through DataFusion (points/s or
//!   vertices/s), `to_geography` from GeoJSON and from plain WKB, and
//!   `read_geojson`, the footprints' parquet read alone that the GeoJSON
//!   figures include; `to_geography_geojson_in_memory` and `st_area_ewkb`
//!   run one function alone on its input held in memory;
//! - `area/<method>`: the geodesic area of building footprints' EWKB, by
//!   floe's series (`operators::ellipsoid`) and by Karney after parsing into
//!   `geo` (what `st_area` did before, the baseline), one thread each;
//! - `snowflake_decode/topology`: Snowflake-encoded Arrow chunks to floe's
//!   Arrow schema;
//! - `snapshot_write/topology`: the snapshot writer (zstd parquet) into the
//!   in-memory object store.
//!
//! `cargo bench --profile dev --bench throughput` (the dev profile shares
//! the test build; a release build of the DataFusion stack takes ~45 min on
//! 2 cores). `FLOE_BENCH_ROWS` (default 50,000) sets the rows per table.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float64Array,
    Int32Array, Int64Array, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pipeline::postgres::checksum::{FieldHash, RowChecksum, StagedColumn};
use pipeline::postgres::encode::CopyEncoder;
use schemas::pg::{PgColumn, PgType};

fn rows() -> u64 {
    std::env::var("FLOE_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn shipped_config() -> schemas::config::Config {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("floe.toml");
    schemas::config::Config::load(&path).expect("floe.toml")
}

/// Every grid table generated once, in a directory kept for the run.
fn grid(rows: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    emulator::generate::generate(&emulator::generate::GenerateOptions {
        out: dir.path().to_path_buf(),
        tables: Vec::new(),
        rows: Some(rows),
        seed: 42,
    })
    .expect("generate");
    dir
}

fn encode_all(encoder: &mut CopyEncoder, batches: &[RecordBatch]) -> usize {
    let mut total = 0;
    for b in batches {
        let mut buf = BytesMut::new();
        encoder.encode(b, &mut buf).expect("encode");
        total += buf.len();
    }
    total
}

/// How a column of `ty` enters the checksum, as the catalog would say.
fn field_hash(ty: &PgType) -> FieldHash {
    let (name, send) = match ty {
        PgType::Bool => ("bool", "boolsend"),
        PgType::Int2 => ("int2", "int2send"),
        PgType::Int4 => ("int4", "int4send"),
        PgType::Int8 => ("int8", "int8send"),
        PgType::Float4 => ("float4", "float4send"),
        PgType::Float8 => ("float8", "float8send"),
        PgType::Numeric(_) => ("numeric", "numeric_send"),
        PgType::Text => ("text", "textsend"),
        PgType::Bytea => ("bytea", "byteasend"),
        PgType::Date => ("date", "date_send"),
        PgType::Timestamp => ("timestamp", "timestamp_send"),
        PgType::Timestamptz => ("timestamptz", "timestamptz_send"),
        PgType::Jsonb => ("jsonb", "jsonb_send"),
        PgType::Geometry { .. } => ("geometry", "geometry_send"),
    };
    FieldHash::for_type(name, send, true)
}

/// Every grid table of `rows` rows from the generator, transformed as
/// `floe run` would, with its encoder.
fn transformed_tables(rows: u64) -> Vec<(String, Vec<RecordBatch>, CopyEncoder)> {
    let rt = runtime();
    let dir = grid(rows);
    let config = shipped_config();
    config
        .tables
        .keys()
        .map(|name| {
            let (batches, encoder) = rt
                .block_on(pipeline::bench::transformed(&config, name, dir.path()))
                .expect("transform");
            (name.clone(), batches, encoder)
        })
        .collect()
}

fn checksum_tables(c: &mut Criterion) {
    let mut group = c.benchmark_group("checksum");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    for (name, batches, mut encoder) in transformed_tables(rows()) {
        let columns: Vec<StagedColumn> = encoder
            .columns()
            .iter()
            .map(|c| StagedColumn {
                name: c.name.clone(),
                hash: field_hash(&c.ty),
            })
            .collect();
        let tuples: Vec<BytesMut> = batches
            .iter()
            .map(|b| {
                let mut buf = BytesMut::new();
                encoder.encode(b, &mut buf).expect("encode");
                buf
            })
            .collect();
        let n: usize = batches.iter().map(|b| b.num_rows()).sum();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::new("rows", &name), |b| {
            b.iter(|| {
                let mut sum = RowChecksum::new(&columns);
                for t in &tuples {
                    sum.add_tuples(t).expect("tuples");
                }
                sum.hex()
            })
        });
    }
    group.finish();
}

fn encode_tables(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    for (name, batches, mut encoder) in transformed_tables(rows()) {
        let n: usize = batches.iter().map(|b| b.num_rows()).sum();
        let bytes = encode_all(&mut encoder, &batches);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::new("rows", &name), |b| {
            b.iter(|| encode_all(&mut encoder, &batches))
        });
        group.throughput(Throughput::Bytes(bytes as u64));
        group.bench_function(BenchmarkId::new("bytes", &name), |b| {
            b.iter(|| encode_all(&mut encoder, &batches))
        });
    }
    group.finish();
}

/// One column of each type the encoder handles, `n` rows, every 10th NULL.
fn typed_columns(n: usize) -> Vec<(&'static str, ArrayRef)> {
    let some = |i: usize| !i.is_multiple_of(10);
    vec![
        (
            "boolean",
            Arc::new(
                (0..n)
                    .map(|i| some(i).then_some(i % 3 == 0))
                    .collect::<BooleanArray>(),
            ) as ArrayRef,
        ),
        (
            "integer",
            Arc::new(
                (0..n)
                    .map(|i| some(i).then_some(i as i32 * 7))
                    .collect::<Int32Array>(),
            ),
        ),
        (
            "bigint",
            Arc::new(
                (0..n)
                    .map(|i| some(i).then_some(i as i64 * 1_000_003))
                    .collect::<Int64Array>(),
            ),
        ),
        (
            "double",
            Arc::new(
                (0..n)
                    .map(|i| some(i).then_some(i as f64 * 0.37))
                    .collect::<Float64Array>(),
            ),
        ),
        (
            "numeric",
            Arc::new(
                (0..n)
                    .map(|i| some(i).then_some(i as i128 * 12_345))
                    .collect::<Decimal128Array>()
                    .with_precision_and_scale(18, 2)
                    .expect("decimal"),
            ),
        ),
        (
            "text",
            Arc::new(
                (0..n)
                    .map(|i| some(i).then(|| format!("ASSET-{i:08}-feeder")))
                    .collect::<StringArray>(),
            ),
        ),
        (
            "date",
            Arc::new(
                (0..n)
                    .map(|i| some(i).then_some(10_000 + (i % 5_000) as i32))
                    .collect::<Date32Array>(),
            ),
        ),
        (
            "timestamp",
            Arc::new(
                (0..n)
                    .map(|i| some(i).then_some(1_700_000_000_000_000 + i as i64 * 1_000))
                    .collect::<TimestampMicrosecondArray>(),
            ),
        ),
        (
            "bytea",
            Arc::new(BinaryArray::from_iter(
                (0..n).map(|i| some(i).then(|| (i as u64).to_le_bytes().repeat(4))),
            )),
        ),
    ]
}

fn encode_types(c: &mut Criterion) {
    let n = rows() as usize * 2;
    let mut group = c.benchmark_group("encode_type");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3));
    for (name, array) in typed_columns(n) {
        let dt = match array.data_type() {
            DataType::Timestamp(_, _) => DataType::Timestamp(TimeUnit::Microsecond, None),
            t => t.clone(),
        };
        let schema: SchemaRef = Arc::new(Schema::new(vec![Field::new("v", dt, true)]));
        let batch = RecordBatch::try_new(Arc::clone(&schema), vec![array]).expect("batch");
        let ty = PgType::infer(schema.field(0)).expect("inferred type");
        let column = PgColumn {
            name: "v".into(),
            ty,
            nullable: true,
        };
        let mut encoder = CopyEncoder::new("bench", &schema, vec![column], &[]).expect("encoder");
        let batches = vec![batch];
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(name, |b| b.iter(|| encode_all(&mut encoder, &batches)));
    }
    group.finish();
}

fn udfs(c: &mut Criterion) {
    let rt = runtime();
    let n = rows() as usize * 4;
    let ctx = operators::session_context(&operators::TransformOptions {
        batch_size: 8192,
        geometry: operators::GeometryOptions::default(),
    });
    let schema = Arc::new(Schema::new(vec![
        Field::new("x", DataType::Float64, false),
        Field::new("y", DataType::Float64, false),
    ]));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(Float64Array::from_iter_values(
                (0..n).map(|i| -95.0 + (i % 1000) as f64 * 0.001),
            )),
            Arc::new(Float64Array::from_iter_values(
                (0..n).map(|i| 29.0 + (i % 777) as f64 * 0.001),
            )),
        ],
    )
    .expect("points");
    let batches: Vec<RecordBatch> = (0..n)
        .step_by(8192)
        .map(|o| batch.slice(o, 8192.min(n - o)))
        .collect();
    let table = datafusion::datasource::MemTable::try_new(schema, vec![batches]).expect("memtable");
    ctx.register_table("pts", Arc::new(table))
        .expect("register");

    // Building footprints' GeoJSON polygons, as Snowflake returns GEOGRAPHY.
    let dir = tempfile::tempdir().expect("tempdir");
    let buildings = schemas::datasets::find("building_footprints").expect("dataset");
    let path = dir.path().join("b.parquet");
    emulator::generate::write_table(buildings, rows(), 42, &path).expect("generate");
    rt.block_on(ctx.register_parquet("b", path.to_string_lossy().as_ref(), Default::default()))
        .expect("register parquet");
    let vertices: u64 = rt
        .block_on(async {
            ctx.sql("SELECT \"FOOTPRINT\" FROM b")
                .await?
                .collect()
                .await
        })
        .expect("footprints")
        .iter()
        .flat_map(|b| {
            // DataFusion reads parquet strings as Utf8View.
            let utf8 = arrow::compute::cast(b.column(0), &DataType::Utf8).expect("cast");
            let a = arrow::array::cast::as_string_array(&utf8).clone();
            (0..a.len()).map(move |i| count_positions(a.value(i)))
        })
        .sum();

    let mut group = c.benchmark_group("udf");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    let run = |sql: &'static str| {
        let ctx = ctx.clone();
        let rt = &rt;
        move || {
            rt.block_on(async { ctx.sql(sql).await?.collect().await })
                .expect("query")
        }
    };
    group.throughput(Throughput::Elements(n as u64));
    let q = run("SELECT st_point(x, y, 4326) FROM pts");
    group.bench_function("st_point/points", |b| b.iter(&q));
    group.throughput(Throughput::Elements(2 * n as u64));
    let q = run("SELECT st_makeline(st_point(x, y, 4326), st_point(y, x, 4326)) FROM pts");
    group.bench_function("st_makeline/vertices", |b| b.iter(&q));
    group.throughput(Throughput::Elements(vertices));
    // Reading the parquet file alone: the part of the next two that is not
    // the geometry functions' own.
    let q = run("SELECT \"FOOTPRINT\" FROM b");
    group.bench_function("read_geojson/vertices", |b| b.iter(&q));
    let q = run("SELECT to_geography(\"FOOTPRINT\") FROM b");
    group.bench_function("to_geography_geojson/vertices", |b| b.iter(&q));
    let q = run("SELECT st_area(to_geography(\"FOOTPRINT\")) FROM b");
    group.bench_function("st_area/vertices", |b| b.iter(&q));

    // Each function alone, its input held in memory (the parquet read,
    // `read_geojson`, is not part of these figures): the GeoJSON as Utf8,
    // then the EWKB it becomes.
    let hold = |name: &str, batches: Vec<RecordBatch>| {
        // Dealt round the partitions DataFusion runs at once, as it splits
        // the parquet scan.
        let parts = ctx.state().config().target_partitions().max(1);
        let schema = batches.first().expect("footprints").schema();
        let mut partitions = vec![Vec::new(); parts];
        for (i, b) in batches.into_iter().enumerate() {
            partitions[i % parts].push(b);
        }
        let table =
            datafusion::datasource::MemTable::try_new(schema, partitions).expect("memtable");
        ctx.register_table(name, Arc::new(table)).expect("register");
    };
    hold(
        "j",
        run("SELECT arrow_cast(\"FOOTPRINT\", 'Utf8') AS t FROM b")(),
    );
    let q = run("SELECT to_geography(t) FROM j");
    group.bench_function("to_geography_geojson_in_memory/vertices", |b| b.iter(&q));
    hold("e", run("SELECT to_geography(\"FOOTPRINT\") AS g FROM b")());
    let q = run("SELECT st_area(g) FROM e");
    group.bench_function("st_area_ewkb/vertices", |b| b.iter(&q));

    // The same footprints as plain WKB, as Snowflake returns GEOGRAPHY with
    // `geography_output_format = 'WKB'` (what floe asks for).
    let wkb: Vec<RecordBatch> = run("SELECT to_geography(\"FOOTPRINT\") AS g FROM b")()
        .iter()
        .map(|batch| {
            let ewkb = batch
                .column(0)
                .as_any()
                .downcast_ref::<BinaryArray>()
                .expect("binary");
            // The SRID taken out of the header: the plain WKB Snowflake sends.
            let plain: BinaryArray = ewkb
                .iter()
                .map(|v| {
                    v.map(|v| {
                        let mut out = Vec::with_capacity(v.len());
                        operators::ewkb::write_with_srid(&mut out, v, None).expect("EWKB");
                        out
                    })
                })
                .collect();
            RecordBatch::try_from_iter([("g", Arc::new(plain) as ArrayRef)]).expect("batch")
        })
        .collect();
    let table =
        datafusion::datasource::MemTable::try_new(wkb[0].schema(), vec![wkb]).expect("memtable");
    ctx.register_table("w", Arc::new(table)).expect("register");
    let q = run("SELECT to_geography(g) FROM w");
    group.bench_function("to_geography_wkb/vertices", |b| b.iter(&q));
    group.finish();

    // The area alone, on the footprints' EWKB: the series against Karney.
    let ewkb: Vec<RecordBatch> = run("SELECT to_geography(\"FOOTPRINT\") FROM b")();
    let columns: Vec<&BinaryArray> = ewkb
        .iter()
        .map(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<BinaryArray>()
                .expect("binary")
        })
        .collect();
    let total = |area: &dyn Fn(&[u8]) -> f64| -> f64 {
        columns
            .iter()
            .flat_map(|c| c.iter().flatten())
            .map(area)
            .sum()
    };
    let series = |v: &[u8]| operators::ellipsoid::area(v).expect("a polygon");
    let karney = |v: &[u8]| {
        use geo::GeodesicArea;
        operators::ewkb::to_geo(v)
            .expect("EWKB")
            .geodesic_area_unsigned()
    };
    // Both measure the same: the footprints' total area agrees to 1e-9, or
    // to Karney's own rounding (a few ε·a²e² an edge, whatever its length),
    // which is larger on a small total (FLOE_BENCH_ROWS=2000).
    let (a, b) = (total(&series), total(&karney));
    let karney_rounding = vertices as f64 * operators::ellipsoid::KARNEY_ROUNDING;
    assert!(
        (a - b).abs() <= (1e-9 * b).max(karney_rounding),
        "series {a} m², karney {b} m²"
    );
    let mut group = c.benchmark_group("area");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(vertices));
    group.bench_function("series/vertices", |b| b.iter(|| total(&series)));
    group.bench_function("karney/vertices", |b| b.iter(|| total(&karney)));
    group.finish();
}

/// Coordinate positions in a GeoJSON text: each `[` directly before a number.
fn count_positions(geojson: &str) -> u64 {
    let b = geojson.as_bytes();
    b.windows(2)
        .filter(|w| w[0] == b'[' && (w[1] == b'-' || w[1].is_ascii_digit()))
        .count() as u64
}

fn topology_batches(rows: u64) -> Vec<RecordBatch> {
    let dir = tempfile::tempdir().expect("tempdir");
    let topology = schemas::datasets::find("topology").expect("dataset");
    let path = dir.path().join("t.parquet");
    emulator::generate::write_table(topology, rows, 42, &path).expect("generate");
    let file = std::fs::File::open(&path).expect("open");
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("parquet")
        .build()
        .expect("reader")
        .collect::<Result<Vec<_>, _>>()
        .expect("batches")
}

fn snowflake_decode(c: &mut Criterion) {
    use schemas::snowflake::SnowflakeType;
    use schemas::snowflake_arrow::{decode_batch, decoded_schema, encode_batch, RowType};
    let batches = topology_batches(rows());
    let rowtype: Vec<RowType> = batches[0]
        .schema()
        .fields()
        .iter()
        .map(|f| {
            RowType::for_column(
                f.name(),
                SnowflakeType::of_field(f).expect("snowflake type"),
                f.is_nullable(),
            )
        })
        .collect();
    let chunks: Vec<RecordBatch> = batches
        .iter()
        .map(|b| encode_batch(b, &rowtype).expect("encode chunk"))
        .collect();
    let schema = decoded_schema(&rowtype, "UTC").expect("schema");
    let n: usize = chunks.iter().map(|c| c.num_rows()).sum();
    let mut group = c.benchmark_group("snowflake_decode");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function("topology", |b| {
        b.iter(|| {
            chunks
                .iter()
                .map(|c| {
                    decode_batch(c, &rowtype, &schema)
                        .expect("decode")
                        .num_rows()
                })
                .sum::<usize>()
        })
    });
    group.finish();
}

fn snapshot_write(c: &mut Criterion) {
    use futures::StreamExt;
    let rt = runtime();
    let batches = topology_batches(rows());
    let schema = batches[0].schema();
    let n: usize = batches.iter().map(|b| b.num_rows()).sum();
    let bytes: usize = batches.iter().map(|b| b.get_array_memory_size()).sum();
    let mut group = c.benchmark_group("snapshot_write");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(n as u64));
    let write = || {
        rt.block_on(async {
            let store = Arc::new(object_store::memory::InMemory::new());
            let location = pipeline::snapshot::Location::new(store, "s", "memory://s");
            let writer = pipeline::snapshot::SnapshotWriter::start(
                location.snapshot("topology", "bench"),
                "topology",
                "bench",
                pipeline::snapshot::SnapshotSource::Parquet {
                    path: "bench".into(),
                },
                Arc::clone(&schema),
                Default::default(),
            );
            let source = futures::stream::iter(batches.iter().cloned().map(Ok::<_, String>));
            let _: Vec<_> = writer.tee(source).into_stream().collect().await;
            writer.finish(None).await.expect("snapshot").bytes
        })
    };
    group.bench_function("topology/rows", |b| b.iter(write));
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("topology/arrow_bytes", |b| b.iter(write));
    group.finish();
}

criterion_group!(
    benches,
    encode_tables,
    checksum_tables,
    encode_types,
    udfs,
    snowflake_decode,
    snapshot_write
);
criterion_main!(benches);
