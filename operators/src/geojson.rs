//! GeoJSON geometry → EWKB in one pass over the text.
//!
//! Why: geozero reads GeoJSON through a `serde_json::Value` tree and the
//! `geojson` crate's nested `Vec`s (a `Vec<f64>` per position), which cost
//! building footprints ~15% of floe's CPU; serde_json's tokenizer driving a
//! visitor still spent most of its time in its generic number and
//! punctuation handling. Here a scanner made for the one shape reads the
//! bytes, keeps the coordinates flat and the array lengths in order, and the
//! EWKB is written from those.
//!
//! The contract: the bytes are exactly what geozero writes for the same
//! text. Only the shapes Snowflake writes take this path: one geometry
//! object with the keys `type` and `coordinates` (either order, no escapes
//! in them), a non-collection type, 2D positions, no empty array. Anything
//! else, malformed input included, goes through geozero, so results and
//! error messages stay what they were. Numbers are read as serde_json (which
//! geozero uses) reads them: see [`Scan::number`].

use std::cell::RefCell;

use geozero::geojson::GeoJson;

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

/// A geometry's coordinates, flat (x, y, x, y, …) and already as WKB lays
/// them out (little-endian doubles), so a ring's points are one copy; and
/// the length of each array of arrays in pre-order (positions have none:
/// they are always 2).
#[derive(Default)]
struct Scratch {
    coords: Vec<u8>,
    counts: Vec<u32>,
}

