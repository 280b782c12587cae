//! Postgres column types and the Arrow → Postgres mapping.
//!
//! The sink decides each column's Postgres type once, at plan time, from the
//! transform's output field and the table's `columns` overrides. Everything
//! that can be checked then (is this pair encodable at all?) is checked then,
//! so a bad config fails before a byte reaches Postgres.

use std::fmt;
use std::str::FromStr;

use arrow_schema::{DataType, Field, TimeUnit};

use crate::geometry::{is_json_field, GeometryInfo, GeometryKind};
use crate::SchemaError;

/// Postgres's limit on `numeric` precision in a type modifier.
pub const NUMERIC_MAX_PRECISION: u8 = 38;

/// A Postgres column type floe can write with binary COPY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgType {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    /// `numeric(p,s)`, or unconstrained `numeric` when `None`.
    Numeric(Option<(u8, i8)>),
    Text,
    Bytea,
    Date,
    Timestamp,
    Timestamptz,
    Jsonb,
    /// `geometry(<kind>,<srid>)`; `geometry` alone when kind is `Geometry` and srid is `None`.
    Geometry {
        kind: GeometryKind,
        srid: Option<i32>,
    },
}

impl PgType {
    /// True if the type comes from the PostGIS extension.
    pub fn needs_postgis(&self) -> bool {
        matches!(self, PgType::Geometry { .. })
    }

    /// The type as written in DDL.
    pub fn sql(&self) -> String {
        self.to_string()
    }

    /// The Postgres type a field maps to when the config says nothing.
    pub fn infer(field: &Field) -> Result<PgType, SchemaError> {
        if let Some(info) = GeometryInfo::from_field(field) {
            return Ok(PgType::Geometry {
                kind: info.kind,
                srid: info.srid,
            });
        }
        let unsupported = || SchemaError::Unsupported {
            column: field.name().clone(),
            arrow: field.data_type().to_string(),
        };
        Ok(match field.data_type() {
            DataType::Boolean => PgType::Bool,
            DataType::Int8 | DataType::Int16 | DataType::UInt8 => PgType::Int2,
            DataType::Int32 | DataType::UInt16 => PgType::Int4,
            DataType::Int64 | DataType::UInt32 => PgType::Int8,
            DataType::Float16 | DataType::Float32 => PgType::Float4,
            DataType::Float64 => PgType::Float8,
            DataType::Decimal128(p, s) if *p <= NUMERIC_MAX_PRECISION && *s >= 0 => {
                PgType::Numeric(Some((*p, *s)))
            }
            DataType::Decimal128(..) => PgType::Numeric(None),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                if is_json_field(field) {
                    PgType::Jsonb
                } else {
                    PgType::Text
                }
            }
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => PgType::Bytea,
            DataType::Date32 => PgType::Date,
            DataType::Timestamp(_, None) => PgType::Timestamp,
            DataType::Timestamp(_, Some(_)) => PgType::Timestamptz,
            _ => return Err(unsupported()),
        })
    }

    /// Whether floe's encoder can write Arrow `dt` as this Postgres type.
    ///
    /// Narrowing integer pairs (Int64 → integer) are allowed: the encoder
    /// checks each value's range and names the row that does not fit.
    pub fn accepts(&self, dt: &DataType) -> bool {
        use DataType as D;
        let int = matches!(
            dt,
            D::Int8 | D::Int16 | D::Int32 | D::Int64 | D::UInt8 | D::UInt16 | D::UInt32
        );
        let utf8 = matches!(dt, D::Utf8 | D::LargeUtf8 | D::Utf8View);
        let binary = matches!(dt, D::Binary | D::LargeBinary | D::BinaryView);
        match self {
            PgType::Bool => matches!(dt, D::Boolean),
            PgType::Int2 | PgType::Int4 | PgType::Int8 => int,
            PgType::Float4 | PgType::Float8 => matches!(dt, D::Float16 | D::Float32 | D::Float64),
            PgType::Numeric(_) => int || matches!(dt, D::Decimal128(..) | D::Float32 | D::Float64),
            PgType::Text | PgType::Jsonb => utf8,
            PgType::Bytea | PgType::Geometry { .. } => binary,
            PgType::Date => matches!(dt, D::Date32),
            PgType::Timestamp | PgType::Timestamptz => matches!(dt, D::Timestamp(..)),
        }
    }

    /// Resolves a column's Postgres type: the override if given (checked
    /// against the Arrow type), else the inferred one.
    pub fn resolve(field: &Field, declared: Option<PgType>) -> Result<PgType, SchemaError> {
        match declared {
            None => PgType::infer(field),
            Some(pg) if pg.accepts(field.data_type()) => Ok(pg),
            Some(pg) => Err(SchemaError::Incompatible {
                column: field.name().clone(),
                arrow: field.data_type().to_string(),
                pg: pg.to_string(),
            }),
        }
    }
}

