//! Snowflake's Arrow result encoding, and plain Arrow.
//!
//! Snowflake does not send plain Arrow: NUMBER arrives as *unscaled*
//! integers whose width the server picks per chunk (so two chunks of one
//! result can differ), timestamps arrive as scaled integers or as
//! `struct<epoch, fraction[, timezone]>`, and every field carries
//! `logicalType`/`scale`/`precision` metadata. The client decodes each chunk
//! into one schema decided from the result's `rowtype` ([`decoded_schema`],
//! [`decode_batch`]); the emulator does the reverse ([`encode_batch`]).
//! Columns already in their final layout (text, floats, dates, Int64) pass
//! through without a copy.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Decimal128Array, Int16Array, Int32Array, Int64Array, Int8Array,
    PrimitiveArray, StructArray,
};
use arrow::compute::cast;
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Decimal128Type, Field, Fields, Int64Type, Schema, SchemaRef,
    TimeUnit,
};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::snowflake::{SnowflakeType, SNOWFLAKE_TYPE_KEY};
use crate::SchemaError;

/// One column of a query response's `rowtype`, as the connectors read it.
/// `length`, `precision` and `scale` are always sent (null allowed): the
/// Python connector indexes them directly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RowType {
    pub name: String,
    /// Lower-case: `fixed`, `real`, `text`, `boolean`, `date`, `time`,
    /// `timestamp_ntz`, `timestamp_ltz`, `timestamp_tz`, `binary`, `variant`,
    /// `object`, `array`.
    #[serde(rename = "type")]
    pub type_name: String,
    pub length: Option<i64>,
    #[serde(default)]
    pub byte_length: Option<i64>,
    pub precision: Option<i64>,
    pub scale: Option<i64>,
    pub nullable: bool,
    /// `GEOGRAPHY` or `GEOMETRY` for geospatial columns (their `type` then
    /// says how they are represented: `object` GeoJSON, `text` WKT, `binary` WKB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ext_type_name: Option<String>,
}

fn invalid(column: &str, message: impl Into<String>) -> SchemaError {
    SchemaError::Snowflake {
        column: column.to_string(),
        message: message.into(),
    }
}

impl RowType {
    /// The descriptor Snowflake sends for a column of type `ty` (geospatial
    /// columns in their default GeoJSON representation).
    pub fn for_column(name: &str, ty: SnowflakeType, nullable: bool) -> RowType {
        let (type_name, length, precision, scale, byte_length) = match ty {
            SnowflakeType::Number(p, s) => ("fixed", None, Some(p as i64), Some(s as i64), None),
            SnowflakeType::Float => ("real", None, None, None, None),
            SnowflakeType::Varchar(n) => ("text", Some(n as i64), None, None, Some(4 * n as i64)),
            SnowflakeType::Boolean => ("boolean", None, None, None, None),
            SnowflakeType::Date => ("date", None, None, None, None),
            SnowflakeType::TimestampNtz(s) => {
                ("timestamp_ntz", None, Some(0), Some(s as i64), None)
            }
            SnowflakeType::TimestampLtz(s) => {
                ("timestamp_ltz", None, Some(0), Some(s as i64), None)
            }
            SnowflakeType::TimestampTz(s) => {
                ("timestamp_tz", None, Some(0), Some(s as i64), Some(16))
            }
            SnowflakeType::Variant => ("variant", None, None, None, Some(16_777_216)),
            SnowflakeType::Object => ("object", None, None, None, Some(16_777_216)),
            SnowflakeType::Array => ("array", None, None, None, Some(16_777_216)),
            SnowflakeType::Binary => ("binary", Some(8_388_608), None, None, Some(8_388_608)),
            SnowflakeType::Geography | SnowflakeType::Geometry => {
                ("object", None, None, None, Some(16_777_216))
            }
        };
        RowType {
            name: name.to_string(),
            type_name: type_name.to_string(),
            length,
            byte_length,
            precision,
            scale,
            nullable,
            ext_type_name: match ty {
                SnowflakeType::Geography => Some("GEOGRAPHY".into()),
                SnowflakeType::Geometry => Some("GEOMETRY".into()),
                _ => None,
            },
        }
    }

