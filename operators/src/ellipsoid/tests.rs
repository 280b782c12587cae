//! The series against geographiclib, a closed-form reference and its own
//! bound, and the EWKB walk.

use geographiclib_rs::DirectGeodesic;

use super::*;

use crate::test_rng::Rng;

type Ring = Vec<(f64, f64)>;

/// A closed star-shaped ring of `n` vertices around (lat, lon), `radius`
/// metres across at most, counter-clockwise unless `clockwise`.
fn star(rng: &mut Rng, lat: f64, lon: f64, radius: f64, n: usize, clockwise: bool) -> Ring {
    let mut azimuths: Vec<f64> = (0..n).map(|_| rng.range(0.0, 360.0)).collect();
    azimuths.sort_by(f64::total_cmp);
    if !clockwise {
        // Azimuths turn clockwise (north, then east): reverse for CCW.
        azimuths.reverse();
    }
    let mut ring: Ring = azimuths
        .iter()
        .map(|&az| {
            let (la, lo): (f64, f64) = WGS84.direct(lat, lon, az, radius * rng.range(0.4, 1.0));
            (lo, la)
        })
        .collect();
    ring.push(ring[0]);
    ring
}

fn header(out: &mut Vec<u8>, code: u32, srid: bool) {
    out.push(1);
    out.extend_from_slice(&(code | if srid { 0x2000_0000 } else { 0 }).to_le_bytes());
    if srid {
        out.extend_from_slice(&4326i32.to_le_bytes());
    }
}

fn points(out: &mut Vec<u8>, ring: &[(f64, f64)]) {
    out.extend_from_slice(&(ring.len() as u32).to_le_bytes());
    for (x, y) in ring {
        out.extend_from_slice(&x.to_le_bytes());
        out.extend_from_slice(&y.to_le_bytes());
    }
}

fn polygon_body(out: &mut Vec<u8>, rings: &[Ring]) {
    out.extend_from_slice(&(rings.len() as u32).to_le_bytes());
    for r in rings {
        points(out, r);
    }
}

/// EWKB of a polygon (one part) or multipolygon.
fn ewkb(parts: &[Vec<Ring>]) -> Vec<u8> {
    let mut out = Vec::new();
    if let [only] = parts {
        header(&mut out, 3, true);
        polygon_body(&mut out, only);
    } else {
        header(&mut out, 6, true);
        out.extend_from_slice(&(parts.len() as u32).to_le_bytes());
        for p in parts {
            header(&mut out, 3, false);
            polygon_body(&mut out, p);
        }
    }
    out
}

/// GeographicLib's signed ring area, the reference.
fn karney(ring: &[(f64, f64)]) -> f64 {
    let mut pa = PolygonArea::new(&WGS84, Winding::CounterClockwise);
    for &(lon, lat) in ring {
        pa.add_point(lat, lon);
    }
    pa.compute(true).1
}

fn reference(parts: &[Vec<Ring>]) -> f64 {
    parts
        .iter()
        .map(|rings| {
            rings
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    if i == 0 {
                        karney(r).abs()
                    } else {
                        -karney(r).abs()
                    }
                })
                .sum::<f64>()
        })
        .sum()
}

fn as_points(ring: &Ring) -> (Vec<u8>, usize) {
    let mut b = Vec::new();
    for (x, y) in ring {
        b.extend_from_slice(&x.to_le_bytes());
        b.extend_from_slice(&y.to_le_bytes());
    }
    (b, ring.len())
}

/// GeographicLib's own rounding in a ring's area ([`KARNEY_ROUNDING`]
/// per edge). Below about a kilometre it is more than 1e-9 of the area,
/// so there the comparison is this loose and `small_polygons_agree_…`
/// holds the series to a closed-form reference instead.
fn geographiclib_rounding(edges: usize) -> f64 {
    edges as f64 * KARNEY_ROUNDING
}

