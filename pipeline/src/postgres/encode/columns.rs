//! One writer per Arrow column and Postgres type: the size pass and the
//! write pass of [`super::CopyEncoder`], each a loop specialised to its
//! type, with the casts that make an array fit one and the values
//! Postgres would refuse caught on the way.

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryViewArray, BooleanArray, Decimal128Array, GenericBinaryArray,
    GenericStringArray, OffsetSizeTrait, StringViewArray,
};
use arrow::buffer::NullBuffer;
use arrow::compute::cast;
use arrow::datatypes::{
    DataType, Date32Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, TimeUnit,
};
use schemas::pg::PgType;

use super::checks::{check_geometry, check_json, check_numeric_fits, check_text};
use super::RowError;

/// Days from 1970-01-01 (Arrow) to 2000-01-01 (Postgres).
const PG_EPOCH_DAYS: i64 = 10_957;
/// Microseconds from 1970-01-01 to 2000-01-01.
pub(super) const PG_EPOCH_MICROS: i64 = PG_EPOCH_DAYS * 86_400 * 1_000_000;
/// Postgres's valid date range in days since 2000-01-01: Julian day 0
/// (4714-11-24 BC) up to, not including, 5874898-01-01.
const PG_DATE_MIN: i64 = -2_451_545;
const PG_DATE_END: i64 = 2_147_483_494 - 2_451_545;
/// Postgres's valid timestamp range in microseconds since 2000-01-01.
const PG_TS_MIN: i64 = -211_813_488_000_000_000;
const PG_TS_END: i64 = 9_223_371_331_200_000_000;

/// Casts that make an array fit its writer; `None` when it already fits.
pub(super) fn prepare(array: &ArrayRef, ty: PgType) -> Result<Option<ArrayRef>, RowError> {
    let dt = array.data_type();
    let target = match (ty, dt) {
        (PgType::Int2, DataType::Int16)
        | (PgType::Int4, DataType::Int32)
        | (PgType::Int8, DataType::Int64) => None,
        (PgType::Int2 | PgType::Int4 | PgType::Int8, _) => Some(DataType::Int64),
        (PgType::Float4, DataType::Float32) | (PgType::Float8, DataType::Float64) => None,
        (PgType::Float4, _) => Some(DataType::Float32),
        (PgType::Float8, _) => Some(DataType::Float64),
        (PgType::Numeric(_), DataType::Decimal128(..) | DataType::Float64) => None,
        (PgType::Numeric(_), DataType::Float32) => Some(DataType::Float64),
        (PgType::Numeric(_), _) => Some(DataType::Decimal128(38, 0)),
        _ => None,
    };
    match target {
        None => Ok(None),
        Some(t) => cast(array, &t)
            .map(Some)
            .map_err(|e| RowError::new(0, dt, format!("cannot convert to {t}: {e}"))),
    }
}

/// One column's part in encoding a batch.
pub(super) trait ColumnWriter {
    /// Adds each row's encoded field size (4-byte length + payload) to `sizes`.
    fn sizes(&mut self, sizes: &mut [usize]) -> Result<(), RowError>;
    /// Writes each row's field at `cursors[row]` and advances the cursor.
    fn write(&self, out: &mut [u8], cursors: &mut [usize]) -> Result<(), RowError>;
}

const NULL_FIELD: [u8; 4] = (-1i32).to_be_bytes();

fn is_null(nulls: Option<&NullBuffer>, i: usize) -> bool {
    nulls.is_some_and(|n| n.is_null(i))
}

/// Fixed-width values: `value(i)` gives the big-endian bytes (or a reason to reject).
struct Fixed<'a, const W: usize, F> {
    nulls: Option<&'a NullBuffer>,
    value: F,
}

