use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryArray, Date32Array, Decimal128Array, Float64Array, Int64Array, StringArray,
    StringViewArray, TimestampNanosecondArray,
};
use arrow::datatypes::{Field, Schema};
use schemas::geometry::GeometryKind;

use super::columns::{float_to_decimal, write_numeric, PG_EPOCH_MICROS};
use super::*;

fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
        .collect();
    RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .unwrap()
}

fn encode(b: &RecordBatch, types: &[PgType]) -> Result<Vec<u8>, EncodeError> {
    let cols = b
        .schema()
        .fields()
        .iter()
        .zip(types)
        .map(|(f, t)| PgColumn {
            name: f.name().clone(),
            ty: *t,
            nullable: true,
        })
        .collect();
    let mut enc = CopyEncoder::new("t", &b.schema(), cols, &["id".to_string()])?;
    let mut out = BytesMut::new();
    enc.encode(b, &mut out)?;
    Ok(out.to_vec())
}

fn numeric(value: i128, scale: u32) -> Vec<u8> {
    let mut v = Vec::new();
    write_numeric(&mut v, value, scale);
    v
}

fn words(b: &[u8]) -> Vec<i16> {
    b.chunks(2)
        .map(|c| i16::from_be_bytes([c[0], c[1]]))
        .collect()
}

#[test]
fn rows_are_field_count_then_length_prefixed_values() {
    // (not the key column `id`, which may not be NULL)
    let b = batch(vec![
        (
            "n",
            Arc::new(Int64Array::from(vec![Some(1), None])) as ArrayRef,
        ),
        (
            "name",
            Arc::new(StringArray::from(vec![Some("ab"), Some("")])) as ArrayRef,
        ),
    ]);
    let got = encode(&b, &[PgType::Int8, PgType::Text]).unwrap();
    let mut want = Vec::new();
    // row 1: 2 fields, int8 1, text "ab"
    want.extend_from_slice(&2i16.to_be_bytes());
    want.extend_from_slice(&8i32.to_be_bytes());
    want.extend_from_slice(&1i64.to_be_bytes());
    want.extend_from_slice(&2i32.to_be_bytes());
    want.extend_from_slice(b"ab");
    // row 2: NULL, empty text
    want.extend_from_slice(&2i16.to_be_bytes());
    want.extend_from_slice(&(-1i32).to_be_bytes());
    want.extend_from_slice(&0i32.to_be_bytes());
    assert_eq!(got, want);
}

#[test]
fn numeric_digits_weight_and_scale() {
    // 123.45 → digits [123, 4500], weight 0, dscale 2
    assert_eq!(words(&numeric(12345, 2)), vec![2, 0, 0, 2, 123, 4500]);
    // -0.0001 → digits [1], weight -1, negative, dscale 4
    assert_eq!(words(&numeric(-1, 4)), vec![1, -1, 0x4000, 4, 1]);
    // 100000000 → digits [1], weight 2 (trailing zero groups dropped)
    assert_eq!(words(&numeric(100_000_000, 0)), vec![1, 2, 0, 0, 1]);
    // 0 keeps its display scale and has no digits
    assert_eq!(words(&numeric(0, 2)), vec![0, 0, 0, 2]);
    // 0.00012 = 1·10000^-1 + 2000·10000^-2 → weight -1
    assert_eq!(words(&numeric(12, 5)), vec![2, -1, 0, 5, 1, 2000]);
    // 0.000000012 = 0000|0001|2000 after the point → leading zero group dropped, weight -2
    assert_eq!(words(&numeric(12, 9)), vec![2, -2, 0, 9, 1, 2000]);
    // the largest Decimal128(38, 38) fraction does not overflow
    assert_eq!(
        numeric(99_999_999_999_999_999_999_999_999_999_999_999_999, 38)[..2],
        10i16.to_be_bytes()
    );
}

#[test]
fn floats_become_their_shortest_decimal() {
    assert_eq!(float_to_decimal(0.1, None), Some((1, 1)));
    assert_eq!(float_to_decimal(-2.5, None), Some((-25, 1)));
    assert_eq!(
        float_to_decimal(1e20, None),
        Some((100_000_000_000_000_000_000, 0))
    );
    // Rounded to the column's scale, as Postgres would.
    assert_eq!(float_to_decimal(12.345678, Some(2)), Some((1235, 2)));
    // Too many digits for an exact i128 decimal: refused, not a panic.
    assert_eq!(float_to_decimal(1e-39, None), None);
    assert_eq!(float_to_decimal(1e300, None), None);
}

#[test]
fn utf8view_and_utf8_encode_identically() {
    let plain = batch(vec![(
        "s",
        Arc::new(StringArray::from(vec![
            Some("Zürich"),
            None,
            Some("a much longer string than twelve bytes"),
        ])) as ArrayRef,
    )]);
    let view = batch(vec![(
        "s",
        Arc::new(StringViewArray::from(vec![
            Some("Zürich"),
            None,
            Some("a much longer string than twelve bytes"),
        ])) as ArrayRef,
    )]);
    assert_eq!(
        encode(&plain, &[PgType::Text]).unwrap(),
        encode(&view, &[PgType::Text]).unwrap()
    );
}

