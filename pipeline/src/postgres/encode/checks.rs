//! What PostgreSQL would refuse in a value, found before the value is sent,
//! so the error names the row and the value (the COPY's own error names the
//! line and the column, not the value).

use arrow::array::Array;
use schemas::geometry::GeometryKind;

use super::RowError;

/// Why a primary-key column's NULL is refused.
pub(super) const NULL_KEY: &str = "a primary-key column cannot be NULL";
/// Why a NULL in another column the table written declares `NOT NULL` is.
pub(super) const NULL_IN_NOT_NULL: &str = "the target table declares this column NOT NULL";

/// A column's values: none NULL, as the table written declares (see
/// `TablePlan::create_sql`), refused for `reason`. A null count per column
/// and batch: no cost when there is none.
pub(super) fn check_not_null(array: &dyn Array, reason: &str) -> Result<(), RowError> {
    let first_null = array
        .logical_nulls()
        .filter(|nulls| nulls.null_count() > 0)
        .and_then(|nulls| nulls.iter().position(|valid| !valid));
    match first_null {
        None => Ok(()),
        Some(row) => Err(RowError::new(row, "NULL", reason)),
    }
}

pub(super) fn check_text(i: usize, v: &[u8]) -> Result<(), RowError> {
    match memchr::memchr(0, v) {
        None => Ok(()),
        Some(at) => Err(RowError::new(
            i,
            show_text(v),
            format!("text contains a NUL byte at offset {at}, which Postgres does not allow"),
        )),
    }
}

pub(super) fn check_json(i: usize, v: &[u8]) -> Result<(), RowError> {
    check_text(i, v)?;
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(v) {
        return Err(RowError::new(
            i,
            show_text(v),
            format!("not valid JSON for jsonb: {e}"),
        ));
    }
    if let Some(reason) = bad_escape(v) {
        return Err(RowError::new(i, show_text(v), reason));
    }
    Ok(())
}

/// Why jsonb would refuse valid JSON text `v` for one of its `\u` escapes,
/// as PostgreSQL does: an escaped NUL, or half of a UTF-16 surrogate pair
/// without the other half. (`\\u0000` is an escaped backslash and the text
/// `u0000`, which jsonb holds.)
fn bad_escape(v: &[u8]) -> Option<String> {
    // Valid JSON: every `\u` has four hex digits.
    let unit = |at: usize| {
        v.get(at..at + 4)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u16::from_str_radix(h, 16).ok())
    };
    let half = |unit: u16| {
        format!("\\u{unit:04X} is half of a UTF-16 surrogate pair without the other half, which jsonb refuses")
    };
    let mut at = 0;
    while let Some(k) = v.get(at..).and_then(|rest| memchr::memchr(b'\\', rest)) {
        let escape = at + k;
        if v.get(escape + 1) != Some(&b'u') {
            at = escape + 2;
            continue;
        }
        let code = unit(escape + 2)?;
        at = escape + 6;
        match code {
            0 => return Some("jsonb cannot hold \\u0000".to_string()),
            0xD800..=0xDBFF => match v.get(at..at + 2) == Some(b"\\u") {
                true if matches!(unit(at + 2), Some(0xDC00..=0xDFFF)) => at += 6,
                _ => return Some(half(code)),
            },
            0xDC00..=0xDFFF => return Some(half(code)),
            _ => {}
        }
    }
    None
}

pub(super) fn check_geometry(
    kind: GeometryKind,
    srid: Option<i32>,
) -> impl Fn(usize, &[u8]) -> Result<(), RowError> {
    move |i, v| {
        let h = operators::ewkb::read_header(v)
            .map_err(|r| RowError::new(i, operators::error::show_bytes(v), r))?;
        let bad = |reason: String| RowError::new(i, operators::error::show_bytes(v), reason);
        let got = h.kind().map(|k| k.name()).unwrap_or("unknown");
        if kind != GeometryKind::Geometry && h.code != kind.wkb_code() {
            return Err(bad(format!(
                "geometry type {got} does not match column type {kind}"
            )));
        }
        if h.has_z || h.has_m {
            return Err(bad(format!(
                "{got} has Z or M coordinates; the column is 2D"
            )));
        }
        if let Some(want) = srid.filter(|s| *s != 0) {
            let have = h.srid.unwrap_or(0);
            if have != want {
                return Err(bad(format!(
                    "geometry SRID {have} does not match column SRID {want} (use st_setsrid)"
                )));
            }
        }
        Ok(())
    }
}

fn show_text(v: &[u8]) -> String {
    operators::error::show_value(&String::from_utf8_lossy(v))
}

/// Checks a decimal against `numeric(p,s)`: Postgres rounds extra fraction
/// digits but rejects a value whose integer part has more than p-s digits.
pub(super) fn check_numeric_fits(
    i: usize,
    value: i128,
    scale: u32,
    typmod: Option<(u8, i8)>,
    show: impl Fn() -> String,
) -> Result<(), RowError> {
    let Some((p, s)) = typmod else { return Ok(()) };
    let int_part = value.unsigned_abs() / 10u128.pow(scale);
    let int_digits = if int_part == 0 {
        0
    } else {
        int_part.ilog10() + 1
    };
    let allowed = (p as i32 - s as i32).max(0) as u32;
    // Rounding to s digits can carry into a new integer digit (9.995 → 10.00).
    let carries = scale > s as u32 && {
        let pow = 10u128.pow(scale - s as u32);
        let rounded = (value.unsigned_abs() + pow / 2) / pow / 10u128.pow(s as u32);
        rounded != int_part
    };
    if int_digits > allowed || (carries && int_digits + 1 > allowed) {
        return Err(RowError::new(
            i,
            show(),
            format!(
                "does not fit numeric({p},{s}): at most {allowed} digits before the decimal point"
            ),
        ));
    }
    Ok(())
}
