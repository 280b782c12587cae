//! Writing a snapshot while the run streams: the source's batches are
//! teed to a writer task through a small bounded channel, so the snapshot
//! costs no second pass and no copy (a `RecordBatch` clone shares its
//! buffers), and a slow store slows the run instead of filling memory.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};
use object_store::buffered::BufWriter;
use object_store::{ObjectStoreExt, PutPayload};
use parquet::arrow::async_writer::{AsyncArrowWriter, AsyncFileWriter};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use ring::digest::{Context, SHA256};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::manifest::{self, FieldSpec, Manifest, PartFile, SnapshotSource, SnapshotStatus};
use super::{SnapshotError, SnapshotRef};

/// How parts are cut and compressed.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotOptions {
    /// Rows per parquet row group, at most. Smaller groups cost floe less
    /// memory while writing (peak RSS of a 2.7M-row building footprints
    /// load: 181 MiB at 8,192 rows, 250–270 MiB at 32,768, 309 MiB at
    /// 131,072) and cost replay nothing measurable.
    pub row_group_rows: usize,
    /// A row group is also cut once the writer buffers this many bytes:
    /// the parquet writer holds the row group it is building, so this is
    /// the snapshot's memory bound whatever the width of a row (a building
    /// footprint's polygon is ~50× a topology row's geometry).
    pub row_group_bytes: usize,
    /// Rows per part file.
    pub part_rows: u64,
    pub zstd_level: i32,
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        SnapshotOptions {
            row_group_rows: 16_384,
            row_group_bytes: 16 << 20,
            part_rows: 1_048_576,
            zstd_level: 3,
        }
    }
}

/// How the run's load ended, and what a change set applied.
struct Verdict {
    error: Option<String>,
    changes: Option<manifest::ChangeSet>,
}

enum Msg {
    Batch(RecordBatch),
    /// The source ended cleanly.
    End,
    /// The source failed.
    Failed(String),
}

/// The running snapshot of one run's source.
pub struct SnapshotWriter {
    tx: mpsc::Sender<Msg>,
    /// The run's verdict: `None` if its load succeeded, else why not.
    verdict: tokio::sync::oneshot::Sender<Verdict>,
    task: JoinHandle<Result<Manifest, SnapshotError>>,
    name: String,
}

impl SnapshotWriter {
    /// Starts the writer task for `table`'s run `run_id` under `location`.
    pub fn start(
        snapshot: SnapshotRef,
        table: &str,
        run_id: &str,
        source: SnapshotSource,
        schema: SchemaRef,
        options: SnapshotOptions,
    ) -> SnapshotWriter {
        Self::start_kind(
            snapshot,
            table,
            run_id,
            source,
            schema,
            options,
            manifest::SnapshotKind::Full,
        )
    }

    /// As [`SnapshotWriter::start`], for a snapshot of `kind`.
    pub fn start_kind(
        snapshot: SnapshotRef,
        table: &str,
        run_id: &str,
        source: SnapshotSource,
        schema: SchemaRef,
        options: SnapshotOptions,
        kind: manifest::SnapshotKind,
    ) -> SnapshotWriter {
        let (tx, rx) = mpsc::channel(2);
        let (verdict, verdict_rx) = tokio::sync::oneshot::channel();
        let name = snapshot.name().to_string();
        let manifest = Manifest {
            format: manifest::FORMAT,
            kind,
            changes: None,
            table: table.to_string(),
            run_id: run_id.to_string(),
            status: SnapshotStatus::Incomplete,
            error: None,
            source,
            schema: FieldSpec::of(&schema),
            files: Vec::new(),
            rows: 0,
            bytes: 0,
            floe_version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: chrono::Utc::now(),
            finished_at: None,
        };
        let task = tokio::spawn(write_parts(
            snapshot, schema, options, manifest, rx, verdict_rx,
        ));
        SnapshotWriter {
            tx,
            verdict,
            task,
            name,
        }
    }

    /// Wraps the source stream: every batch also goes to the snapshot, and
    /// how the stream ends (cleanly, failing, or dropped) decides whether
    /// the snapshot is complete.
    pub fn tee<S, E>(&self, stream: S) -> SnapshotTee<S>
    where
        S: Stream<Item = Result<RecordBatch, E>> + Unpin,
        E: std::fmt::Display,
    {
        SnapshotTee {
            inner: stream,
            tx: Some(self.tx.clone()),
            name: self.name.clone(),
        }
    }

    /// A handle that sends batches to the writer directly (a snapshot whose
    /// batches are not the consumer's, e.g. a change set); call
    /// [`SnapshotFeed::end`] once everything is sent.
    pub fn feed(&self) -> SnapshotFeed {
        SnapshotFeed {
            tx: self.tx.clone(),
        }
    }

    /// Tells the writer how the run's load ended (`None`: it succeeded) and
    /// waits for the manifest: complete only if the source was read to its
    /// end and the load succeeded.
    pub async fn finish(self, load_error: Option<String>) -> Result<Manifest, SnapshotError> {
        self.finish_changes(load_error, None).await
    }

