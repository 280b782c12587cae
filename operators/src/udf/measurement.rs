//! Measurement on the WGS84 ellipsoid, in metres, as PostGIS's
//! `ST_Area(geography)` / `ST_Length(geography)` answer: polygons and lines
//! are measured straight from their bytes by [`crate::ellipsoid`]; anything
//! else (and bytes it cannot walk) is parsed in full and measured by `geo`.

use arrow::array::{Array, ArrayRef, BinaryArray};
use datafusion::common::Result;
use geo::{Geodesic, GeodesicArea, Length};

use super::{downcast, Ctx, Invalid};
use crate::error::show_bytes;
use crate::{ellipsoid, ewkb};

fn parse(v: &[u8]) -> Result<geo::Geometry<f64>, Invalid> {
    ewkb::to_geo(v).map_err(|reason| Invalid {
        value: show_bytes(v),
        reason,
    })
}

/// `st_area(geom)`: geodesic area in m²; 0 for points and lines.
pub(super) fn area(args: &[ArrayRef], rows: usize, ctx: &mut Ctx) -> Result<ArrayRef> {
    let g = downcast::<BinaryArray>(&args[0]);
    ctx.float(rows, |i| {
        if g.is_null(i) {
            return Ok(None);
        }
        let v = g.value(i);
        Ok(Some(match ellipsoid::area(v) {
            Some(area) => area,
            None => parse(v)?.geodesic_area_unsigned(),
        }))
    })
}

/// `st_length(geom)`: geodesic length in m of lines; 0 for points and polygons.
pub(super) fn length(args: &[ArrayRef], rows: usize, ctx: &mut Ctx) -> Result<ArrayRef> {
    let g = downcast::<BinaryArray>(&args[0]);
    ctx.float(rows, |i| {
        if g.is_null(i) {
            return Ok(None);
        }
        let v = g.value(i);
        if let Some(length) = ellipsoid::length(v) {
            return Ok(Some(length));
        }
        Ok(Some(match parse(v)? {
            geo::Geometry::LineString(l) => Geodesic.length(&l),
            geo::Geometry::MultiLineString(l) => Geodesic.length(&l),
            geo::Geometry::Line(l) => Geodesic.length(&l),
            _ => 0.0,
        }))
    })
}