#[test]
fn a_nul_byte_is_named_with_row_and_key() {
    let b = batch(vec![
        ("id", Arc::new(Int64Array::from(vec![7, 8])) as ArrayRef),
        (
            "name",
            Arc::new(StringArray::from(vec!["ok", "bad\0value"])) as ArrayRef,
        ),
    ]);
    let e = encode(&b, &[PgType::Int8, PgType::Text]).unwrap_err();
    assert_eq!((e.column.as_str(), e.row), ("name", 2));
    let msg = e.to_string();
    assert!(
        msg.contains("table t") && msg.contains("id=8") && msg.contains("NUL"),
        "{msg}"
    );
}

/// Columns `id bigint, name text`.
fn id_and_name() -> Vec<PgColumn> {
    vec![
        PgColumn {
            name: "id".into(),
            ty: PgType::Int8,
            nullable: true,
        },
        PgColumn {
            name: "name".into(),
            ty: PgType::Text,
            nullable: true,
        },
    ]
}

#[test]
fn a_null_key_is_named_and_nothing_is_written() {
    let b = batch(vec![
        (
            "id",
            Arc::new(Int64Array::from(vec![Some(7), None, None])) as ArrayRef,
        ),
        (
            "name",
            Arc::new(StringArray::from(vec![Some("a"), None, Some("c")])) as ArrayRef,
        ),
    ]);
    let cols = |key: &[&str]| {
        let key: Vec<String> = key.iter().map(|k| k.to_string()).collect();
        CopyEncoder::new("t", &b.schema(), id_and_name(), &key).unwrap()
    };
    let mut out = BytesMut::from(&b"before"[..]);
    let e = cols(&["id"]).encode(&b, &mut out).unwrap_err();
    assert_eq!(
        (e.column.as_str(), e.row, e.value.as_str()),
        ("id", 2, "NULL")
    );
    assert!(
        e.to_string().contains("primary-key column cannot be NULL"),
        "{e}"
    );
    assert_eq!(&out[..], b"before", "nothing of the batch is written");
    // A NULL outside the key is a value like any other; a composite key
    // names its first NULL column.
    let e = cols(&["name", "id"]).encode(&b, &mut out).unwrap_err();
    assert_eq!((e.column.as_str(), e.row), ("name", 2));
    assert!(cols(&[]).encode(&b, &mut out).is_ok());
}

#[test]
fn a_null_in_a_column_the_target_declares_not_null_is_named_with_its_key() {
    let b = batch(vec![
        (
            "id",
            Arc::new(Int64Array::from(vec![Some(7), Some(8), Some(9)])) as ArrayRef,
        ),
        (
            "name",
            Arc::new(StringArray::from(vec![Some("a"), Some("b"), None])) as ArrayRef,
        ),
    ]);
    let mut encoder =
        CopyEncoder::new("t", &b.schema(), id_and_name(), &["id".to_string()]).unwrap();
    let mut out = BytesMut::new();
    // Until told, a NULL there is a value like any other.
    assert!(encoder.encode(&b, &mut out).is_ok());
    // Names the table does not have are nothing to refuse.
    encoder.refuse_nulls_in(&["name".to_string(), "gone".to_string()]);
    let written = out.len();
    let e = encoder.encode(&b, &mut out).unwrap_err();
    assert_eq!(
        (e.column.as_str(), e.row, e.key.as_str(), e.value.as_str()),
        ("name", 6, ", key (id=9)", "NULL"),
        "the row counts on from the first batch"
    );
    assert!(
        e.to_string().contains("declares this column NOT NULL"),
        "{e}"
    );
    assert_eq!(out.len(), written, "nothing of the batch is written");
}