/// A random polygon or multipolygon the issue asks for: 1 m to 1,000 km
/// across, latitudes −89.9..89.9, one in ten on the antimeridian, holes,
/// either orientation.
fn random_polygon(rng: &mut Rng, case: usize) -> (f64, f64, Vec<Vec<Ring>>) {
    let across = rng.scale(1.0, 1_000_000.0);
    let lat = rng.range(-89.9, 89.9);
    let lon = if case.is_multiple_of(10) {
        rng.range(179.9, 180.0) * if rng.unit() < 0.5 { 1.0 } else { -1.0 }
    } else {
        rng.range(-180.0, 180.0)
    };
    let n = 3 + (rng.unit() * 30.0) as usize;
    let mut parts = Vec::new();
    for part in 0..if rng.unit() < 0.2 { 2 } else { 1 } {
        let (plat, plon) = if part == 0 {
            (lat, lon)
        } else {
            WGS84.direct(lat, lon, rng.range(0.0, 360.0), 3.0 * across)
        };
        let clockwise = rng.unit() < 0.3;
        let mut rings = vec![star(rng, plat, plon, across / 2.0, n, clockwise)];
        if rng.unit() < 0.3 {
            let clockwise = rng.unit() < 0.7;
            rings.push(star(rng, plat, plon, across / 10.0, n, clockwise));
        }
        parts.push(rings);
    }
    (across, lat, parts)
}

fn by_series(ring: &Ring) -> Option<(f64, f64)> {
    let (bytes, len) = as_points(ring);
    ring_area_series(&Points {
        bytes: &bytes,
        little_endian: true,
        stride: 16,
        len,
    })
}

#[test]
fn areas_agree_with_geographiclib_on_a_hundred_thousand_random_polygons() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut small, mut small_by_series, mut strict) = (0, 0, 0);
    for case in 0..100_000 {
        let (across, lat, parts) = random_polygon(&mut rng, case);
        for r in parts.iter().flatten() {
            if across <= 1_000.0 && lat.abs() <= 80.0 {
                small += 1;
                small_by_series +=
                    usize::from(matches!(by_series(r), Some((a, b)) if b <= TOLERANCE * a.abs()));
            }
        }
        let ours = area(&ewkb(&parts)).expect("a polygon");
        let theirs = reference(&parts);
        let edges = parts.iter().flatten().map(|r| r.len()).sum();
        let floor = geographiclib_rounding(edges);
        strict += usize::from(floor <= 1e-10 * theirs.abs());
        assert!(
            (ours - theirs).abs() <= 1e-9 * theirs.abs() + floor,
            "case {case}: {across:.1} m across at ({lat:.4}°), {edges} edges: ours {ours} m², geographiclib {theirs} m²"
        );
    }
    // The series carries the small polygons (all but slivers, whose
    // area is too small beside the bound), and a third of the cases are
    // held to 1e-9 with geographiclib's rounding below a tenth of that.
    assert!(
        small > 20_000 && small_by_series * 100 >= small * 98,
        "{small_by_series} of {small} small rings by the series"
    );
    assert!(
        strict > 30_000,
        "only {strict} cases large enough to hold to 1e-9"
    );
}

#[test]
fn the_error_bound_covers_the_series_error_wherever_it_is_computed() {
    let mut rng = Rng(12_345);
    let mut checked = 0;
    for _ in 0..20_000 {
        let across = rng.scale(1_000.0, 60_000.0);
        let lat = rng.range(-MAX_LATITUDE, MAX_LATITUDE);
        let lon = rng.range(-180.0, 180.0);
        let n = 3 + (rng.unit() * 30.0) as usize;
        let r = star(&mut rng, lat, lon, across / 2.0, n, false);
        let Some((ours, bound)) = by_series(&r) else {
            continue;
        };
        checked += 1;
        let theirs = karney(&r);
        assert!(
            (ours - theirs).abs() <= bound + geographiclib_rounding(r.len()),
            "{across:.0} m across at {lat:.3}°: series {ours} (bound {bound:e}), geographiclib {theirs}"
        );
    }
    assert!(checked > 10_000, "{checked}");
}

/// The area of the region between latitude 0 and φ per radian of
/// longitude, in closed form (through the authalic latitude's q).
fn area_to(phi: f64) -> f64 {
    let e = E2.sqrt();
    let s = phi.sin();
    A * A * (1.0 - E2) / 2.0 * (s / (1.0 - E2 * s * s) + (e * s).atanh() / e)
}

