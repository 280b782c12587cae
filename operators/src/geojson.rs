//! GeoJSON geometry → EWKB in one pass over the text.
//!
//! Why: geozero reads GeoJSON through a `serde_json::Value` tree and the
//! `geojson` crate's nested `Vec`s (a `Vec<f64>` per position), which cost
//! building footprints ~15% of floe's CPU. Here serde_json's tokenizer
//! drives a visitor that keeps the coordinates flat and the array lengths in
//! order, and the EWKB is written from those.
//!
//! The contract: the bytes are exactly what geozero writes for the same
//! text. The numbers come from the same serde_json parser, and only the
//! shapes Snowflake writes take this path: one geometry object with the keys
//! `type` and `coordinates` (either order), a non-collection type, 2D
//! positions, no empty array. Anything else, malformed input included, goes
//! through geozero, so results and error messages stay what they were.

use std::cell::RefCell;
use std::fmt;

use geozero::geojson::GeoJson;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::ewkb;

/// Writes the GeoJSON geometry `text` as EWKB with `srid` onto `out`. On
/// error `out` is left as it was.
pub fn write(out: &mut Vec<u8>, text: &str, srid: i32) -> Result<(), String> {
    let start = out.len();
    let fast = SCRATCH.with(|s| {
        let mut scratch = s.borrow_mut();
        scratch.coords.clear();
        scratch.counts.clear();
        let kind = parse(text, &mut scratch)?;
        emit(out, kind, srid, &scratch);
        Some(())
    });
    if fast.is_some() {
        return Ok(());
    }
    out.truncate(start);
    ewkb::write_from(out, &GeoJson(text), Some(srid))
}

thread_local! {
    /// Reused between values: a polygon's coordinates are parsed into
    /// buffers that have already grown.
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

/// A geometry's coordinates, flat (x, y, x, y, …), and the length of each
/// array of arrays in pre-order (positions have none: they are always 2).
#[derive(Default)]
struct Scratch {
    coords: Vec<f64>,
    counts: Vec<u32>,
}

/// The geometry types this path writes, with their WKB type codes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Point = 1,
    LineString = 2,
    Polygon = 3,
    MultiPoint = 4,
    MultiLineString = 5,
    MultiPolygon = 6,
}

impl Kind {
    fn named(name: &str) -> Option<Kind> {
        Some(match name {
            "Point" => Kind::Point,
            "LineString" => Kind::LineString,
            "Polygon" => Kind::Polygon,
            "MultiPoint" => Kind::MultiPoint,
            "MultiLineString" => Kind::MultiLineString,
            "MultiPolygon" => Kind::MultiPolygon,
            _ => return None,
        })
    }

    /// How deeply its `coordinates` nest (a position is 1).
    fn depth(self) -> u8 {
        match self {
            Kind::Point => 1,
            Kind::LineString | Kind::MultiPoint => 2,
            Kind::Polygon | Kind::MultiLineString => 3,
            Kind::MultiPolygon => 4,
        }
    }
}

/// The geometry's type, its coordinates in `scratch`; `None`: not a shape
/// this path takes (geozero decides what it is).
fn parse(text: &str, scratch: &mut Scratch) -> Option<Kind> {
    let mut de = serde_json::Deserializer::from_str(text);
    let (kind, depth) = Geometry { scratch }.deserialize(&mut de).ok()?;
    de.end().ok()?;
    (kind.depth() == depth).then_some(kind)
}

/// Why this path declined; never shown (geozero's message is).
fn decline<E: de::Error>() -> E {
    E::custom("not on the one-pass path")
}

/// The top-level object: its type and the depth of its coordinates.
struct Geometry<'s> {
    scratch: &'s mut Scratch,
}

impl<'de> DeserializeSeed<'de> for Geometry<'_> {
    type Value = (Kind, u8);

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Geometry<'_> {
    type Value = (Kind, u8);

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a GeoJSON geometry object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut kind, mut depth) = (None, None);
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Type if kind.is_none() => kind = Some(map.next_value::<TypeName>()?.0),
                Key::Coordinates if depth.is_none() => {
                    let node = map.next_value_seed(Node {
                        scratch: &mut *self.scratch,
                    })?;
                    match node {
                        Parsed::Array(d) => depth = Some(d),
                        Parsed::Number(_) => return Err(decline()),
                    }
                }
                // A repeated key, `bbox`, a foreign member: geozero's call.
                _ => return Err(decline()),
            }
        }
        kind.zip(depth).ok_or_else(decline)
    }
}

/// An object key this path knows.
enum Key {
    Type,
    Coordinates,
    Other,
}

impl<'de> de::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(match v {
                    "type" => Key::Type,
                    "coordinates" => Key::Coordinates,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// The `type` member's value, when it names a type this path writes.
struct TypeName(Kind);

