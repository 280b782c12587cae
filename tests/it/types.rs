//! Every Arrow → Postgres pair the encoder supports round-trips exactly:
//! written by floe through binary COPY, read back with SQL.

use std::sync::Arc;

use arrow::array::*;
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use schemas::geometry::{json_metadata, GeometryInfo, GeometryKind};

use crate::support::*;

fn point(x: f64, y: f64) -> Vec<u8> {
    let mut b = Vec::new();
    operators::ewkb::write_point(&mut b, x, y, Some(4326));
    b
}

/// Rows: 0 = ordinary, 1 = low edge, 2 = high edge, 3 = all NULL (but id).
fn edge_batch() -> RecordBatch {
    let p1 = point(-95.5, 29.75);
    let p2 = point(-180.0, -90.0);
    let p3 = point(180.0, 90.0);
    let cols: Vec<(Field, ArrayRef)> = vec![
        (
            Field::new("id", DataType::Int32, false),
            Arc::new(Int32Array::from(vec![1, 2, 3, 4])),
        ),
        (
            Field::new("b", DataType::Boolean, true),
            Arc::new(BooleanArray::from(vec![
                Some(true),
                Some(false),
                Some(true),
                None,
            ])),
        ),
        (
            Field::new("i16", DataType::Int16, true),
            Arc::new(Int16Array::from(vec![
                Some(7),
                Some(i16::MIN),
                Some(i16::MAX),
                None,
            ])),
        ),
        (
            Field::new("i32", DataType::Int32, true),
            Arc::new(Int32Array::from(vec![
                Some(-7),
                Some(i32::MIN),
                Some(i32::MAX),
                None,
            ])),
        ),
        (
            Field::new("i64", DataType::Int64, true),
            Arc::new(Int64Array::from(vec![
                Some(0),
                Some(i64::MIN),
                Some(i64::MAX),
                None,
            ])),
        ),
        (
            Field::new("f32", DataType::Float32, true),
            Arc::new(Float32Array::from(vec![
                Some(1.5),
                Some(f32::NEG_INFINITY),
                Some(f32::NAN),
                None,
            ])),
        ),
        (
            Field::new("f64", DataType::Float64, true),
            Arc::new(Float64Array::from(vec![
                Some(0.1),
                Some(-0.0),
                Some(f64::INFINITY),
                None,
            ])),
        ),
        (
            Field::new("f64_tiny", DataType::Float64, true),
            Arc::new(Float64Array::from(vec![
                Some(1e-300),
                Some(f64::MIN_POSITIVE),
                Some(f64::MAX),
                None,
            ])),
        ),
        (
            Field::new("dec", DataType::Decimal128(38, 18), true),
            Arc::new(
                Decimal128Array::from(vec![
                    Some(12_470_000_000_000_000_000),
                    Some(-99_999_999_999_999_999_999_999_999_999_999_999_999),
                    Some(1),
                    None,
                ])
                .with_precision_and_scale(38, 18)
                .unwrap(),
            ),
        ),
        (
            Field::new("dec62", DataType::Decimal128(6, 2), true),
            Arc::new(
                Decimal128Array::from(vec![Some(1247), Some(-99999), Some(0), None])
                    .with_precision_and_scale(6, 2)
                    .unwrap(),
            ),
        ),
        (
            Field::new("f_num", DataType::Float64, true),
            Arc::new(Float64Array::from(vec![
                Some(12.3456),
                Some(-0.5),
                Some(1e-9),
                None,
            ])),
        ),
        (
            Field::new("i_num", DataType::Int64, true),
            Arc::new(Int64Array::from(vec![
                Some(123),
                Some(i64::MIN),
                Some(0),
                None,
            ])),
        ),
        (
            Field::new("i_narrow", DataType::Int64, true),
            Arc::new(Int64Array::from(vec![
                Some(5),
                Some(i32::MIN as i64),
                Some(i32::MAX as i64),
                None,
            ])),
        ),
        (
            Field::new("txt", DataType::Utf8, true),
            Arc::new(StringArray::from(vec![
                Some("Río Bravo 変電所 🌩"),
                Some(""),
                Some("quote ' \" back\\slash\ttab\nline"),
                None,
            ])),
        ),
        (
            Field::new("ltxt", DataType::LargeUtf8, true),
            Arc::new(LargeStringArray::from(vec![
                Some("large"),
                Some(""),
                Some("ü"),
                None,
            ])),
        ),
        (
            Field::new("vtxt", DataType::Utf8View, true),
            Arc::new(StringViewArray::from(vec![
                Some("short"),
                Some("a view string longer than twelve bytes"),
                Some(""),
                None,
            ])),
        ),
        (
            Field::new("bin", DataType::Binary, true),
            Arc::new(BinaryArray::from(vec![
                Some(&b"\x00\x01\xff"[..]),
                Some(&b""[..]),
                Some(&b"\x00"[..]),
                None,
            ])),
        ),
        (
            Field::new("d", DataType::Date32, true),
            Arc::new(Date32Array::from(vec![
                Some(19_792),
                Some(-719_162),
                Some(2_932_896),
                None,
            ])),
        ),
        (
            Field::new("ts_s", DataType::Timestamp(TimeUnit::Second, None), true),
            Arc::new(TimestampSecondArray::from(vec![
                Some(1_710_037_800),
                Some(-2_208_988_800),
                Some(253_402_300_799),
                None,
            ])),
        ),
        (
            Field::new(
                "ts_ms",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                true,
            ),
            Arc::new(TimestampMillisecondArray::from(vec![
                Some(1_710_037_800_123),
                Some(-1),
                Some(946_684_800_000),
                None,
            ])),
        ),
        (
            Field::new(
                "ts_us",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Arc::new(
                TimestampMicrosecondArray::from(vec![
                    Some(1_710_037_800_123_456),
                    Some(-62_135_596_800_000_000),
                    Some(0),
                    None,
                ])
                .with_timezone("UTC"),
            ),
        ),
        (
            Field::new(
                "ts_ns",
                DataType::Timestamp(TimeUnit::Nanosecond, Some("America/Chicago".into())),
                true,
            ),
            Arc::new(
                TimestampNanosecondArray::from(vec![
                    Some(1_730_617_200_000_001_000),
                    Some(-1_000),
                    Some(1),
                    None,
                ])
                .with_timezone("America/Chicago"),
            ),
        ),
        (
            Field::new("j", DataType::Utf8, true).with_metadata(json_metadata()),
            Arc::new(StringArray::from(vec![
                Some(r#"{"a":1,"é":["ü",null,true],"n":{"x":1.5}}"#),
                Some("[]"),
                Some("\"just a string\""),
                None,
            ])),
        ),
        (
            GeometryInfo {
                kind: GeometryKind::Point,
                srid: Some(4326),
            }
            .field("g", true),
            Arc::new(BinaryArray::from(vec![
                Some(p1.as_slice()),
                Some(p2.as_slice()),
                Some(p3.as_slice()),
                None,
            ])),
        ),
    ];
    let (fields, arrays): (Vec<Field>, Vec<ArrayRef>) = cols.into_iter().unzip();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap()
}

/// Expected `column::text` per row, as Postgres prints it (UTC session).
const EXPECTED: &[(&str, [Option<&str>; 4])] = &[
    ("b", [Some("true"), Some("false"), Some("true"), None]),
    ("i16", [Some("7"), Some("-32768"), Some("32767"), None]),
    (
        "i32",
        [Some("-7"), Some("-2147483648"), Some("2147483647"), None],
    ),
    (
        "i64",
        [
            Some("0"),
            Some("-9223372036854775808"),
            Some("9223372036854775807"),
            None,
        ],
    ),
    ("f32", [Some("1.5"), Some("-Infinity"), Some("NaN"), None]),
    ("f64", [Some("0.1"), Some("-0"), Some("Infinity"), None]),
    (
        "f64_tiny",
        [
            Some("1e-300"),
            Some("2.2250738585072014e-308"),
            Some("1.7976931348623157e+308"),
            None,
        ],
    ),
    (
        "dec",
        [
            Some("12.470000000000000000"),
            Some("-99999999999999999999.999999999999999999"),
            Some("0.000000000000000001"),
            None,
        ],
    ),
    (
        "dec62",
        [Some("12.47"), Some("-999.99"), Some("0.00"), None],
    ),
    (
        "f_num",
        [Some("12.346"), Some("-0.500"), Some("0.000"), None],
    ),
    (
        "i_num",
        [Some("123"), Some("-9223372036854775808"), Some("0"), None],
    ),
    (
        "i_narrow",
        [Some("5"), Some("-2147483648"), Some("2147483647"), None],
    ),
    (
        "txt",
        [
            Some("Río Bravo 変電所 🌩"),
            Some(""),
            Some("quote ' \" back\\slash\ttab\nline"),
            None,
        ],
    ),
    ("ltxt", [Some("large"), Some(""), Some("ü"), None]),
    (
        "vtxt",
        [
            Some("short"),
            Some("a view string longer than twelve bytes"),
            Some(""),
            None,
        ],
    ),
    ("bin", [Some("\\x0001ff"), Some("\\x"), Some("\\x00"), None]),
    (
        "d",
        [
            Some("2024-03-10"),
            Some("0001-01-01"),
            Some("9999-12-31"),
            None,
        ],
    ),
    (
        "ts_s",
        [
            Some("2024-03-10 02:30:00"),
            Some("1900-01-01 00:00:00"),
            Some("9999-12-31 23:59:59"),
            None,
        ],
    ),
    (
        "ts_ms",
        [
            Some("2024-03-10 02:30:00.123"),
            Some("1969-12-31 23:59:59.999"),
            Some("2000-01-01 00:00:00"),
            None,
        ],
    ),
    (
        "ts_us",
        [
            Some("2024-03-10 02:30:00.123456+00"),
            Some("0001-01-01 00:00:00+00"),
            Some("1970-01-01 00:00:00+00"),
            None,
        ],
    ),
    (
        "ts_ns",
        [
            Some("2024-11-03 07:00:00.000001+00"),
            Some("1969-12-31 23:59:59.999999+00"),
            Some("1970-01-01 00:00:00+00"),
            None,
        ],
    ),
    (
        "g",
        [
            Some("SRID=4326;POINT(-95.5 29.75)"),
            Some("SRID=4326;POINT(-180 -90)"),
            Some("SRID=4326;POINT(180 90)"),
            None,
        ],
    ),
];

#[tokio::test]
async fn every_type_round_trips_exactly() {
    let url = fresh_db("types_round_trip").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("types.parquet");
    write_parquet(&path, &[edge_batch()]);
    let config = parquet_config(
        &path,
        "types_cache",
        "primary_key = [\"id\"]\ncolumns = { j = \"jsonb\", f_num = \"numeric(10,3)\", i_num = \"numeric\", i_narrow = \"integer\" }",
    );
    let report = run(&config, "t", &url, None).await;
    assert_success(&report);
    assert_eq!((report.rows_synced, report.final_count), (4, Some(4)));

    let client = connect(&url).await;
    // Declared types are the mapped ones.
    let types: Vec<(String, String)> = client
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = 'types_cache'::regclass AND attnum > 0 ORDER BY attnum",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let ty = |c: &str| {
        types
            .iter()
            .find(|(n, _)| n == c)
            .map(|(_, t)| t.as_str())
            .unwrap()
    };
    assert_eq!(ty("dec"), "numeric(38,18)");
    assert_eq!(ty("ts_ns"), "timestamp with time zone");
    assert_eq!(ty("ts_s"), "timestamp without time zone");
    assert_eq!(ty("j"), "jsonb");
    assert_eq!(ty("g"), "geometry(Point,4326)");
    assert_eq!(ty("vtxt"), "text");
    assert_eq!(ty("f_num"), "numeric(10,3)");
    assert_eq!(ty("i_narrow"), "integer");

    for (column, want) in EXPECTED {
        let expr = if *column == "g" {
            "ST_AsEWKT(g)".to_string()
        } else {
            format!("{column}::text")
        };
        let got: Vec<Option<String>> = client
            .query(&format!("SELECT {expr} FROM types_cache ORDER BY id"), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let want: Vec<Option<String>> = want.iter().map(|w| w.map(str::to_string)).collect();
        assert_eq!(got, want, "column {column}");
    }
    // jsonb compares by value, not by text layout.
    let same: Vec<Option<bool>> = client
        .query(
            "SELECT j = (ARRAY[$1::text::jsonb, $2::text::jsonb, $3::text::jsonb, NULL])[id] FROM types_cache ORDER BY id",
            &[&r#"{"a":1,"é":["ü",null,true],"n":{"x":1.5}}"#, &"[]", &"\"just a string\""],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(same, vec![Some(true), Some(true), Some(true), None]);
}
