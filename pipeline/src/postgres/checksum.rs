//! The content checksum both floe and Postgres compute, so a load is
//! verified by content and not only by row count.
//!
//! Definition: each row's hash is Postgres's own
//! `hash_record_extended(ROW(...), 0)` — per field the type's 64-bit
//! extended hash (0 for NULL), combined as `h = h * 31 + field` — and the
//! checksum is the sum of the row hashes modulo 2^64. A sum does not depend
//! on row order, so floe computes it from the binary COPY tuples while
//! streaming, and Postgres computes it over the staged table in the scan
//! that counts it. Postgres's hashes are C functions over the stored value
//! (~1 µs a row), three times cheaper than hashing `record_send` output
//! with SHA-256, which kept the check on the critical path.
//!
//! floe reproduces the hashes it needs: Jenkins' lookup3 as Postgres runs
//! it (`hash_bytes_extended`, `hash_bytes_uint32_extended`), the integer,
//! float and char wrappers, and byte hashing for text and bytea. Types
//! without an extended hash of their own (numeric, geometry, ...) enter the
//! row as their binary send form — `numeric_send(x)`, `geometry_send(x)`,
//! i.e. the bytes floe sent — hashed as bytea. `jsonb` columns are left
//! out: Postgres normalises JSON, so what it stores is not byte-for-byte
//! what floe sent; their rows still count. Floats hash their native
//! (little-endian) bytes, as on every platform Postgres commonly runs on.

use schemas::pg::quote_ident;

/// How one staged column enters the row hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldHash {
    /// Left out (jsonb).
    Skip,
    /// `hashint2extended`.
    Int2,
    /// `hashint4extended` (integer, date).
    Int4,
    /// `hashint8extended` (bigint, timestamp, timestamptz, time).
    Int8,
    /// `hashcharextended` (boolean, "char").
    Char,
    /// `hashfloat4extended`.
    Float4,
    /// `hashfloat8extended`.
    Float8,
    /// The value's bytes, as stored: text in a UTF-8 database, bytea.
    Bytes,
    /// Through the named send function (a bytea), then as bytes.
    Sent(String),
}

impl FieldHash {
    /// From the column's type name and send function, and whether the
    /// server stores text as floe sends it (UTF-8 or SQL_ASCII).
    pub fn for_type(typname: &str, typsend: &str, text_as_sent: bool) -> FieldHash {
        match typname {
            "jsonb" => FieldHash::Skip,
            "int2" => FieldHash::Int2,
            "int4" | "date" => FieldHash::Int4,
            "int8" | "timestamp" | "timestamptz" | "time" => FieldHash::Int8,
            "bool" | "char" => FieldHash::Char,
            "float4" => FieldHash::Float4,
            "float8" => FieldHash::Float8,
            "bytea" => FieldHash::Bytes,
            "text" | "varchar" if text_as_sent => FieldHash::Bytes,
            _ => FieldHash::Sent(typsend.to_string()),
        }
    }
}

/// A column of the staged table, as the checksum needs it.
#[derive(Debug, Clone)]
pub struct StagedColumn {
    pub name: String,
    pub hash: FieldHash,
}

/// The running checksum of what floe sent.
#[derive(Debug, Clone)]
pub struct RowChecksum {
    sum: u64,
    hashes: Vec<FieldHash>,
}

impl RowChecksum {
    pub fn new(columns: &[StagedColumn]) -> RowChecksum {
        RowChecksum {
            sum: 0,
            hashes: columns.iter().map(|c| c.hash.clone()).collect(),
        }
    }

    /// Adds every tuple of an encoded batch (binary COPY tuples, no header).
    pub fn add_tuples(&mut self, mut tuples: &[u8]) -> Result<(), String> {
        while !tuples.is_empty() {
            let fields = i16::from_be_bytes(take::<2>(&mut tuples).ok_or("short tuple")?);
            if fields as usize != self.hashes.len() {
                return Err(format!(
                    "a tuple has {fields} fields, the table {}",
                    self.hashes.len()
                ));
            }
            let mut row = 0u64;
            for hash in &self.hashes {
                let len = i32::from_be_bytes(take::<4>(&mut tuples).ok_or("short field length")?);
                let value = if len < 0 {
                    None
                } else {
                    let (value, rest) = tuples
                        .split_at_checked(len as usize)
                        .ok_or("a field ends early")?;
                    tuples = rest;
                    Some(value)
                };
                if *hash == FieldHash::Skip {
                    continue;
                }
                let field = match value {
                    None => 0,
                    Some(v) => field_hash(hash, v)
                        .ok_or_else(|| format!("a {hash:?} field of {} bytes", v.len()))?,
                };
                row = row.wrapping_mul(31).wrapping_add(field);
            }
            self.sum = self.sum.wrapping_add(row);
        }
        Ok(())
    }

    /// Adds what another checksum over the same columns has seen (the sum
    /// does not depend on order, so parallel COPY streams each keep one).
    pub fn merge(&mut self, other: &RowChecksum) {
        self.sum = self.sum.wrapping_add(other.sum);
    }

    /// As recorded in `sync_runs.checksum`: 16 hex digits.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.sum)
    }
}