impl fmt::Display for PgType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PgType::Bool => f.write_str("boolean"),
            PgType::Int2 => f.write_str("smallint"),
            PgType::Int4 => f.write_str("integer"),
            PgType::Int8 => f.write_str("bigint"),
            PgType::Float4 => f.write_str("real"),
            PgType::Float8 => f.write_str("double precision"),
            PgType::Numeric(Some((p, s))) => write!(f, "numeric({p},{s})"),
            PgType::Numeric(None) => f.write_str("numeric"),
            PgType::Text => f.write_str("text"),
            PgType::Bytea => f.write_str("bytea"),
            PgType::Date => f.write_str("date"),
            PgType::Timestamp => f.write_str("timestamp"),
            PgType::Timestamptz => f.write_str("timestamptz"),
            PgType::Jsonb => f.write_str("jsonb"),
            PgType::Geometry {
                kind: GeometryKind::Geometry,
                srid: None,
            } => f.write_str("geometry"),
            PgType::Geometry { kind, srid } => write!(f, "geometry({kind},{})", srid.unwrap_or(0)),
        }
    }
}

impl FromStr for PgType {
    type Err = SchemaError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let unknown = || SchemaError::UnknownPgType(s.to_string());
        let norm = s.trim().to_ascii_lowercase();
        let (base, args) = match norm.find('(') {
            Some(i) if norm.ends_with(')') => {
                (norm[..i].trim(), Some(&norm[i + 1..norm.len() - 1]))
            }
            Some(_) => return Err(unknown()),
            None => (norm.as_str(), None),
        };
        let simple = |t: PgType| {
            if args.is_none() {
                Ok(t)
            } else {
                Err(unknown())
            }
        };
        match base {
            "bool" | "boolean" => simple(PgType::Bool),
            "int2" | "smallint" => simple(PgType::Int2),
            "int4" | "int" | "integer" => simple(PgType::Int4),
            "int8" | "bigint" => simple(PgType::Int8),
            "float4" | "real" => simple(PgType::Float4),
            "float8" | "double precision" => simple(PgType::Float8),
            "text" | "varchar" => simple(PgType::Text),
            "bytea" => simple(PgType::Bytea),
            "date" => simple(PgType::Date),
            "timestamp" | "timestamp without time zone" => simple(PgType::Timestamp),
            "timestamptz" | "timestamp with time zone" => simple(PgType::Timestamptz),
            "jsonb" => simple(PgType::Jsonb),
            "numeric" | "decimal" => match args {
                None => Ok(PgType::Numeric(None)),
                Some(a) => {
                    let mut parts = a.split(',').map(str::trim);
                    let p: u8 = parts
                        .next()
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(unknown)?;
                    let sc: i8 = match parts.next() {
                        Some(v) => v.parse().map_err(|_| unknown())?,
                        None => 0,
                    };
                    if parts.next().is_some()
                        || p == 0
                        || p > NUMERIC_MAX_PRECISION
                        || sc < 0
                        || sc as u8 > p
                    {
                        return Err(unknown());
                    }
                    Ok(PgType::Numeric(Some((p, sc))))
                }
            },
            "geometry" => match args {
                None => Ok(PgType::Geometry {
                    kind: GeometryKind::Geometry,
                    srid: None,
                }),
                Some(a) => {
                    let mut parts = a.split(',').map(str::trim);
                    let kind = parts
                        .next()
                        .and_then(|k| k.parse::<GeometryKind>().ok())
                        .ok_or_else(unknown)?;
                    let srid = match parts.next() {
                        Some(v) => Some(v.parse::<i32>().map_err(|_| unknown())?),
                        None => None,
                    };
                    if parts.next().is_some() {
                        return Err(unknown());
                    }
                    Ok(PgType::Geometry { kind, srid })
                }
            },
            _ => Err(unknown()),
        }
    }
}