    /// As [`RowType::for_column`], with geospatial columns in `format`.
    pub fn for_column_as(
        name: &str,
        ty: SnowflakeType,
        nullable: bool,
        format: crate::snowflake::GeographyFormat,
    ) -> RowType {
        let mut r = RowType::for_column(name, ty, nullable);
        if r.ext_type_name.is_some() {
            r.type_name = format.rowtype_type().to_string();
        }
        r
    }

    fn scale(&self) -> u8 {
        self.scale.unwrap_or(9).clamp(0, 9) as u8
    }

    /// The Snowflake type this descriptor names; an unknown type is an error naming the column.
    pub fn snowflake_type(&self) -> Result<SnowflakeType, SchemaError> {
        match self
            .ext_type_name
            .as_deref()
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            Some("GEOGRAPHY") => return Ok(SnowflakeType::Geography),
            Some("GEOMETRY") => return Ok(SnowflakeType::Geometry),
            _ => {}
        }
        Ok(match self.type_name.to_ascii_lowercase().as_str() {
            "fixed" => {
                let p = self.precision.unwrap_or(38).clamp(1, 38) as u8;
                let s = self.scale.unwrap_or(0).clamp(0, 37) as i8;
                SnowflakeType::Number(p, s)
            }
            "real" => SnowflakeType::Float,
            "text" => SnowflakeType::Varchar(self.length.unwrap_or(16_777_216).clamp(0, u32::MAX as i64) as u32),
            "boolean" => SnowflakeType::Boolean,
            "date" => SnowflakeType::Date,
            "timestamp_ntz" => SnowflakeType::TimestampNtz(self.scale()),
            "timestamp_ltz" => SnowflakeType::TimestampLtz(self.scale()),
            "timestamp_tz" => SnowflakeType::TimestampTz(self.scale()),
            "variant" => SnowflakeType::Variant,
            "object" => SnowflakeType::Object,
            "array" => SnowflakeType::Array,
            "binary" => SnowflakeType::Binary,
            other => {
                return Err(invalid(
                    &self.name,
                    format!("Snowflake type `{other}` is not supported; cast it in the query (e.g. to VARCHAR)"),
                ))
            }
        })
    }

    /// The plain Arrow field this column decodes to.
    pub fn decoded_field(&self, session_time_zone: &str) -> Result<Field, SchemaError> {
        let ty = self.snowflake_type()?;
        let field = ty.arrow_field(&self.name, self.nullable);
        Ok(match (ty, field.data_type()) {
            (SnowflakeType::TimestampLtz(_), DataType::Timestamp(unit, _)) => {
                let md = field.metadata().clone();
                Field::new(
                    &self.name,
                    DataType::Timestamp(*unit, Some(session_time_zone.into())),
                    self.nullable,
                )
                .with_metadata(md)
            }
            // WKB / EWKB output formats arrive as binary.
            (SnowflakeType::Geography | SnowflakeType::Geometry, _)
                if self.type_name == "binary" =>
            {
                let md = field.metadata().clone();
                Field::new(&self.name, DataType::Binary, self.nullable).with_metadata(md)
            }
            _ => field,
        })
    }
}

/// The schema every chunk of a result decodes to.
pub fn decoded_schema(
    rowtype: &[RowType],
    session_time_zone: &str,
) -> Result<SchemaRef, SchemaError> {
    let fields = rowtype
        .iter()
        .map(|r| r.decoded_field(session_time_zone))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Arc::new(Schema::new(fields)))
}