fn take<const N: usize>(buf: &mut &[u8]) -> Option<[u8; N]> {
    let (head, rest) = buf.split_first_chunk::<N>()?;
    *buf = rest;
    Some(*head)
}

/// One non-NULL field's hash, from its binary COPY value.
fn field_hash(hash: &FieldHash, v: &[u8]) -> Option<u64> {
    Some(match hash {
        FieldHash::Skip => 0,
        FieldHash::Int2 => hash_u32(i16::from_be_bytes(v.try_into().ok()?) as i32 as u32),
        FieldHash::Int4 => hash_u32(u32::from_be_bytes(v.try_into().ok()?)),
        FieldHash::Int8 => {
            let val = i64::from_be_bytes(v.try_into().ok()?);
            let (lo, hi) = (val as u32, (val >> 32) as u32);
            hash_u32(lo ^ if val >= 0 { hi } else { !hi })
        }
        FieldHash::Char => hash_u32(*v.first()? as i8 as i32 as u32),
        FieldHash::Float4 => hash_f64(f32::from_be_bytes(v.try_into().ok()?) as f64),
        FieldHash::Float8 => hash_f64(f64::from_be_bytes(v.try_into().ok()?)),
        FieldHash::Bytes | FieldHash::Sent(_) => hash_bytes(v),
    })
}

/// `hashfloat8extended`: zeros (either sign) hash as the seed, every NaN as one.
fn hash_f64(v: f64) -> u64 {
    if v == 0.0 {
        return 0;
    }
    let v = if v.is_nan() { f64::NAN } else { v };
    hash_bytes(&v.to_bits().to_le_bytes())
}

/// lookup3's state, as Postgres's `hashfn.c` keeps it.
struct Jenkins(u32, u32, u32);

impl Jenkins {
    fn new(len: u32) -> Jenkins {
        let init = 0x9e37_79b9u32.wrapping_add(len).wrapping_add(3_923_095);
        Jenkins(init, init, init)
    }

    fn mix(&mut self) {
        let Jenkins(a, b, c) = self;
        *a = a.wrapping_sub(*c) ^ c.rotate_left(4);
        *c = c.wrapping_add(*b);
        *b = b.wrapping_sub(*a) ^ a.rotate_left(6);
        *a = a.wrapping_add(*c);
        *c = c.wrapping_sub(*b) ^ b.rotate_left(8);
        *b = b.wrapping_add(*a);
        *a = a.wrapping_sub(*c) ^ c.rotate_left(16);
        *c = c.wrapping_add(*b);
        *b = b.wrapping_sub(*a) ^ a.rotate_left(19);
        *a = a.wrapping_add(*c);
        *c = c.wrapping_sub(*b) ^ b.rotate_left(4);
        *b = b.wrapping_add(*a);
    }

    /// `final()`, and the 64-bit result `(b << 32) | c` of the extended hashes.
    fn finish(self) -> u64 {
        let Jenkins(mut a, mut b, mut c) = self;
        c = (c ^ b).wrapping_sub(b.rotate_left(14));
        a = (a ^ c).wrapping_sub(c.rotate_left(11));
        b = (b ^ a).wrapping_sub(a.rotate_left(25));
        c = (c ^ b).wrapping_sub(b.rotate_left(16));
        a = (a ^ c).wrapping_sub(c.rotate_left(4));
        b = (b ^ a).wrapping_sub(a.rotate_left(14));
        c = (c ^ b).wrapping_sub(b.rotate_left(24));
        let _ = a;
        ((b as u64) << 32) | c as u64
    }
}

/// `hash_bytes_uint32_extended(k, 0)`.
fn hash_u32(k: u32) -> u64 {
    let mut s = Jenkins::new(4);
    s.0 = s.0.wrapping_add(k);
    s.finish()
}

/// `hash_bytes_extended(k, len, 0)` on a little-endian machine.
fn hash_bytes(k: &[u8]) -> u64 {
    let word = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let mut s = Jenkins::new(k.len() as u32);
    let mut blocks = k.chunks_exact(12);
    for b in &mut blocks {
        s.0 = s.0.wrapping_add(word(&b[0..4]));
        s.1 = s.1.wrapping_add(word(&b[4..8]));
        s.2 = s.2.wrapping_add(word(&b[8..12]));
        s.mix();
    }
    let tail = blocks.remainder();
    let mut last = [0u8; 12];
    last[..tail.len()].copy_from_slice(tail);
    s.0 = s.0.wrapping_add(word(&last[0..4]));
    s.1 = s.1.wrapping_add(word(&last[4..8]));
    // The lowest byte of c is the length's, so the last three bytes sit above it.
    s.2 = s.2.wrapping_add(word(&last[8..12]) << 8);
    s.finish()
}

