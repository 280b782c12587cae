//! Snowflake's logical types, and the Arrow types a decoded result carries.
//!
//! One mapping serves the generator (which writes parquet shaped exactly like
//! a decoded Snowflake result), the Snowflake client's decoder and the
//! emulator, so a table read from Snowflake and the same table replayed from
//! parquet have one Arrow schema.

use std::collections::HashMap;
use std::fmt;

use arrow_schema::{DataType, Field, TimeUnit};

use crate::geometry::{json_metadata, EXTENSION_NAME_KEY};

/// Field metadata key holding the Snowflake type a column came from
/// (e.g. `NUMBER(6,2)`, `GEOGRAPHY`), so snapshots and errors can say it.
pub const SNOWFLAKE_TYPE_KEY: &str = "floe.snowflake_type";

/// The session time zone floe assumes for TIMESTAMP_LTZ (the grid's service
/// territory); Snowflake's own default is America/Los_Angeles.
pub const DEFAULT_SESSION_TIME_ZONE: &str = "America/Chicago";

/// A Snowflake column type as a result's `rowtype` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnowflakeType {
    /// NUMBER(precision, scale).
    Number(u8, i8),
    /// FLOAT / DOUBLE / REAL (all 64-bit in Snowflake).
    Float,
    /// VARCHAR(length).
    Varchar(u32),
    Boolean,
    Date,
    /// TIMESTAMP_NTZ(scale): wall-clock time, no zone.
    TimestampNtz(u8),
    /// TIMESTAMP_LTZ(scale): an instant shown in the session's zone.
    TimestampLtz(u8),
    /// TIMESTAMP_TZ(scale): an instant with its own offset.
    TimestampTz(u8),
    Variant,
    Object,
    Array,
    Binary,
    Geography,
    Geometry,
}

impl SnowflakeType {
    /// The Arrow type of this column after floe decodes it.
    pub fn arrow_type(self) -> DataType {
        match self {
            SnowflakeType::Number(_, 0) => DataType::Int64,
            SnowflakeType::Number(p, s) => DataType::Decimal128(p, s),
            SnowflakeType::Float => DataType::Float64,
            SnowflakeType::Varchar(_) => DataType::Utf8,
            SnowflakeType::Boolean => DataType::Boolean,
            SnowflakeType::Date => DataType::Date32,
            SnowflakeType::TimestampNtz(s) => DataType::Timestamp(time_unit(s), None),
            SnowflakeType::TimestampLtz(s) => {
                DataType::Timestamp(time_unit(s), Some(DEFAULT_SESSION_TIME_ZONE.into()))
            }
            SnowflakeType::TimestampTz(s) => DataType::Timestamp(time_unit(s), Some("UTC".into())),
            SnowflakeType::Variant | SnowflakeType::Object | SnowflakeType::Array => DataType::Utf8,
            SnowflakeType::Binary => DataType::Binary,
            // GEOGRAPHY arrives in the session's output format; GeoJSON text by default.
            SnowflakeType::Geography | SnowflakeType::Geometry => DataType::Utf8,
        }
    }

    /// The decoded Arrow field, tagged with the Snowflake type (and as JSON for
    /// semi-structured types, so the sink maps it to jsonb).
    pub fn arrow_field(self, name: &str, nullable: bool) -> Field {
        let mut md: HashMap<String, String> = HashMap::new();
        if matches!(
            self,
            SnowflakeType::Variant | SnowflakeType::Object | SnowflakeType::Array
        ) {
            md.extend(json_metadata());
        }
        md.insert(SNOWFLAKE_TYPE_KEY.to_string(), self.to_string());
        debug_assert!(!md.contains_key(EXTENSION_NAME_KEY) || md.len() == 2);
        Field::new(name, self.arrow_type(), nullable).with_metadata(md)
    }
}

impl std::str::FromStr for SnowflakeType {
    type Err = String;