/// Decodes one Snowflake chunk batch into `schema` (from [`decoded_schema`]).
pub fn decode_batch(
    chunk: &RecordBatch,
    rowtype: &[RowType],
    schema: &SchemaRef,
) -> Result<RecordBatch, SchemaError> {
    if chunk.num_columns() != rowtype.len() {
        return Err(invalid(
            "*",
            format!(
                "chunk has {} columns, rowtype has {}",
                chunk.num_columns(),
                rowtype.len()
            ),
        ));
    }
    let columns = rowtype
        .iter()
        .zip(schema.fields())
        .enumerate()
        .map(|(i, (r, f))| decode_column(chunk.column(i), r, f.data_type()))
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(Arc::clone(schema), columns).map_err(|e| invalid("*", e.to_string()))
}

/// Digits of the Arrow unit a timestamp decodes to (0, 3, 6 or 9).
fn unit_digits(unit: TimeUnit) -> u32 {
    match unit {
        TimeUnit::Second => 0,
        TimeUnit::Millisecond => 3,
        TimeUnit::Microsecond => 6,
        TimeUnit::Nanosecond => 9,
    }
}

fn decode_column(
    array: &ArrayRef,
    r: &RowType,
    target: &DataType,
) -> Result<ArrayRef, SchemaError> {
    let name = &r.name;
    let physical = array.data_type();
    match (r.snowflake_type()?, target) {
        (SnowflakeType::Number(_, _), DataType::Int64) => match physical {
            DataType::Int64 => Ok(Arc::clone(array)),
            DataType::Int8 | DataType::Int16 | DataType::Int32 => {
                cast(array, &DataType::Int64).map_err(|e| invalid(name, e.to_string()))
            }
            DataType::Decimal128(_, _) => {
                let d = array.as_primitive::<Decimal128Type>();
                let mut out = Vec::with_capacity(d.len());
                for i in 0..d.len() {
                    out.push(if d.is_null(i) {
                        0
                    } else {
                        i64::try_from(d.value(i)).map_err(|_| {
                            invalid(
                                name,
                                format!(
                                    "row {}: value {} does not fit a 64-bit integer",
                                    i + 1,
                                    d.value(i)
                                ),
                            )
                        })?
                    });
                }
                Ok(Arc::new(Int64Array::new(out.into(), d.nulls().cloned())))
            }
            other => Err(invalid(name, format!("NUMBER arrived as Arrow {other}"))),
        },
        (SnowflakeType::Number(_, _), DataType::Decimal128(p, s)) => {
            // The integers are already unscaled: reinterpret, do not rescale.
            let unscaled: Decimal128Array = match physical {
                DataType::Decimal128(_, _) => array.as_primitive::<Decimal128Type>().clone(),
                DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => {
                    let wide =
                        cast(array, &DataType::Int64).map_err(|e| invalid(name, e.to_string()))?;
                    wide.as_primitive::<Int64Type>().unary(|v| v as i128)
                }
                other => return Err(invalid(name, format!("NUMBER arrived as Arrow {other}"))),
            };
            let d = unscaled
                .with_precision_and_scale(*p, *s)
                .map_err(|e| invalid(name, e.to_string()))?;
            Ok(Arc::new(d))
        }
        (
            SnowflakeType::TimestampNtz(scale)
            | SnowflakeType::TimestampLtz(scale)
            | SnowflakeType::TimestampTz(scale),
            DataType::Timestamp(unit, tz),
        ) => {
            let k = unit_digits(*unit);
            let values = match physical {
                // One field: epoch × 10^scale + fraction.
                DataType::Int64 => {
                    rescale(name, array.as_primitive::<Int64Type>(), scale as u32, k)?
                }
                DataType::Struct(fields) => {
                    timestamp_struct(name, array.as_struct(), fields, scale as u32, k)?
                }
                other => return Err(invalid(name, format!("timestamp arrived as Arrow {other}"))),
            };
            Ok(Arc::new(timestamp_array(values, *unit, tz.clone())))
        }
        _ if physical == target => Ok(Arc::clone(array)),
        (_, target) => cast(array, target).map_err(|e| {
            invalid(
                name,
                format!("cannot decode Arrow {physical} as {target}: {e}"),
            )
        }),
    }
}

