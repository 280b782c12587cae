use std::sync::Arc;

use arrow::array::*;
use arrow::datatypes::{DataType, Field, Fields, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;

use super::*;
use crate::datasets;

/// A plain batch shaped like a decoded grid table, with NULLs and edge values.
fn grid_like(d: &datasets::Dataset) -> (Vec<RowType>, RecordBatch) {
    let rowtype: Vec<RowType> = d
        .columns
        .iter()
        .map(|c| RowType::for_column(c.name, c.ty, true))
        .collect();
    let schema = decoded_schema(&rowtype, "America/Chicago").unwrap();
    let n = 3;
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| -> ArrayRef {
            match f.data_type() {
                DataType::Int64 => Arc::new(Int64Array::from(vec![
                    Some(1),
                    Some(9_000_000_000_000),
                    None,
                ])),
                DataType::Decimal128(p, s) => Arc::new(
                    Decimal128Array::from(vec![Some(1247), Some(-99_999), None])
                        .with_precision_and_scale(*p, *s)
                        .unwrap(),
                ),
                DataType::Float64 => {
                    Arc::new(Float64Array::from(vec![Some(29.5), Some(-95.25), None]))
                }
                DataType::Boolean => {
                    Arc::new(BooleanArray::from(vec![Some(true), Some(false), None]))
                }
                DataType::Date32 => Arc::new(Date32Array::from(vec![Some(19_792), Some(-1), None])),
                DataType::Timestamp(TimeUnit::Nanosecond, tz) => Arc::new(
                    TimestampNanosecondArray::from(vec![
                        Some(1_710_037_800_123_456_789),
                        Some(-1),
                        None,
                    ])
                    .with_timezone_opt(tz.clone()),
                ),
                DataType::Utf8 => Arc::new(StringArray::from(vec![
                    Some("Señal"),
                    Some("{\"a\":1}"),
                    None,
                ])),
                other => panic!("unexpected {other}"),
            }
        })
        .collect();
    assert_eq!(columns[0].len(), n);
    (rowtype, RecordBatch::try_new(schema, columns).unwrap())
}

#[test]
fn encoding_then_decoding_gives_back_every_grid_table() {
    for d in datasets::ALL {
        let (rowtype, plain) = grid_like(d);
        let chunk = encode_batch(&plain, &rowtype).unwrap();
        assert_eq!(
            decode_batch(&chunk, &rowtype, &plain.schema()).unwrap(),
            plain,
            "{}",
            d.name
        );
    }
}

#[test]
fn the_wire_form_is_snowflakes() {
    let (rowtype, plain) = grid_like(&datasets::TOPOLOGY);
    let chunk = encode_batch(&plain, &rowtype).unwrap();
    // On the wire: unscaled narrow integers, struct timestamps, logicalType metadata.
    let s = chunk.schema();
    let id = s.field_with_name("CONNECTION_ID").unwrap();
    assert_eq!(id.data_type(), &DataType::Int64, "9e12 needs 64 bits");
    let volt = s.field_with_name("VOLTAGE_KV").unwrap();
    assert_eq!(
        volt.data_type(),
        &DataType::Int32,
        "unscaled -99999 fits 32 bits"
    );
    assert_eq!(volt.metadata()["logicalType"], "FIXED");
    assert_eq!(volt.metadata()["scale"], "2");
    assert!(matches!(
        s.field_with_name("UPDATED_AT").unwrap().data_type(),
        DataType::Struct(_)
    ));

    let decoded = decode_batch(&chunk, &rowtype, &plain.schema()).unwrap();
    assert_eq!(decoded, plain);
}

#[test]
fn chunks_with_different_integer_widths_decode_to_one_schema() {
    let rowtype = vec![
        RowType::for_column("ID", SnowflakeType::Number(38, 0), true),
        RowType::for_column("KV", SnowflakeType::Number(6, 2), true),
    ];
    let schema = decoded_schema(&rowtype, "UTC").unwrap();
    let chunk = |id: ArrayRef, kv: ArrayRef| {
        let fields = vec![
            Field::new("ID", id.data_type().clone(), true),
            Field::new("KV", kv.data_type().clone(), true),
        ];
        RecordBatch::try_new(Arc::new(Schema::new(fields)), vec![id, kv]).unwrap()
    };
    let a = chunk(
        Arc::new(Int8Array::from(vec![Some(5), None])),
        Arc::new(Int16Array::from(vec![1247, 416])),
    );
    let b = chunk(
        Arc::new(Int64Array::from(vec![Some(5_000_000_000), Some(6)])),
        Arc::new(
            Decimal128Array::from(vec![1247, 13800])
                .with_precision_and_scale(38, 2)
                .unwrap(),
        ),
    );
    let (da, db) = (
        decode_batch(&a, &rowtype, &schema).unwrap(),
        decode_batch(&b, &rowtype, &schema).unwrap(),
    );
    assert_eq!(da.schema(), db.schema());
    assert_eq!(
        da.column(0)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0),
        5
    );
    assert!(da.column(0).is_null(1));
    let kv = db
        .column(1)
        .as_primitive::<arrow::datatypes::Decimal128Type>();
    assert_eq!(
        (kv.value_as_string(0), kv.value_as_string(1)),
        ("12.47".to_string(), "138.00".to_string())
    );
}

