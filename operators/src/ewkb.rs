//! EWKB, the bytes PostGIS sends and receives for `geometry`.
//!
//! PostGIS's binary input accepts (E)WKB directly, so a Binary column of EWKB
//! can be sent by binary COPY with no cast. Layout: byte order (1 = little
//! endian), a u32 type whose low bits are the geometry code and whose high
//! bits flag Z (0x80000000), M (0x40000000) and an SRID (0x20000000), then the
//! SRID as i32 if flagged, then the body. Only the outermost header carries
//! the SRID.

use geozero::wkb::{Ewkb, WkbDialect, WkbWriter};
use geozero::{CoordDimensions, GeozeroGeometry, ToGeo, ToWkb};
use schemas::geometry::GeometryKind;

const Z_FLAG: u32 = 0x8000_0000;
const M_FLAG: u32 = 0x4000_0000;
const SRID_FLAG: u32 = 0x2000_0000;

/// The parsed header of an (E)WKB value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub little_endian: bool,
    /// Geometry code (1..=7), flags and ISO dimension offsets removed.
    pub code: u32,
    pub has_z: bool,
    pub has_m: bool,
    pub srid: Option<i32>,
    /// Bytes taken by byte order, type and SRID.
    pub len: usize,
}

impl Header {
    /// The geometry kind, if the code is one PostGIS knows.
    pub fn kind(&self) -> Option<GeometryKind> {
        GeometryKind::from_wkb_code(self.code)
    }
}

/// Reads an (E)WKB header (also ISO WKB's 1000/2000/3000 dimension codes).
pub fn read_header(b: &[u8]) -> Result<Header, String> {
    if b.len() < 5 {
        return Err(format!("{} bytes is too short for WKB", b.len()));
    }
    let little_endian = match b[0] {
        0 => false,
        1 => true,
        o => return Err(format!("byte order {o} is neither 0 nor 1")),
    };
    let u32_at = |i: usize| -> Result<u32, String> {
        let raw: [u8; 4] = b
            .get(i..i + 4)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| format!("truncated WKB ({} bytes)", b.len()))?;
        Ok(if little_endian {
            u32::from_le_bytes(raw)
        } else {
            u32::from_be_bytes(raw)
        })
    };
    let ty = u32_at(1)?;
    let iso = ty & 0x0fff_ffff;
    let (code, iso_z, iso_m) = match iso / 1000 {
        0 => (iso, false, false),
        1 => (iso % 1000, true, false),
        2 => (iso % 1000, false, true),
        3 => (iso % 1000, true, true),
        _ => return Err(format!("unknown WKB type {ty:#x}")),
    };
    if !(1..=7).contains(&code) {
        return Err(format!("unknown WKB geometry type {code}"));
    }
    let (srid, len) = if ty & SRID_FLAG != 0 {
        (Some(u32_at(5)? as i32), 9)
    } else {
        (None, 5)
    };
    Ok(Header {
        little_endian,
        code,
        has_z: ty & Z_FLAG != 0 || iso_z,
        has_m: ty & M_FLAG != 0 || iso_m,
        srid,
        len,
    })
}

/// Appends a little-endian 2D header: byte order, type code, SRID if any.
fn write_le_header(out: &mut Vec<u8>, code: u32, srid: Option<i32>) {
    out.push(1);
    match srid {
        Some(s) => {
            out.extend_from_slice(&(code | SRID_FLAG).to_le_bytes());
            out.extend_from_slice(&s.to_le_bytes());
        }
        None => out.extend_from_slice(&code.to_le_bytes()),
    }
}

/// Appends a little-endian EWKB point.
pub fn write_point(out: &mut Vec<u8>, x: f64, y: f64, srid: Option<i32>) {
    write_le_header(out, 1, srid);
    out.extend_from_slice(&x.to_le_bytes());
    out.extend_from_slice(&y.to_le_bytes());
}

/// Appends a little-endian 2D EWKB linestring.
pub fn write_linestring(out: &mut Vec<u8>, vertices: &[(f64, f64)], srid: Option<i32>) {
    out.reserve(13 + 16 * vertices.len());
    write_le_header(out, 2, srid);
    out.extend_from_slice(&(vertices.len() as u32).to_le_bytes());
    for (x, y) in vertices {
        out.extend_from_slice(&x.to_le_bytes());
        out.extend_from_slice(&y.to_le_bytes());
    }
}

/// Appends `geom` with its SRID replaced by `srid` (header rewrite only; the body is copied).
pub fn write_with_srid(out: &mut Vec<u8>, geom: &[u8], srid: Option<i32>) -> Result<(), String> {
    let h = read_header(geom)?;
    write_header(out, &h, h.code, srid);
    out.extend_from_slice(&geom[h.len..]);
    Ok(())
}

