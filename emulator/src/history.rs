//! Tables with a history, as Snowflake keeps them: every DML statement
//! commits a new table version at a commit time; `AT`/`BEFORE` read the
//! version current at a time; `CHANGES` gives the net delta between two
//! versions. A table gets a history the first time a statement changes it
//! (until then it is served straight from its parquet file).
//!
//! Storage is row versions, not copies per version: each stored row carries
//! its stable row id, the version that created it and the one that ended it
//! (an UPDATE ends a row version and appends its successor with the same row
//! id). Reading version `v` filters the stored rows by `from <= v < to`; a
//! stored batch no statement touched is handed out as it is, without a copy.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, RecordBatch, StringArray, UInt64Array};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use schemas::snowflake::SnowflakeType;

/// A version that no statement has ended.
const LIVE: u32 = u32::MAX;

/// Snowflake's error for a time outside time travel (`000707`, SQL state `02000`).
pub(crate) const TRAVEL_CODE: (&str, &str) = ("000707", "02000");
/// Snowflake's error for change data outside change tracking (`091930`, `2F003`).
pub(crate) const TRACKING_CODE: (&str, &str) = ("091930", "2F003");

/// A statement Snowflake refuses, with its code and SQL state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SqlError {
    pub(crate) code: &'static str,
    pub(crate) sql_state: &'static str,
    pub(crate) message: String,
}

impl SqlError {
    pub(crate) fn compilation(message: impl Into<String>) -> SqlError {
        SqlError {
            code: "001003",
            sql_state: "42000",
            message: format!("SQL compilation error:\n{}", message.into()),
        }
    }
}

/// Per stored batch: each row's id and the versions that created and ended it.
struct Versions {
    row_id: Vec<u64>,
    from: Vec<u32>,
    to: Vec<u32>,
}

/// One table's stored rows and versions.
pub(crate) struct History {
    name: String,
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    versions: Vec<Versions>,
    /// Commit time of each version, in ns since the epoch; version 0 is the
    /// table's creation (the emulator's start).
    commits: Vec<i64>,
    /// Version ranges `[on, off)` during which change tracking was on.
    tracking: Vec<(u32, u32)>,
    /// Change tracking is on now (the last range grows with each commit).
    tracking_on: bool,
    next_row_id: u64,
    /// Time travel reaches back this far (`DATA_RETENTION_TIME_IN_DAYS`).
    retention_ns: i64,
}

/// Where a stored row is: (batch, row), packed into the `__FLOE_POS` column DML reads.
pub(crate) fn pack(batch: usize, row: usize) -> u64 {
    ((batch as u64) << 32) | row as u64
}

fn unpack(pos: u64) -> (usize, usize) {
    ((pos >> 32) as usize, (pos & 0xffff_ffff) as usize)
}

/// The hidden column DML statements read to know which stored rows they match.
pub(crate) const POS_COLUMN: &str = "__FLOE_POS";

impl History {
    /// A table created at `created_ns` with `batches` as its first version.
    pub(crate) fn new(
        name: &str,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
        created_ns: i64,
        retention_ns: i64,
    ) -> History {
        let mut next_row_id = 0;
        let versions = batches
            .iter()
            .map(|b| {
                let n = b.num_rows();
                let ids = (next_row_id..next_row_id + n as u64).collect();
                next_row_id += n as u64;
                Versions {
                    row_id: ids,
                    from: vec![0; n],
                    to: vec![LIVE; n],
                }
            })
            .collect();
        History {
            name: name.to_string(),
            schema,
            batches,
            versions,
            commits: vec![created_ns],
            tracking: Vec::new(),
            tracking_on: false,
            next_row_id,
            retention_ns,
        }
    }

    pub(crate) fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    /// The current version.
    pub(crate) fn live(&self) -> u32 {
        (self.commits.len() - 1) as u32
    }

    /// The latest commit's time: `SYSTEM$LAST_CHANGE_COMMIT_TIME`.
    pub(crate) fn last_commit_ns(&self) -> i64 {
        self.commits[self.commits.len() - 1]
    }

