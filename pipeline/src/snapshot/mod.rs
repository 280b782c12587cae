//! Run snapshots: what a run read from its source, kept so the load can be
//! replayed without the source.
//!
//! Layout, under a snapshot location (a local directory, or an object store
//! URL): `<table>/<run-id>/part-NNNNN.parquet` (zstd) and `manifest.json`,
//! written last. The manifest lists every part with its row count, size and
//! SHA-256, so a snapshot is checked against it before anything is loaded.
//! A snapshot without a manifest, or whose manifest says `incomplete`, is
//! never taken for a good one.
//!
//! Everything goes through `object_store`, so a directory and a bucket are
//! the same code; floe builds with local and in-memory stores (and S3/GCS
//! with the `cloud` feature).

mod chain;
pub mod changes;
mod manifest;
mod read;
mod write;

use std::path::PathBuf;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt};

pub use chain::{predecessor, Chain};
pub use manifest::{
    ChangeSet, FieldSpec, Manifest, PartFile, SnapshotKind, SnapshotSource, SnapshotStatus,
    DELETED_COLUMN,
};
pub use read::{first_part_schema, read_batches, verify, Verified};
pub use write::{SnapshotFeed, SnapshotOptions, SnapshotTee, SnapshotWriter};

/// Everything that can go wrong with a snapshot; each names the file or location.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    #[error("snapshot location {location}: {message}")]
    Location { location: String, message: String },
    #[error("snapshot {snapshot}: {message}")]
    NotFound { snapshot: String, message: String },
    #[error("snapshot {snapshot}: {file}: {message}")]
    Integrity {
        snapshot: String,
        file: String,
        message: String,
    },
    #[error("snapshot {snapshot} is not complete ({status}){}; it cannot be replayed", .error.as_deref().map(|e| format!(": {e}")).unwrap_or_default())]
    Incomplete {
        snapshot: String,
        status: String,
        error: Option<String>,
    },
    /// A change set's chain back to its full snapshot is broken or does
    /// not rebuild the state its run left.
    #[error("snapshot {snapshot}: {message}")]
    Chain { snapshot: String, message: String },
    #[error("snapshot {snapshot}: {file}: {message}")]
    Io {
        snapshot: String,
        file: String,
        message: String,
    },
}

/// Where snapshots live: a store and the prefix inside it.
#[derive(Debug, Clone)]
pub struct Location {
    store: Arc<dyn ObjectStore>,
    root: StorePath,
    /// As the user wrote it, for messages and `sync_runs`.
    display: String,
    /// The directory, when the store is the local file system (so empty
    /// directories can be removed after pruning).
    local: Option<PathBuf>,
}

