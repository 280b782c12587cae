//! The planar centroid of polygons, read straight from EWKB.
//!
//! `st_centroid` answered by parsing each value into a `geo::Geometry` and
//! asking `geo` for its centroid; for building footprints that allocation
//! per polygon and ring cost more than the arithmetic. This walks the bytes
//! and repeats `geo`'s arithmetic operation for operation (the same shift to
//! the ring's first vertex, the same order of sums and divisions), so the
//! result is bit-identical to what `geo` returned. Cases where `geo` changes
//! course (a ring of no area, holes that cover the polygon, nothing at all)
//! are left to `geo`: the function returns `None` and the caller parses.

use crate::ewkb::{Points, Reader};

/// A centroid in the making: Σ centroid·weight and Σ weight, as `geo` keeps them.
#[derive(Clone, Copy)]
struct Weighted {
    x: f64,
    y: f64,
    weight: f64,
}

impl Weighted {
    fn add(&mut self, other: Weighted) {
        self.x += other.x;
        self.y += other.y;
        self.weight += other.weight;
    }
}

/// The centroid (x, y) of a Polygon or MultiPolygon, or `None` when the
/// bytes are anything else or a case `geo` treats specially.
pub fn polygon_centroid(geom: &[u8]) -> Option<(f64, f64)> {
    let mut r = Reader::new(geom)?;
    let total = match r.header.code {
        3 => polygon(&mut r)?,
        6 => {
            let parts = r.u32()?;
            let mut total: Option<Weighted> = None;
            for _ in 0..parts {
                let mut part = r.part()?;
                if part.header.code != 3 {
                    return None;
                }
                let p = polygon(&mut part)?;
                r.pos += part.pos;
                match total.as_mut() {
                    Some(t) => t.add(p),
                    None => total = Some(p),
                }
            }
            total?
        }
        _ => return None,
    };
    Some((total.x / total.weight, total.y / total.weight))
}

fn polygon(r: &mut Reader) -> Option<Weighted> {
    let rings = r.u32()?;
    if rings == 0 {
        return None;
    }
    let mut exterior = ring(&r.points()?)?;
    let mut holes: Option<Weighted> = None;
    for _ in 1..rings {
        let h = ring(&r.points()?)?;
        match holes.as_mut() {
            Some(all) => all.add(h),
            None => holes = Some(h),
        }
    }
    if let Some(h) = holes {
        exterior.x -= h.x;
        exterior.y -= h.y;
        exterior.weight -= h.weight;
        if exterior.weight == 0.0 {
            return None;
        }
    }
    Some(exterior)
}

/// A ring's weighted centroid, closed as `geo` closes it (its first point
/// repeated at the end when the bytes do not repeat it); `None` for a ring
/// of no area, which `geo` measures as a line.
fn ring(points: &Points) -> Option<Weighted> {
    if points.len == 0 {
        return None;
    }
    let first = points.get(0);
    let closed = points.get(points.len - 1) == first;
    let len = if closed { points.len } else { points.len + 1 };
    if len < 3 {
        return None;
    }
    let at = |i: usize| if i < points.len { points.get(i) } else { first };
    // Twice the signed area, each edge shifted to the first point.
    let (sx, sy) = first;
    let mut twice = 0.0;
    let (mut ax, mut ay) = (0.0, 0.0);
    let mut start = (first.0 - sx, first.1 - sy);
    for i in 1..len {
        let p = at(i);
        let end = (p.0 - sx, p.1 - sy);
        let det = start.0 * end.1 - start.1 * end.0;
        twice += det;
        ax += (end.0 + start.0) * det;
        ay += (end.1 + start.1) * det;
        start = end;
    }
    let area = twice / 2.0;
    if area == 0.0 {
        return None;
    }
    let six_area = 6.0 * area;
    let (cx, cy) = (ax / six_area + sx, ay / six_area + sy);
    let weight = area.abs();
    Some(Weighted {
        x: cx * weight,
        y: cy * weight,
        weight,
    })
}

#[cfg(test)]
mod tests {
    use geo::Centroid;

    use super::*;

    use crate::test_rng::Rng;