fn write_header(out: &mut Vec<u8>, h: &Header, code: u32, srid: Option<i32>) {
    let mut ty = code;
    if h.has_z {
        ty |= Z_FLAG;
    }
    if h.has_m {
        ty |= M_FLAG;
    }
    if srid.is_some() {
        ty |= SRID_FLAG;
    }
    out.push(u8::from(h.little_endian));
    let (tyb, sb) = if h.little_endian {
        (ty.to_le_bytes(), srid.unwrap_or(0).to_le_bytes())
    } else {
        (ty.to_be_bytes(), srid.unwrap_or(0).to_be_bytes())
    };
    out.extend_from_slice(&tyb);
    if srid.is_some() {
        out.extend_from_slice(&sb);
    }
}

/// Appends `ST_Multi(geom)`: a single Point/LineString/Polygon is wrapped in
/// its multi type (byte-level, no re-parse); anything else is copied.
pub fn write_multi(out: &mut Vec<u8>, geom: &[u8]) -> Result<(), String> {
    let h = read_header(geom)?;
    if !(1..=3).contains(&h.code) {
        out.extend_from_slice(geom);
        return Ok(());
    }
    write_header(out, &h, h.code + 3, h.srid);
    let count = 1u32;
    out.extend_from_slice(&if h.little_endian {
        count.to_le_bytes()
    } else {
        count.to_be_bytes()
    });
    // The part: same byte order and dimensions, no SRID.
    write_header(out, &h, h.code, None);
    out.extend_from_slice(&geom[h.len..]);
    Ok(())
}

/// Reads the coordinates of a 2D point, if `geom` is one.
pub fn point_xy(geom: &[u8]) -> Option<(f64, f64)> {
    let h = read_header(geom).ok()?;
    if h.code != 1 || h.has_z || h.has_m {
        return None;
    }
    let body = geom.get(h.len..h.len + 16)?;
    let f = |s: &[u8]| {
        let raw: [u8; 8] = s.try_into().ok()?;
        Some(if h.little_endian {
            f64::from_le_bytes(raw)
        } else {
            f64::from_be_bytes(raw)
        })
    };
    Some((f(&body[..8])?, f(&body[8..])?))
}

/// A position in EWKB bytes: the geometry's header and how far its body has
/// been read.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pub(crate) header: Header,
    pub(crate) pos: usize,
}

/// A run of (x, y) coordinates in EWKB, with Z and M skipped.
pub(crate) struct Points<'a> {
    pub(crate) bytes: &'a [u8],
    pub(crate) little_endian: bool,
    pub(crate) stride: usize,
    pub(crate) len: usize,
}

impl Points<'_> {
    fn f64_at(&self, at: usize) -> f64 {
        let mut raw = [0u8; 8];
        raw.copy_from_slice(&self.bytes[at..at + 8]);
        if self.little_endian {
            f64::from_le_bytes(raw)
        } else {
            f64::from_be_bytes(raw)
        }
    }

    /// (longitude, latitude) of point `i < len`.
    pub(crate) fn get(&self, i: usize) -> (f64, f64) {
        let at = i * self.stride;
        (self.f64_at(at), self.f64_at(at + 8))
    }
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Option<Self> {
        let header = read_header(bytes).ok()?;
        Some(Self {
            bytes,
            pos: header.len,
            header,
        })
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        let raw: [u8; 4] = self.bytes.get(self.pos..self.pos + 4)?.try_into().ok()?;
        self.pos += 4;
        Some(if self.header.little_endian {
            u32::from_le_bytes(raw)
        } else {
            u32::from_be_bytes(raw)
        })
    }

    /// The nested geometry starting here (a multi geometry's part).
    pub(crate) fn part(&self) -> Option<Reader<'a>> {
        let rest = self.bytes.get(self.pos..)?;
        let header = read_header(rest).ok()?;
        Some(Reader {
            bytes: rest,
            pos: header.len,
            header,
        })
    }

    /// A point count and that many points.
    pub(crate) fn points(&mut self) -> Option<Points<'a>> {
        let len = self.u32()? as usize;
        let stride = 8 * (2 + usize::from(self.header.has_z) + usize::from(self.header.has_m));
        let end = self.pos.checked_add(len.checked_mul(stride)?)?;
        let bytes = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(Points {
            bytes,
            little_endian: self.header.little_endian,
            stride,
            len,
        })
    }
}