impl Location {
    /// A local directory (created if missing), `file://...`, or, with the
    /// `cloud` feature, `s3://bucket/prefix` / `gs://bucket/prefix`.
    pub fn parse(spec: &str) -> Result<Location, SnapshotError> {
        let err = |message: String| SnapshotError::Location {
            location: spec.to_string(),
            message,
        };
        let local = match spec.split_once("://") {
            None => PathBuf::from(spec),
            Some(("file", path)) => PathBuf::from(path),
            Some((scheme, _)) => return cloud(spec, scheme).map_err(err),
        };
        std::fs::create_dir_all(&local).map_err(|e| err(format!("cannot create it: {e}")))?;
        let dir = local
            .canonicalize()
            .map_err(|e| err(format!("cannot resolve it: {e}")))?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)
            .map_err(|e| err(e.to_string()))?;
        Ok(Location {
            store: Arc::new(store),
            root: StorePath::default(),
            display: dir.display().to_string(),
            local: Some(dir),
        })
    }

    /// Any object store, under `root` (tests use the in-memory one).
    pub fn new(store: Arc<dyn ObjectStore>, root: &str, display: &str) -> Location {
        Location {
            store,
            root: StorePath::from(root),
            display: display.to_string(),
            local: None,
        }
    }

    pub fn display(&self) -> &str {
        &self.display
    }

    pub(crate) fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// How many bytes of a part file are gathered before they go to the
    /// store (and at most two such pieces are in flight). S3 takes no
    /// multipart piece under 5 MiB but the last; a local file takes any,
    /// and there 1 MiB pieces cut the buffers' share of the heap's peak
    /// from 9.5 to 1.7 MiB (BENCHMARKS).
    pub(crate) fn upload_piece_bytes(&self) -> usize {
        match self.local {
            Some(_) => 1 << 20,
            None => 5 << 20,
        }
    }

    /// The prefix of one snapshot.
    fn snapshot_prefix(&self, table: &str, run_id: &str) -> StorePath {
        self.root.clone().join(table).join(run_id)
    }

    /// One snapshot, as a path inside this location.
    pub fn snapshot(&self, table: &str, run_id: &str) -> SnapshotRef {
        SnapshotRef {
            location: self.clone(),
            prefix: self.snapshot_prefix(table, run_id),
            name: format!("{table}@{run_id}"),
        }
    }

    /// Every snapshot here, newest run first within each table.
    pub async fn list(&self) -> Result<Vec<SnapshotInfo>, SnapshotError> {
        let objects: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&self.root))
            .try_collect()
            .await
            .map_err(|e| SnapshotError::Location {
                location: self.display.clone(),
                message: e.to_string(),
            })?;
        let depth = self.root.parts().count();
        let mut groups: std::collections::BTreeMap<
            (String, String),
            Vec<object_store::ObjectMeta>,
        > = Default::default();
        for o in objects {
            let parts: Vec<String> = o.location.parts().map(|p| p.as_ref().to_string()).collect();
            if parts.len() == depth + 3 {
                groups
                    .entry((parts[depth].clone(), parts[depth + 1].clone()))
                    .or_default()
                    .push(o);
            }
        }
        let mut out = Vec::new();
        for ((table, run_id), objects) in groups {
            let snapshot = self.snapshot(&table, &run_id);
            let manifest = match objects
                .iter()
                .any(|o| o.location.filename() == Some(manifest::MANIFEST))
            {
                true => Some(snapshot.manifest().await),
                false => None,
            };
            let modified = objects.iter().map(|o| o.last_modified).max();
            let (manifest, problem) = match manifest {
                Some(Ok(m)) => (Some(m), None),
                Some(Err(e)) => (None, Some(e.to_string())),
                None => (None, None),
            };
            out.push(SnapshotInfo {
                snapshot,
                table,
                run_id,
                bytes: objects.iter().map(|o| o.size).sum(),
                files: objects.len(),
                modified,
                manifest,
                problem,
            });
        }
        out.sort_by(|a, b| a.table.cmp(&b.table).then(b.newness().cmp(&a.newness())));
        Ok(out)
    }

    /// `TABLE@RUN_ID` or `TABLE@latest`: the newest complete snapshot, a
    /// full one or an incremental run's change set (the latest state floe
    /// loaded; a change set is replayed with its chain, see [`Chain`]).
    pub async fn resolve(&self, table: &str, run: &str) -> Result<SnapshotRef, SnapshotError> {
        if run != "latest" {
            return Ok(self.snapshot(table, run));
        }
        self.list()
            .await?
            .into_iter()
            .find(|s| s.table == table && s.is_loaded_state())
            .map(|s| s.snapshot)
            .ok_or_else(|| SnapshotError::NotFound {
                snapshot: format!("{table}@latest"),
                message: format!("no complete snapshot of {table} in {}", self.display),
            })
    }

    /// Deletes one snapshot's files (and, on a local disk, its directory).
    pub async fn delete(&self, snapshot: &SnapshotRef) -> Result<(), SnapshotError> {
        let io = |e: object_store::Error| SnapshotError::Io {
            snapshot: snapshot.name.clone(),
            file: String::new(),
            message: e.to_string(),
        };
        let objects: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&snapshot.prefix))
            .try_collect()
            .await
            .map_err(io)?;
        // The manifest goes first, so an interrupted prune never leaves a
        // snapshot that looks complete but lacks parts.
        let (manifests, parts): (Vec<_>, Vec<_>) = objects
            .into_iter()
            .partition(|o| o.location.filename() == Some(manifest::MANIFEST));
        for o in manifests.into_iter().chain(parts) {
            self.store.delete(&o.location).await.map_err(io)?;
        }
        if let Some(dir) = &self.local {
            let run_dir = snapshot
                .prefix
                .parts()
                .fold(dir.clone(), |d, p| d.join(p.as_ref()));
            let _ = std::fs::remove_dir(&run_dir);
            if let Some(table_dir) = run_dir.parent() {
                let _ = std::fs::remove_dir(table_dir);
            }
        }
        Ok(())
    }
}

#[cfg(feature = "cloud")]
fn cloud(spec: &str, scheme: &str) -> Result<Location, String> {
    // `scheme://bucket/prefix`: the builders take the bucket from the URL.
    let prefix = spec
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(_, p)| p)
        .unwrap_or("");
    let store: Arc<dyn ObjectStore> = match scheme {
        "s3" | "s3a" => Arc::new(
            object_store::aws::AmazonS3Builder::from_env()
                .with_url(spec)
                .build()
                .map_err(|e| e.to_string())?,
        ),
        "gs" => Arc::new(
            object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(spec)
                .build()
                .map_err(|e| e.to_string())?,
        ),
        other => {
            return Err(format!(
                "unsupported scheme {other}:// (use a directory, file://, s3:// or gs://)"
            ))
        }
    };
    Ok(Location {
        store,
        root: StorePath::from(prefix),
        display: spec.to_string(),
        local: None,
    })
}