    fn travel_error(&self) -> SqlError {
        SqlError {
            code: TRAVEL_CODE.0,
            sql_state: TRAVEL_CODE.1,
            message: format!(
                "Time travel data is not available for table {}. The requested time is either beyond the allowed time travel period or before the object creation time.",
                self.name
            ),
        }
    }

    /// The version current at `ns` (`AT`), or just before it (`BEFORE`).
    pub(crate) fn version_at(&self, ns: i64, before: bool, now_ns: i64) -> Result<u32, SqlError> {
        if ns < self.commits[0] || ns < now_ns - self.retention_ns {
            return Err(self.travel_error());
        }
        let current = self
            .commits
            .iter()
            .rposition(|&t| if before { t < ns } else { t <= ns });
        current.map(|v| v as u32).ok_or_else(|| self.travel_error())
    }

    /// The rows of version `v`; with `positions`, plus [`POS_COLUMN`].
    pub(crate) fn rows_at(&self, v: u32, positions: bool) -> Result<Vec<RecordBatch>, SqlError> {
        let arrow = |e: arrow::error::ArrowError| SqlError::compilation(e.to_string());
        let with_positions = positions.then(|| self.schema_with_positions());
        let mut out = Vec::new();
        for (b, (batch, meta)) in self.batches.iter().zip(&self.versions).enumerate() {
            let visible: BooleanArray = meta
                .from
                .iter()
                .zip(&meta.to)
                .map(|(&f, &t)| Some(f <= v && v < t))
                .collect();
            let kept = visible.true_count();
            if kept == 0 {
                continue;
            }
            // A stored batch no statement touched goes out as it is.
            let rows = match kept == batch.num_rows() {
                true => batch.clone(),
                false => filter_record_batch(batch, &visible).map_err(arrow)?,
            };
            match &with_positions {
                None => out.push(rows),
                Some(schema) => {
                    let pos: UInt64Array =
                        visible.values().set_indices().map(|r| pack(b, r)).collect();
                    let mut columns = rows.columns().to_vec();
                    columns.push(Arc::new(pos));
                    out.push(RecordBatch::try_new(Arc::clone(schema), columns).map_err(arrow)?);
                }
            }
        }
        Ok(out)
    }

    /// The schema [`History::rows_at`] gives with positions.
    pub(crate) fn schema_with_positions(&self) -> SchemaRef {
        self.schema_plus(vec![Field::new(POS_COLUMN, DataType::UInt64, false)])
    }

    /// The table's columns followed by `extra`.
    fn schema_plus(&self, extra: Vec<Field>) -> SchemaRef {
        let fields = self.schema.fields().iter().map(|f| f.as_ref().clone());
        Arc::new(Schema::new(fields.chain(extra).collect::<Vec<_>>()))
    }

    /// Commits a statement: the rows at `ended` positions stop at the new
    /// version; `updated` (successor rows of ended ones, same ids, in the
    /// order of `ended`) and `inserted` (new rows) start at it. Returns the
    /// new version.
    pub(crate) fn commit(
        &mut self,
        ended: &[u64],
        updated: Option<RecordBatch>,
        inserted: Option<RecordBatch>,
        now_ns: i64,
    ) -> u32 {
        // Commit times are whole milliseconds (time travel is addressed in
        // milliseconds), strictly increasing, and never before `now_ns`.
        let ceil_ms = now_ns.div_euclid(1_000_000) * 1_000_000
            + if now_ns.rem_euclid(1_000_000) > 0 {
                1_000_000
            } else {
                0
            };
        let at = ceil_ms.max(self.last_commit_ns() + 1_000_000);
        self.commits.push(at);
        let v = self.live();
        let mut successor_ids = Vec::with_capacity(ended.len());
        for &pos in ended {
            let (b, r) = unpack(pos);
            if let Some(meta) = self.versions.get_mut(b) {
                if r < meta.to.len() && meta.to[r] == LIVE {
                    meta.to[r] = v;
                }
                successor_ids.push(meta.row_id[r]);
            }
        }
        if let Some(batch) = updated.filter(|b| b.num_rows() > 0) {
            let n = batch.num_rows();
            self.batches.push(batch);
            self.versions.push(Versions {
                row_id: successor_ids.into_iter().take(n).collect(),
                from: vec![v; n],
                to: vec![LIVE; n],
            });
        }
        if let Some(batch) = inserted.filter(|b| b.num_rows() > 0) {
            let n = batch.num_rows();
            let ids = (self.next_row_id..self.next_row_id + n as u64).collect();
            self.next_row_id += n as u64;
            self.batches.push(batch);
            self.versions.push(Versions {
                row_id: ids,
                from: vec![v; n],
                to: vec![LIVE; n],
            });
        }
        if self.tracking_on {
            if let Some(last) = self.tracking.last_mut() {
                last.1 = v + 1;
            }
        }
        v
    }

