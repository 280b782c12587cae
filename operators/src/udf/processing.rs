//! Processing: SRID, multi, centroid, simplify.

use arrow::array::{Array, ArrayRef, BinaryArray, Float64Array, Int32Array};
use datafusion::common::Result;
use geo::{Centroid, Simplify};

use super::{downcast, Ctx, Invalid};
use crate::error::show_bytes;
use crate::{centroid, ewkb};

fn invalid(g: &[u8]) -> impl Fn(String) -> Invalid + '_ {
    move |reason| Invalid {
        value: show_bytes(g),
        reason,
    }
}

/// `st_setsrid(geom, srid)`: header rewrite, body copied.
pub(super) fn set_srid(args: &[ArrayRef], rows: usize, ctx: &mut Ctx) -> Result<ArrayRef> {
    let g = downcast::<BinaryArray>(&args[0]);
    let srid = downcast::<Int32Array>(&args[1]);
    ctx.geometry(rows, |i, out| {
        if g.is_null(i) || srid.is_null(i) {
            return Ok(false);
        }
        let v = g.value(i);
        ewkb::write_with_srid(out, v, Some(srid.value(i))).map_err(invalid(v))?;
        Ok(true)
    })
}

/// `st_multi(geom)`: single geometries wrapped in their multi type.
pub(super) fn multi(args: &[ArrayRef], rows: usize, ctx: &mut Ctx) -> Result<ArrayRef> {
    let g = downcast::<BinaryArray>(&args[0]);
    ctx.geometry(rows, |i, out| {
        if g.is_null(i) {
            return Ok(false);
        }
        let v = g.value(i);
        ewkb::write_multi(out, v).map_err(invalid(v))?;
        Ok(true)
    })
}

/// `st_centroid(geom)`: planar centroid (as PostGIS's geometry version);
/// `POINT EMPTY` for empty input. Points and polygons are read from their
/// bytes ([`centroid`]); anything else is parsed and measured by `geo`.
pub(super) fn centroid(args: &[ArrayRef], rows: usize, ctx: &mut Ctx) -> Result<ArrayRef> {
    let g = downcast::<BinaryArray>(&args[0]);
    ctx.geometry(rows, |i, out| {
        if g.is_null(i) {
            return Ok(false);
        }
        let v = g.value(i);
        let header = ewkb::read_header(v).map_err(invalid(v))?;
        let (x, y) = match ewkb::point_xy(v).or_else(|| centroid::polygon_centroid(v)) {
            Some(xy) => xy,
            None => ewkb::to_geo(v)
                .map_err(invalid(v))?
                .centroid()
                .map(|p| p.x_y())
                .unwrap_or((f64::NAN, f64::NAN)),
        };
        ewkb::write_point(out, x, y, header.srid);
        Ok(true)
    })
}

/// `st_simplify(geom, tolerance)`: Douglas–Peucker on lines and polygon rings.
pub(super) fn simplify(args: &[ArrayRef], rows: usize, ctx: &mut Ctx) -> Result<ArrayRef> {
    let g = downcast::<BinaryArray>(&args[0]);
    let tol = downcast::<Float64Array>(&args[1]);
    ctx.geometry(rows, |i, out| {
        if g.is_null(i) || tol.is_null(i) {
            return Ok(false);
        }
        let v = g.value(i);
        let header = ewkb::read_header(v).map_err(invalid(v))?;
        let eps = tol.value(i);
        let simplified = match ewkb::to_geo(v).map_err(invalid(v))? {
            geo::Geometry::LineString(l) => geo::Geometry::LineString(l.simplify(eps)),
            geo::Geometry::MultiLineString(l) => geo::Geometry::MultiLineString(l.simplify(eps)),
            geo::Geometry::Polygon(p) => geo::Geometry::Polygon(p.simplify(eps)),
            geo::Geometry::MultiPolygon(p) => geo::Geometry::MultiPolygon(p.simplify(eps)),
            other => other,
        };
        ewkb::write_geo(out, &simplified, header.srid).map_err(invalid(v))?;
        Ok(true)
    })
}