impl<const W: usize, F: Fn(usize) -> Result<[u8; W], RowError>> ColumnWriter for Fixed<'_, W, F> {
    fn sizes(&mut self, sizes: &mut [usize]) -> Result<(), RowError> {
        match self.nulls {
            None => sizes.iter_mut().for_each(|s| *s += 4 + W),
            Some(n) => sizes
                .iter_mut()
                .enumerate()
                .for_each(|(i, s)| *s += if n.is_null(i) { 4 } else { 4 + W }),
        }
        Ok(())
    }

    fn write(&self, out: &mut [u8], cursors: &mut [usize]) -> Result<(), RowError> {
        let len = (W as i32).to_be_bytes();
        for (i, c) in cursors.iter_mut().enumerate() {
            let at = *c;
            if is_null(self.nulls, i) {
                out[at..at + 4].copy_from_slice(&NULL_FIELD);
                *c += 4;
            } else {
                out[at..at + 4].copy_from_slice(&len);
                out[at + 4..at + 4 + W].copy_from_slice(&(self.value)(i)?);
                *c += 4 + W;
            }
        }
        Ok(())
    }
}

fn fixed<'a, const W: usize>(
    array: &'a dyn Array,
    value: impl Fn(usize) -> Result<[u8; W], RowError> + 'a,
) -> Box<dyn ColumnWriter + 'a> {
    Box::new(Fixed::<W, _> {
        nulls: array.nulls(),
        value,
    })
}

/// An Int64 column written to a narrower integer type, range-checked per value.
fn narrow<'a, const W: usize>(
    array: &'a dyn Array,
    fit: impl Fn(i64) -> Option<[u8; W]> + 'a,
    pg_name: &'static str,
) -> Box<dyn ColumnWriter + 'a> {
    let v = array.as_primitive::<Int64Type>();
    fixed::<W>(array, move |i| {
        fit(v.value(i))
            .ok_or_else(|| RowError::new(i, v.value(i), format!("out of range for {pg_name}")))
    })
}

/// Variable-width values read as bytes from any string or binary layout.
trait ByteValues {
    fn value_bytes(&self, i: usize) -> &[u8];
}

impl<O: OffsetSizeTrait> ByteValues for GenericStringArray<O> {
    fn value_bytes(&self, i: usize) -> &[u8] {
        self.value(i).as_bytes()
    }
}
impl<O: OffsetSizeTrait> ByteValues for GenericBinaryArray<O> {
    fn value_bytes(&self, i: usize) -> &[u8] {
        self.value(i)
    }
}
impl ByteValues for StringViewArray {
    fn value_bytes(&self, i: usize) -> &[u8] {
        self.value(i).as_bytes()
    }
}
impl ByteValues for BinaryViewArray {
    fn value_bytes(&self, i: usize) -> &[u8] {
        self.value(i)
    }
}

/// Variable-width values, with an optional prefix byte (jsonb's version) and
/// a per-value check run in the size pass.
struct Var<'a, A, C> {
    array: &'a A,
    nulls: Option<&'a NullBuffer>,
    prefix: &'static [u8],
    check: C,
}

impl<A: ByteValues, C: Fn(usize, &[u8]) -> Result<(), RowError>> ColumnWriter for Var<'_, A, C> {
    fn sizes(&mut self, sizes: &mut [usize]) -> Result<(), RowError> {
        for (i, s) in sizes.iter_mut().enumerate() {
            if is_null(self.nulls, i) {
                *s += 4;
            } else {
                let v = self.array.value_bytes(i);
                (self.check)(i, v)?;
                if v.len() + self.prefix.len() > i32::MAX as usize {
                    return Err(RowError::new(
                        i,
                        format!("{} bytes", v.len()),
                        "value larger than Postgres's 1 GB field limit",
                    ));
                }
                *s += 4 + self.prefix.len() + v.len();
            }
        }
        Ok(())
    }

    fn write(&self, out: &mut [u8], cursors: &mut [usize]) -> Result<(), RowError> {
        for (i, c) in cursors.iter_mut().enumerate() {
            let at = *c;
            if is_null(self.nulls, i) {
                out[at..at + 4].copy_from_slice(&NULL_FIELD);
                *c += 4;
                continue;
            }
            let v = self.array.value_bytes(i);
            let p = self.prefix.len();
            out[at..at + 4].copy_from_slice(&((p + v.len()) as i32).to_be_bytes());
            out[at + 4..at + 4 + p].copy_from_slice(self.prefix);
            out[at + 4 + p..at + 4 + p + v.len()].copy_from_slice(v);
            *c += 4 + p + v.len();
        }
        Ok(())
    }
}