    /// Up to `k` distinct positions of current rows, drawn with `draw`
    /// (uniform over stored rows; a row no longer current is drawn again).
    pub(crate) fn sample_live(&self, k: usize, draw: &mut impl FnMut(u64) -> u64) -> Vec<u64> {
        let v = self.live();
        let stored: u64 = self.versions.iter().map(|m| m.row_id.len() as u64).sum();
        let mut picked = HashSet::new();
        let mut out = Vec::with_capacity(k);
        let mut tries = 0;
        while out.len() < k && stored > 0 && tries < k * 20 {
            tries += 1;
            let mut i = draw(stored);
            for (b, meta) in self.versions.iter().enumerate() {
                let n = meta.row_id.len() as u64;
                if i < n {
                    let r = i as usize;
                    if meta.from[r] <= v && v < meta.to[r] && picked.insert((b, r)) {
                        out.push(pack(b, r));
                    }
                    break;
                }
                i -= n;
            }
        }
        out
    }

    /// The values of column `column` at `positions`, in order.
    pub(crate) fn values_at(
        &self,
        positions: &[u64],
        column: usize,
    ) -> Result<arrow::array::ArrayRef, arrow::error::ArrowError> {
        let slices: Vec<arrow::array::ArrayRef> = positions
            .iter()
            .map(|&p| {
                let (b, r) = unpack(p);
                self.batches[b].column(column).slice(r, 1)
            })
            .collect();
        let refs: Vec<&dyn arrow::array::Array> = slices.iter().map(|a| a.as_ref()).collect();
        arrow::compute::concat(&refs)
    }

    /// `ALTER TABLE … SET DATA_RETENTION_TIME_IN_DAYS = n`.
    pub(crate) fn set_retention_days(&mut self, days: u32) {
        self.retention_ns = i64::from(days) * 86_400 * 1_000_000_000;
    }

    /// `ALTER TABLE … SET CHANGE_TRACKING = TRUE|FALSE`.
    pub(crate) fn set_tracking(&mut self, on: bool) {
        if on && !self.tracking_on {
            let v = self.live();
            self.tracking.push((v, v + 1));
        }
        self.tracking_on = on;
    }

    /// Whether change tracking covered every version in `[a, b]`.
    fn tracked(&self, a: u32, b: u32) -> bool {
        self.tracking.iter().any(|&(on, off)| on <= a && b < off)
    }

    /// Whether the columns at `projection` (all, if `None`) include a
    /// GEOGRAPHY or GEOMETRY one.
    fn has_geospatial(&self, projection: Option<&[usize]>) -> bool {
        let fields = self.schema.fields();
        let geospatial = |i: &usize| {
            matches!(
                SnowflakeType::of_field(&fields[*i]),
                Some(SnowflakeType::Geography | SnowflakeType::Geometry)
            )
        };
        match projection {
            Some(p) => p.iter().any(geospatial),
            None => (0..fields.len()).any(|i| geospatial(&i)),
        }
    }