#[test]
fn a_number_too_wide_for_int64_is_an_error_naming_the_column_and_row() {
    let rowtype = vec![RowType::for_column(
        "BIG_ID",
        SnowflakeType::Number(38, 0),
        false,
    )];
    let schema = decoded_schema(&rowtype, "UTC").unwrap();
    let wide = Decimal128Array::from(vec![1, i128::from(i64::MAX) + 1])
        .with_precision_and_scale(38, 0)
        .unwrap();
    let chunk = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new(
            "BIG_ID",
            wide.data_type().clone(),
            false,
        )])),
        vec![Arc::new(wide)],
    )
    .unwrap();
    let e = decode_batch(&chunk, &rowtype, &schema)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("BIG_ID") && e.contains("row 2") && e.contains("9223372036854775808"),
        "{e}"
    );
}

#[test]
fn timestamps_decode_from_both_layouts_and_tz_structs_keep_the_instant() {
    // TIMESTAMP_NTZ(3) as one scaled int64; TIMESTAMP_TZ(9) as epoch/fraction/timezone with +05:30.
    let rowtype = vec![
        RowType::for_column("T3", SnowflakeType::TimestampNtz(3), true),
        RowType::for_column("TZ", SnowflakeType::TimestampTz(9), true),
    ];
    let schema = decoded_schema(&rowtype, "UTC").unwrap();
    assert_eq!(
        schema.field(0).data_type(),
        &DataType::Timestamp(TimeUnit::Millisecond, None)
    );
    let tz_fields = Fields::from(vec![
        Field::new("epoch", DataType::Int64, true),
        Field::new("fraction", DataType::Int32, true),
        Field::new("timezone", DataType::Int32, true),
    ]);
    let tz = StructArray::try_new(
        tz_fields.clone(),
        vec![
            Arc::new(Int64Array::from(vec![1_700_000_000, 999])),
            Arc::new(Int32Array::from(vec![5, 999])),
            Arc::new(Int32Array::from(vec![1440 + 330, 0])),
        ],
        Some(vec![true, false].into()),
    )
    .unwrap();
    let chunk = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("T3", DataType::Int64, true),
            Field::new("TZ", DataType::Struct(tz_fields), true),
        ])),
        vec![
            Arc::new(Int64Array::from(vec![Some(1_710_037_800_123), None])),
            Arc::new(tz),
        ],
    )
    .unwrap();
    let d = decode_batch(&chunk, &rowtype, &schema).unwrap();
    let t3 = d
        .column(0)
        .as_primitive::<arrow::datatypes::TimestampMillisecondType>();
    assert_eq!((t3.value(0), t3.is_null(1)), (1_710_037_800_123, true));
    let t = d
        .column(1)
        .as_primitive::<arrow::datatypes::TimestampNanosecondType>();
    assert_eq!(
        t.value(0),
        1_700_000_000_000_000_005,
        "the UTC instant, offset ignored"
    );
    assert!(
        t.is_null(1),
        "struct validity decides NULL, whatever the children hold"
    );
}

#[test]
fn rowtype_json_reads_as_the_connectors_send_it() {
    let json = r#"[{"name":"CANOPY","type":"object","length":null,"byteLength":16777216,"precision":null,"scale":null,"nullable":false,"extTypeName":"GEOGRAPHY","database":"GRID"},
                   {"name":"WKB","type":"binary","length":null,"precision":null,"scale":null,"nullable":true,"extTypeName":"GEOGRAPHY"},
                   {"name":"X","type":"vector","length":null,"precision":null,"scale":null,"nullable":true}]"#;
    let rows: Vec<RowType> = serde_json::from_str(json).unwrap();
    assert_eq!(rows[0].snowflake_type().unwrap(), SnowflakeType::Geography);
    assert_eq!(
        rows[0].decoded_field("UTC").unwrap().data_type(),
        &DataType::Utf8
    );
    assert_eq!(
        rows[1].decoded_field("UTC").unwrap().data_type(),
        &DataType::Binary
    );
    let e = rows[2].snowflake_type().unwrap_err().to_string();
    assert!(e.contains("`X`") && e.contains("vector"), "{e}");
    // What floe sends back always has the keys the Python connector indexes.
    let sent = serde_json::to_value(RowType::for_column(
        "ID",
        SnowflakeType::Number(38, 0),
        false,
    ))
    .unwrap();
    for key in ["name", "type", "length", "precision", "scale", "nullable"] {
        assert!(sent.get(key).is_some(), "missing {key}");
    }
}