/// The query computing the same checksum over `table` in the same scan as
/// its row count: `(count, sum modulo 2^64 as decimal text)` (see [`from_sql`]).
pub fn sql(table: &str, columns: &[StagedColumn]) -> String {
    let fields: Vec<String> = columns
        .iter()
        .filter_map(|c| match &c.hash {
            FieldHash::Skip => None,
            FieldHash::Sent(send) => Some(format!("{send}({})", quote_ident(&c.name))),
            _ => Some(quote_ident(&c.name)),
        })
        .collect();
    let row = if fields.is_empty() {
        "0".to_string()
    } else {
        format!("hash_record_extended(ROW({}), 0)", fields.join(", "))
    };
    // Each row's hash is a signed bigint (two's complement, like floe's
    // wrapping u64 sum); sum() widens to numeric, so reduce modulo 2^64.
    format!(
        "SELECT count(*), ((coalesce(sum({row}), 0) % 18446744073709551616 + 18446744073709551616) \
         % 18446744073709551616)::text FROM {table}"
    )
}

/// The checksum as 16 hex digits from [`sql`]'s answer.
pub fn from_sql(decimal: &str) -> Option<String> {
    decimal.parse::<u64>().ok().map(|v| format!("{v:016x}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, hash: FieldHash) -> StagedColumn {
        StagedColumn {
            name: name.into(),
            hash,
        }
    }

    fn tuple(fields: &[Option<&[u8]>]) -> Vec<u8> {
        let mut t = (fields.len() as i16).to_be_bytes().to_vec();
        for f in fields {
            match f {
                Some(b) => {
                    t.extend_from_slice(&(b.len() as i32).to_be_bytes());
                    t.extend_from_slice(b);
                }
                None => t.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        t
    }

    /// Known answers from PostgreSQL 15 (`SELECT hashtextextended('a', 0)`, ...).
    #[test]
    fn hashes_equal_postgres_own() {
        let text = |s: &str| hash_bytes(s.as_bytes()) as i64;
        assert_eq!(text(""), -6939563903564495251);
        assert_eq!(text("a"), 3591986179850072241);
        assert_eq!(text("abcdefghijk"), 3112909444737856467);
        assert_eq!(text("abcdefghijkl"), -7556637188122330412);
        assert_eq!(text("abcdefghijklmnopqrstuvwxyz"), -6612928417832572997);
        let int8 = |v: i64| field_hash(&FieldHash::Int8, &v.to_be_bytes()).unwrap() as i64;
        assert_eq!(int8(-5), -9082176226831438310);
        assert_eq!(int8(1234567890123), -6236938892533063859);
        assert_eq!(int8(1), -3670598878359251130);
        let f = |h: FieldHash, v: &[u8]| field_hash(&h, v).unwrap() as i64;
        assert_eq!(
            f(FieldHash::Int4, &(-7i32).to_be_bytes()),
            -4284878795861022465
        );
        assert_eq!(
            f(FieldHash::Int2, &(-3i16).to_be_bytes()),
            -7676986921448237951
        );
        assert_eq!(f(FieldHash::Char, &[1]), -3670598878359251130);
        assert_eq!(
            f(FieldHash::Float8, &1.5f64.to_be_bytes()),
            6158159405676898674
        );
        assert_eq!(
            f(FieldHash::Float4, &1.5f32.to_be_bytes()),
            6158159405676898674
        );
        assert_eq!(
            f(FieldHash::Float8, &f64::NAN.to_be_bytes()),
            4719788943832604568
        );
        assert_eq!(f(FieldHash::Float8, &(-0.0f64).to_be_bytes()), 0);
        // hash_record_extended(ROW(1::int8, 'a'::text), 0)
        let mut c = RowChecksum::new(&[col("id", FieldHash::Int8), col("t", FieldHash::Bytes)]);
        c.add_tuples(&tuple(&[Some(&1i64.to_be_bytes()), Some(b"a")]))
            .unwrap();
        assert_eq!(c.sum as i64, 483885392970596907);
    }

    #[test]
    fn order_does_not_matter_content_does_and_jsonb_is_left_out() {
        let cols = [
            col("id", FieldHash::Int8),
            col("doc", FieldHash::Skip),
            col("v", FieldHash::Sent("numeric_send".into())),
        ];
        let a = tuple(&[Some(&1i64.to_be_bytes()), Some(b"\x01{\"a\": 1}"), None]);
        let b = tuple(&[Some(&2i64.to_be_bytes()), None, Some(b"\x00\x01")]);
        let sum = |parts: &[&[u8]]| {
            let mut c = RowChecksum::new(&cols);
            for p in parts {
                c.add_tuples(p).unwrap();
            }
            c.hex()
        };
        let ab = sum(&[&[a.clone(), b.clone()].concat()]);
        assert_eq!(ab, sum(&[&b, &a]), "row order changed the checksum");
        let b2 = tuple(&[Some(&3i64.to_be_bytes()), None, Some(b"\x00\x01")]);
        assert_ne!(ab, sum(&[&a, &b2]), "different content, same checksum");
        let a_json = tuple(&[Some(&1i64.to_be_bytes()), Some(b"\x01{\"a\":1}"), None]);
        assert_eq!(ab, sum(&[&a_json, &b]), "jsonb spelling must not matter");
        let mut c = RowChecksum::new(&cols);
        assert!(c.add_tuples(&a[..a.len() - 1]).is_err());
        assert!(sql("t", &cols).contains("ROW(\"id\", numeric_send(\"v\"))"));
    }
}
