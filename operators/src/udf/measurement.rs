//! Measurement on the WGS84 ellipsoid (Karney's geodesics), in metres, as
//! PostGIS's `ST_Area(geography)` / `ST_Length(geography)` answer.

use arrow::array::{Array, ArrayRef, BinaryArray};
use datafusion::common::Result;
use geo::{Geodesic, GeodesicArea, Length};

use super::{downcast, Ctx, Invalid};
use crate::error::show_bytes;
use crate::ewkb;

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
        Ok(Some(parse(g.value(i))?.geodesic_area_unsigned()))
    })
}

/// `st_length(geom)`: geodesic length in m of lines; 0 for points and polygons.
pub(super) fn length(args: &[ArrayRef], rows: usize, ctx: &mut Ctx) -> Result<ArrayRef> {
    let g = downcast::<BinaryArray>(&args[0]);
    ctx.float(rows, |i| {
        if g.is_null(i) {
            return Ok(None);
        }
        Ok(Some(match parse(g.value(i))? {
            geo::Geometry::LineString(l) => Geodesic.length(&l),
            geo::Geometry::MultiLineString(l) => Geodesic.length(&l),
            geo::Geometry::Line(l) => Geodesic.length(&l),
            _ => 0.0,
        }))
    })
}