/// A reference for small rings built without the series: the edges
/// straight in (λ, φ) integrated with the closed form by Gauss–Legendre,
/// and each geodesic's lens from its midpoint as geographiclib places
/// it (Simpson's rule on the bulge).
fn closed_form(ring: &Ring) -> f64 {
    const GAUSS: [(f64, f64); 5] = [
        (-0.906_179_845_938_664, 0.236_926_885_056_189),
        (-0.538_469_310_105_683, 0.478_628_670_499_366),
        (0.0, 0.568_888_888_888_889),
        (0.538_469_310_105_683, 0.478_628_670_499_366),
        (0.906_179_845_938_664, 0.236_926_885_056_189),
    ];
    // Exact for the short differences a small ring has.
    let wrap = |d: f64| match d {
        d if d > 180.0 => d - 360.0,
        d if d < -180.0 => d + 360.0,
        d => d,
    };
    let at0 = area_to(ring[0].1.to_radians());
    let mut total = 0.0;
    for w in ring.windows(2) {
        let ((lon1, lat1), (lon2, lat2)) = (w[0], w[1]);
        let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
        let du = wrap(lon2 - lon1).to_radians();
        let mean: f64 = GAUSS
            .iter()
            .map(|(x, wt)| wt / 2.0 * (area_to(p1 + (p2 - p1) * (x + 1.0) / 2.0) - at0))
            .sum();
        total -= du * mean;
        let (s12, azi1, _, _): (f64, f64, f64, f64) = WGS84.inverse(lat1, lon1, lat2, lon2);
        let (mlat, mlon): (f64, f64) = WGS84.direct(lat1, lon1, azi1, s12 / 2.0);
        let mid = (0.5 * (p1 + p2)).sin_cos();
        let (m, p) = radii(mid.0, mid.1);
        let (cx, cy) = (p * du, m * (p2 - p1));
        let dx = p * wrap(mlon - lon1).to_radians() - cx / 2.0;
        let dy = m * (mlat - lat1).to_radians() - cy / 2.0;
        total -= 2.0 / 3.0 * (cx * dy - cy * dx);
    }
    total
}

#[test]
fn small_polygons_agree_with_a_closed_form_reference_to_1e9() {
    let mut rng = Rng(777);
    for case in 0..20_000 {
        let across = rng.scale(1.0, 2_000.0);
        let lat = rng.range(-80.0, 80.0);
        let lon = rng.range(-180.0, 180.0);
        let n = 3 + (rng.unit() * 30.0) as usize;
        let clockwise = rng.unit() < 0.5;
        let r = star(&mut rng, lat, lon, across / 2.0, n, clockwise);
        let ours = area(&ewkb(&[vec![r.clone()]])).expect("a polygon");
        let reference = closed_form(&r).abs();
        // The reference's own uncertainty: geographiclib places a
        // midpoint to a few nanometres.
        let perimeter: f64 = r
            .windows(2)
            .map(|w| InverseGeodesic::<f64>::inverse(&*WGS84, w[0].1, w[0].0, w[1].1, w[1].0))
            .sum::<f64>();
        let slack = 4e-9 * perimeter;
        assert!(
            (ours - reference).abs() <= 1e-9 * reference + slack,
            "case {case}: {across:.1} m across at {lat:.3}°: ours {ours}, reference {reference}"
        );
    }
}

#[test]
fn lengths_agree_with_geographiclib_on_random_lines() {
    let mut rng = Rng(4242);
    for case in 0..20_000 {
        let step = rng.scale(1.0, 1_000_000.0);
        let (mut lat, mut lon) = (rng.range(-89.9, 89.9), rng.range(-180.0, 180.0));
        let mut line = vec![(lon, lat)];
        for _ in 0..1 + (rng.unit() * 20.0) as usize {
            (lat, lon) = WGS84.direct(lat, lon, rng.range(0.0, 360.0), step * rng.range(0.2, 1.0));
            line.push((lon, lat));
        }
        let mut b = Vec::new();
        header(&mut b, 2, true);
        points(&mut b, &line);
        let ours = length(&b).expect("a line");
        let theirs: f64 = line
            .windows(2)
            .map(|w| InverseGeodesic::<f64>::inverse(&*WGS84, w[0].1, w[0].0, w[1].1, w[1].0))
            .sum();
        // GeographicLib places points to about ε·a (1.4 nm) whatever the
        // distance, which is more than 1e-9 of an edge under a metre.
        let floor = 4.0 * f64::EPSILON * A * (line.len() - 1) as f64;
        assert!(
            (ours - theirs).abs() <= 1e-9 * theirs + floor,
            "case {case}: steps of {step:.1} m: ours {ours}, geographiclib {theirs}"
        );
    }
}

