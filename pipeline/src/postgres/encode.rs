//! Arrow → Postgres binary COPY, column by column.
//!
//! Binary COPY is row-major (per row: a field count, then per field a length
//! and the value), but Arrow is columnar. The encoder bridges the two without
//! per-value dispatch: a size pass asks each column for its rows' encoded
//! sizes, prefix sums give every row its offset, and then each column writes
//! all of its values straight into place with a loop specialised to its type.
//! One dynamic call per column per batch; no `ToSql`, no per-value
//! allocation, one output buffer per batch.
//!
//! Values Postgres would reject are caught here and named (table, column,
//! row, value), so a bad row never reaches the server half-way through a COPY.
//!
//! The encoder is sans-IO: it only appends bytes, which makes it testable
//! byte for byte and benchmarkable without a database.
//!
//! This file is the batch's layout (rows, offsets, errors named); the
//! writers, one per column type, are in `columns`, and what Postgres would
//! refuse in a value in `checks`.

use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::util::display::array_value_to_string;
use bytes::BytesMut;
use schemas::pg::{PgColumn, PgType};

/// The 19-byte binary COPY header: signature, flags, no extension area.
pub const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The trailer: a field count of -1.
pub const COPY_TRAILER: &[u8] = &[0xff, 0xff];

/// A value Postgres would reject, or a column floe cannot encode.
///
/// Boxed so results stay small on the hot path; fields are read through `Deref`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct EncodeError(Box<EncodeErrorDetail>);

impl std::ops::Deref for EncodeError {
    type Target = EncodeErrorDetail;
    fn deref(&self) -> &EncodeErrorDetail {
        &self.0
    }
}

/// What [`EncodeError`] says.
#[derive(Debug, Clone)]
pub struct EncodeErrorDetail {
    pub table: String,
    pub column: String,
    /// 1-based row number in the table's stream (0 when not about a row).
    pub row: u64,
    /// The row's primary key, as `, key (id=42)`, when known.
    pub key: String,
    pub value: String,
    pub reason: String,
}

impl std::fmt::Display for EncodeErrorDetail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "table {}, column {}, row {}{}: value {}: {}",
            self.table, self.column, self.row, self.key, self.value, self.reason
        )
    }
}

/// A problem with one row of one column, before table context is added.
struct RowError {
    row: usize,
    value: String,
    reason: String,
}