fn var<'a, A: ByteValues + Array>(
    array: &'a A,
    prefix: &'static [u8],
    check: impl Fn(usize, &[u8]) -> Result<(), RowError> + 'a,
) -> Box<dyn ColumnWriter + 'a> {
    Box::new(Var {
        array,
        nulls: array.nulls(),
        prefix,
        check,
    })
}

/// Values encoded ahead into a scratch buffer (numeric), copied into place.
struct Prepared<'a> {
    nulls: Option<&'a NullBuffer>,
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl<'a> Prepared<'a> {
    /// Postgres's binary numeric of each non-NULL row, from `value(i)`'s
    /// unscaled digits and scale (checked there against the column's typmod).
    fn numeric(
        a: &'a dyn Array,
        value: impl Fn(usize) -> Result<(i128, u32), RowError>,
    ) -> Result<Self, RowError> {
        let mut p = Prepared {
            nulls: a.nulls(),
            bytes: Vec::with_capacity(a.len() * 12),
            ends: Vec::with_capacity(a.len()),
        };
        for i in 0..a.len() {
            if !a.is_null(i) {
                let (digits, scale) = value(i)?;
                write_numeric(&mut p.bytes, digits, scale);
            }
            p.ends.push(p.bytes.len());
        }
        Ok(p)
    }
}

impl ColumnWriter for Prepared<'_> {
    fn sizes(&mut self, sizes: &mut [usize]) -> Result<(), RowError> {
        let mut start = 0;
        for (i, s) in sizes.iter_mut().enumerate() {
            let end = self.ends[i];
            *s += if is_null(self.nulls, i) {
                4
            } else {
                4 + end - start
            };
            start = end;
        }
        Ok(())
    }

    fn write(&self, out: &mut [u8], cursors: &mut [usize]) -> Result<(), RowError> {
        let mut start = 0;
        for (i, c) in cursors.iter_mut().enumerate() {
            let at = *c;
            let end = self.ends[i];
            if is_null(self.nulls, i) {
                out[at..at + 4].copy_from_slice(&NULL_FIELD);
                *c += 4;
            } else {
                let v = &self.bytes[start..end];
                out[at..at + 4].copy_from_slice(&(v.len() as i32).to_be_bytes());
                out[at + 4..at + 4 + v.len()].copy_from_slice(v);
                *c += 4 + v.len();
            }
            start = end;
        }
        Ok(())
    }
}

/// A fixed-width writer of a primitive array's values as they are, big-endian.
macro_rules! big_endian {
    ($a:expr, $arrow:ty, $width:literal) => {{
        let v = $a.as_primitive::<$arrow>();
        fixed::<$width>($a, move |i| Ok(v.value(i).to_be_bytes()))
    }};
}

