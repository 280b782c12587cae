//! The content checksum both floe and Postgres compute, so a load is
//! verified by content and not only by row count.
//!
//! Definition: for each row, SHA-256 over its fields as binary COPY carries
//! them (each a 4-byte big-endian length and the value's binary form, or
//! length -1 for NULL), in column order; the checksum is the sum, modulo
//! 2^64, of each row's first 8 digest bytes read as a big-endian integer.
//! A sum does not depend on row order, so floe computes it while streaming
//! and Postgres over the staged table with the types' own `*send`
//! functions, which produce exactly those bytes. `jsonb` columns are left
//! out: Postgres normalises JSON (key order, whitespace), so what it stores
//! is not byte-for-byte what floe sent; their rows are still counted.

use ring::digest::{Context, SHA256};
use schemas::pg::{quote_ident, PgColumn, PgType};

/// The running checksum of what floe sent.
#[derive(Debug, Clone)]
pub struct RowChecksum {
    sum: u64,
    /// Per column: left out of the digest (jsonb).
    skip: Vec<bool>,
}

impl RowChecksum {
    pub fn new(columns: &[PgColumn]) -> RowChecksum {
        RowChecksum {
            sum: 0,
            skip: columns.iter().map(|c| c.ty == PgType::Jsonb).collect(),
        }
    }

    /// Adds every tuple of an encoded batch (binary COPY tuples, no header).
    pub fn add_tuples(&mut self, mut tuples: &[u8]) -> Result<(), String> {
        let take = |buf: &mut &[u8], n: usize| -> Result<usize, String> {
            if buf.len() < n {
                return Err("a COPY tuple ends early".into());
            }
            *buf = &buf[n..];
            Ok(n)
        };
        while !tuples.is_empty() {
            let fields = i16::from_be_bytes([tuples[0], *tuples.get(1).ok_or("short tuple")?]);
            take(&mut tuples, 2)?;
            if fields as usize != self.skip.len() {
                return Err(format!(
                    "a tuple has {fields} fields, the table {}",
                    self.skip.len()
                ));
            }
            let mut digest = Context::new(&SHA256);
            for &skip in &self.skip {
                let len = i32::from_be_bytes(
                    tuples
                        .get(..4)
                        .ok_or("short field length")?
                        .try_into()
                        .map_err(|_| "short field length")?,
                );
                let size = 4 + len.max(0) as usize;
                let field = tuples.get(..size).ok_or("a field ends early")?;
                if !skip {
                    digest.update(field);
                }
                take(&mut tuples, size)?;
            }
            let d = digest.finish();
            let head: [u8; 8] = d.as_ref()[..8].try_into().map_err(|_| "digest")?;
            self.sum = self.sum.wrapping_add(u64::from_be_bytes(head));
        }
        Ok(())
    }

    /// As recorded in `sync_runs.checksum`: 16 hex digits.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.sum)
    }
}

/// A column of the staged table and its type's binary send function.
pub struct SendColumn {
    pub name: String,
    pub send: String,
    pub jsonb: bool,
}

/// The query computing the same checksum over `table`: the sum modulo
/// 2^64 as decimal text (see [`from_sql`]).
pub fn sql(table: &str, columns: &[SendColumn]) -> String {
    let fields: Vec<String> = columns
        .iter()
        .filter(|c| !c.jsonb)
        .map(|c| {
            let v = format!("{}({})", c.send, quote_ident(&c.name));
            format!("coalesce(int4send(octet_length({v})) || {v}, '\\xffffffff'::bytea)")
        })
        .collect();
    let row = if fields.is_empty() {
        "''::bytea".to_string()
    } else {
        fields.join(" || ")
    };
    // Each row's 8 bytes as a signed bigint (two's complement, like floe's
    // wrapping u64 sum); sum() widens to numeric, so reduce modulo 2^64.
    format!(
        "SELECT ((coalesce(sum(('x' || encode(substring(sha256({row}) FROM 1 FOR 8), 'hex'))::bit(64)::bigint), 0) \
         % 18446744073709551616 + 18446744073709551616) % 18446744073709551616)::text FROM {table}"
    )
}

/// The checksum as 16 hex digits from [`sql`]'s answer.
pub fn from_sql(decimal: &str) -> Option<String> {
    decimal.parse::<u64>().ok().map(|v| format!("{v:016x}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: PgType) -> PgColumn {
        PgColumn {
            name: name.into(),
            ty,
            nullable: true,
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

    #[test]
    fn order_does_not_matter_content_does_and_jsonb_is_left_out() {
        let cols = [col("id", PgType::Int8), col("doc", PgType::Jsonb)];
        let a = tuple(&[Some(&1i64.to_be_bytes()), Some(b"\x01{\"a\": 1}")]);
        let b = tuple(&[Some(&2i64.to_be_bytes()), None]);
        let sum = |parts: &[&[u8]]| {
            let mut c = RowChecksum::new(&cols);
            for p in parts {
                c.add_tuples(p).unwrap();
            }
            c.hex()
        };
        let ab = sum(&[&[a.clone(), b.clone()].concat()]);
        assert_eq!(ab, sum(&[&b, &a]), "row order changed the checksum");
        let b2 = tuple(&[Some(&3i64.to_be_bytes()), None]);
        assert_ne!(ab, sum(&[&a, &b2]), "different content, same checksum");
        let a_json = tuple(&[Some(&1i64.to_be_bytes()), Some(b"\x01{\"a\":1}")]);
        assert_eq!(ab, sum(&[&a_json, &b]), "jsonb spelling must not matter");
        let mut c = RowChecksum::new(&cols);
        assert!(c.add_tuples(&a[..a.len() - 1]).is_err());
    }
}