    /// As [`SnapshotWriter::finish`], recording what a change set applied.
    pub async fn finish_changes(
        self,
        load_error: Option<String>,
        changes: Option<manifest::ChangeSet>,
    ) -> Result<Manifest, SnapshotError> {
        drop(self.tx);
        let _ = self.verdict.send(Verdict {
            error: load_error,
            changes,
        });
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(SnapshotError::Io {
                snapshot: self.name,
                file: String::new(),
                message: format!("the snapshot writer stopped: {e}"),
            }),
        }
    }
}

/// Sends batches to a [`SnapshotWriter`] (waiting while it is busy).
#[derive(Clone)]
pub struct SnapshotFeed {
    tx: mpsc::Sender<Msg>,
}

impl SnapshotFeed {
    /// Sends one batch; false if the writer is gone (it logged why).
    pub async fn batch(&self, batch: RecordBatch) -> bool {
        self.tx.send(Msg::Batch(batch)).await.is_ok()
    }

    /// Everything was sent.
    pub async fn end(&self) {
        let _ = self.tx.send(Msg::End).await;
    }
}

/// A source stream whose batches are also written to a snapshot.
pub struct SnapshotTee<S> {
    inner: S,
    tx: Option<mpsc::Sender<Msg>>,
    name: String,
}

impl<S, E> SnapshotTee<S>
where
    S: Stream<Item = Result<RecordBatch, E>> + Unpin,
    E: std::fmt::Display,
{
    /// The stream, as an async stream that waits for the snapshot to accept
    /// each batch (backpressure) before passing it on.
    pub fn into_stream(self) -> impl Stream<Item = Result<RecordBatch, E>> {
        futures::stream::unfold(Some(self), |state| async move {
            let mut tee = state?;
            let item = tee.inner.next().await;
            let msg = match &item {
                Some(Ok(batch)) => Msg::Batch(batch.clone()),
                Some(Err(e)) => Msg::Failed(e.to_string()),
                None => Msg::End,
            };
            let last = !matches!(msg, Msg::Batch(_));
            if let Some(tx) = &tee.tx {
                if tx.send(msg).await.is_err() {
                    // The writer failed; it logged why. The load goes on.
                    tracing::debug!(snapshot = %tee.name, "snapshot writer gone; not snapshotting the rest");
                    tee.tx = None;
                }
            }
            if last {
                tee.tx = None;
            }
            let item = item?;
            Some((item, Some(tee)))
        })
    }
}

async fn write_parts(
    snapshot: SnapshotRef,
    schema: SchemaRef,
    options: SnapshotOptions,
    mut manifest: Manifest,
    mut rx: mpsc::Receiver<Msg>,
    verdict: tokio::sync::oneshot::Receiver<Verdict>,
) -> Result<Manifest, SnapshotError> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(options.zstd_level).unwrap_or_default(),
        ))
        .set_max_row_group_row_count(Some(options.row_group_rows.max(1)))
        // Every column buffers a page (and a dictionary) before compressing
        // it: smaller pages keep a wide table's writer to a few MiB.
        .set_data_page_size_limit(256 << 10)
        .set_dictionary_page_size_limit(256 << 10)
        .build();
    let mut part: Option<Part> = None;
    let outcome: Result<Option<String>, SnapshotError> = async {
        loop {
            match rx.recv().await {
                Some(Msg::Batch(mut batch)) => {
                    // A batch that crosses a part boundary is split there
                    // (slices share the batch's buffers).
                    let limit = options.part_rows.max(1);
                    while batch.num_rows() > 0 {
                        let p = match part.as_mut() {
                            Some(p) => p,
                            None => part.insert(Part::open(
                                &snapshot,
                                manifest.files.len(),
                                &schema,
                                props.clone(),
                            )?),
                        };
                        let take = (batch.num_rows() as u64).min(limit - p.rows) as usize;
                        p.write(&snapshot, &batch.slice(0, take), options.row_group_bytes)
                            .await?;
                        batch = batch.slice(take, batch.num_rows() - take);
                        if p.rows >= limit {
                            if let Some(p) = part.take() {
                                manifest.files.push(p.close(&snapshot).await?);
                            }
                        }
                    }
                }
                Some(Msg::End) => return Ok(None),
                Some(Msg::Failed(e)) => return Ok(Some(format!("the source failed: {e}"))),
                None => {
                    return Ok(Some(
                        "the run stopped before the source was read to the end".into(),
                    ))
                }
            }
        }
    }
    .await;
    let failure = match outcome {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(snapshot = snapshot.name(), "snapshot not written: {e}");
            Some(e.to_string())
        }
    };
    // Close what is open; a snapshot always has a first part, so its schema
    // is in a parquet file even when the source was empty.
    if part.is_none() && manifest.files.is_empty() && failure.is_none() {
        part = Some(Part::open(&snapshot, 0, &schema, props.clone())?);
    }
    if let Some(p) = part.take() {
        match p.close(&snapshot).await {
            Ok(f) => manifest.files.push(f),
            Err(e) if failure.is_some() => {
                tracing::debug!("closing a part of a failed snapshot: {e}")
            }
            Err(e) => {
                let failed = (SnapshotStatus::Incomplete, Some(e.to_string()));
                return Err(write_manifest(&snapshot, manifest, failed)
                    .await
                    .err()
                    .unwrap_or(e));
            }
        }
    }
    let status = match failure {
        Some(e) => (SnapshotStatus::Incomplete, Some(e)),
        // Every row is written; the manifest waits for the load's outcome.
        None => match verdict.await {
            Ok(Verdict {
                error: None,
                changes,
            }) => {
                manifest.changes = changes;
                (SnapshotStatus::Complete, None)
            }
            Ok(Verdict { error: Some(e), .. }) => (
                SnapshotStatus::LoadFailed,
                Some(format!("the load failed: {e}")),
            ),
            Err(_) => (
                SnapshotStatus::LoadFailed,
                Some("the run ended before its load did".into()),
            ),
        },
    };
    write_manifest(&snapshot, manifest, status).await
}

