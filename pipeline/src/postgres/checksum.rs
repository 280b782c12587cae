//! The content checksum both floe and Postgres compute, so a load is
//! verified by content and not only by row count.
//!
//! Definition: for each row, SHA-256 over the row in Postgres's binary
//! record format — the field count (4 bytes), then per field its type OID
//! (4 bytes), its length (4 bytes, -1 for NULL) and its binary value — in
//! column order; the checksum is the sum, modulo 2^64, of each row's first
//! 8 digest bytes read as a big-endian integer. A sum does not depend on
//! row order, so floe computes it while streaming (binary COPY carries
//! exactly each field's length and value) and Postgres computes it over the
//! staged table with one `record_send(ROW(...))` per row. `jsonb` columns
//! are left out: Postgres normalises JSON (key order, whitespace), so what
//! it stores is not byte-for-byte what floe sent; their rows still count.

use ring::digest::{Context, SHA256};
use schemas::pg::quote_ident;

/// A column of the staged table, as the checksum needs it.
#[derive(Debug, Clone)]
pub struct StagedColumn {
    pub name: String,
    /// The column type's OID (part of the binary record format).
    pub oid: u32,
    pub jsonb: bool,
}

/// The running checksum of what floe sent.
#[derive(Debug, Clone)]
pub struct RowChecksum {
    sum: u64,
    /// Per column: its type OID, or `None` when left out (jsonb).
    oids: Vec<Option<[u8; 4]>>,
    /// The record's field count, as it starts every row's digest.
    count: [u8; 4],
}

impl RowChecksum {
    pub fn new(columns: &[StagedColumn]) -> RowChecksum {
        let oids: Vec<Option<[u8; 4]>> = columns
            .iter()
            .map(|c| (!c.jsonb).then(|| c.oid.to_be_bytes()))
            .collect();
        let count = (oids.iter().flatten().count() as i32).to_be_bytes();
        RowChecksum {
            sum: 0,
            oids,
            count,
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
            if fields as usize != self.oids.len() {
                return Err(format!(
                    "a tuple has {fields} fields, the table {}",
                    self.oids.len()
                ));
            }
            let mut digest = Context::new(&SHA256);
            digest.update(&self.count);
            for oid in &self.oids {
                let len = i32::from_be_bytes(
                    tuples
                        .get(..4)
                        .ok_or("short field length")?
                        .try_into()
                        .map_err(|_| "short field length")?,
                );
                let size = 4 + len.max(0) as usize;
                let field = tuples.get(..size).ok_or("a field ends early")?;
                if let Some(oid) = oid {
                    digest.update(oid);
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

/// The query computing the same checksum over `table` in the same scan as
/// its row count: `(count, sum modulo 2^64 as decimal text)` (see [`from_sql`]).
pub fn sql(table: &str, columns: &[StagedColumn]) -> String {
    let fields: Vec<String> = columns
        .iter()
        .filter(|c| !c.jsonb)
        .map(|c| quote_ident(&c.name))
        .collect();
    // Each row's 8 bytes as a signed bigint (two's complement, like floe's
    // wrapping u64 sum); sum() widens to numeric, so reduce modulo 2^64.
    format!(
        "SELECT count(*), ((coalesce(sum(('x' || encode(substring(sha256(record_send(ROW({}))) FROM 1 FOR 8), 'hex'))::bit(64)::bigint), 0) \
         % 18446744073709551616 + 18446744073709551616) % 18446744073709551616)::text FROM {table}",
        fields.join(", ")
    )
}

/// The checksum as 16 hex digits from [`sql`]'s answer.
pub fn from_sql(decimal: &str) -> Option<String> {
    decimal.parse::<u64>().ok().map(|v| format!("{v:016x}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, oid: u32, jsonb: bool) -> StagedColumn {
        StagedColumn {
            name: name.into(),
            oid,
            jsonb,
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
        let cols = [col("id", 20, false), col("doc", 3802, true)];
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