/// A column of a Postgres target table.
#[derive(Debug, Clone, PartialEq)]
pub struct PgColumn {
    pub name: String,
    pub ty: PgType,
    pub nullable: bool,
}

/// Quotes a Postgres identifier (always, so reserved words and case survive).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a possibly schema-qualified name: `schema.table` → `"schema"."table"`.
pub fn quote_qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

/// Maps an Arrow timestamp unit to how many of it make a microsecond or
/// how many microseconds make one of it, as (multiply, divide).
pub fn micros_per_unit(unit: TimeUnit) -> (i64, i64) {
    match unit {
        TimeUnit::Second => (1_000_000, 1),
        TimeUnit::Millisecond => (1_000, 1),
        TimeUnit::Microsecond => (1, 1),
        TimeUnit::Nanosecond => (1, 1_000),
    }
}

/// Postgres truncates identifiers longer than this many bytes.
pub const MAX_IDENTIFIER_BYTES: usize = 63;

/// Marks floe's staging tables: `<target>__floe_<run>`. Config refuses
/// targets containing it, so no configured table can look like one.
pub const STAGING_MARK: &str = "__floe_";

/// A stable 64-bit FNV-1a hash: names derived from it stay the same across
/// runs, builds and Rust versions.
pub fn name_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `name`, or if it is longer than Postgres keeps, a prefix of it with a
/// hash of the whole, so two long names never truncate to the same one.
pub fn fitted_name(name: &str, suffix: &str) -> String {
    let whole = format!("{name}{suffix}");
    if whole.len() <= MAX_IDENTIFIER_BYTES {
        return whole;
    }
    let tag = format!("_{:016x}{suffix}", name_hash(name));
    let mut keep = MAX_IDENTIFIER_BYTES - tag.len();
    while !name.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}{tag}", &name[..keep])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::json_metadata;

    #[test]
    fn parses_and_prints_type_names() {
        for (text, printed) in [
            ("numeric(6,2)", "numeric(6,2)"),
            ("NUMERIC(8, 1)", "numeric(8,1)"),
            ("jsonb", "jsonb"),
            ("geometry(LineString,4326)", "geometry(LineString,4326)"),
            (
                "geometry(multipolygon, 4326)",
                "geometry(MultiPolygon,4326)",
            ),
            ("geometry", "geometry"),
            ("timestamp with time zone", "timestamptz"),
            ("int", "integer"),
        ] {
            assert_eq!(
                text.parse::<PgType>().unwrap().to_string(),
                printed,
                "{text}"
            );
        }
        for bad in [
            "numeric(0,1)",
            "numeric(6,7)",
            "geometry(Blob,4326)",
            "varchar2",
            "text(3)",
            "numeric(6",
        ] {
            assert!(bad.parse::<PgType>().is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn infers_from_arrow_fields() {
        let json = Field::new("a", DataType::Utf8, true).with_metadata(json_metadata());
        assert_eq!(PgType::infer(&json).unwrap(), PgType::Jsonb);
        let ts = Field::new(
            "t",
            DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
            true,
        );
        assert_eq!(PgType::infer(&ts).unwrap(), PgType::Timestamptz);
        let dec = Field::new("d", DataType::Decimal128(6, 2), true);
        assert_eq!(PgType::infer(&dec).unwrap(), PgType::Numeric(Some((6, 2))));
        let list = Field::new("l", DataType::new_list(DataType::Int32, true), true);
        assert!(PgType::infer(&list)
            .unwrap_err()
            .to_string()
            .contains("`l`"));
    }

    #[test]
    fn overrides_are_checked_against_arrow() {
        let f = Field::new("levels", DataType::Int64, true);
        assert_eq!(
            PgType::resolve(&f, Some(PgType::Int4)).unwrap(),
            PgType::Int4
        );
        let err = PgType::resolve(&f, Some(PgType::Jsonb))
            .unwrap_err()
            .to_string();
        assert!(err.contains("levels") && err.contains("jsonb"), "{err}");
    }
}