/// Writes `manifest.json`, after every part.
async fn write_manifest(
    snapshot: &SnapshotRef,
    mut manifest: Manifest,
    (status, error): (SnapshotStatus, Option<String>),
) -> Result<Manifest, SnapshotError> {
    manifest.status = status;
    manifest.error = error;
    manifest.rows = manifest.files.iter().map(|f| f.rows).sum();
    manifest.bytes = manifest.files.iter().map(|f| f.bytes).sum();
    manifest.finished_at = Some(chrono::Utc::now());
    let io = |e: String| SnapshotError::Io {
        snapshot: snapshot.name().to_string(),
        file: manifest::MANIFEST.into(),
        message: e,
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| io(e.to_string()))?;
    // A put is atomic on every store (the local one writes a temporary file
    // and renames it), so a manifest is never seen half-written.
    snapshot
        .location
        .store()
        .put(&snapshot.path(manifest::MANIFEST), PutPayload::from(json))
        .await
        .map_err(|e| io(e.to_string()))?;
    Ok(manifest)
}

/// One part file being written.
struct Part {
    writer: AsyncArrowWriter<HashingWriter>,
    file: String,
    rows: u64,
}

impl Part {
    fn open(
        snapshot: &SnapshotRef,
        index: usize,
        schema: &SchemaRef,
        props: WriterProperties,
    ) -> Result<Part, SnapshotError> {
        let file = format!("part-{index:05}.parquet");
        // At most two pieces in flight, so a slow store costs two pieces,
        // not object_store's default 8 × 10 MiB.
        let out = BufWriter::with_capacity(
            Arc::clone(snapshot.location.store()),
            snapshot.path(&file),
            snapshot.location.upload_piece_bytes(),
        )
        .with_max_concurrency(2);
        let writer = AsyncArrowWriter::try_new(
            HashingWriter {
                inner: out,
                digest: Context::new(&SHA256),
                bytes: 0,
            },
            Arc::clone(schema),
            Some(props),
        )
        .map_err(|e| part_err(snapshot, &file, e))?;
        Ok(Part {
            writer,
            file,
            rows: 0,
        })
    }

    async fn write(
        &mut self,
        snapshot: &SnapshotRef,
        batch: &RecordBatch,
        row_group_bytes: usize,
    ) -> Result<(), SnapshotError> {
        let err = |e| part_err(snapshot, &self.file, e);
        self.writer.write(batch).await.map_err(err)?;
        if self.writer.memory_size() >= row_group_bytes {
            self.writer.flush().await.map_err(err)?;
        }
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    async fn close(mut self, snapshot: &SnapshotRef) -> Result<PartFile, SnapshotError> {
        self.writer
            .finish()
            .await
            .map_err(|e| part_err(snapshot, &self.file, e))?;
        let hashing = self.writer.into_inner();
        Ok(PartFile {
            path: self.file,
            rows: self.rows,
            bytes: hashing.bytes,
            sha256: hex(hashing.digest.finish().as_ref()),
        })
    }
}

fn part_err(snapshot: &SnapshotRef, file: &str, e: impl std::fmt::Display) -> SnapshotError {
    SnapshotError::Io {
        snapshot: snapshot.name().to_string(),
        file: file.to_string(),
        message: e.to_string(),
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Passes bytes to the store and hashes them on the way, so the manifest's
/// SHA-256 costs no second read.
struct HashingWriter {
    inner: BufWriter,
    digest: Context,
    bytes: u64,
}

impl AsyncFileWriter for HashingWriter {
    fn write(&mut self, bs: Bytes) -> BoxFuture<'_, parquet::errors::Result<()>> {
        self.digest.update(&bs);
        self.bytes += bs.len() as u64;
        async move {
            self.inner.write_all(&bs).await?;
            Ok(())
        }
        .boxed()
    }

    fn complete(&mut self) -> BoxFuture<'_, parquet::errors::Result<()>> {
        async move {
            self.inner.shutdown().await?;
            Ok(())
        }
        .boxed()
    }
}
