//! Constructors: points and lines from numbers, geometries from text and WKB.

use arrow::array::{Array, ArrayRef, AsArray, BinaryArray, Float64Array, Int32Array};
use arrow::datatypes::DataType;
use datafusion::common::Result;
use geozero::wkt::Wkt;

use super::{downcast, Ctx, Invalid};
use crate::error::{show_bytes, show_value};
use crate::ewkb;

/// A text argument, read where it lies: Utf8 or Utf8View.
enum Texts<'a> {
    Plain(&'a arrow::array::StringArray),
    View(&'a arrow::array::StringViewArray),
}

impl<'a> Texts<'a> {
    fn new(a: &'a ArrayRef) -> Self {
        match a.data_type() {
            DataType::Utf8View => Texts::View(a.as_string_view()),
            _ => Texts::Plain(a.as_string::<i32>()),
        }
    }

    /// The value at `i`, `None` when NULL.
    fn get(&self, i: usize) -> Option<&'a str> {
        match self {
            Texts::Plain(a) => a.is_valid(i).then(|| a.value(i)),
            Texts::View(a) => a.is_valid(i).then(|| a.value(i)),
        }
    }
}

fn srid_at(srids: Option<&Int32Array>, i: usize) -> Option<Option<i32>> {
    match srids {
        None => Some(None),
        Some(a) if a.is_null(i) => None,
        Some(a) => Some(Some(a.value(i))),
    }
}

/// `st_point(x, y[, srid])`: SRID 0 (unknown) unless given, as in PostGIS.
pub(super) fn point(args: &[ArrayRef], rows: usize, ctx: &mut Ctx) -> Result<ArrayRef> {
    let x = downcast::<Float64Array>(&args[0]);
    let y = downcast::<Float64Array>(&args[1]);
    let srid = args.get(2).map(downcast::<Int32Array>);
    ctx.geometry(rows, |i, out| {
        if x.is_null(i) || y.is_null(i) {
            return Ok(false);
        }
        let Some(srid) = srid_at(srid, i) else {
            return Ok(false);
        };
        ewkb::write_point(out, x.value(i), y.value(i), Some(srid.unwrap_or(0)));
        Ok(true)
    })
}

/// Coordinates of a point, multipoint or linestring, for `st_makeline`.
fn line_vertices(g: &[u8], into: &mut Vec<(f64, f64)>) -> Result<(), String> {
    if let Some(xy) = ewkb::point_xy(g) {
        into.push(xy);
        return Ok(());
    }
    match ewkb::to_geo(g)? {
        geo::Geometry::Point(p) => into.push(p.x_y()),
        geo::Geometry::MultiPoint(mp) => into.extend(mp.iter().map(|p| p.x_y())),
        geo::Geometry::LineString(ls) => into.extend(ls.coords().map(|c| (c.x, c.y))),
        other => {
            return Err(format!(
                "st_makeline takes points, multipoints or linestrings, not {}",
                kind_name(&other)
            ))
        }
    }
    Ok(())
}

fn kind_name(g: &geo::Geometry<f64>) -> &'static str {
    match g {
        geo::Geometry::Point(_) => "Point",
        geo::Geometry::Line(_) | geo::Geometry::LineString(_) => "LineString",
        geo::Geometry::Polygon(_) | geo::Geometry::Rect(_) | geo::Geometry::Triangle(_) => {
            "Polygon"
        }
        geo::Geometry::MultiPoint(_) => "MultiPoint",
        geo::Geometry::MultiLineString(_) => "MultiLineString",
        geo::Geometry::MultiPolygon(_) => "MultiPolygon",
        geo::Geometry::GeometryCollection(_) => "GeometryCollection",
    }
}