/// Scaled integers (10^-from seconds) to the target unit (10^-to seconds, to ≥ from).
fn rescale(name: &str, a: &Int64Array, from: u32, to: u32) -> Result<Int64Array, SchemaError> {
    let factor = 10i64.pow(to.saturating_sub(from));
    let divisor = 10i64.pow(from.saturating_sub(to));
    let mut out = Vec::with_capacity(a.len());
    for (i, v) in a.values().iter().enumerate() {
        if a.is_null(i) {
            out.push(0);
            continue;
        }
        let scaled = v.checked_mul(factor).ok_or_else(|| {
            invalid(
                name,
                format!("row {}: timestamp {v} overflows at this precision", i + 1),
            )
        })?;
        out.push(scaled.div_euclid(divisor));
    }
    Ok(Int64Array::new(out.into(), a.nulls().cloned()))
}

/// `struct<epoch, fraction[, timezone]>` or `struct<epoch, timezone>` to the target unit.
/// Children are found by name, as the Python connector does; struct validity is what counts.
fn timestamp_struct(
    name: &str,
    s: &StructArray,
    fields: &Fields,
    scale: u32,
    to: u32,
) -> Result<Int64Array, SchemaError> {
    let child = |n: &str| -> Option<ArrayRef> {
        fields
            .iter()
            .position(|f| f.name().eq_ignore_ascii_case(n))
            .map(|i| Arc::clone(s.column(i)))
    };
    let epoch =
        child("epoch").ok_or_else(|| invalid(name, "timestamp struct has no `epoch` child"))?;
    let epoch = cast(&epoch, &DataType::Int64).map_err(|e| invalid(name, e.to_string()))?;
    let epoch = epoch.as_primitive::<Int64Type>();
    let Some(fraction) = child("fraction") else {
        // Two fields (TIMESTAMP_TZ byteLength 8): epoch is the scaled value.
        let values = rescale(name, epoch, scale, to)?;
        return Ok(Int64Array::new(values.values().clone(), s.nulls().cloned()));
    };
    let fraction = cast(&fraction, &DataType::Int64).map_err(|e| invalid(name, e.to_string()))?;
    let fraction = fraction.as_primitive::<Int64Type>();
    let per_second = 10i64.pow(to);
    let mut out = Vec::with_capacity(s.len());
    for i in 0..s.len() {
        if s.is_null(i) {
            out.push(0);
            continue;
        }
        let (sec, nanos) = (epoch.value(i), fraction.value(i));
        let v = sec
            .checked_mul(per_second)
            .and_then(|x| x.checked_add(nanos / 10i64.pow(9 - to)))
            .ok_or_else(|| {
                invalid(
                    name,
                    format!(
                        "row {}: timestamp {sec}s overflows at this precision",
                        i + 1
                    ),
                )
            })?;
        out.push(v);
    }
    Ok(Int64Array::new(out.into(), s.nulls().cloned()))
}

fn timestamp_array(values: Int64Array, unit: TimeUnit, tz: Option<Arc<str>>) -> ArrayRef {
    let (v, nulls) = (values.values().clone(), values.nulls().cloned());
    match unit {
        TimeUnit::Second => {
            Arc::new(typed::<arrow::datatypes::TimestampSecondType>(v, nulls).with_timezone_opt(tz))
        }
        TimeUnit::Millisecond => Arc::new(
            typed::<arrow::datatypes::TimestampMillisecondType>(v, nulls).with_timezone_opt(tz),
        ),
        TimeUnit::Microsecond => Arc::new(
            typed::<arrow::datatypes::TimestampMicrosecondType>(v, nulls).with_timezone_opt(tz),
        ),
        TimeUnit::Nanosecond => Arc::new(
            typed::<arrow::datatypes::TimestampNanosecondType>(v, nulls).with_timezone_opt(tz),
        ),
    }
}