/// Picks the writer for an (already prepared) array and its Postgres type.
pub(super) fn writer<'a>(
    array: &'a ArrayRef,
    ty: PgType,
) -> Result<Box<dyn ColumnWriter + 'a>, RowError> {
    let a: &'a dyn Array = array.as_ref();
    let dt = a.data_type().clone();
    Ok(match (ty, &dt) {
        (PgType::Bool, DataType::Boolean) => {
            let b: &BooleanArray = a.as_boolean();
            fixed::<1>(a, move |i| Ok([u8::from(b.value(i))]))
        }
        (PgType::Int2, DataType::Int16) => big_endian!(a, Int16Type, 2),
        (PgType::Int4, DataType::Int32) => big_endian!(a, Int32Type, 4),
        (PgType::Int8, DataType::Int64) => big_endian!(a, Int64Type, 8),
        (PgType::Int2, DataType::Int64) => narrow(
            a,
            |v| i16::try_from(v).ok().map(i16::to_be_bytes),
            "smallint",
        ),
        (PgType::Int4, DataType::Int64) => narrow(
            a,
            |v| i32::try_from(v).ok().map(i32::to_be_bytes),
            "integer",
        ),
        (PgType::Float4, DataType::Float32) => big_endian!(a, Float32Type, 4),
        (PgType::Float8, DataType::Float64) => big_endian!(a, Float64Type, 8),
        (PgType::Date, DataType::Date32) => {
            let v = a.as_primitive::<Date32Type>();
            fixed::<4>(a, move |i| {
                let days = v.value(i) as i64 - PG_EPOCH_DAYS;
                if (PG_DATE_MIN..PG_DATE_END).contains(&days) {
                    Ok((days as i32).to_be_bytes())
                } else {
                    Err(RowError::new(
                        i,
                        format!("{} days since 1970-01-01", v.value(i)),
                        "date out of Postgres's range (4713 BC to 5874897 AD)",
                    ))
                }
            })
        }
        (PgType::Timestamp | PgType::Timestamptz, DataType::Timestamp(unit, _)) => {
            let unit = *unit;
            // Every timestamp unit is an i64 count; read it as one.
            let v = match unit {
                TimeUnit::Second => a
                    .as_primitive::<arrow::datatypes::TimestampSecondType>()
                    .values()
                    .clone(),
                TimeUnit::Millisecond => a
                    .as_primitive::<arrow::datatypes::TimestampMillisecondType>()
                    .values()
                    .clone(),
                TimeUnit::Microsecond => a
                    .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                    .values()
                    .clone(),
                TimeUnit::Nanosecond => a
                    .as_primitive::<arrow::datatypes::TimestampNanosecondType>()
                    .values()
                    .clone(),
            };
            fixed::<8>(a, move |i| {
                let raw = v[i];
                let micros = match unit {
                    TimeUnit::Second => raw.checked_mul(1_000_000),
                    TimeUnit::Millisecond => raw.checked_mul(1_000),
                    TimeUnit::Microsecond => Some(raw),
                    // Postgres keeps microseconds; nanoseconds are truncated toward -inf.
                    TimeUnit::Nanosecond => Some(raw.div_euclid(1_000)),
                };
                match micros.and_then(|m| m.checked_sub(PG_EPOCH_MICROS)) {
                    Some(pg) if (PG_TS_MIN..PG_TS_END).contains(&pg) => Ok(pg.to_be_bytes()),
                    _ => Err(RowError::new(
                        i,
                        format!("{raw} {unit:?}s since 1970-01-01"),
                        "timestamp out of Postgres's range (4713 BC to 294276 AD)",
                    )),
                }
            })
        }
        (PgType::Numeric(typmod), DataType::Decimal128(_, scale)) => {
            let v: &Decimal128Array = a.as_primitive();
            let scale = *scale as u32;
            Box::new(Prepared::numeric(a, |i| {
                let value = v.value(i);
                check_numeric_fits(i, value, scale, typmod, || v.value_as_string(i))?;
                Ok((value, scale))
            })?)
        }
        (PgType::Numeric(typmod), DataType::Float64) => {
            let v = a.as_primitive::<Float64Type>();
            Box::new(Prepared::numeric(a, |i| {
                let f = v.value(i);
                if !f.is_finite() {
                    return Err(RowError::new(
                        i,
                        f,
                        "NaN and infinity cannot be stored in a numeric column",
                    ));
                }
                let (digits, scale) = float_to_decimal(f, typmod.map(|(_, s)| s)).ok_or_else(|| {
                    RowError::new(
                        i,
                        f,
                        "needs more than 38 significant digits as an exact decimal; declare numeric(p,s) or cast in the transform",
                    )
                })?;
                check_numeric_fits(i, digits, scale, typmod, || f.to_string())?;
                Ok((digits, scale))
            })?)
        }
        (PgType::Text, DataType::Utf8) => var(a.as_string::<i32>(), b"", check_text),
        (PgType::Text, DataType::LargeUtf8) => var(a.as_string::<i64>(), b"", check_text),
        (PgType::Text, DataType::Utf8View) => var(a.as_string_view(), b"", check_text),
        (PgType::Jsonb, DataType::Utf8) => var(a.as_string::<i32>(), b"\x01", check_json),
        (PgType::Jsonb, DataType::LargeUtf8) => var(a.as_string::<i64>(), b"\x01", check_json),
        (PgType::Jsonb, DataType::Utf8View) => var(a.as_string_view(), b"\x01", check_json),
        (PgType::Bytea, DataType::Binary) => var(a.as_binary::<i32>(), b"", |_, _| Ok(())),
        (PgType::Bytea, DataType::LargeBinary) => var(a.as_binary::<i64>(), b"", |_, _| Ok(())),
        (PgType::Bytea, DataType::BinaryView) => var(a.as_binary_view(), b"", |_, _| Ok(())),
        (PgType::Geometry { kind, srid }, DataType::Binary) => {
            var(a.as_binary::<i32>(), b"", check_geometry(kind, srid))
        }
        (PgType::Geometry { kind, srid }, DataType::LargeBinary) => {
            var(a.as_binary::<i64>(), b"", check_geometry(kind, srid))
        }
        (PgType::Geometry { kind, srid }, DataType::BinaryView) => {
            var(a.as_binary_view(), b"", check_geometry(kind, srid))
        }
        (ty, dt) => {
            return Err(RowError::new(
                0,
                dt,
                format!("no encoder for Arrow {dt} as {ty}"),
            ))
        }
    })
}