    /// `CHANGES(INFORMATION => DEFAULT) AT(a) END(b)`: the net delta from
    /// version `a` to `b`, each row with `METADATA$ACTION`,
    /// `METADATA$ISUPDATE` and `METADATA$ROW_ID`; `projection` keeps only
    /// those columns (a view of the table).
    pub(crate) fn changes(
        &self,
        a: u32,
        b: u32,
        projection: Option<&[usize]>,
    ) -> Result<(SchemaRef, Vec<RecordBatch>), SqlError> {
        if !self.tracked(a, b) {
            return Err(SqlError {
                code: TRACKING_CODE.0,
                sql_state: TRACKING_CODE.1,
                message: format!(
                    "SQL compilation error:\nChange tracking is not enabled or has been missing for the time range requested on table '{}'.",
                    self.name
                ),
            });
        }
        if self.has_geospatial(projection) {
            return Err(SqlError::compilation(format!(
                "Change data with INFORMATION => DEFAULT cannot be read from table '{}': it has geospatial columns (read the changed keys from a view without them)",
                self.name
            )));
        }
        let visible = |f: u32, t: u32, v: u32| f <= v && v < t;
        let mut deleted_ids = HashSet::new();
        let mut inserted_ids = HashSet::new();
        for meta in &self.versions {
            for i in 0..meta.row_id.len() {
                let (at_a, at_b) = (
                    visible(meta.from[i], meta.to[i], a),
                    visible(meta.from[i], meta.to[i], b),
                );
                if at_a && !at_b {
                    deleted_ids.insert(meta.row_id[i]);
                } else if at_b && !at_a {
                    inserted_ids.insert(meta.row_id[i]);
                }
            }
        }
        let metadata = [
            Field::new("METADATA$ACTION", DataType::Utf8, false),
            Field::new("METADATA$ISUPDATE", DataType::Boolean, false),
            Field::new("METADATA$ROW_ID", DataType::Utf8, false),
        ];
        let columns: Vec<usize> = match projection {
            Some(p) => p.to_vec(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let fields = columns
            .iter()
            .map(|&i| self.schema.field(i).clone())
            .chain(metadata);
        let schema = Arc::new(Schema::new(fields.collect::<Vec<_>>()));
        let mut out = Vec::new();
        for (batch, meta) in self.batches.iter().zip(&self.versions) {
            let mut keep = Vec::with_capacity(meta.row_id.len());
            let (mut action, mut is_update, mut row_id) = (Vec::new(), Vec::new(), Vec::new());
            for i in 0..meta.row_id.len() {
                let (at_a, at_b) = (
                    visible(meta.from[i], meta.to[i], a),
                    visible(meta.from[i], meta.to[i], b),
                );
                let id = meta.row_id[i];
                let which = match (at_a, at_b) {
                    (true, false) => Some(("DELETE", inserted_ids.contains(&id))),
                    (false, true) => Some(("INSERT", deleted_ids.contains(&id))),
                    _ => None,
                };
                keep.push(which.is_some());
                if let Some((act, upd)) = which {
                    action.push(act);
                    is_update.push(upd);
                    row_id.push(format!("{id:016x}"));
                }
            }
            if action.is_empty() {
                continue;
            }
            let rows = filter_record_batch(batch, &BooleanArray::from(keep))
                .map_err(|e| SqlError::compilation(e.to_string()))?;
            let mut columns: Vec<ArrayRef> = columns_of(&rows, &columns);
            columns.push(Arc::new(StringArray::from(action)));
            columns.push(Arc::new(BooleanArray::from(is_update)));
            columns.push(Arc::new(StringArray::from(row_id)));
            out.push(
                RecordBatch::try_new(Arc::clone(&schema), columns)
                    .map_err(|e| SqlError::compilation(e.to_string()))?,
            );
        }
        Ok((schema, out))
    }

    /// Rows in version `v` (for tests and answers).
    #[cfg(test)]
    pub(crate) fn count_at(&self, v: u32) -> usize {
        self.rows_at(v, false)
            .expect("rows")
            .iter()
            .map(RecordBatch::num_rows)
            .sum()
    }
}

/// The arrays of `batch` at `columns`, in that order.
fn columns_of(batch: &RecordBatch, columns: &[usize]) -> Vec<ArrayRef> {
    columns
        .iter()
        .map(|&i| Arc::clone(batch.column(i)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;

    fn batch(ids: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("ID", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(ids.to_vec()))]).unwrap()
    }

    fn changes(h: &History, a: u32, b: u32) -> Vec<(i64, String, bool)> {
        let (_, batches) = h.changes(a, b, None).unwrap();
        let mut out = Vec::new();
        for b in batches {
            let id = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            let act = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
            let upd = b.column(2).as_any().downcast_ref::<BooleanArray>().unwrap();
            for i in 0..b.num_rows() {
                out.push((id.value(i), act.value(i).to_string(), upd.value(i)));
            }
        }
        out.sort();
        out
    }

    fn positions_of(h: &History, ids: &[i64]) -> Vec<u64> {
        let mut out = Vec::new();
        for b in h.rows_at(h.live(), true).unwrap() {
            let id = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            let pos = b.column(1).as_any().downcast_ref::<UInt64Array>().unwrap();
            for i in 0..b.num_rows() {
                if ids.contains(&id.value(i)) {
                    out.push(pos.value(i));
                }
            }
        }
        out
    }

    #[test]
    fn versions_keep_every_state_and_changes_are_the_net_delta() {
        let ms = 1_000_000;
        let mut h = History::new(
            "T",
            batch(&[1, 2, 3]).schema(),
            vec![batch(&[1, 2, 3])],
            0,
            i64::MAX,
        );
        h.set_tracking(true);
        // v1: update 1 (as 10), delete 2, insert 4.
        let v1 = h.commit(
            &positions_of(&h, &[1, 2]),
            Some(batch(&[10])),
            Some(batch(&[4])),
            5 * ms,
        );
        // v2: insert 5 then v3: delete it (inside the next window: no trace).
        let v2 = h.commit(&[], None, Some(batch(&[5])), 6 * ms);
        let v3 = h.commit(&positions_of(&h, &[5]), None, None, 7 * ms);
        assert_eq!((v1, v2, v3), (1, 2, 3));
        assert_eq!(h.count_at(0), 3);
        assert_eq!(h.count_at(v1), 3);
        assert_eq!(h.count_at(v2), 4);
        assert_eq!(h.count_at(v3), 3);
        assert_eq!(
            changes(&h, 0, v1),
            vec![
                (1, "DELETE".into(), true),
                (2, "DELETE".into(), false),
                (4, "INSERT".into(), false),
                (10, "INSERT".into(), true),
            ]
        );
        assert!(
            changes(&h, v1, v3).is_empty(),
            "an insert deleted in the window leaves nothing"
        );
        assert_eq!(changes(&h, v1, v2), vec![(5, "INSERT".into(), false)]);
        // Time travel by commit time, at millisecond resolution.
        assert_eq!(h.version_at(5 * ms, false, 8 * ms).unwrap(), 1);
        assert_eq!(h.version_at(5 * ms, true, 8 * ms).unwrap(), 0);
        assert_eq!(h.version_at(6 * ms + 1, false, 8 * ms).unwrap(), 2);
        assert_eq!(h.version_at(-1, false, 8 * ms).unwrap_err().code, "000707");
    }

    #[test]
    fn change_data_needs_tracking_over_the_whole_window() {
        let mut h = History::new("T", batch(&[1]).schema(), vec![batch(&[1])], 0, i64::MAX);
        let v1 = h.commit(&[], None, Some(batch(&[2])), 1_000_000);
        h.set_tracking(true);
        let v2 = h.commit(&[], None, Some(batch(&[3])), 2_000_000);
        assert_eq!(h.changes(0, v2, None).unwrap_err().code, "091930");
        assert_eq!(changes(&h, v1, v2), vec![(3, "INSERT".into(), false)]);
        h.set_tracking(false);
        let v3 = h.commit(&[], None, Some(batch(&[4])), 3_000_000);
        assert_eq!(h.changes(v1, v3, None).unwrap_err().code, "091930");
    }

    #[test]
    fn time_travel_stops_at_the_retention_period() {
        let h = History::new("T", batch(&[1]).schema(), vec![batch(&[1])], 0, 10);
        assert!(h.version_at(95, false, 100).is_ok());
        assert_eq!(h.version_at(50, false, 100).unwrap_err().code, "000707");
    }
}
