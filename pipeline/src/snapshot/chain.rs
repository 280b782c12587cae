//! A table's state as its snapshots hold it: a complete full snapshot and
//! the change sets that continue it, in window order.
//!
//! The links are Snowflake times, not run order: a full snapshot's
//! `source.watermark_ns` is where the first change set's window starts, and
//! each change set's window ends where the next one starts. (A replay
//! restores an older point, so the change sets after it continue an older
//! snapshot than the newest one.)
//!
//! Rebuilding streams the full snapshot without the rows whose key a change
//! set touched, then each change set's surviving upserts. Memory follows
//! the number of changed keys (one compact key each), not the table.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, SortField};
use futures::stream::BoxStream;
use futures::StreamExt;

use super::manifest::{SnapshotKind, SnapshotStatus};
use super::read::{read_batches, verify, Verified};
use super::{Location, SnapshotError, SnapshotInfo};
use crate::postgres::state::SourcePoint;

/// A replayable state: `base` (a full snapshot) then `changes`, each
/// continuing the one before. Every snapshot in it matched its manifest
/// when the chain was built.
#[derive(Debug, Clone)]
pub struct Chain {
    pub base: Verified,
    pub changes: Vec<Verified>,
}

/// What a change set did to one key, last change set first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Deleted,
    /// Upserted by the change set at this index (its row is the key's row).
    Upserted(usize),
}

impl Chain {
    /// A full snapshot on its own.
    pub fn full(base: Verified) -> Chain {
        Chain {
            base,
            changes: Vec::new(),
        }
    }

    /// The chain that ends at `tip`: `tip` itself if it is a full snapshot;
    /// for a change set, its predecessors found (and verified) in
    /// `location`. A missing link is an error naming the gap.
    pub async fn ending_at(location: &Location, tip: Verified) -> Result<Chain, SnapshotError> {
        if tip.manifest.kind == SnapshotKind::Full {
            return Ok(Chain::full(tip));
        }
        let table = tip.manifest.table.clone();
        let siblings: Vec<SnapshotInfo> = location
            .list()
            .await?
            .into_iter()
            .filter(|s| s.table == table)
            .collect();
        let mut changes = vec![tip];
        // Each step moves to an earlier window start, so this ends; the
        // bound only guards against a location rewritten underneath.
        for _ in 0..=siblings.len() {
            let first = &changes[changes.len() - 1];
            let start = match &first.manifest.changes {
                Some(c) => c.window_start_ns,
                None => return Err(broken(first, "records no window (not a floe change set)")),
            };
            let Some(i) = predecessor(&siblings, start) else {
                return Err(broken(
                    first,
                    &format!(
                        "no complete snapshot of {table} in {} ends where its window starts ({}); \
                         the full snapshot and every change set since it are needed to rebuild this state",
                        location.display(),
                        time(start)
                    ),
                ));
            };
            let previous = verify(&siblings[i].snapshot).await?;
            if previous.manifest.kind == SnapshotKind::Full {
                changes.reverse();
                let chain = Chain {
                    base: previous,
                    changes,
                };
                chain.check_columns()?;
                return Ok(chain);
            }
            changes.push(previous);
        }
        Err(broken(&changes[0], "its chain of change sets does not end"))
    }

    /// The last snapshot: the state the chain rebuilds.
    pub fn tip(&self) -> &Verified {
        self.changes.last().unwrap_or(&self.base)
    }

    /// The rows' schema (the full snapshot's, as the source returned it).
    pub fn schema(&self) -> &SchemaRef {
        &self.base.schema
    }

    /// Rows in the rebuilt state: the full snapshot's, or the count the
    /// last change set left.
    pub fn rows(&self) -> u64 {
        match self
            .changes
            .last()
            .and_then(|c| c.manifest.changes.as_ref())
        {
            Some(c) => c.final_count,
            None => self.base.manifest.rows,
        }
    }

    /// Parts and bytes read to rebuild it.
    pub fn files(&self) -> usize {
        self.all().map(|v| v.manifest.files.len()).sum()
    }

    pub fn bytes(&self) -> u64 {
        self.all().map(|v| v.manifest.bytes).sum()
    }

