//! `manifest.json`: what a snapshot holds, written after its last part.

use std::collections::BTreeMap;

use arrow::datatypes::Schema;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub(crate) const MANIFEST: &str = "manifest.json";

/// The manifest format; bumped when a field changes meaning.
pub(crate) const FORMAT: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotStatus {
    /// The source was read to its end, every part was written, and the run
    /// loaded it: what `TABLE@latest` means.
    Complete,
    /// Every row was read and written, but the run's load failed (`error`
    /// says why): kept to replay the bad day by name once its cause is
    /// fixed; never `latest`.
    #[serde(rename = "load_failed")]
    LoadFailed,
    /// The run stopped before the source was read to its end; `error` says
    /// why. Never replayed.
    Incomplete,
}

/// What a snapshot holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotKind {
    /// Every row the source returned: replayable on its own.
    #[default]
    Full,
    /// An incremental run's change set: the source's rows of the changed
    /// keys (as at the window's end) and the deleted keys (rows with
    /// [`DELETED_COLUMN`] true, only their key columns set). It continues
    /// the table's last full snapshot; it is never replayed on its own.
    Changes,
}

/// The column that marks a change set's deleted keys.
pub const DELETED_COLUMN: &str = "FLOE$DELETED";

/// The window a change set covers and the count it left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeSet {
    /// Snowflake's time, ns since the epoch.
    pub window_start_ns: i64,
    pub window_end_ns: i64,
    /// Rows in the target once the window was applied.
    pub final_count: u64,
    /// The key columns, by their names in the snapshot: what a replay
    /// matches change sets to the full snapshot's rows by.
    #[serde(default)]
    pub keys: Vec<String>,
}

/// Where the snapshotted batches came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SnapshotSource {
    Snowflake {
        query: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        query_id: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        account: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        database: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        schema: Option<String>,
        /// Snowflake's time taken just before the query (ns since the
        /// epoch), the source's fingerprint and change token then: a replay
        /// restores them as the table's watermark, so an incremental run
        /// can continue from the replayed state.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        watermark_ns: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fingerprint: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        change_token: Option<String>,
    },
    Parquet {
        path: String,
    },
    Flight {
        url: String,
    },
}

impl SnapshotSource {
    /// Where the snapshotted rows stand in Snowflake's time, if it was read
    /// from Snowflake by a floe that recorded it.
    pub fn point(&self) -> Option<crate::postgres::state::SourcePoint> {
        match self {
            SnapshotSource::Snowflake {
                watermark_ns: Some(watermark_ns),
                fingerprint: Some(fingerprint),
                change_token,
                ..
            } => Some(crate::postgres::state::SourcePoint {
                watermark_ns: *watermark_ns,
                fingerprint: fingerprint.clone(),
                change_token: change_token.clone(),
            }),
            _ => None,
        }
    }
}

/// One column of the snapshotted batches, with the source's type tags
/// (`floe.snowflake_type`, e.g. `NUMBER(6,2)`, as Arrow field metadata).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldSpec {
    pub name: String,
    pub data_type: String,
    pub nullable: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

impl FieldSpec {
    pub fn of(schema: &Schema) -> Vec<FieldSpec> {
        schema
            .fields()
            .iter()
            .map(|f| FieldSpec {
                name: f.name().clone(),
                data_type: f.data_type().to_string(),
                nullable: f.is_nullable(),
                metadata: f
                    .metadata()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            })
            .collect()
    }

    /// `NAME TYPE` with the Snowflake type when known, for explanations.
    pub fn describe(&self) -> String {
        let sf = self
            .metadata
            .get("floe.snowflake_type")
            .or_else(|| self.metadata.get("logicalType"))
            .map(|t| format!(" (Snowflake {t})"))
            .unwrap_or_default();
        format!("{} {}{sf}", self.name, self.data_type)
    }
}

/// One parquet part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartFile {
    /// File name inside the snapshot.
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
    /// SHA-256 of the file, hex.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    #[serde(default)]
    pub kind: SnapshotKind,
    /// A change set's window (kind `changes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<ChangeSet>,
    /// The config's table name.
    pub table: String,
    pub run_id: String,
    pub status: SnapshotStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub source: SnapshotSource,
    pub schema: Vec<FieldSpec>,
    pub files: Vec<PartFile>,
    pub rows: u64,
    pub bytes: u64,
    pub floe_version: String,
    pub started_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
}
