//! Every grid table through the shipped config: counts, valid geometry of
//! the declared type and SRID, and a full value comparison for a sample.

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Int64Type, TimeUnit};
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use schemas::datasets;
use tokio_postgres::Client;

use crate::support::*;

/// Sampled rows per table: every 997th row, so several batches are covered.
const SAMPLE_STEP: usize = 997;

fn read_parquet(table: &str) -> RecordBatch {
    let path = grid_dir().join(format!("{table}.parquet"));
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap()
}

/// The key's SQL literal for row `i`.
fn key_literal(b: &RecordBatch, col: usize, i: usize) -> String {
    match b.column(col).data_type() {
        DataType::Int64 => b
            .column(col)
            .as_primitive::<Int64Type>()
            .value(i)
            .to_string(),
        _ => format!("'{}'", b.column(col).as_string::<i32>().value(i)),
    }
}

/// Compares every source column that the cache keeps under the same name.
async fn compare_sample(client: &Client, d: &datasets::Dataset, key: &str) {
    let b = read_parquet(d.snowflake_table);
    let schema = b.schema();
    let key_col = schema.index_of(&key.to_uppercase()).unwrap();
    let target_cols: Vec<String> = client
        .query(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = $1::text::regclass AND attnum > 0",
            &[&d.target_table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut compared = 0;
    for i in (0..b.num_rows()).step_by(SAMPLE_STEP) {
        let k = key_literal(&b, key_col, i);
        for (c, field) in schema.fields().iter().enumerate() {
            let name = field.name().to_lowercase();
            if !target_cols.contains(&name) {
                continue;
            }
            let a = b.column(c);
            let sql =
                |expr: &str| format!("SELECT ({expr}) FROM {} WHERE {key} = {k}", d.target_table);
            let ctx = format!("{}.{name} row {i}", d.target_table);
            if a.is_null(i) {
                let null: bool = client
                    .query_one(&sql(&format!("{name} IS NULL")), &[])
                    .await
                    .unwrap()
                    .get(0);
                assert!(null, "{ctx}: expected NULL");
                compared += 1;
                continue;
            }
            match a.data_type() {
                DataType::Float64 => {
                    let got: f64 = client.query_one(&sql(&name), &[]).await.unwrap().get(0);
                    assert_eq!(
                        got,
                        a.as_primitive::<arrow::datatypes::Float64Type>().value(i),
                        "{ctx}"
                    );
                }
                DataType::Timestamp(TimeUnit::Nanosecond, _) => {
                    let want = a
                        .as_primitive::<arrow::datatypes::TimestampNanosecondType>()
                        .value(i)
                        / 1_000;
                    let got: i64 = client
                        .query_one(
                            &sql(&format!("(EXTRACT(EPOCH FROM {name}) * 1000000)::bigint")),
                            &[],
                        )
                        .await
                        .unwrap()
                        .get(0);
                    assert_eq!(got, want, "{ctx}");
                }
                DataType::Date32 => {
                    let got: i32 = client
                        .query_one(&sql(&format!("{name} - DATE '1970-01-01'")), &[])
                        .await
                        .unwrap()
                        .get(0);
                    assert_eq!(
                        got,
                        a.as_primitive::<arrow::datatypes::Date32Type>().value(i),
                        "{ctx}"
                    );
                }
                DataType::Utf8 if schemas::geometry::is_json_field(field) => {
                    let same: bool = client
                        .query_one(
                            &sql(&format!("{name} = $1::text::jsonb")),
                            &[&a.as_string::<i32>().value(i)],
                        )
                        .await
                        .unwrap()
                        .get(0);
                    assert!(same, "{ctx}");
                }
                _ => {
                    let want = arrow::util::display::array_value_to_string(a, i).unwrap();
                    let got: String = client
                        .query_one(&sql(&format!("{name}::text")), &[])
                        .await
                        .unwrap()
                        .get(0);
                    assert_eq!(got, want, "{ctx}");
                }
            }
            compared += 1;
        }
    }
    assert!(
        compared > 50,
        "{}: only {compared} values compared",
        d.target_table
    );
}

/// Counts rows whose `column` is not a valid geometry of `kind` with SRID 4326.
async fn bad_geometries(client: &Client, table: &str, column: &str, kind: &str) -> i64 {
    client
        .query_one(
            &format!(
                "SELECT count(*) FROM {table} WHERE {column} IS NULL OR NOT ST_IsValid({column}) \
                 OR ST_SRID({column}) <> 4326 OR GeometryType({column}) <> '{kind}'"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn every_grid_table_loads_with_valid_geometry_and_exact_values() {
    let url = fresh_db("grid_tables").await;
    let config = shipped_config();
    let client = connect(&url).await;
    // (table, primary key, geometry columns with their expected type)
    type Expectation<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
    let geometry_columns: &[Expectation] = &[
        ("topology", "connection_id", &[("geom", "LINESTRING")]),
        ("assets", "asset_id", &[("geom", "POINT")]),
        ("vegetation", "zone_id", &[("geom", "MULTIPOLYGON")]),
        ("transformers", "transformer_id", &[("geom", "POINT")]),
        (
            "power_lines",
            "line_id",
            &[("geom", "LINESTRING"), ("geom_simplified", "LINESTRING")],
        ),
        (
            "building_footprints",
            "building_id",
            &[("geom", "POLYGON"), ("centroid", "POINT")],
        ),
    ];
    for (name, key, geoms) in geometry_columns {
        let d = datasets::find(name).unwrap();
        let report = run(&config, name, &url, Some(grid_dir())).await;
        assert_success(&report);
        assert_eq!(report.rows_synced, GRID_ROWS, "{name}");
        let count: i64 = client
            .query_one(&format!("SELECT count(*) FROM {}", d.target_table), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(count as u64, GRID_ROWS, "{name}");
        assert_eq!(report.final_count, Some(GRID_ROWS));
        for (column, kind) in *geoms {
            assert_eq!(
                bad_geometries(&client, d.target_table, column, kind).await,
                0,
                "{name}.{column}"
            );
        }
        compare_sample(&client, d, key).await;
        // The primary key and the GiST index are in place under their final names.
        let indexes: Vec<String> = client
            .query(
                "SELECT indexname::text FROM pg_indexes WHERE tablename = $1 ORDER BY 1",
                &[&d.target_table],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(
            indexes,
            vec![
                format!("{}_geom_idx", d.target_table),
                format!("{}_pkey", d.target_table)
            ],
            "{name}"
        );
    }

    // Derived geometry matches the source columns it was built from.
    let misplaced: i64 = client
        .query_one(
            "SELECT count(*) FROM topology_connections_cache WHERE ST_NPoints(geom) <> 2 \
             OR ST_X(ST_StartPoint(geom)) <> from_longitude OR ST_Y(ST_StartPoint(geom)) <> from_latitude \
             OR ST_X(ST_EndPoint(geom)) <> to_longitude OR ST_Y(ST_EndPoint(geom)) <> to_latitude",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(misplaced, 0);
    let off_point: i64 = client
        .query_one(
            "SELECT count(*) FROM assets_cache WHERE ST_X(geom) <> lon OR ST_Y(geom) <> lat",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(off_point, 0);
    // Computed measures agree with PostGIS's geography functions.
    let area_off: i64 = client
        .query_one(
            "SELECT count(*) FROM vegetation_cache WHERE abs(area_m2 - ST_Area(geom::geography)) > 1e-6 * area_m2",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        area_off, 0,
        "vegetation area_m2 disagrees with ST_Area(geography)"
    );
    let length_off: i64 = client
        .query_one(
            "SELECT count(*) FROM power_lines_cache WHERE abs(length_km * 1000 - ST_Length(geom::geography)) > 1e-6 * length_km * 1000",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        length_off, 0,
        "power line length_km disagrees with ST_Length(geography)"
    );
    let centroid_off: i64 = client
        .query_one("SELECT count(*) FROM building_footprints WHERE ST_Distance(centroid, ST_Centroid(geom)) > 1e-9", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(centroid_off, 0);
    assert!(staging_tables(&client).await.is_empty());
}

#[test]
fn every_generated_table_s_geojson_is_written_byte_for_byte_as_geozero_writes_it() {
    // The one-pass GeoJSON reader against the reference it replaced, on
    // every geography value of every grid table.
    let mut checked = 0;
    for d in datasets::ALL {
        let b = read_parquet(d.snowflake_table);
        for c in d
            .columns
            .iter()
            .filter(|c| c.ty == schemas::snowflake::SnowflakeType::Geography)
        {
            let column = b.column_by_name(c.name).unwrap();
            let text = arrow::compute::cast(column, &DataType::Utf8).unwrap();
            let text = text.as_string::<i32>();
            for i in 0..text.len() {
                if text.is_null(i) {
                    continue;
                }
                let (mut ours, mut reference) = (Vec::new(), Vec::new());
                operators::geojson::write(&mut ours, text.value(i), 4326).unwrap();
                operators::ewkb::write_from(
                    &mut reference,
                    &geozero::geojson::GeoJson(text.value(i)),
                    Some(4326),
                )
                .unwrap();
                assert_eq!(ours, reference, "{} row {i}", d.name);
                checked += 1;
            }
        }
    }
    assert!(checked >= 3 * GRID_ROWS as usize, "{checked}");
}