/// Parses (E)WKB into a `geo` geometry.
pub fn to_geo(geom: &[u8]) -> Result<geo::Geometry<f64>, String> {
    Ewkb(geom).to_geo().map_err(|e| e.to_string())
}

/// Appends a `geo` geometry as 2D EWKB.
pub fn write_geo(
    out: &mut Vec<u8>,
    geom: &geo::Geometry<f64>,
    srid: Option<i32>,
) -> Result<(), String> {
    let bytes = geom
        .to_ewkb(CoordDimensions::xy(), srid)
        .map_err(|e| e.to_string())?;
    out.extend_from_slice(&bytes);
    Ok(())
}

/// Streams any geozero-readable geometry (GeoJSON, WKT, WKB) into 2D EWKB.
/// On error `out` is left as it was.
pub fn write_from<G: GeozeroGeometry>(
    out: &mut Vec<u8>,
    input: &G,
    srid: Option<i32>,
) -> Result<(), String> {
    let start = out.len();
    let mut writer = WkbWriter::with_opts(
        &mut *out,
        WkbDialect::Ewkb,
        CoordDimensions::xy(),
        srid,
        Vec::new(),
    );
    let result = input.process_geom(&mut writer).map_err(|e| e.to_string());
    if result.is_err() {
        out.truncate(start);
    } else if out.len() == start {
        return Err("no geometry in input".into());
    }
    result
}

/// Appends (E)WKB `geom` as 2D EWKB with `srid`: what [`write_from`] writes
/// for it, results and errors alike.
///
/// Why: a GEOGRAPHY read as WKB (floe's default `geography_output_format`)
/// is already 2D little-endian WKB in the shapes PostGIS stores, so the
/// body can be copied once it is walked, instead of re-encoded coordinate
/// by coordinate through geozero. Only what geozero would write the same
/// bytes for takes the copy: points to multipolygons, little-endian
/// throughout, 2D, no empty part, parts' headers plain, nothing after the
/// geometry. Anything else goes through geozero.
pub fn write_wkb(out: &mut Vec<u8>, geom: &[u8], srid: Option<i32>) -> Result<(), String> {
    match copyable(geom) {
        Some((code, body)) => {
            write_le_header(out, code, srid);
            out.extend_from_slice(&geom[body..]);
            Ok(())
        }
        None => write_from(out, &Ewkb(geom), srid),
    }
}

/// The geometry code and where the body starts, if [`write_wkb`] may copy
/// `geom`'s body.
fn copyable(geom: &[u8]) -> Option<(u32, usize)> {
    if *geom.first()? != 1 {
        return None;
    }
    let ty = u32::from_le_bytes(geom.get(1..5)?.try_into().ok()?);
    let (code, body) = match ty & SRID_FLAG {
        0 => (ty, 5),
        _ => (ty & !SRID_FLAG, 9),
    };
    let whole = (1..=6).contains(&code) && walk_2d_le(geom, body, code) == Some(geom.len());
    whole.then_some((code, body))
}