    /// Parses what [`Display`](fmt::Display) prints: `NUMBER(6,2)`, `VARCHAR(64)`, `TIMESTAMP_TZ(9)`, …
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("unknown Snowflake type `{s}`");
        let t = s.trim().to_ascii_uppercase();
        let (base, args) = match t.split_once('(') {
            Some((b, rest)) => (
                b.trim().to_string(),
                rest.strip_suffix(')').ok_or_else(bad)?.to_string(),
            ),
            None => (t.clone(), String::new()),
        };
        let nums: Vec<i64> = if args.is_empty() {
            Vec::new()
        } else {
            args.split(',')
                .map(|a| a.trim().parse().map_err(|_| bad()))
                .collect::<Result<_, _>>()?
        };
        let arg = |i: usize, default: i64| nums.get(i).copied().unwrap_or(default);
        Ok(match base.as_str() {
            "NUMBER" | "DECIMAL" | "NUMERIC" => {
                SnowflakeType::Number(arg(0, 38) as u8, arg(1, 0) as i8)
            }
            "FLOAT" | "DOUBLE" | "REAL" => SnowflakeType::Float,
            "VARCHAR" | "TEXT" | "STRING" => SnowflakeType::Varchar(arg(0, 16_777_216) as u32),
            "BOOLEAN" => SnowflakeType::Boolean,
            "DATE" => SnowflakeType::Date,
            "TIMESTAMP_NTZ" => SnowflakeType::TimestampNtz(arg(0, 9) as u8),
            "TIMESTAMP_LTZ" => SnowflakeType::TimestampLtz(arg(0, 9) as u8),
            "TIMESTAMP_TZ" => SnowflakeType::TimestampTz(arg(0, 9) as u8),
            "VARIANT" => SnowflakeType::Variant,
            "OBJECT" => SnowflakeType::Object,
            "ARRAY" => SnowflakeType::Array,
            "BINARY" => SnowflakeType::Binary,
            "GEOGRAPHY" => SnowflakeType::Geography,
            "GEOMETRY" => SnowflakeType::Geometry,
            _ => return Err(bad()),
        })
    }
}

impl SnowflakeType {
    /// The type a column reports: its `floe.snowflake_type` tag when present,
    /// else the Snowflake type its Arrow type would have come from.
    pub fn of_field(field: &Field) -> Option<SnowflakeType> {
        if let Some(t) = field
            .metadata()
            .get(SNOWFLAKE_TYPE_KEY)
            .and_then(|t| t.parse().ok())
        {
            return Some(t);
        }
        Some(match field.data_type() {
            DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => {
                SnowflakeType::Number(38, 0)
            }
            DataType::UInt8 | DataType::UInt16 | DataType::UInt32 => SnowflakeType::Number(38, 0),
            DataType::Decimal128(p, s) if *s >= 0 => SnowflakeType::Number(*p, *s),
            DataType::Float32 | DataType::Float64 => SnowflakeType::Float,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                SnowflakeType::Varchar(16_777_216)
            }
            DataType::Boolean => SnowflakeType::Boolean,
            DataType::Date32 => SnowflakeType::Date,
            DataType::Timestamp(unit, tz) => {
                let scale = match unit {
                    TimeUnit::Second => 0,
                    TimeUnit::Millisecond => 3,
                    TimeUnit::Microsecond => 6,
                    TimeUnit::Nanosecond => 9,
                };
                match tz.as_deref() {
                    None => SnowflakeType::TimestampNtz(scale),
                    Some("UTC") | Some("+00:00") => SnowflakeType::TimestampTz(scale),
                    Some(_) => SnowflakeType::TimestampLtz(scale),
                }
            }
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
                SnowflakeType::Binary
            }
            _ => return None,
        })
    }
}

/// Snowflake's fractional-seconds scale → the coarsest Arrow unit that holds it.
fn time_unit(scale: u8) -> TimeUnit {
    match scale {
        0 => TimeUnit::Second,
        1..=3 => TimeUnit::Millisecond,
        4..=6 => TimeUnit::Microsecond,
        _ => TimeUnit::Nanosecond,
    }
}