/// `st_makeline(a, b)`: a linestring through the vertices of `a` then `b`.
pub(super) fn makeline(args: &[ArrayRef], rows: usize, ctx: &mut Ctx) -> Result<ArrayRef> {
    let a = downcast::<BinaryArray>(&args[0]);
    let b = downcast::<BinaryArray>(&args[1]);
    thread_local! {
        // One vertex buffer per thread the batch's pieces run on.
        static VERTICES: std::cell::RefCell<Vec<(f64, f64)>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    ctx.geometry(rows, |i, out| {
        if a.is_null(i) || b.is_null(i) {
            return Ok(false);
        }
        let (ga, gb) = (a.value(i), b.value(i));
        let bad = |g: &[u8], reason: String| Invalid {
            value: show_bytes(g),
            reason,
        };
        let ha = ewkb::read_header(ga).map_err(|r| bad(ga, r))?;
        let hb = ewkb::read_header(gb).map_err(|r| bad(gb, r))?;
        if ha.srid.unwrap_or(0) != hb.srid.unwrap_or(0) {
            return Err(bad(
                gb,
                format!(
                    "mixed SRIDs {} and {}",
                    ha.srid.unwrap_or(0),
                    hb.srid.unwrap_or(0)
                ),
            ));
        }
        VERTICES.with_borrow_mut(|vertices| {
            vertices.clear();
            line_vertices(ga, vertices).map_err(|r| bad(ga, r))?;
            line_vertices(gb, vertices).map_err(|r| bad(gb, r))?;
            ewkb::write_linestring(out, vertices, ha.srid);
            Ok(true)
        })
    })
}

/// `st_geomfromgeojson(text)`: SRID 4326, GeoJSON's coordinate system.
pub(super) fn from_geojson(args: &[ArrayRef], rows: usize, ctx: &mut Ctx) -> Result<ArrayRef> {
    let text = Texts::new(&args[0]);
    ctx.geometry(rows, |i, out| {
        let Some(s) = text.get(i) else {
            return Ok(false);
        };
        crate::geojson::write(out, s, 4326).map_err(|reason| Invalid {
            value: show_value(s),
            reason,
        })?;
        Ok(true)
    })
}

/// Splits an EWKT `SRID=n;` prefix off.
fn split_ewkt(s: &str) -> Result<(Option<i32>, &str), String> {
    let t = s.trim_start();
    if t.len() >= 5 && t[..5].eq_ignore_ascii_case("SRID=") {
        let (head, rest) = t
            .split_once(';')
            .ok_or_else(|| "EWKT SRID prefix without `;`".to_string())?;
        let srid = head[5..]
            .trim()
            .parse::<i32>()
            .map_err(|_| format!("bad SRID `{}`", &head[5..]))?;
        return Ok((Some(srid), rest));
    }
    Ok((None, s))
}

/// `st_geomfromtext(wkt[, srid])`: accepts WKT and EWKT; the argument wins over the prefix.
pub(super) fn from_text(args: &[ArrayRef], rows: usize, ctx: &mut Ctx) -> Result<ArrayRef> {
    let text = Texts::new(&args[0]);
    let srids = args.get(1).map(downcast::<Int32Array>);
    ctx.geometry(rows, |i, out| {
        let Some(s) = text.get(i) else {
            return Ok(false);
        };
        let Some(arg_srid) = srid_at(srids, i) else {
            return Ok(false);
        };
        let invalid = |reason| Invalid {
            value: show_value(s),
            reason,
        };
        let (prefix_srid, wkt) = split_ewkt(s).map_err(invalid)?;
        let srid = arg_srid.or(prefix_srid).unwrap_or(0);
        ewkb::write_from(out, &Wkt(wkt.as_bytes()), Some(srid)).map_err(invalid)?;
        Ok(true)
    })
}

/// `st_geomfromwkb(bytes[, srid])`: WKB or EWKB; the argument wins over an embedded SRID.
pub(super) fn from_wkb(args: &[ArrayRef], rows: usize, ctx: &mut Ctx) -> Result<ArrayRef> {
    let bytes = downcast::<BinaryArray>(&args[0]);
    let srids = args.get(1).map(downcast::<Int32Array>);
    ctx.geometry(rows, |i, out| {
        if bytes.is_null(i) {
            return Ok(false);
        }
        let Some(arg_srid) = srid_at(srids, i) else {
            return Ok(false);
        };
        let b = bytes.value(i);
        let invalid = |reason| Invalid {
            value: show_bytes(b),
            reason,
        };
        let header = ewkb::read_header(b).map_err(invalid)?;
        let srid = arg_srid.or(header.srid).unwrap_or(0);
        // Walked to be copied, or re-encoded: either way the whole body is validated.
        ewkb::write_wkb(out, b, Some(srid)).map_err(invalid)?;
        Ok(true)
    })
}

/// `to_geography(value)`: a Snowflake GEOGRAPHY in whatever
/// `GEOGRAPHY_OUTPUT_FORMAT` the session used (GeoJSON, WKT, EWKT as text;
/// WKB, EWKB as binary) → EWKB with SRID 4326, so a transform does not
/// change when the output format does. Like Snowflake's own `TO_GEOGRAPHY`.
pub(super) fn to_geography(args: &[ArrayRef], rows: usize, ctx: &mut Ctx) -> Result<ArrayRef> {
    let a = &args[0];
    let binary = match a.data_type() {
        DataType::Binary => Some(Binaries::Plain(a.as_binary::<i32>())),
        DataType::LargeBinary => Some(Binaries::Large(a.as_binary::<i64>())),
        DataType::BinaryView => Some(Binaries::View(a.as_binary_view())),
        _ => None,
    };
    if let Some(bytes) = binary {
        return ctx.geometry(rows, |i, out| {
            let Some(b) = bytes.get(i) else {
                return Ok(false);
            };
            ewkb::write_wkb(out, b, Some(4326)).map_err(|reason| Invalid {
                value: show_bytes(b),
                reason,
            })?;
            Ok(true)
        });
    }
    let text = match a.data_type() {
        DataType::LargeUtf8 => None,
        _ => Some(Texts::new(a)),
    };
    let large = a.as_string_opt::<i64>();
    ctx.geometry(rows, |i, out| {
        let s = match (&text, large) {
            (Some(t), _) => t.get(i),
            (None, Some(l)) => l.is_valid(i).then(|| l.value(i)),
            (None, None) => None,
        };
        let Some(s) = s else {
            return Ok(false);
        };
        let invalid = |reason| Invalid {
            value: show_value(s),
            reason,
        };
        if s.trim_start().starts_with('{') {
            crate::geojson::write(out, s, 4326).map_err(invalid)?;
        } else {
            let (_, wkt) = split_ewkt(s).map_err(invalid)?;
            ewkb::write_from(out, &Wkt(wkt.as_bytes()), Some(4326)).map_err(invalid)?;
        }
        Ok(true)
    })
}

/// Binary values of any of Arrow's three layouts, read in place.
enum Binaries<'a> {
    Plain(&'a arrow::array::BinaryArray),
    Large(&'a arrow::array::LargeBinaryArray),
    View(&'a arrow::array::BinaryViewArray),
}

impl<'a> Binaries<'a> {
    fn get(&self, i: usize) -> Option<&'a [u8]> {
        match self {
            Binaries::Plain(a) => a.is_valid(i).then(|| a.value(i)),
            Binaries::Large(a) => a.is_valid(i).then(|| a.value(i)),
            Binaries::View(a) => a.is_valid(i).then(|| a.value(i)),
        }
    }
}