fn typed<T: ArrowPrimitiveType<Native = i64>>(
    values: arrow::buffer::ScalarBuffer<i64>,
    nulls: Option<arrow::buffer::NullBuffer>,
) -> PrimitiveArray<T> {
    PrimitiveArray::<T>::new(values, nulls)
}

/// Field metadata Snowflake puts on every chunk field.
fn chunk_metadata(r: &RowType, logical: &str) -> HashMap<String, String> {
    let mut md = HashMap::from([("logicalType".to_string(), logical.to_string())]);
    for (k, v) in [
        ("precision", r.precision),
        ("scale", r.scale),
        ("charLength", r.length),
        ("byteLength", r.byte_length),
    ] {
        if let Some(v) = v {
            md.insert(k.to_string(), v.to_string());
        }
    }
    if let Some(ext) = &r.ext_type_name {
        md.insert(SNOWFLAKE_TYPE_KEY.to_string(), ext.clone());
    }
    md
}

/// The narrowest integer array holding `values` (as Snowflake picks per chunk).
fn narrowest(values: &[i64], nulls: Option<arrow::buffer::NullBuffer>) -> ArrayRef {
    let (lo, hi) = values
        .iter()
        .fold((0i64, 0i64), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    let fits = |min: i64, max: i64| lo >= min && hi <= max;
    if fits(i8::MIN as i64, i8::MAX as i64) {
        Arc::new(Int8Array::new(
            values.iter().map(|v| *v as i8).collect(),
            nulls,
        ))
    } else if fits(i16::MIN as i64, i16::MAX as i64) {
        Arc::new(Int16Array::new(
            values.iter().map(|v| *v as i16).collect(),
            nulls,
        ))
    } else if fits(i32::MIN as i64, i32::MAX as i64) {
        Arc::new(Int32Array::new(
            values.iter().map(|v| *v as i32).collect(),
            nulls,
        ))
    } else {
        Arc::new(Int64Array::new(values.to_vec().into(), nulls))
    }
}

/// Encodes a plain batch (shaped like [`decoded_schema`]) the way Snowflake
/// sends a chunk: unscaled NUMBERs at the narrowest width that fits this
/// chunk, timestamps at scale ≥ 8 as `struct<epoch, fraction>` (TIMESTAMP_TZ
/// with a `timezone` child, UTC), smaller scales as scaled int64.
pub fn encode_batch(batch: &RecordBatch, rowtype: &[RowType]) -> Result<RecordBatch, SchemaError> {
    let mut fields = Vec::with_capacity(rowtype.len());
    let mut columns = Vec::with_capacity(rowtype.len());
    for (i, r) in rowtype.iter().enumerate() {
        let a = batch.column(i);
        let name = &r.name;
        let (logical, array): (&str, ArrayRef) = match r.snowflake_type()? {
            SnowflakeType::Number(_, _) => {
                let unscaled: Vec<i64> = match a.data_type() {
                    DataType::Int64 => a.as_primitive::<Int64Type>().values().to_vec(),
                    DataType::Decimal128(_, s) => {
                        let d = a.as_primitive::<Decimal128Type>();
                        match d
                            .values()
                            .iter()
                            .map(|v| i64::try_from(*v))
                            .collect::<Result<Vec<_>, _>>()
                        {
                            Ok(v) => v,
                            Err(_) => {
                                // Too wide for int64: Snowflake sends decimal128(38, s).
                                let wide = d
                                    .clone()
                                    .with_precision_and_scale(38, *s)
                                    .map_err(|e| invalid(name, e.to_string()))?;
                                fields.push(
                                    Field::new(name, wide.data_type().clone(), r.nullable)
                                        .with_metadata(chunk_metadata(r, "FIXED")),
                                );
                                columns.push(Arc::new(wide) as ArrayRef);
                                continue;
                            }
                        }
                    }
                    other => {
                        return Err(invalid(
                            name,
                            format!("cannot send Arrow {other} as NUMBER"),
                        ))
                    }
                };
                ("FIXED", narrowest(&unscaled, a.nulls().cloned()))
            }
            SnowflakeType::TimestampNtz(scale)
            | SnowflakeType::TimestampLtz(scale)
            | SnowflakeType::TimestampTz(scale) => {
                let DataType::Timestamp(unit, _) = a.data_type() else {
                    return Err(invalid(
                        name,
                        format!("cannot send Arrow {} as a timestamp", a.data_type()),
                    ));
                };
                let k = unit_digits(*unit);
                let raw = cast(a, &DataType::Int64).map_err(|e| invalid(name, e.to_string()))?;
                let raw = raw.as_primitive::<Int64Type>();
                let logical = match r.type_name.as_str() {
                    "timestamp_tz" => "TIMESTAMP_TZ",
                    "timestamp_ltz" => "TIMESTAMP_LTZ",
                    _ => "TIMESTAMP_NTZ",
                };
                let array: ArrayRef = if scale >= 8 || logical == "TIMESTAMP_TZ" {
                    let per_second = 10i64.pow(k);
                    let epoch: Int64Array = raw.unary(|v| v.div_euclid(per_second));
                    let fraction: Int32Array =
                        raw.unary(|v| (v.rem_euclid(per_second) * 10i64.pow(9 - k)) as i32);
                    let mut children: Vec<(Arc<Field>, ArrayRef)> = vec![
                        (
                            Arc::new(Field::new("epoch", DataType::Int64, true)),
                            Arc::new(epoch),
                        ),
                        (
                            Arc::new(Field::new("fraction", DataType::Int32, true)),
                            Arc::new(fraction),
                        ),
                    ];
                    if logical == "TIMESTAMP_TZ" {
                        // UTC: offset 0 minutes, sent as 0 + 1440.
                        let tz = Int32Array::from(vec![1440; raw.len()]);
                        children.push((
                            Arc::new(Field::new("timezone", DataType::Int32, true)),
                            Arc::new(tz),
                        ));
                    }
                    let (child_fields, arrays): (Vec<_>, Vec<_>) = children.into_iter().unzip();
                    Arc::new(
                        StructArray::try_new(child_fields.into(), arrays, a.nulls().cloned())
                            .map_err(|e| invalid(name, e.to_string()))?,
                    )
                } else {
                    Arc::new(rescale(name, raw, k, scale as u32)?)
                };
                (logical, array)
            }
            SnowflakeType::Float => ("REAL", Arc::clone(a)),
            SnowflakeType::Varchar(_) => ("TEXT", Arc::clone(a)),
            SnowflakeType::Boolean => ("BOOLEAN", Arc::clone(a)),
            SnowflakeType::Date => ("DATE", Arc::clone(a)),
            SnowflakeType::Binary => ("BINARY", Arc::clone(a)),
            SnowflakeType::Variant => ("VARIANT", Arc::clone(a)),
            SnowflakeType::Object => ("OBJECT", Arc::clone(a)),
            SnowflakeType::Array => ("ARRAY", Arc::clone(a)),
            // Geospatial values are text or binary on the wire, per output format.
            SnowflakeType::Geography | SnowflakeType::Geometry => (
                if r.type_name == "binary" {
                    "BINARY"
                } else {
                    "TEXT"
                },
                Arc::clone(a),
            ),
        };
        fields.push(
            Field::new(name, array.data_type().clone(), r.nullable)
                .with_metadata(chunk_metadata(r, logical)),
        );
        columns.push(array);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(|e| invalid("*", e.to_string()))
}

#[cfg(test)]
mod tests;