#[cfg(not(feature = "cloud"))]
fn cloud(_spec: &str, scheme: &str) -> Result<Location, String> {
    Err(match scheme {
        "s3" | "s3a" | "gs" => format!(
            "{scheme}:// needs floe built with the `cloud` feature (cargo build --features cloud)"
        ),
        other => format!("unsupported scheme {other}:// (use a directory or file://)"),
    })
}

/// One snapshot: where it is and how to name it.
#[derive(Debug, Clone)]
pub struct SnapshotRef {
    location: Location,
    prefix: StorePath,
    /// `table@run-id`, or the location for a snapshot given by path.
    name: String,
}

impl SnapshotRef {
    /// A snapshot given by its own directory or URL (the one holding `manifest.json`).
    pub fn at(spec: &str) -> Result<SnapshotRef, SnapshotError> {
        let local = spec.strip_prefix("file://").unwrap_or(spec);
        let is_local = !spec.contains("://") || spec.starts_with("file://");
        if is_local && !std::path::Path::new(local).is_dir() {
            return Err(SnapshotError::NotFound {
                snapshot: spec.to_string(),
                message:
                    "no such directory (give a snapshot directory, TABLE@RUN_ID or TABLE@latest)"
                        .into(),
            });
        }
        let location = Location::parse(spec)?;
        Ok(SnapshotRef {
            prefix: location.root.clone(),
            name: location.display.clone(),
            location,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where it is, for `sync_runs` and messages: the location and the path inside it.
    pub fn url(&self) -> String {
        let inner = self.prefix.as_ref();
        match (self.location.display.as_str(), inner) {
            (d, "") => d.to_string(),
            (d, p) => format!("{}/{p}", d.trim_end_matches('/')),
        }
    }

    fn path(&self, file: &str) -> StorePath {
        self.prefix.clone().join(file)
    }

    /// Reads and parses `manifest.json`.
    pub async fn manifest(&self) -> Result<Manifest, SnapshotError> {
        let path = self.path(manifest::MANIFEST);
        let bytes = match self.location.store.get(&path).await {
            Ok(r) => r.bytes().await,
            Err(e) => Err(e),
        };
        let bytes = bytes.map_err(|e| match e {
            object_store::Error::NotFound { .. } => SnapshotError::NotFound {
                snapshot: self.name.clone(),
                message: format!(
                    "no {} in {} (not a snapshot, or its run never finished reading)",
                    manifest::MANIFEST,
                    self.url()
                ),
            },
            e => SnapshotError::Io {
                snapshot: self.name.clone(),
                file: manifest::MANIFEST.into(),
                message: e.to_string(),
            },
        })?;
        serde_json::from_slice(&bytes).map_err(|e| SnapshotError::Integrity {
            snapshot: self.name.clone(),
            file: manifest::MANIFEST.into(),
            message: format!("not a floe manifest: {e}"),
        })
    }
}

/// A snapshot as `floe snapshots list` shows it.
#[derive(Debug, Clone)]
pub struct SnapshotInfo {
    pub snapshot: SnapshotRef,
    pub table: String,
    pub run_id: String,
    /// Every file's size, manifest included.
    pub bytes: u64,
    pub files: usize,
    pub modified: Option<chrono::DateTime<chrono::Utc>>,
    pub manifest: Option<Manifest>,
    /// Why the manifest could not be read, if it could not.
    pub problem: Option<String>,
}

impl SnapshotInfo {
    /// Orders a table's snapshots by when their runs started (run ids
    /// share a second's resolution); without a manifest, by the newest file.
    pub fn newness(&self) -> (Option<chrono::DateTime<chrono::Utc>>, &str) {
        let when = self
            .manifest
            .as_ref()
            .map(|m| m.started_at)
            .or(self.modified);
        (when, &self.run_id)
    }

    /// A complete full snapshot: replayable on its own (what `latest`
    /// means). A change set never is.
    pub fn is_complete(&self) -> bool {
        self.manifest
            .as_ref()
            .is_some_and(|m| m.status == SnapshotStatus::Complete && m.kind == SnapshotKind::Full)
    }

    /// A complete snapshot of either kind: a state some run loaded.
    pub fn is_loaded_state(&self) -> bool {
        self.manifest
            .as_ref()
            .is_some_and(|m| m.status == SnapshotStatus::Complete)
    }

    /// `full` or `changes` (`-` without a manifest).
    pub fn kind(&self) -> &'static str {
        match self.manifest.as_ref().map(|m| m.kind) {
            Some(SnapshotKind::Full) => "full",
            Some(SnapshotKind::Changes) => "changes",
            None => "-",
        }
    }

    /// `complete`, `load_failed`, `incomplete`, or `no manifest` (running, or killed).
    pub fn status(&self) -> &'static str {
        match (&self.manifest, &self.problem) {
            (Some(m), _) if m.status == SnapshotStatus::Complete => "complete",
            (Some(m), _) if m.status == SnapshotStatus::LoadFailed => "load_failed",
            (Some(_), _) => "incomplete",
            (None, Some(_)) => "unreadable manifest",
            (None, None) => "no manifest",
        }
    }
}

/// What `prune` decided for one snapshot.
#[derive(Debug, Clone)]
pub struct PruneDecision {
    pub info: SnapshotInfo,
    pub delete: bool,
    pub reason: &'static str,
}

/// Decides what `floe snapshots prune` deletes: a snapshot goes when it is
/// outside the newest `keep` complete ones of its table (if given) and
/// older than `older_than` (if given). Never deleted: the newest complete
/// snapshot of a table, and anything newer than it (a run in progress has
/// no manifest yet).
pub fn plan_prune(
    snapshots: Vec<SnapshotInfo>,
    keep: Option<usize>,
    older_than: Option<std::time::Duration>,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<PruneDecision> {
    let mut out = Vec::new();
    let mut by_table: std::collections::BTreeMap<String, Vec<SnapshotInfo>> = Default::default();
    for s in snapshots {
        by_table.entry(s.table.clone()).or_default().push(s);
    }
    for (_, mut list) in by_table {
        list.sort_by(|a, b| b.newness().cmp(&a.newness()));
        let table_start = out.len();
        let newest_good = list.iter().position(|s| s.is_complete());
        let mut complete_seen = 0usize;
        for (i, s) in list.into_iter().enumerate() {
            let age = s
                .manifest
                .as_ref()
                .and_then(|m| m.finished_at.or(Some(m.started_at)))
                .or(s.modified)
                .map(|t| (now - t).to_std().unwrap_or_default());
            let rank = if s.is_complete() {
                complete_seen += 1;
                Some(complete_seen)
            } else {
                None
            };
            let (delete, reason) = match newest_good {
                Some(g) if g == i => (false, "newest complete snapshot"),
                Some(g) if i < g => (false, "newer than the newest complete snapshot"),
                None => (false, "no complete snapshot of this table yet"),
                Some(_) => {
                    let outside_keep = match (keep, rank) {
                        (Some(k), Some(r)) => r > k,
                        (Some(_), None) => true,
                        (None, _) => true,
                    };
                    let old_enough = match (older_than, age) {
                        (Some(limit), Some(a)) => a > limit,
                        (Some(_), None) => false,
                        (None, _) => true,
                    };
                    match (outside_keep, old_enough) {
                        (true, true) if s.kind() == "changes" => {
                            (true, "a change set older than the newest complete snapshot")
                        }
                        (true, true) if rank.is_none() => {
                            (true, "not complete, older than a complete one")
                        }
                        (true, true) => (true, "outside what is kept"),
                        (false, _) => (false, "within --keep"),
                        (true, false) => (false, "younger than --older-than"),
                    }
                }
            };
            out.push(PruneDecision {
                info: s,
                delete,
                reason,
            });
        }
        keep_chains(&mut out[table_start..]);
    }
    out
}

/// A kept change set needs its chain: the full snapshot and the change
/// sets it continues stay too (a replay restores an older point, so that
/// full snapshot need not be the newest).
fn keep_chains(decisions: &mut [PruneDecision]) {
    let infos: Vec<SnapshotInfo> = decisions.iter().map(|d| d.info.clone()).collect();
    let mut kept: Vec<usize> = (0..decisions.len())
        .filter(|&i| !decisions[i].delete && decisions[i].info.kind() == "changes")
        .collect();
    while let Some(i) = kept.pop() {
        let start = decisions[i]
            .info
            .manifest
            .as_ref()
            .and_then(|m| m.changes.as_ref())
            .map(|c| c.window_start_ns);
        if let Some(p) = start.and_then(|start| chain::predecessor(&infos, start)) {
            if decisions[p].delete {
                decisions[p].delete = false;
                decisions[p].reason = "part of a kept change set's chain";
                kept.push(p);
            }
        }
    }
}