/// Where a 2D little-endian body of geometry `code` at `at` ends, if it
/// has nothing empty and its parts have plain headers.
fn walk_2d_le(b: &[u8], at: usize, code: u32) -> Option<usize> {
    let count = |at: usize| -> Option<usize> {
        let n = u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize;
        (n > 0).then_some(n)
    };
    let points = |at: usize| -> Option<usize> {
        let end = (at + 4).checked_add(count(at)?.checked_mul(16)?)?;
        (end <= b.len()).then_some(end)
    };
    match code {
        1 => {
            let xy = b.get(at..at + 16)?;
            // POINT EMPTY is NaN, NaN: geozero's to decide.
            let x = f64::from_le_bytes(xy[..8].try_into().ok()?);
            let y = f64::from_le_bytes(xy[8..].try_into().ok()?);
            (!x.is_nan() || !y.is_nan()).then_some(at + 16)
        }
        2 => points(at),
        3 => {
            let mut end = at + 4;
            for _ in 0..count(at)? {
                end = points(end)?;
            }
            Some(end)
        }
        _ => {
            let part = code - 3;
            let mut end = at + 4;
            for _ in 0..count(at)? {
                let header = b.get(end..end + 5)?;
                if header[0] != 1 || u32::from_le_bytes(header[1..].try_into().ok()?) != part {
                    return None;
                }
                end = walk_2d_le(b, end + 5, part)?;
            }
            Some(end)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Rng;

    /// Random WKB of types 1–6 as Snowflake writes it, sometimes with an
    /// SRID, an empty part, big-endian, a Z; then sometimes damaged.
    fn random_wkb(rng: &mut Rng, code: u32, top: bool, out: &mut Vec<u8>) {
        let big = rng.below(40) == 0;
        let put = |out: &mut Vec<u8>, v: u32| {
            out.extend_from_slice(&if big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            })
        };
        out.push(u8::from(!big));
        let z = rng.below(40) == 0;
        let srid = top && rng.below(4) == 0;
        put(
            out,
            code | if z { Z_FLAG } else { 0 } | if srid { SRID_FLAG } else { 0 },
        );
        if srid {
            put(out, 4326);
        }
        let coords = |rng: &mut Rng, out: &mut Vec<u8>, n: usize| {
            for _ in 0..n * (2 + usize::from(z)) {
                let v = match rng.below(60) {
                    0 => f64::NAN,
                    _ => (rng.unit() - 0.5) * 360.0,
                };
                out.extend_from_slice(&if big {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                });
            }
        };
        let n = |rng: &mut Rng, min: u64| {
            if rng.below(50) == 0 {
                0
            } else {
                min + rng.below(6)
            }
        };
        match code {
            1 => coords(rng, out, 1),
            2 => {
                let k = n(rng, 2);
                put(out, k as u32);
                coords(rng, out, k as usize);
            }
            3 => {
                let rings = n(rng, 1);
                put(out, rings as u32);
                for _ in 0..rings {
                    let k = n(rng, 4);
                    put(out, k as u32);
                    coords(rng, out, k as usize);
                }
            }
            _ => {
                let parts = n(rng, 1);
                put(out, parts as u32);
                for _ in 0..parts {
                    random_wkb(rng, code - 3, false, out);
                }
            }
        }
    }

    #[test]
    fn wkb_is_written_as_geozero_writes_it_copied_or_not() {
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        let mut copied = 0;
        for _ in 0..50_000 {
            let code = 1 + rng.below(6) as u32;
            let mut wkb = Vec::new();
            random_wkb(&mut rng, code, true, &mut wkb);
            match rng.below(20) {
                0 => wkb.push(0),
                1 => {
                    let cut = rng.below(wkb.len() as u64) as usize;
                    wkb.truncate(cut);
                }
                // Any byte damaged: a byte order, a type, a count, a coordinate.
                2..=4 => {
                    let at = rng.below(wkb.len() as u64) as usize;
                    wkb[at] = rng.below(256) as u8;
                }
                _ => {}
            }
            let mut ours = vec![7u8];
            let r = write_wkb(&mut ours, &wkb, Some(4326));
            let mut theirs = vec![7u8];
            let t = write_from(&mut theirs, &Ewkb(&wkb), Some(4326));
            assert_eq!((r, &ours), (t, &theirs), "{wkb:02x?}");
            copied += usize::from(copyable(&wkb).is_some());
        }
        // Most take the copy; the rest (big-endian, Z, empty, cut) do not.
        assert!(copied > 25_000, "{copied}");
    }

    #[test]
    fn point_header_carries_srid() {
        let mut b = Vec::new();
        write_point(&mut b, -95.5, 29.75, Some(4326));
        let h = read_header(&b).unwrap();
        assert_eq!((h.code, h.srid, h.len), (1, Some(4326), 9));
        assert_eq!(point_xy(&b), Some((-95.5, 29.75)));
    }

    #[test]
    fn multi_wraps_single_geometries_and_keeps_srid() {
        let mut p = Vec::new();
        write_point(&mut p, 1.0, 2.0, Some(4326));
        let mut m = Vec::new();
        write_multi(&mut m, &p).unwrap();
        let h = read_header(&m).unwrap();
        assert_eq!(
            (h.kind(), h.srid),
            (Some(GeometryKind::MultiPoint), Some(4326))
        );
        match to_geo(&m).unwrap() {
            geo::Geometry::MultiPoint(mp) => assert_eq!(mp.0[0].x_y(), (1.0, 2.0)),
            other => panic!("not a multipoint: {other:?}"),
        }
    }

    #[test]
    fn set_srid_rewrites_only_the_header() {
        let mut p = Vec::new();
        write_point(&mut p, 1.0, 2.0, None);
        let mut q = Vec::new();
        write_with_srid(&mut q, &p, Some(3857)).unwrap();
        assert_eq!(read_header(&q).unwrap().srid, Some(3857));
        assert_eq!(point_xy(&q), Some((1.0, 2.0)));
    }

    #[test]
    fn garbage_is_rejected_with_a_reason() {
        assert!(read_header(&[1, 2]).unwrap_err().contains("too short"));
        assert!(read_header(&[7, 1, 0, 0, 0])
            .unwrap_err()
            .contains("byte order"));
        assert!(read_header(&[1, 99, 0, 0, 0]).unwrap_err().contains("type"));
    }
}