    /// Where in Snowflake's time the rebuilt state stands (the last window's
    /// end), so an incremental run can continue from it.
    pub fn point(&self) -> Option<SourcePoint> {
        self.tip().manifest.source.point()
    }

    /// `TABLE@RUN` of the tip, and how it was rebuilt, for messages.
    pub fn describe(&self) -> String {
        match self.changes.len() {
            0 => self.base.snapshot.url(),
            n => format!(
                "{} (full snapshot {} + {n} change set{})",
                self.tip().snapshot.url(),
                self.base.manifest.run_id,
                if n == 1 { "" } else { "s" }
            ),
        }
    }

    fn all(&self) -> impl Iterator<Item = &Verified> {
        std::iter::once(&self.base).chain(&self.changes)
    }

    /// Every change set carries the full snapshot's columns (a change of
    /// columns at the source makes the next run a full refresh, so a chain
    /// never spans one).
    fn check_columns(&self) -> Result<(), SnapshotError> {
        let base = self.base.schema.fields();
        for set in &self.changes {
            let fields = set.schema.fields();
            let same = fields.len() == base.len() + 1
                && base
                    .iter()
                    .zip(fields.iter())
                    .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
            if !same {
                return Err(broken(
                    set,
                    &format!(
                        "its columns are not those of full snapshot {} it continues",
                        self.base.snapshot.name()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The rebuilt state's rows, in the full snapshot's schema. Ends with an
    /// error if the count differs from the one the last run left.
    pub fn read(
        &self,
        batch_size: usize,
    ) -> BoxStream<'static, Result<RecordBatch, SnapshotError>> {
        if self.changes.is_empty() {
            return read_batches(&self.base, batch_size);
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel(2);
        let chain = self.clone();
        tokio::spawn(async move {
            if let Err(e) = chain.rebuild(batch_size, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
    }

    async fn rebuild(
        &self,
        batch_size: usize,
        tx: &tokio::sync::mpsc::Sender<Result<RecordBatch, SnapshotError>>,
    ) -> Result<(), SnapshotError> {
        let schema = Arc::clone(&self.base.schema);
        let keys = self.key_columns()?;
        let converter = RowConverter::new(
            keys.iter()
                .map(|&i| SortField::new(schema.field(i).data_type().clone()))
                .collect(),
        )
        .map_err(|e| broken(self.tip(), &format!("its key columns: {e}")))?;
        let key_rows = |set: &Verified, batch: &RecordBatch| {
            let columns: Vec<_> = keys.iter().map(|&i| Arc::clone(batch.column(i))).collect();
            converter
                .convert_columns(&columns)
                .map_err(|e| broken(set, &format!("its key values: {e}")))
        };

        // Pass 1: the last thing each changed key went through.
        let mut fates: HashMap<Box<[u8]>, Fate> = HashMap::new();
        for (i, set) in self.changes.iter().enumerate() {
            let mut batches = read_batches(set, batch_size);
            while let Some(batch) = batches.next().await {
                let batch = batch?;
                let deleted = deleted_flags(set, &batch)?;
                let rows = key_rows(set, &batch)?;
                for r in 0..batch.num_rows() {
                    let row = rows.row(r);
                    let key = row.as_ref();
                    if deleted.value(r) {
                        // An update is a delete and an upsert of one key
                        // in one window: the upsert stands.
                        if fates.get(key) != Some(&Fate::Upserted(i)) {
                            fates.insert(key.into(), Fate::Deleted);
                        }
                    } else {
                        fates.insert(key.into(), Fate::Upserted(i));
                    }
                }
            }
        }

        // Pass 2: the full snapshot's untouched rows, then each key's last upsert.
        let mut sent = 0u64;
        let mut send = |batch: RecordBatch| {
            sent += batch.num_rows() as u64;
            let tx = tx.clone();
            async move { batch.num_rows() == 0 || tx.send(Ok(batch)).await.is_ok() }
        };
        let mut batches = read_batches(&self.base, batch_size);
        while let Some(batch) = batches.next().await {
            let batch = batch?;
            let rows = key_rows(&self.base, &batch)?;
            let keep: BooleanArray = (0..batch.num_rows())
                .map(|r| Some(!fates.contains_key(rows.row(r).as_ref())))
                .collect();
            let kept = filter_record_batch(&batch, &keep)
                .map_err(|e| broken(&self.base, &e.to_string()))?;
            if !send(kept).await {
                return Ok(());
            }
        }
        for (i, set) in self.changes.iter().enumerate() {
            let mut batches = read_batches(set, batch_size);
            while let Some(batch) = batches.next().await {
                let batch = batch?;
                let deleted = deleted_flags(set, &batch)?;
                let rows = key_rows(set, &batch)?;
                let keep: BooleanArray = (0..batch.num_rows())
                    .map(|r| {
                        Some(
                            !deleted.value(r)
                                && fates.get(rows.row(r).as_ref()) == Some(&Fate::Upserted(i)),
                        )
                    })
                    .collect();
                let kept =
                    filter_record_batch(&batch, &keep).map_err(|e| broken(set, &e.to_string()))?;
                let mut columns = kept.columns().to_vec();
                columns.pop();
                // The full snapshot's schema: its nullability is checked here.
                let rows = RecordBatch::try_new(Arc::clone(&schema), columns)
                    .map_err(|e| broken(set, &format!("its rows do not fit the table: {e}")))?;
                if !send(rows).await {
                    return Ok(());
                }
            }
        }
        let expected = self.rows();
        if sent != expected {
            return Err(broken(
                self.tip(),
                &format!(
                    "rebuilding it gives {sent} rows, but its run left {expected}: \
                     the chain does not rebuild that state"
                ),
            ));
        }
        Ok(())
    }

    /// Indexes of the key columns in the rows' schema, as the change sets record them.
    fn key_columns(&self) -> Result<Vec<usize>, SnapshotError> {
        let tip = self.tip();
        let keys = tip
            .manifest
            .changes
            .as_ref()
            .map(|c| c.keys.clone())
            .unwrap_or_default();
        if keys.is_empty() {
            return Err(broken(
                tip,
                "records no key columns (written by an older floe)",
            ));
        }
        for set in &self.changes {
            let theirs = set.manifest.changes.as_ref().map(|c| &c.keys);
            if theirs != Some(&keys) {
                return Err(broken(
                    set,
                    &format!("its key columns differ from {}'s", tip.snapshot.name()),
                ));
            }
        }
        keys.iter()
            .map(|k| {
                self.base.schema.index_of(k).map_err(|_| {
                    broken(
                        &self.base,
                        &format!("has no key column {k} (the change sets' key)"),
                    )
                })
            })
            .collect()
    }
}

/// The snapshot in `siblings` whose state a window starting at `start_ns`
/// continues: a complete full snapshot taken at that point, else a complete
/// change set ending there (the newest, should there be two).
pub fn predecessor(siblings: &[SnapshotInfo], start_ns: i64) -> Option<usize> {
    // The next window starts at the watermark as `floe.sync_state` keeps it
    // (a timestamptz: rounded to microseconds); manifests keep Snowflake's
    // nanoseconds. Two windows never lie within a microsecond.
    let at = |ns: i64| ns.abs_diff(start_ns) < 1000;
    let complete = |s: &SnapshotInfo| {
        s.manifest
            .as_ref()
            .filter(|m| m.status == SnapshotStatus::Complete)
            .cloned()
    };
    let full = siblings.iter().position(|s| {
        complete(s).is_some_and(|m| {
            m.kind == SnapshotKind::Full && m.source.point().is_some_and(|p| at(p.watermark_ns))
        })
    });
    full.or_else(|| {
        siblings.iter().position(|s| {
            complete(s).is_some_and(|m| {
                m.kind == SnapshotKind::Changes
                    && m.changes.as_ref().is_some_and(|c| at(c.window_end_ns))
            })
        })
    })
}

fn deleted_flags<'a>(
    set: &Verified,
    batch: &'a RecordBatch,
) -> Result<&'a BooleanArray, SnapshotError> {
    let column = batch.columns().last();
    match column.and_then(|c| c.as_boolean_opt()) {
        Some(flags) if flags.null_count() == 0 => Ok(flags),
        _ => Err(broken(set, "its last column is not the deleted flag")),
    }
}

fn broken(snapshot: &Verified, message: &str) -> SnapshotError {
    SnapshotError::Chain {
        snapshot: snapshot.snapshot.name().to_string(),
        message: message.to_string(),
    }
}

fn time(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339()
}
