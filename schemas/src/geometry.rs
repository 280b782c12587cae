//! Geometry columns in Arrow.
//!
//! A geometry travels as EWKB bytes in a `Binary` column. The field carries
//! GeoArrow's `geoarrow.wkb` extension name so other Arrow tools recognise it,
//! plus floe's own keys for the geometry type and SRID, which is what the
//! Postgres sink needs to declare `geometry(<type>,<srid>)` and to check each
//! value before Postgres would reject it.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use arrow_schema::{DataType, Field};

/// Arrow extension name key (Arrow's canonical metadata key).
pub const EXTENSION_NAME_KEY: &str = "ARROW:extension:name";
/// Arrow extension metadata key.
pub const EXTENSION_METADATA_KEY: &str = "ARROW:extension:metadata";
/// GeoArrow's name for a WKB-encoded geometry column.
pub const GEOARROW_WKB: &str = "geoarrow.wkb";
/// floe's key for the geometry type (`Point`, `MultiPolygon`, `Geometry`, …).
pub const GEOMETRY_TYPE_KEY: &str = "floe.geometry_type";
/// floe's key for the SRID, when known at plan time.
pub const SRID_KEY: &str = "floe.srid";
/// Arrow's canonical JSON extension: a Utf8 column that holds JSON text.
pub const ARROW_JSON: &str = "arrow.json";

/// The geometry type of a column or a value, as PostGIS names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GeometryKind {
    /// Any geometry (unconstrained column).
    Geometry,
    Point,
    LineString,
    Polygon,
    MultiPoint,
    MultiLineString,
    MultiPolygon,
    GeometryCollection,
}

impl GeometryKind {
    /// The (E)WKB type code, 0 for the unconstrained `Geometry`.
    pub fn wkb_code(self) -> u32 {
        match self {
            GeometryKind::Geometry => 0,
            GeometryKind::Point => 1,
            GeometryKind::LineString => 2,
            GeometryKind::Polygon => 3,
            GeometryKind::MultiPoint => 4,
            GeometryKind::MultiLineString => 5,
            GeometryKind::MultiPolygon => 6,
            GeometryKind::GeometryCollection => 7,
        }
    }

    /// The kind for a (E)WKB type code (flags already stripped).
    pub fn from_wkb_code(code: u32) -> Option<Self> {
        Some(match code {
            1 => GeometryKind::Point,
            2 => GeometryKind::LineString,
            3 => GeometryKind::Polygon,
            4 => GeometryKind::MultiPoint,
            5 => GeometryKind::MultiLineString,
            6 => GeometryKind::MultiPolygon,
            7 => GeometryKind::GeometryCollection,
            _ => return None,
        })
    }

    /// The multi variant (`ST_Multi`); multi kinds and collections map to themselves.
    pub fn to_multi(self) -> Self {
        match self {
            GeometryKind::Point => GeometryKind::MultiPoint,
            GeometryKind::LineString => GeometryKind::MultiLineString,
            GeometryKind::Polygon => GeometryKind::MultiPolygon,
            other => other,
        }
    }

    /// PostGIS's name, as used in `geometry(<name>,<srid>)`.
    pub fn name(self) -> &'static str {
        match self {
            GeometryKind::Geometry => "Geometry",
            GeometryKind::Point => "Point",
            GeometryKind::LineString => "LineString",
            GeometryKind::Polygon => "Polygon",
            GeometryKind::MultiPoint => "MultiPoint",
            GeometryKind::MultiLineString => "MultiLineString",
            GeometryKind::MultiPolygon => "MultiPolygon",
            GeometryKind::GeometryCollection => "GeometryCollection",
        }
    }
}

impl fmt::Display for GeometryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for GeometryKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let all = [
            GeometryKind::Geometry,
            GeometryKind::Point,
            GeometryKind::LineString,
            GeometryKind::Polygon,
            GeometryKind::MultiPoint,
            GeometryKind::MultiLineString,
            GeometryKind::MultiPolygon,
            GeometryKind::GeometryCollection,
        ];
        all.into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("unknown geometry type `{s}`"))
    }
}

/// What a geometry field's metadata says about its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeometryInfo {
    pub kind: GeometryKind,
    /// `None` when the SRID is only known per value (e.g. EWKB input).
    pub srid: Option<i32>,
}

impl GeometryInfo {
    /// The metadata map to put on an output field.
    pub fn to_metadata(self) -> HashMap<String, String> {
        let mut m = HashMap::new();
        m.insert(EXTENSION_NAME_KEY.to_string(), GEOARROW_WKB.to_string());
        m.insert(GEOMETRY_TYPE_KEY.to_string(), self.kind.name().to_string());
        if let Some(srid) = self.srid {
            m.insert(SRID_KEY.to_string(), srid.to_string());
            // GeoArrow's own CRS key, so other GeoArrow readers see the CRS too.
            m.insert(
                EXTENSION_METADATA_KEY.to_string(),
                format!(r#"{{"crs":"EPSG:{srid}"}}"#),
            );
        }
        m
    }

    /// A Binary field tagged as geometry.
    pub fn field(self, name: &str, nullable: bool) -> Field {
        Field::new(name, DataType::Binary, nullable).with_metadata(self.to_metadata())
    }

    /// Reads the geometry tag off a field; `None` if it is not a geometry column.
    pub fn from_field(field: &Field) -> Option<Self> {
        let md = field.metadata();
        if md.get(EXTENSION_NAME_KEY).map(String::as_str) != Some(GEOARROW_WKB) {
            return None;
        }
        let kind = md
            .get(GEOMETRY_TYPE_KEY)
            .and_then(|s| s.parse().ok())
            .unwrap_or(GeometryKind::Geometry);
        let srid = md.get(SRID_KEY).and_then(|s| s.parse().ok());
        Some(GeometryInfo { kind, srid })
    }
}

/// True if the field is tagged as JSON text (Arrow's `arrow.json` extension).
pub fn is_json_field(field: &Field) -> bool {
    field.metadata().get(EXTENSION_NAME_KEY).map(String::as_str) == Some(ARROW_JSON)
}

/// Metadata that tags a Utf8 field as JSON text.
pub fn json_metadata() -> HashMap<String, String> {
    HashMap::from([(EXTENSION_NAME_KEY.to_string(), ARROW_JSON.to_string())])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_through_a_field() {
        let info = GeometryInfo {
            kind: GeometryKind::MultiPolygon,
            srid: Some(4326),
        };
        let field = info.field("geom", true);
        assert_eq!(GeometryInfo::from_field(&field), Some(info));
        assert!(GeometryInfo::from_field(&Field::new("x", DataType::Binary, true)).is_none());
    }

    #[test]
    fn multi_of_single_kinds() {
        assert_eq!(GeometryKind::Polygon.to_multi(), GeometryKind::MultiPolygon);
        assert_eq!(
            GeometryKind::MultiPoint.to_multi(),
            GeometryKind::MultiPoint
        );
        assert_eq!(
            "linestring".parse::<GeometryKind>(),
            Ok(GeometryKind::LineString)
        );
    }
}