impl<'de> de::Deserialize<'de> for TypeName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = TypeName;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a geometry type")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TypeName, E> {
                Kind::named(v).map(TypeName).ok_or_else(decline)
            }
        }
        d.deserialize_str(V)
    }
}

/// One value inside `coordinates`: a number, or an array whose nesting
/// depth is given (a position is 1).
enum Parsed {
    Number(f64),
    Array(u8),
}

/// Reads one value of `coordinates` into the scratch buffers.
struct Node<'s> {
    scratch: &'s mut Scratch,
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = Parsed;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Parsed, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = Parsed;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("coordinates")
    }

    // As `serde_json::Number::as_f64` converts them for the `geojson` crate.
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Parsed, E> {
        Ok(Parsed::Number(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Parsed, E> {
        Ok(Parsed::Number(v as f64))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Parsed, E> {
        Ok(Parsed::Number(v as f64))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Parsed, A::Error> {
        let scratch = self.scratch;
        // This array's length goes before its children's (pre-order); a
        // position takes its slot back.
        let slot = scratch.counts.len();
        scratch.counts.push(0);
        let first = seq
            .next_element_seed(Node {
                scratch: &mut *scratch,
            })?
            .ok_or_else(decline)?;
        match first {
            Parsed::Number(x) => {
                scratch.counts.pop();
                let Some(Parsed::Number(y)) = seq.next_element_seed(Node {
                    scratch: &mut *scratch,
                })?
                else {
                    return Err(decline());
                };
                // A third ordinate (z) is geozero's to drop.
                if seq.next_element::<IgnoredAny>()?.is_some() {
                    return Err(decline());
                }
                scratch.coords.extend([x, y]);
                Ok(Parsed::Array(1))
            }
            Parsed::Array(depth) => {
                let mut n: u32 = 1;
                while let Some(next) = seq.next_element_seed(Node {
                    scratch: &mut *scratch,
                })? {
                    match next {
                        Parsed::Array(d) if d == depth => n += 1,
                        _ => return Err(decline()),
                    }
                }
                if depth >= 4 {
                    return Err(decline());
                }
                scratch.counts[slot] = n;
                Ok(Parsed::Array(depth + 1))
            }
        }
    }
}

/// EWKB as geozero's writer lays it out: little-endian, the SRID in the
/// outer header only, a header per part of a multi-geometry.
fn emit(out: &mut Vec<u8>, kind: Kind, srid: i32, scratch: &Scratch) {
    let mut counts = scratch.counts.iter().copied();
    let mut xy = scratch.coords.chunks_exact(2);
    let mut count = |out: &mut Vec<u8>| {
        let n = counts.next().unwrap_or(0);
        out.extend_from_slice(&n.to_le_bytes());
        n
    };
    let mut points = |out: &mut Vec<u8>, n: u32, headed: bool| {
        for p in xy.by_ref().take(n as usize) {
            if headed {
                header(out, Kind::Point, None);
            }
            out.extend_from_slice(&p[0].to_le_bytes());
            out.extend_from_slice(&p[1].to_le_bytes());
        }
    };
    header(out, kind, Some(srid));
    match kind {
        Kind::Point => points(out, 1, false),
        Kind::LineString => {
            let n = count(out);
            points(out, n, false);
        }
        Kind::MultiPoint => {
            let n = count(out);
            points(out, n, true);
        }
        Kind::Polygon => {
            for _ in 0..count(out) {
                let n = count(out);
                points(out, n, false);
            }
        }
        Kind::MultiLineString => {
            for _ in 0..count(out) {
                header(out, Kind::LineString, None);
                let n = count(out);
                points(out, n, false);
            }
        }
        Kind::MultiPolygon => {
            for _ in 0..count(out) {
                header(out, Kind::Polygon, None);
                for _ in 0..count(out) {
                    let n = count(out);
                    points(out, n, false);
                }
            }
        }
    }
}

fn header(out: &mut Vec<u8>, kind: Kind, srid: Option<i32>) {
    out.push(1);
    let code = kind as u32 | if srid.is_some() { 0x2000_0000 } else { 0 };
    out.extend_from_slice(&code.to_le_bytes());
    if let Some(srid) = srid {
        out.extend_from_slice(&srid.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// geozero's bytes or error for `text`: what `write` must match.
    fn reference(text: &str) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        ewkb::write_from(&mut out, &GeoJson(text), Some(4326)).map(|()| out)
    }

    fn ours(text: &str) -> Result<Vec<u8>, String> {
        let mut out = vec![0xAB];
        let r = write(&mut out, text, 4326);
        assert_eq!(out[0], 0xAB, "what was in the buffer stays");
        r.map(|()| out.split_off(1))
    }

    fn fast_path_takes(text: &str) -> bool {
        parse(text, &mut Scratch::default()).is_some()
    }

    use crate::test_rng::Rng;

    /// A number as a JSON writer might spell it: shortest round trip, fixed
    /// digits, an integer, an exponent, more digits than an f64 holds.
    fn number(rng: &mut Rng, max: f64) -> String {
        let v = (rng.unit() * 2.0 - 1.0) * max;
        match rng.below(7) {
            0..=2 => format!("{v}"),
            3 => format!("{v:.6}"),
            4 => format!("{}", v.trunc() as i64),
            5 => format!("{v:e}"),
            _ => format!("{v:.20}"),
        }
    }

    fn position(rng: &mut Rng) -> String {
        format!("[{},{}]", number(rng, 180.0), number(rng, 90.0))
    }

    fn list(rng: &mut Rng, min: u64, max: u64, item: impl Fn(&mut Rng) -> String) -> String {
        let n = min + rng.below(max - min + 1);
        let items: Vec<String> = (0..n).map(|_| item(rng)).collect();
        format!("[{}]", items.join(","))
    }

    fn geometry(rng: &mut Rng) -> String {
        let line = |r: &mut Rng| list(r, 2, 12, position);
        let polygon = |r: &mut Rng| list(r, 1, 3, |r| list(r, 4, 30, position));
        let (kind, coords) = match rng.below(6) {
            0 => ("Point", position(rng)),
            1 => ("LineString", line(rng)),
            2 => ("Polygon", polygon(rng)),
            3 => ("MultiPoint", list(rng, 1, 6, position)),
            4 => ("MultiLineString", list(rng, 1, 4, line)),
            _ => ("MultiPolygon", list(rng, 1, 3, polygon)),
        };
        match rng.below(3) {
            0 => format!(r#"{{"type":"{kind}","coordinates":{coords}}}"#),
            1 => format!(r#"{{"coordinates":{coords},"type":"{kind}"}}"#),
            _ => format!("{{ \"type\" : \"{kind}\",\n  \"coordinates\" : {coords} }} "),
        }
    }

    #[test]
    fn twenty_thousand_random_geometries_are_written_byte_for_byte_as_geozero_writes_them() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..20_000 {
            let text = geometry(&mut rng);
            assert!(fast_path_takes(&text), "declined: {text}");
            assert_eq!(ours(&text), reference(&text), "{text}");
        }
    }

    #[test]
    fn what_the_one_pass_path_declines_gets_geozero_s_result_and_message() {
        let cases = [
            // geozero's own: collections, features, a z, a bbox, empty parts.
            r#"{"type":"GeometryCollection","geometries":[{"type":"Point","coordinates":[1,2]}]}"#,
            r#"{"type":"Feature","geometry":{"type":"Point","coordinates":[1,2]},"properties":{}}"#,
            r#"{"type":"Point","coordinates":[1,2,3]}"#,
            r#"{"type":"Point","coordinates":[1,2],"bbox":[1,2,1,2]}"#,
            r#"{"type":"LineString","coordinates":[]}"#,
            r#"{"type":"Polygon","coordinates":[[]]}"#,
            r#"{"type":"MultiPolygon","coordinates":[[[[0,0],[1,0],[1,1],[0,0]]],[]]}"#,
            // Errors, whose messages must not change.
            r#"{"type":"Point","coordinates":[1]}"#,
            r#"{"type":"Point","coordinates":[1,"2"]}"#,
            r#"{"type":"Point","coordinates":[[1,2]]}"#,
            r#"{"type":"LineString","coordinates":[1,2]}"#,
            r#"{"type":"Polygon","coordinates":[[0,0],[1,1]]}"#,
            r#"{"type":"Pointy","coordinates":[1,2]}"#,
            r#"{"type":"Point","type":"Point","coordinates":[1,2]}"#,
            r#"{"coordinates":[1,2]}"#,
            r#"{"type":"Point"}"#,
            r#"{"type":"Point","coordinates":[1,2]} trailing"#,
            r#"{"type":"Point","coordinates":[1,2]"#,
            r#"[1,2]"#,
            "not json",
            "",
        ];
        for text in cases {
            assert!(!fast_path_takes(text), "took: {text}");
            assert_eq!(ours(text), reference(text), "{text}");
        }
        assert!(ours("not json").unwrap_err().contains("expected"));
    }

    #[test]
    fn numbers_are_read_as_serde_json_reads_them() {
        for n in [
            "-0",
            "0.1",
            "1e400",
            "-1e-400",
            "123456789012345678901234567890",
            "-95.366123456789012345",
            "29.749999999999998",
            "4.9406564584124654e-324",
        ] {
            let text = format!(r#"{{"type":"Point","coordinates":[{n},{n}]}}"#);
            assert_eq!(ours(&text), reference(&text), "{text}");
        }
    }
}