/// The same polygon in big-endian XYZM bytes.
fn big_endian_zm(rings: &[Ring]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&(3u32 | 0xc000_0000).to_be_bytes());
    out.extend_from_slice(&(rings.len() as u32).to_be_bytes());
    for r in rings {
        out.extend_from_slice(&(r.len() as u32).to_be_bytes());
        for (x, y) in r {
            for v in [*x, *y, 123.0, -4.5] {
                out.extend_from_slice(&v.to_be_bytes());
            }
        }
    }
    out
}

#[test]
fn any_byte_order_dimensions_and_orientation_measure_the_same() {
    let mut rng = Rng(99);
    let outer = star(&mut rng, 29.7, -95.3, 40.0, 12, false);
    let hole = star(&mut rng, 29.7, -95.3, 6.0, 5, true);
    let polygon = vec![outer.clone(), hole.clone()];
    let expected = area(&ewkb(std::slice::from_ref(&polygon))).expect("a polygon");
    assert!(expected > 0.0);
    assert_eq!(area(&big_endian_zm(&polygon)), Some(expected));
    // Orientation does not matter, as in PostGIS.
    let mut reversed = outer.clone();
    reversed.reverse();
    let mut hole_reversed = hole.clone();
    hole_reversed.reverse();
    let flipped = area(&ewkb(&[vec![reversed, hole_reversed]])).expect("a polygon");
    assert!(
        (flipped - expected).abs() <= 1e-12 * expected,
        "{flipped} {expected}"
    );
    // A multipolygon is the sum of its parts.
    let other = vec![star(&mut rng, 29.8, -95.2, 25.0, 7, false)];
    let single = area(&ewkb(std::slice::from_ref(&other))).expect("a polygon");
    let both = area(&ewkb(&[polygon, other])).expect("a multipolygon");
    assert!((both - (expected + single)).abs() <= 1e-12 * both);
    // Empty parts measure 0.
    assert_eq!(area(&ewkb(&[vec![]])), Some(0.0));
}

#[test]
fn what_the_reader_cannot_walk_is_left_to_the_full_parser() {
    let mut rng = Rng(5);
    let bytes = ewkb(&[vec![star(&mut rng, 10.0, 10.0, 100.0, 6, false)]]);
    for cut in [3, 9, 13, 20, bytes.len() - 1] {
        assert_eq!(area(&bytes[..cut]), None, "cut at {cut}");
    }
    // A ring count far beyond the bytes.
    let mut lying = bytes.clone();
    lying[9..13].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(area(&lying), None);
    // Lines are not areas, and polygons are not lines.
    let mut line = Vec::new();
    header(&mut line, 2, true);
    points(&mut line, &[(0.0, 0.0), (0.001, 0.0)]);
    assert_eq!(area(&line), None);
    assert_eq!(length(&bytes), None);
    let metres = length(&line).expect("a line");
    assert!((metres - 111.319_490_793).abs() < 1e-6, "{metres}");
    // A multilinestring is the sum of its lines.
    let mut multi = Vec::new();
    header(&mut multi, 5, true);
    multi.extend_from_slice(&2u32.to_le_bytes());
    for part in [[(0.0, 0.0), (0.001, 0.0)], [(0.0, 0.0), (0.0, 0.002)]] {
        header(&mut multi, 2, false);
        points(&mut multi, &part);
    }
    let mut second = Vec::new();
    header(&mut second, 2, true);
    points(&mut second, &[(0.0, 0.0), (0.0, 0.002)]);
    let both = length(&multi).expect("a multilinestring");
    assert_eq!(both, metres + length(&second).expect("a line"));
}