impl fmt::Display for SnowflakeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnowflakeType::Number(p, s) => write!(f, "NUMBER({p},{s})"),
            SnowflakeType::Float => f.write_str("FLOAT"),
            SnowflakeType::Varchar(n) => write!(f, "VARCHAR({n})"),
            SnowflakeType::Boolean => f.write_str("BOOLEAN"),
            SnowflakeType::Date => f.write_str("DATE"),
            SnowflakeType::TimestampNtz(s) => write!(f, "TIMESTAMP_NTZ({s})"),
            SnowflakeType::TimestampLtz(s) => write!(f, "TIMESTAMP_LTZ({s})"),
            SnowflakeType::TimestampTz(s) => write!(f, "TIMESTAMP_TZ({s})"),
            SnowflakeType::Variant => f.write_str("VARIANT"),
            SnowflakeType::Object => f.write_str("OBJECT"),
            SnowflakeType::Array => f.write_str("ARRAY"),
            SnowflakeType::Binary => f.write_str("BINARY"),
            SnowflakeType::Geography => f.write_str("GEOGRAPHY"),
            SnowflakeType::Geometry => f.write_str("GEOMETRY"),
        }
    }
}

/// How Snowflake sends GEOGRAPHY/GEOMETRY values: the session parameter
/// `GEOGRAPHY_OUTPUT_FORMAT` (`GEOMETRY_OUTPUT_FORMAT`). GeoJSON is
/// Snowflake's default; WKB is the cheapest for floe to turn into EWKB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GeographyFormat {
    #[default]
    GeoJson,
    Wkt,
    Ewkt,
    Wkb,
    Ewkb,
}

impl GeographyFormat {
    /// The `type` a result's `rowtype` gives such a column (with `extTypeName` GEOGRAPHY).
    pub fn rowtype_type(self) -> &'static str {
        match self {
            GeographyFormat::GeoJson => "object",
            GeographyFormat::Wkt | GeographyFormat::Ewkt => "text",
            GeographyFormat::Wkb | GeographyFormat::Ewkb => "binary",
        }
    }
}

impl std::str::FromStr for GeographyFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.trim().to_ascii_uppercase().as_str() {
            "GEOJSON" => GeographyFormat::GeoJson,
            "WKT" => GeographyFormat::Wkt,
            "EWKT" => GeographyFormat::Ewkt,
            "WKB" => GeographyFormat::Wkb,
            "EWKB" => GeographyFormat::Ewkb,
            other => {
                return Err(format!(
                    "`{other}` is not a geography output format (GeoJSON, WKT, EWKT, WKB, EWKB)"
                ))
            }
        })
    }
}

impl fmt::Display for GeographyFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GeographyFormat::GeoJson => "GeoJSON",
            GeographyFormat::Wkt => "WKT",
            GeographyFormat::Ewkt => "EWKT",
            GeographyFormat::Wkb => "WKB",
            GeographyFormat::Ewkb => "EWKB",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::is_json_field;

    #[test]
    fn type_names_parse_back() {
        for t in [
            SnowflakeType::Number(6, 2),
            SnowflakeType::Varchar(64),
            SnowflakeType::TimestampTz(9),
            SnowflakeType::Geography,
        ] {
            assert_eq!(t.to_string().parse::<SnowflakeType>(), Ok(t));
        }
        assert!("NUMBER(6".parse::<SnowflakeType>().is_err());
        let f = SnowflakeType::TimestampLtz(9).arrow_field("T", true);
        assert_eq!(
            SnowflakeType::of_field(&f),
            Some(SnowflakeType::TimestampLtz(9))
        );
        let plain = Field::new("x", DataType::Decimal128(8, 1), true);
        assert_eq!(
            SnowflakeType::of_field(&plain),
            Some(SnowflakeType::Number(8, 1))
        );
    }

    #[test]
    fn decoded_types_follow_snowflake_precision_and_scale() {
        assert_eq!(SnowflakeType::Number(38, 0).arrow_type(), DataType::Int64);
        assert_eq!(
            SnowflakeType::Number(6, 2).arrow_type(),
            DataType::Decimal128(6, 2)
        );
        assert_eq!(
            SnowflakeType::TimestampNtz(9).arrow_type(),
            DataType::Timestamp(TimeUnit::Nanosecond, None)
        );
        assert_eq!(
            SnowflakeType::TimestampTz(3).arrow_type(),
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
        );
        let v = SnowflakeType::Variant.arrow_field("ATTRIBUTES", true);
        assert!(is_json_field(&v));
        assert_eq!(v.metadata()[SNOWFLAKE_TYPE_KEY], "VARIANT");
    }
}