    fn ring(rng: &mut Rng, cx: f64, cy: f64, r: f64, close: bool) -> Vec<(f64, f64)> {
        let n = 3 + (rng.unit() * 30.0) as usize;
        let mut angles: Vec<f64> = (0..n).map(|_| rng.unit() * std::f64::consts::TAU).collect();
        angles.sort_by(f64::total_cmp);
        if rng.unit() < 0.3 {
            angles.reverse();
        }
        let mut pts: Vec<(f64, f64)> = angles
            .iter()
            .map(|a| {
                let d = r * (0.4 + 0.6 * rng.unit());
                (cx + d * a.cos(), cy + d * a.sin())
            })
            .collect();
        if close {
            pts.push(pts[0]);
        }
        pts
    }

    fn ewkb(parts: &[Vec<Vec<(f64, f64)>>]) -> Vec<u8> {
        let body = |out: &mut Vec<u8>, rings: &[Vec<(f64, f64)>]| {
            out.extend_from_slice(&(rings.len() as u32).to_le_bytes());
            for r in rings {
                out.extend_from_slice(&(r.len() as u32).to_le_bytes());
                for (x, y) in r {
                    out.extend_from_slice(&x.to_le_bytes());
                    out.extend_from_slice(&y.to_le_bytes());
                }
            }
        };
        let mut out = vec![1];
        if let [only] = parts {
            out.extend_from_slice(&(3u32 | 0x2000_0000).to_le_bytes());
            out.extend_from_slice(&4326i32.to_le_bytes());
            body(&mut out, only);
        } else {
            out.extend_from_slice(&(6u32 | 0x2000_0000).to_le_bytes());
            out.extend_from_slice(&4326i32.to_le_bytes());
            out.extend_from_slice(&(parts.len() as u32).to_le_bytes());
            for p in parts {
                out.push(1);
                out.extend_from_slice(&3u32.to_le_bytes());
                body(&mut out, p);
            }
        }
        out
    }

    #[test]
    fn centroids_are_bit_identical_to_geo_s_on_random_polygons() {
        let mut rng = Rng(31);
        let mut answered = 0;
        for case in 0..50_000 {
            let (cx, cy) = (-96.0 + 2.0 * rng.unit(), 29.0 + 2.0 * rng.unit());
            let r = 10f64.powf(-6.0 + 5.0 * rng.unit());
            let mut parts = Vec::new();
            for k in 0..1 + (rng.unit() * 2.5) as usize {
                let close = rng.unit() < 0.9;
                let x = cx + 3.0 * r * k as f64;
                let mut rings = vec![ring(&mut rng, x, cy, r, close)];
                for _ in 0..(rng.unit() * 2.5) as usize {
                    rings.push(ring(&mut rng, x, cy, r / 5.0, close));
                }
                parts.push(rings);
            }
            let bytes = ewkb(&parts);
            let theirs = crate::ewkb::to_geo(&bytes)
                .expect("geo parses it")
                .centroid()
                .map(|p| p.x_y());
            match polygon_centroid(&bytes) {
                Some(ours) => {
                    answered += 1;
                    let theirs = theirs.expect("geo has a centroid");
                    assert_eq!(
                        (ours.0.to_bits(), ours.1.to_bits()),
                        (theirs.0.to_bits(), theirs.1.to_bits()),
                        "case {case}: ours {ours:?}, geo {theirs:?}"
                    );
                }
                None => panic!("case {case}: a plain polygon was left to geo"),
            }
        }
        assert_eq!(answered, 50_000);
    }

    #[test]
    fn the_cases_geo_treats_specially_are_left_to_it() {
        // A ring of no area (a line), and a hole covering the whole polygon.
        let line = vec![(0.0, 0.0), (1.0, 1.0), (2.0, 2.0), (0.0, 0.0)];
        assert_eq!(polygon_centroid(&ewkb(&[vec![line]])), None);
        let square = vec![(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0), (0.0, 0.0)];
        assert_eq!(
            polygon_centroid(&ewkb(&[vec![square.clone(), square.clone()]])),
            None
        );
        assert_eq!(polygon_centroid(&ewkb(&[vec![]])), None);
        // Truncated bytes.
        let bytes = ewkb(&[vec![square]]);
        assert_eq!(polygon_centroid(&bytes[..bytes.len() - 3]), None);
        assert_eq!(polygon_centroid(&bytes), Some((0.5, 0.5)));
    }
}
