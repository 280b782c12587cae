//! Checking a snapshot against its manifest, and reading it back.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::FutureExt;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as StorePath;
use object_store::ObjectStore;
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStreamBuilder};
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use ring::digest::{Context, SHA256};

use super::manifest::{FieldSpec, Manifest, SnapshotStatus};
use super::write::hex;
use super::{SnapshotError, SnapshotRef};

/// A snapshot whose files all match its manifest.
#[derive(Debug, Clone)]
pub struct Verified {
    pub snapshot: SnapshotRef,
    pub manifest: Manifest,
    /// The batches' schema, as the parts carry it (with field metadata).
    pub schema: SchemaRef,
}

/// Checks every part against the manifest before anything is loaded: the
/// file exists with the recorded size and SHA-256, its footer holds the
/// recorded row count, and its schema is the manifest's. The first problem
/// is an error naming the file.
pub async fn verify(snapshot: &SnapshotRef) -> Result<Verified, SnapshotError> {
    let manifest = snapshot.manifest().await?;
    // A snapshot whose load failed holds every row: it can be replayed by
    // name (to reproduce or recover a bad day), never one cut short.
    if manifest.status == SnapshotStatus::Incomplete {
        return Err(SnapshotError::Incomplete {
            snapshot: snapshot.name().to_string(),
            status: "incomplete".into(),
            error: manifest.error.clone(),
        });
    }
    let bad = |file: &str, message: String| SnapshotError::Integrity {
        snapshot: snapshot.name().to_string(),
        file: file.to_string(),
        message,
    };
    if manifest.files.is_empty() {
        return Err(bad("manifest.json", "lists no parts".into()));
    }
    let listed: u64 = manifest.files.iter().map(|f| f.rows).sum();
    if listed != manifest.rows {
        return Err(bad(
            "manifest.json",
            format!("its parts hold {listed} rows but it says {}", manifest.rows),
        ));
    }
    let store = snapshot.location.store();
    let mut schema = None;
    for part in &manifest.files {
        let path = snapshot.path(&part.path);
        let got = match store.get(&path).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(bad(&part.path, "missing".into()))
            }
            Err(e) => return Err(bad(&part.path, format!("cannot read it: {e}"))),
        };
        let size = got.meta.size;
        if size != part.bytes {
            return Err(bad(
                &part.path,
                format!(
                    "{size} bytes, the manifest says {} (truncated or replaced)",
                    part.bytes
                ),
            ));
        }
        let mut digest = Context::new(&SHA256);
        let mut chunks = got.into_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| bad(&part.path, format!("cannot read it: {e}")))?;
            digest.update(&chunk);
        }
        let sha = hex(digest.finish().as_ref());
        if sha != part.sha256 {
            return Err(bad(
                &part.path,
                format!(
                    "content changed: SHA-256 {sha}, the manifest says {}",
                    part.sha256
                ),
            ));
        }
        let reader = PartReader::new(store, path, size);
        let builder = ParquetRecordBatchStreamBuilder::new(reader)
            .await
            .map_err(|e| bad(&part.path, format!("not readable parquet: {e}")))?;
        let rows = builder.metadata().file_metadata().num_rows() as u64;
        if rows != part.rows {
            return Err(bad(
                &part.path,
                format!("holds {rows} rows, the manifest says {}", part.rows),
            ));
        }
        let part_schema = Arc::clone(builder.schema());
        if FieldSpec::of(&part_schema) != manifest.schema {
            return Err(bad(
                &part.path,
                format!(
                    "its columns ({}) are not the manifest's ({})",
                    describe(&FieldSpec::of(&part_schema)),
                    describe(&manifest.schema)
                ),
            ));
        }
        schema.get_or_insert(part_schema);
    }
    let schema = schema.ok_or_else(|| bad("manifest.json", "lists no parts".into()))?;
    Ok(Verified {
        snapshot: snapshot.clone(),
        manifest,
        schema,
    })
}

/// The batches' schema from the first part's footer (one ranged read), for
/// listings that should not read the data.
pub async fn first_part_schema(
    snapshot: &SnapshotRef,
    manifest: &Manifest,
) -> Result<SchemaRef, SnapshotError> {
    let part = manifest
        .files
        .first()
        .ok_or_else(|| SnapshotError::Integrity {
            snapshot: snapshot.name().to_string(),
            file: "manifest.json".into(),
            message: "lists no parts".into(),
        })?;
    let reader = PartReader::new(
        snapshot.location.store(),
        snapshot.path(&part.path),
        part.bytes,
    );
    ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map(|b| Arc::clone(b.schema()))
        .map_err(|e| SnapshotError::Integrity {
            snapshot: snapshot.name().to_string(),
            file: part.path.clone(),
            message: format!("not readable parquet: {e}"),
        })
}

fn describe(fields: &[FieldSpec]) -> String {
    fields
        .iter()
        .map(FieldSpec::describe)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The snapshot's batches, part after part in order. Parts are decoded in
/// a task of their own, a couple of batches ahead of the consumer.
pub fn read_batches(
    verified: &Verified,
    batch_size: usize,
) -> BoxStream<'static, Result<RecordBatch, SnapshotError>> {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let snapshot = verified.snapshot.clone();
    let parts: Vec<(String, u64)> = verified
        .manifest
        .files
        .iter()
        .map(|p| (p.path.clone(), p.bytes))
        .collect();
    tokio::spawn(async move {
        for (file, size) in parts {
            let bad = |message: String| SnapshotError::Integrity {
                snapshot: snapshot.name().to_string(),
                file: file.clone(),
                message,
            };
            let reader = PartReader::new(snapshot.location.store(), snapshot.path(&file), size);
            let stream = match ParquetRecordBatchStreamBuilder::new(reader).await {
                Ok(b) => b.with_batch_size(batch_size.max(1)).build(),
                Err(e) => Err(e),
            };
            let mut stream = match stream {
                Ok(s) => s.map_err(|e| bad(format!("cannot decode it: {e}"))).boxed(),
                Err(e) => {
                    let _ = tx.send(Err(bad(format!("cannot read it: {e}")))).await;
                    return;
                }
            };
            while let Some(item) = stream.next().await {
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        }
    });
    tokio_stream_from(rx)
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> BoxStream<'static, T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

/// A part file read through its object store; its size is known from the
/// manifest, so the footer is fetched in one ranged read.
struct PartReader {
    store: Arc<dyn ObjectStore>,
    path: StorePath,
    size: u64,
}

impl PartReader {
    fn new(store: &Arc<dyn ObjectStore>, path: StorePath, size: u64) -> PartReader {
        PartReader {
            store: Arc::clone(store),
            path,
            size,
        }
    }
}

fn external(e: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl AsyncFileReader for PartReader {
    fn get_bytes(
        &mut self,
        range: std::ops::Range<u64>,
    ) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            self.store
                .get_range(&self.path, range)
                .await
                .map_err(external)
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            self.store
                .get_ranges(&self.path, &ranges)
                .await
                .map_err(external)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let metadata = ParquetMetaDataReader::new()
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}