#[test]
fn values_postgres_would_reject_are_caught() {
    let tiny = batch(vec![(
        "v",
        Arc::new(Float64Array::from(vec![1e-39])) as ArrayRef,
    )]);
    let e = encode(&tiny, &[PgType::Numeric(None)]).unwrap_err();
    assert!(e.reason.contains("38 significant digits"), "{e}");
    assert!(
        encode(&tiny, &[PgType::Numeric(Some((6, 2)))]).is_ok(),
        "rounds to 0.00 like Postgres"
    );

    let nan = batch(vec![(
        "v",
        Arc::new(Float64Array::from(vec![1.5, f64::NAN])) as ArrayRef,
    )]);
    let e = encode(&nan, &[PgType::Numeric(Some((6, 2)))]).unwrap_err();
    assert_eq!(e.row, 2);
    assert!(e.reason.contains("NaN"), "{e}");

    let big = batch(vec![(
        "v",
        Arc::new(
            Decimal128Array::from(vec![12345678])
                .with_precision_and_scale(10, 2)
                .unwrap(),
        ) as ArrayRef,
    )]);
    let e = encode(&big, &[PgType::Numeric(Some((6, 2)))]).unwrap_err();
    assert!(
        e.reason.contains("numeric(6,2)") && e.value == "123456.78",
        "{e}"
    );

    let rounds_up = batch(vec![(
        "v",
        Arc::new(
            Decimal128Array::from(vec![99995])
                .with_precision_and_scale(5, 3)
                .unwrap(),
        ) as ArrayRef,
    )]);
    assert!(
        encode(&rounds_up, &[PgType::Numeric(Some((3, 2)))]).is_err(),
        "99.995 rounds to 100.00"
    );

    let date = batch(vec![(
        "d",
        Arc::new(Date32Array::from(vec![i32::MAX])) as ArrayRef,
    )]);
    assert!(encode(&date, &[PgType::Date])
        .unwrap_err()
        .reason
        .contains("range"));

    let json = batch(vec![(
        "j",
        Arc::new(StringArray::from(vec!["{\"a\":1}", "{oops"])) as ArrayRef,
    )]);
    let e = encode(&json, &[PgType::Jsonb]).unwrap_err();
    assert!(e.row == 2 && e.reason.contains("JSON"), "{e}");

    // As PostgreSQL 15 answers `'<text>'::jsonb`: an escaped NUL and half a
    // surrogate pair are refused, in a value or a key; an escaped backslash
    // before `u0000` or `ud800` is text.
    for (text, refused) in [
        (r#"{"a":"\\u0000"}"#, false),
        (r#"{"a":"\\\\u0000 x"}"#, false),
        (r#"{"a":"\u0000"}"#, true),
        (r#"{"a":"\\\u0000"}"#, true),
        (r#"{"\u0000":1}"#, true),
        (r#""\ud83d\ude00""#, false),
        (r#""\\\ud83d\ude00""#, false),
        (r#""\\ud800""#, false),
        (r#""tab\t, quote \" and \u00e9""#, false),
        (r#""a\ud800b""#, true),
        (r#""\ud800\u0041""#, true),
        (r#""\ud83d\\ude00""#, true),
        (r#"{"\udc00":1}"#, true),
        (r#""\ud800\ud800""#, true),
        (r#""\ud800""#, true),
    ] {
        let b = batch(vec![(
            "j",
            Arc::new(StringArray::from(vec!["{}", text])) as ArrayRef,
        )]);
        match encode(&b, &[PgType::Jsonb]) {
            Err(e) => assert!(
                refused && e.row == 2 && e.reason.contains("jsonb"),
                "{text}: {e}"
            ),
            Ok(_) => assert!(!refused, "{text} was taken"),
        }
    }

    let small = batch(vec![(
        "n",
        Arc::new(Int64Array::from(vec![1, 40_000])) as ArrayRef,
    )]);
    let e = encode(&small, &[PgType::Int2]).unwrap_err();
    assert!(e.value == "40000" && e.reason.contains("smallint"), "{e}");
}

#[test]
fn geometry_type_and_srid_are_checked_before_postgres() {
    let mut pt = Vec::new();
    operators::ewkb::write_point(&mut pt, 1.0, 2.0, Some(4326));
    let mut pt0 = Vec::new();
    operators::ewkb::write_point(&mut pt0, 1.0, 2.0, Some(0));
    let b = batch(vec![(
        "g",
        Arc::new(BinaryArray::from(vec![pt.as_slice(), pt0.as_slice()])) as ArrayRef,
    )]);
    let point = PgType::Geometry {
        kind: GeometryKind::Point,
        srid: Some(4326),
    };
    let e = encode(&b, &[point]).unwrap_err();
    assert!(e.row == 2 && e.reason.contains("SRID 0"), "{e}");
    let line = PgType::Geometry {
        kind: GeometryKind::LineString,
        srid: Some(4326),
    };
    let e = encode(&b, &[line]).unwrap_err();
    assert!(
        e.row == 1
            && e.reason
                .contains("Point does not match column type LineString"),
        "{e}"
    );
}

#[test]
fn nanoseconds_truncate_to_postgres_microseconds() {
    // 2000-01-01T00:00:00.000001999 → 1 µs after the Postgres epoch.
    let ns = PG_EPOCH_MICROS * 1_000 + 1_999;
    let b = batch(vec![(
        "t",
        Arc::new(TimestampNanosecondArray::from(vec![ns])) as ArrayRef,
    )]);
    let got = encode(&b, &[PgType::Timestamp]).unwrap();
    assert_eq!(&got[2..6], &8i32.to_be_bytes());
    assert_eq!(&got[6..14], &1i64.to_be_bytes());
}

#[test]
fn row_numbers_continue_across_batches() {
    let b = batch(vec![(
        "n",
        Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef,
    )]);
    let bad = batch(vec![(
        "n",
        Arc::new(Int64Array::from(vec![3, 70_000])) as ArrayRef,
    )]);
    let cols = vec![PgColumn {
        name: "n".into(),
        ty: PgType::Int2,
        nullable: true,
    }];
    let mut enc = CopyEncoder::new("t", &b.schema(), cols, &[]).unwrap();
    let mut out = BytesMut::new();
    enc.encode(&b, &mut out).unwrap();
    let before = out.len();
    let e = enc.encode(&bad, &mut out).unwrap_err();
    assert_eq!(e.row, 4);
    assert_eq!(
        out.len(),
        before,
        "a failed batch leaves the buffer as it was"
    );
}