/// The bytes one 2D position takes in [`Scratch::coords`] and in WKB.
const POSITION: usize = 16;

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
    fn named(name: &[u8]) -> Option<Kind> {
        Some(match name {
            b"Point" => Kind::Point,
            b"LineString" => Kind::LineString,
            b"Polygon" => Kind::Polygon,
            b"MultiPoint" => Kind::MultiPoint,
            b"MultiLineString" => Kind::MultiLineString,
            b"MultiPolygon" => Kind::MultiPolygon,
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

/// The deepest `coordinates` any kind has (a multipolygon's).
const MAX_DEPTH: u8 = 4;

/// The geometry's type, its coordinates in `scratch`; `None`: not a shape
/// this path takes (geozero decides what it is).
fn parse(text: &str, scratch: &mut Scratch) -> Option<Kind> {
    let mut s = Scan { text, at: 0 };
    s.expect(b'{')?;
    let (mut kind, mut depth) = (None, None);
    loop {
        let key = s.string()?;
        s.expect(b':')?;
        match key {
            b"type" if kind.is_none() => kind = Some(Kind::named(s.string()?)?),
            b"coordinates" if depth.is_none() => depth = Some(s.array(scratch, 1)?),
            // A repeated key, `bbox`, a foreign member: geozero's call.
            _ => return None,
        }
        match s.next()? {
            b',' => continue,
            b'}' => break,
            _ => return None,
        }
    }
    s.skip_whitespace();
    let kind = kind?;
    (s.at == text.len() && kind.depth() == depth?).then_some(kind)
}

/// A cursor over the text; every method returns `None` where the text is
/// not what this path takes.
struct Scan<'t> {
    text: &'t str,
    at: usize,
}

impl<'t> Scan<'t> {
    fn skip_whitespace(&mut self) {
        let bytes = self.text.as_bytes();
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = bytes.get(self.at) {
            self.at += 1;
        }
    }

    /// The next byte that is not whitespace, consumed.
    fn next(&mut self) -> Option<u8> {
        self.skip_whitespace();
        let b = *self.text.as_bytes().get(self.at)?;
        self.at += 1;
        Some(b)
    }

    fn expect(&mut self, b: u8) -> Option<()> {
        (self.next()? == b).then_some(())
    }

    /// A string without escapes (JSON's meaning of its bytes is then the
    /// bytes themselves).
    fn string(&mut self) -> Option<&'t [u8]> {
        self.expect(b'"')?;
        let rest = &self.text.as_bytes()[self.at..];
        let len = rest
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        if rest[len] != b'"' {
            return None;
        }
        self.at += len + 1;
        Some(&rest[..len])
    }

    /// One value of `coordinates`, an array `level` deep; returns how deeply
    /// it nests (a position is 1).
    fn array(&mut self, scratch: &mut Scratch, level: u8) -> Option<u8> {
        if level > MAX_DEPTH {
            return None;
        }
        self.expect(b'[')?;
        if !self.peek_array() {
            self.position_rest(scratch)?;
            return Some(1);
        }
        // This array's length goes before its children's (pre-order).
        let slot = scratch.counts.len();
        scratch.counts.push(0);
        let open = self.at;
        self.at += 1;
        if level < MAX_DEPTH && !self.peek_array() {
            // A list of positions (a ring, a line): read in this loop rather
            // than a call down per position, the bulk of every geometry. A
            // deeper child among them fails at its first number, as the
            // depth check below would fail it.
            let mut n: u32 = 0;
            loop {
                self.position_rest(scratch)?;
                n += 1;
                match self.next()? {
                    b',' => self.expect(b'[')?,
                    b']' => break,
                    _ => return None,
                }
            }
            scratch.counts[slot] = n;
            return Some(2);
        }
        self.at = open;
        let depth = self.array(scratch, level + 1)?;
        let mut n: u32 = 1;
        loop {
            match self.next()? {
                b',' if self.array(scratch, level + 1)? == depth => n += 1,
                b']' => break,
                _ => return None,
            }
        }
        scratch.counts[slot] = n;
        Some(depth + 1)
    }

    /// Whether the next byte that is not whitespace opens an array (it is
    /// left unconsumed).
    fn peek_array(&mut self) -> bool {
        self.skip_whitespace();
        self.text.as_bytes().get(self.at) == Some(&b'[')
    }

    /// A position after its `[`: exactly two numbers (a z is geozero's to
    /// drop) and the `]`, appended to the coordinates.
    #[inline(always)]
    fn position_rest(&mut self, scratch: &mut Scratch) -> Option<()> {
        let x = self.number()?;
        self.expect(b',')?;
        let y = self.number()?;
        self.expect(b']')?;
        let mut position = [0u8; POSITION];
        position[..8].copy_from_slice(&x.to_le_bytes());
        position[8..].copy_from_slice(&y.to_le_bytes());
        scratch.coords.extend_from_slice(&position);
        Some(())
    }

    /// A JSON number, as serde_json reads it.
    ///
    /// Up to 19 digits, no exponent, an integer significand `m` ≤ 2⁵³ and
    /// `k` ≤ 22 digits after the point (every coordinate Snowflake and the
    /// emulator write): `m / 10ᵏ` is one division of two exact doubles, so
    /// correctly rounded, which is what serde_json computes too (with or
    /// without its `float_roundtrip`). Any other number is handed to
    /// serde_json itself.
    fn number(&mut self) -> Option<f64> {
        self.skip_whitespace();
        let bytes = self.text.as_bytes();
        let start = self.at;
        let mut i = start;
        let negative = bytes.get(i) == Some(&b'-');
        i += usize::from(negative);
        let int_start = i;
        let mut m: u64 = 0;
        while let Some(&c @ b'0'..=b'9') = bytes.get(i) {
            m = m.wrapping_mul(10).wrapping_add(u64::from(c - b'0'));
            i += 1;
        }
        let int_digits = i - int_start;
        let mut frac_digits = 0;
        if bytes.get(i) == Some(&b'.') {
            i += 1;
            while let Some(&c @ b'0'..=b'9') = bytes.get(i) {
                m = m.wrapping_mul(10).wrapping_add(u64::from(c - b'0'));
                i += 1;
                frac_digits += 1;
            }
        }
        let simple = int_digits > 0
            // One leading zero at most, as JSON has it.
            && (bytes[int_start] != b'0' || int_digits == 1)
            && (bytes.get(int_start + int_digits) != Some(&b'.') || frac_digits > 0)
            && int_digits + frac_digits <= 19
            && m <= 1 << 53
            && frac_digits < POW10.len()
            && !matches!(bytes.get(i), Some(b'e' | b'E' | b'+' | b'-' | b'.'));
        if simple {
            self.at = i;
            let v = m as f64 / POW10[frac_digits];
            return Some(if negative { -v } else { v });
        }
        let len = bytes[start..]
            .iter()
            .position(|b| !matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
            .unwrap_or(bytes.len() - start);
        self.at = start + len;
        serde_json::from_str(&self.text[start..self.at]).ok()
    }
}

/// The powers of ten a double holds exactly.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// EWKB as geozero's writer lays it out: little-endian, the SRID in the
/// outer header only, a header per part of a multi-geometry.
fn emit(out: &mut Vec<u8>, kind: Kind, srid: i32, scratch: &Scratch) {
    // At most: the header, every count, every position, and a part header
    // per position or count (multi-geometries): one allocation.
    let positions = scratch.coords.len() / POSITION;
    out.reserve(
        9 + 4 * scratch.counts.len()
            + scratch.coords.len()
            + 5 * (positions + scratch.counts.len()),
    );
    let mut counts = scratch.counts.iter().copied();
    let mut coords = scratch.coords.as_slice();
    let mut count = |out: &mut Vec<u8>| {
        let n = counts.next().unwrap_or(0);
        out.extend_from_slice(&n.to_le_bytes());
        n
    };
    let mut points = |out: &mut Vec<u8>, n: u32, headed: bool| {
        let (run, rest) = coords.split_at((n as usize * POSITION).min(coords.len()));
        coords = rest;
        if headed {
            for p in run.chunks_exact(POSITION) {
                header(out, Kind::Point, None);
                out.extend_from_slice(p);
            }
        } else {
            out.extend_from_slice(run);
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

    /// Whitespace a writer may put between tokens: none (the emulator),
    /// newlines and indentation (Snowflake's pretty-printed GeoJSON).
    fn space(rng: &mut Rng) -> &'static str {
        ["", "", "", " ", "\n  ", "\n\t"][rng.below(6) as usize]
    }

    fn position(rng: &mut Rng) -> String {
        let (a, b, c, d) = (space(rng), space(rng), space(rng), space(rng));
        let (x, y) = (number(rng, 180.0), number(rng, 90.0));
        format!("[{a}{x}{b},{c}{y}{d}]")
    }

    fn list(rng: &mut Rng, min: u64, max: u64, item: impl Fn(&mut Rng) -> String) -> String {
        let n = min + rng.below(max - min + 1);
        let items: Vec<String> = (0..n).map(|_| item(rng)).collect();
        let (a, b, c) = (space(rng), space(rng), space(rng));
        format!("[{a}{}{c}]", items.join(&format!("{b},{a}")))
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
            r#"{"type":"Point","coordinates":[01,2]}"#,
            r#"{"type":"Point","coordinates":[1.,2]}"#,
            r#"{"type":"Point","coordinates":[.5,2]}"#,
            r#"{"type":"Point","coordinates":[1.2.3,2]}"#,
            r#"{"type":"Point","coordinates":[-,2]}"#,
            r#"{"type":"Point","coordinates":[1 2]}"#,
            r#"{"type":"Point","coordinates":[1,2],}"#,
            r#"{"type":"Polygon","coordinates":[[[[[[[[1,2]]]]]]]]}"#,
            r#"{"type":"LineString","coordinates":[[1,2],[[3,4]]]}"#,
            r#"{"type":"MultiLineString","coordinates":[[[1,2],[3,4]],[5,6]]}"#,
            r#"{"type":"MultiLineString","coordinates":[[[1,2],[3,4]],[[[5,6]]]]}"#,
            r#"{"type":"MultiPolygon","coordinates":[[[[[1,2],[3,4]]]]]}"#,
            r#"{"type":"MultiPolygon","coordinates":[[[[1,2],[3,4],[5,6],[1,2]]], [[ ]]]}"#,
            "{\"type\":\"Point\",\"coordinates\":[1,2\u{1}]}",
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

    /// Decimal text of every length the fast path takes, and just past it.
    #[test]
    fn a_hundred_thousand_decimals_are_read_bit_for_bit_as_serde_json_reads_them() {
        let mut rng = Rng(0xD1B5_4A32_D192_ED03);
        for _ in 0..100_000 {
            let digits = 1 + rng.below(21) as usize;
            let point = rng.below(digits as u64 + 1) as usize;
            let mut text = String::new();
            if rng.below(2) == 0 {
                text.push('-');
            }
            for k in 0..digits {
                if k == point && k > 0 {
                    text.push('.');
                }
                // No leading zero before more integer digits.
                let lowest = u64::from(k == 0 && point > 1);
                let d = lowest + rng.below(10 - lowest);
                text.push(char::from(b'0' + d as u8));
            }
            // What follows a number in a geometry, read eight bytes at a time with it.
            let then =
                ["", ",", "]", "]]]}", ",12.5]", "]],[[-95.1234567,29.7"][rng.below(6) as usize];
            let full = format!("{text}{then}");
            let mut scan = Scan { text: &full, at: 0 };
            let ours = scan.number().map(f64::to_bits);
            let theirs = serde_json::from_str::<f64>(&text).ok().map(f64::to_bits);
            assert_eq!(ours, theirs, "{full}");
            if ours.is_some() {
                assert_eq!(scan.at, text.len(), "{full}");
            }
        }
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
            "1.5e3",
            "1E2",
            "-1e+2",
            "-0.0",
            "9007199254740993",
            "9007199254740993.5",
            "0.1234567890123456789012",
            "1234567890123456789",
            "-95.1234567",
        ] {
            let text = format!(r#"{{"type":"Point","coordinates":[{n},{n}]}}"#);
            assert_eq!(ours(&text), reference(&text), "{text}");
        }
    }
}