/// `f` as an exact decimal (unscaled digits, scale): rounded to the column's
/// scale when it has one (as Postgres would), else the shortest decimal that
/// round-trips. `None` when that needs more than 38 digits.
pub(super) fn float_to_decimal(f: f64, scale: Option<i8>) -> Option<(i128, u32)> {
    let text = match scale {
        Some(s) => format!("{f:.prec$}", prec = s.max(0) as usize),
        None => format!("{f}"),
    };
    let (neg, body) = text
        .strip_prefix('-')
        .map_or((false, text.as_str()), |b| (true, b));
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if int.len() + frac.len() > 38 {
        return None;
    }
    let digits: i128 = format!("{int}{frac}").parse().ok()?;
    Some((if neg { -digits } else { digits }, frac.len() as u32))
}

/// Appends Postgres's binary numeric: ndigits, weight, sign, dscale, then
/// base-10000 digits, most significant first, without leading or trailing
/// zero groups. Works on the stack: an i128 has at most 10 groups each side.
pub(super) fn write_numeric(out: &mut Vec<u8>, value: i128, scale: u32) {
    let abs = value.unsigned_abs();
    let pow = 10u128.pow(scale);
    let (mut int, mut frac) = (abs / pow, abs % pow);
    // Groups, most significant first: integer groups end at `point`.
    let mut groups = [0u16; 24];
    let mut int_rev = [0u16; 12];
    let mut ni = 0;
    while int > 0 {
        int_rev[ni] = (int % 10_000) as u16;
        int /= 10_000;
        ni += 1;
    }
    for k in 0..ni {
        groups[k] = int_rev[ni - 1 - k];
    }
    let nf = scale.div_ceil(4) as usize;
    // Fraction groups from the least significant; a partial group is padded on the right.
    let mut at = ni + nf;
    let partial = scale % 4;
    if partial != 0 {
        let p = 10u128.pow(partial);
        at -= 1;
        groups[at] = ((frac % p) * 10u128.pow(4 - partial)) as u16;
        frac /= p;
    }
    while at > ni {
        at -= 1;
        groups[at] = (frac % 10_000) as u16;
        frac /= 10_000;
    }
    let all = &groups[..ni + nf];
    let lead = all.iter().take_while(|d| **d == 0).count();
    let trail = all[lead..].iter().rev().take_while(|d| **d == 0).count();
    let digits = &all[lead..all.len() - trail];
    let (weight, sign) = if digits.is_empty() {
        (0i16, 0u16)
    } else {
        (
            ni as i16 - 1 - lead as i16,
            if value < 0 { 0x4000 } else { 0 },
        )
    };
    out.extend_from_slice(&(digits.len() as i16).to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&(scale as u16).to_be_bytes());
    for d in digits {
        out.extend_from_slice(&d.to_be_bytes());
    }
}