impl RowError {
    fn new(row: usize, value: impl ToString, reason: impl Into<String>) -> Self {
        RowError {
            row,
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

/// Encodes record batches into binary COPY data for one table.
#[derive(Debug)]
pub struct CopyEncoder {
    table: String,
    columns: Vec<PgColumn>,
    key_columns: Vec<usize>,
    /// Columns beyond the key the table written declares `NOT NULL`
    /// ([`CopyEncoder::refuse_nulls_in`]).
    not_null_columns: Vec<usize>,
    rows: u64,
    sizes: Vec<usize>,
    cursors: Vec<usize>,
}

impl CopyEncoder {
    /// Plans the encoding of `schema` into `columns` (same order and count),
    /// checking every pair once. `key` names primary-key columns for messages.
    pub fn new(
        table: &str,
        schema: &SchemaRef,
        columns: Vec<PgColumn>,
        key: &[String],
    ) -> Result<Self, EncodeError> {
        let fail = |column: &str, reason: String| {
            EncodeError(Box::new(EncodeErrorDetail {
                table: table.to_string(),
                column: column.to_string(),
                row: 0,
                key: String::new(),
                value: String::new(),
                reason,
            }))
        };
        if schema.fields().len() != columns.len() {
            return Err(fail(
                "*",
                format!(
                    "{} Arrow columns for {} Postgres columns",
                    schema.fields().len(),
                    columns.len()
                ),
            ));
        }
        if columns.len() > i16::MAX as usize {
            return Err(fail(
                "*",
                format!("{} columns is more than COPY allows", columns.len()),
            ));
        }
        for (f, c) in schema.fields().iter().zip(&columns) {
            if !c.ty.accepts(f.data_type()) {
                return Err(fail(
                    &c.name,
                    format!("cannot write Arrow {} as {}", f.data_type(), c.ty),
                ));
            }
            if let (DataType::Decimal128(_, s), PgType::Numeric(_)) = (f.data_type(), c.ty) {
                if *s < 0 {
                    return Err(fail(
                        &c.name,
                        format!("negative decimal scale {s}; cast in the transform"),
                    ));
                }
            }
        }
        let key_columns = key
            .iter()
            .filter_map(|k| columns.iter().position(|c| &c.name == k))
            .collect();
        Ok(CopyEncoder {
            table: table.to_string(),
            columns,
            key_columns,
            not_null_columns: Vec::new(),
            rows: 0,
            sizes: Vec::new(),
            cursors: Vec::new(),
        })
    }

    /// Also refuses a NULL in `columns` (by name; the key's are refused
    /// already): those the table written declares `NOT NULL`, so such a row
    /// fails here, named, rather than in the COPY or a later scan.
    pub fn refuse_nulls_in(&mut self, columns: &[String]) {
        for name in columns {
            if let Some(i) = self.columns.iter().position(|c| &c.name == name) {
                if !self.key_columns.contains(&i) && !self.not_null_columns.contains(&i) {
                    self.not_null_columns.push(i);
                }
            }
        }
    }

    /// Rows encoded so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The columns encoded, in order.
    pub fn columns(&self) -> &[PgColumn] {
        &self.columns
    }

    /// Appends one batch's rows to `out`. On error `out` is left as it was
    /// and the error names the table, column, row and value.
    pub fn encode(&mut self, batch: &RecordBatch, out: &mut BytesMut) -> Result<(), EncodeError> {
        let n = batch.num_rows();
        for &k in &self.key_columns {
            check_not_null(batch.column(k).as_ref(), NULL_KEY)
                .map_err(|e| self.row_error(batch, k, e))?;
        }
        for &k in &self.not_null_columns {
            check_not_null(batch.column(k).as_ref(), NULL_IN_NOT_NULL)
                .map_err(|e| self.row_error(batch, k, e))?;
        }
        // Casts made for this batch live here while the writers borrow them.
        let mut owned: Vec<ArrayRef> = Vec::with_capacity(self.columns.len());
        for (i, col) in self.columns.iter().enumerate() {
            let array = batch.column(i);
            if let Some(prepared) =
                prepare(array, col.ty).map_err(|e| self.row_error(batch, i, e))?
            {
                owned.push(prepared);
            } else {
                owned.push(Arc::clone(array));
            }
        }
        let mut writers = Vec::with_capacity(self.columns.len());
        for (i, col) in self.columns.iter().enumerate() {
            writers.push(writer(&owned[i], col.ty).map_err(|e| self.row_error(batch, i, e))?);
        }

        self.sizes.clear();
        self.sizes.resize(n, 2);
        for (i, w) in writers.iter_mut().enumerate() {
            w.sizes(&mut self.sizes)
                .map_err(|e| self.row_error(batch, i, e))?;
        }
        let start = out.len();
        let total: usize = self.sizes.iter().sum();
        out.resize(start + total, 0);
        let buf = &mut out[start..];
        self.cursors.clear();
        let mut at = 0;
        let field_count = (self.columns.len() as i16).to_be_bytes();
        for size in &self.sizes {
            buf[at..at + 2].copy_from_slice(&field_count);
            self.cursors.push(at + 2);
            at += size;
        }
        for (i, w) in writers.iter().enumerate() {
            if let Err(e) = w.write(buf, &mut self.cursors) {
                out.truncate(start);
                return Err(self.row_error(batch, i, e));
            }
        }
        self.rows += n as u64;
        Ok(())
    }

    fn row_error(&self, batch: &RecordBatch, column: usize, e: RowError) -> EncodeError {
        let key = if self.key_columns.is_empty() || e.row >= batch.num_rows() {
            String::new()
        } else {
            let parts: Vec<String> = self
                .key_columns
                .iter()
                .map(|&k| {
                    let v = array_value_to_string(batch.column(k), e.row).unwrap_or_default();
                    format!("{}={v}", self.columns[k].name)
                })
                .collect();
            format!(", key ({})", parts.join(", "))
        };
        EncodeError(Box::new(EncodeErrorDetail {
            table: self.table.clone(),
            column: self.columns[column].name.clone(),
            row: self.rows + e.row as u64 + 1,
            key,
            value: e.value,
            reason: e.reason,
        }))
    }
}

mod checks;
mod columns;

use checks::{check_not_null, NULL_IN_NOT_NULL, NULL_KEY};
use columns::{prepare, writer};

#[cfg(test)]
#[path = "encode_tests.rs"]
mod tests;
