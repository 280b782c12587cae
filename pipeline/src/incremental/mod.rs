//! Incremental sync: applying a window of Snowflake's change data in place
//! instead of reloading the table (see `shared/snowflake-changes.md` for what
//! Snowflake guarantees about change data).
//!
//! [`eligible`] decides once, from the config and the DataFusion plan of the
//! table's transform, whether a table can ever be loaded incrementally;
//! [`window`] holds the Snowflake statements that read a window of changes.
//! The run itself is `run::incremental`; the Postgres side of the apply is
//! `postgres::apply`.

pub mod eligible;
pub mod window;

use arrow::datatypes::Schema;
use serde::Serialize;

pub use window::Window;

/// Why an incremental run did a full refresh instead (`reason` in reports
/// and `sync_runs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// The table has no watermark: never loaded from Snowflake, or last
    /// loaded from parquet or Flight (or replayed from a snapshot of them).
    NoWatermark,
    /// The watermark is older than Snowflake keeps time travel (`000707`).
    TimeTravel,
    /// Change tracking was off for part of the window (`091930`).
    ChangeTracking,
    /// The source's columns are not those of the last load.
    SourceChanged,
    /// The target table does not exist.
    TargetMissing,
    /// The target's columns or key are not what the transform writes.
    TargetShape,
    /// The applied window did not leave the target with Snowflake's count.
    Verification,
}

impl Fallback {
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::NoWatermark => "no_watermark",
            Fallback::TimeTravel => "time_travel",
            Fallback::ChangeTracking => "change_tracking",
            Fallback::SourceChanged => "source_changed",
            Fallback::TargetMissing => "target_missing",
            Fallback::TargetShape => "target_shape",
            Fallback::Verification => "verification",
        }
    }

    /// The Snowflake error codes that mean the window cannot be read.
    pub fn from_snowflake_code(code: &str) -> Option<Fallback> {
        match code {
            "000707" => Some(Fallback::TimeTravel),
            "091930" => Some(Fallback::ChangeTracking),
            _ => None,
        }
    }
}

impl std::fmt::Display for Fallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an incremental run applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Changes {
    /// Keys that were new to the target.
    pub inserted: u64,
    /// Keys already in the target, rewritten with the source's row.
    pub updated: u64,
    /// Keys removed from the target.
    pub deleted: u64,
    pub window: Window,
}

/// The source's columns and their Arrow types, hashed: what a full refresh
/// recorded, so an incremental run notices a source whose columns changed
/// (a new, dropped, renamed or retyped column needs a full refresh).
pub fn fingerprint(schema: &Schema) -> String {
    let mut text = String::new();
    for f in schema.fields() {
        text.push_str(f.name());
        text.push(' ');
        text.push_str(&f.data_type().to_string());
        text.push('\n');
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest.as_ref()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field};

    #[test]
    fn the_fingerprint_changes_with_a_column_s_name_type_or_order() {
        let a = Field::new("ID", DataType::Int64, false);
        let b = Field::new("NAME", DataType::Utf8, true);
        let base = fingerprint(&Schema::new(vec![a.clone(), b.clone()]));
        assert_eq!(base.len(), 24);
        assert_eq!(base, fingerprint(&Schema::new(vec![a.clone(), b.clone()])));
        assert_ne!(base, fingerprint(&Schema::new(vec![b.clone(), a.clone()])));
        assert_ne!(base, fingerprint(&Schema::new(vec![a.clone()])));
        let retyped = Field::new("NAME", DataType::LargeUtf8, true);
        assert_ne!(base, fingerprint(&Schema::new(vec![a.clone(), retyped])));
        let renamed = Field::new("LABEL", DataType::Utf8, true);
        assert_ne!(base, fingerprint(&Schema::new(vec![a, renamed])));
    }

    #[test]
    fn snowflake_s_two_window_errors_are_fallbacks_and_nothing_else_is() {
        assert_eq!(
            Fallback::from_snowflake_code("000707"),
            Some(Fallback::TimeTravel)
        );
        assert_eq!(
            Fallback::from_snowflake_code("091930"),
            Some(Fallback::ChangeTracking)
        );
        assert_eq!(Fallback::from_snowflake_code("002003"), None);
    }
}
