//! Binary COPY into Postgres: the framing of one `COPY ... FROM STDIN`
//! ([`CopyIn`]), and the pool that streams a transform's batches through the
//! encoder into one or more COPY sessions ([`copy_stream`]).
//!
//! Between the encoder and the sessions is one queue bounded in encoded
//! bytes (`load.max_in_flight_bytes`): the encoder waits when Postgres is
//! slower, so memory is set by configuration, not by the table.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use datafusion::physical_plan::SendableRecordBatchStream;
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_postgres::{Client, CopyInSink};

use super::checksum::RowChecksum;
use super::encode::{CopyEncoder, COPY_HEADER, COPY_TRAILER};
use super::refresh::TablePlan;
use crate::budget::{ByteBudget, Reserved};
use crate::error::TransformError;
use crate::PipelineError;

/// The largest `CopyData` message [`CopyIn::send`] sends.
pub const COPY_MESSAGE_BYTES: usize = 256 << 10;

/// One `COPY ... FROM STDIN (FORMAT binary)`: the header goes first, the
/// trailer with [`CopyIn::finish`]. Dropped unfinished, the COPY is aborted
/// (nothing it sent is kept).
pub struct CopyIn<'a> {
    sink: std::pin::Pin<Box<CopyInSink<Bytes>>>,
    table: &'a str,
}

impl<'a> CopyIn<'a> {
    /// Starts the COPY and queues the header.
    pub async fn start(
        client: &Client,
        copy_sql: &str,
        table: &'a str,
    ) -> Result<CopyIn<'a>, PipelineError> {
        let sink = client
            .copy_in::<_, Bytes>(copy_sql)
            .await
            .map_err(|e| PipelineError::postgres(table, "starting COPY", e))?;
        let mut copy = CopyIn {
            sink: Box::pin(sink),
            table,
        };
        copy.feed(Bytes::from_static(COPY_HEADER)).await?;
        Ok(copy)
    }

    /// Queues encoded tuples (sent as the connection's buffer fills).
    pub async fn feed(&mut self, tuples: Bytes) -> Result<(), PipelineError> {
        self.sink
            .feed(tuples)
            .await
            .map_err(|e| PipelineError::postgres(self.table, "COPY", e))
    }

    /// Sends encoded tuples and waits until the connection took them.
    ///
    /// They go in messages of at most [`COPY_MESSAGE_BYTES`]: the connection
    /// copies each message into its write buffer, which keeps the size of
    /// the largest, and queues up to two more, so whole batches would add
    /// several batches' bytes beyond the in-flight budget. (A row may span
    /// messages: COPY's data is one stream.)
    pub async fn send(&mut self, mut tuples: Bytes) -> Result<(), PipelineError> {
        while tuples.len() > COPY_MESSAGE_BYTES {
            let piece = tuples.split_to(COPY_MESSAGE_BYTES);
            self.feed(piece).await?;
        }
        self.sink
            .send(tuples)
            .await
            .map_err(|e| PipelineError::postgres(self.table, "COPY", e))
    }

    /// Sends the trailer and completes the COPY; returns the rows Postgres took.
    pub async fn finish(mut self) -> Result<u64, PipelineError> {
        self.feed(Bytes::from_static(COPY_TRAILER)).await?;
        self.sink
            .as_mut()
            .finish()
            .await
            .map_err(|e| PipelineError::postgres(self.table, "completing COPY", e))
    }
}

/// The encoder, and the checksum of what it produces (unless turned off).
pub struct Encoding {
    pub encoder: CopyEncoder,
    pub checksum: Option<RowChecksum>,
}

/// What [`copy_stream`] did: rows read (which the COPYs' counts add up
/// to), their checksum, and where the producer's time went.
#[derive(Debug)]
pub struct Copied {
    pub rows: u64,
    /// The checksum of every row sent (hex), unless turned off.
    pub checksum: Option<String>,
    pub times: CopyTimes,
}

/// The COPY producer's time: pulling batches from the transform, encoding
/// them, and waiting on Postgres.
#[derive(Debug, Default, Clone, Copy)]
pub struct CopyTimes {
    pub pulling: f64,
    pub encoding: f64,
    pub waiting: f64,
}

/// One message from the encoder to the COPY writers.
enum Frame {
    /// Encoded tuples, holding their share of the in-flight budget until written.
    Data(Bytes, Reserved),
    /// Everything was sent: complete the COPY (one per writer). A writer
    /// whose queue closes without it aborts its COPY.
    Finish,
}

/// Streams the transform's batches through the encoder into `COPY ... FROM
/// STDIN`, one COPY per client (each takes the next encoded batch when it
/// is free), with at most `budget` encoded bytes queued between encoder and
/// Postgres. A failure in any COPY stops the encoder and aborts every COPY.
pub async fn copy_stream(
    clients: &[Arc<Client>],
    plan: &TablePlan,
    staging: &str,
    mut stream: SendableRecordBatchStream,
    encoding: Encoding,
    budget: usize,
    progress: &AtomicU64,
) -> Result<Copied, PipelineError> {
    let mut times = CopyTimes::default();
    let budget = ByteBudget::new(budget);
    let (tx, rx) = mpsc::unbounded_channel::<Frame>();
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let Encoding {
        mut encoder,
        checksum,
    } = encoding;
    let (started_tx, mut started) = mpsc::channel::<()>(clients.len());
    // One COPY writes its rows frozen; several sessions cannot (FREEZE
    // needs the table truncated in the COPY's own transaction).
    let frozen = (clients.len() == 1).then(|| plan.frozen_copy_begin(staging));
    let writers: Vec<_> = clients
        .iter()
        .map(|client| {
            tokio::spawn(copy_writer(
                Arc::clone(client),
                frozen.clone(),
                plan.copy_sql(staging, frozen.is_some()),
                plan.table.clone(),
                Arc::clone(&rx),
                checksum.clone(),
                budget.clone(),
                started_tx.clone(),
            ))
        })
        .collect();
    drop((rx, started_tx));

    let produced = async {
        let mut rows = 0u64;
        // Every COPY is open before the first batch goes out, so all
        // sessions share the load from its start (one opening late could
        // find it done); the first batch is made meanwhile. A writer that
        // fails to start says nothing: the wait ends when all have spoken
        // or gone, and its failure closes the budget below.
        let mut opened = false;
        loop {
            let pulled = Instant::now();
            let Some(batch) = stream.next().await else {
                times.pulling += pulled.elapsed().as_secs_f64();
                break;
            };
            times.pulling += pulled.elapsed().as_secs_f64();
            let batch = batch.map_err(|e| PipelineError::streaming(&plan.table, rows, e))?;
            // Sized by the encoder, exactly: the budget counts `len`, so a
            // guessed capacity would be memory the budget does not see.
            let mut buf = BytesMut::new();
            let encoding = Instant::now();
            encoder.encode(&batch, &mut buf)?;
            times.encoding += encoding.elapsed().as_secs_f64();
            let waiting = Instant::now();
            // Closed when a writer fails: its error is the cause.
            let Ok(reserved) = budget.reserve(buf.len()).await else {
                return Ok(None);
            };
            if !opened {
                for _ in clients {
                    if started.recv().await.is_none() {
                        break;
                    }
                }
                opened = true;
            }
            times.waiting += waiting.elapsed().as_secs_f64();
            if tx.send(Frame::Data(buf.freeze(), reserved)).is_err() {
                return Ok(None);
            }
            rows += batch.num_rows() as u64;
            progress.store(rows, Ordering::Relaxed);
        }
        for _ in clients {
            let _ = tx.send(Frame::Finish);
        }
        Ok::<_, PipelineError>(Some(rows))
    }
    .await;
    drop(tx);
    let waiting = Instant::now();
    let mut copied = Some((0u64, checksum));
    let mut failure = None;
    for writer in writers {
        let written = writer
            .await
            .map_err(|e| PipelineError::transform(&plan.table, TransformError::WriterTask(e)));
        match written.and_then(|w| w) {
            Ok(Some((n, sum))) => {
                if let Some((total, total_sum)) = copied.as_mut() {
                    *total += n;
                    if let (Some(t), Some(s)) = (total_sum.as_mut(), sum.as_ref()) {
                        t.merge(s);
                    }
                }
            }
            Ok(None) => copied = None,
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    times.waiting += waiting.elapsed().as_secs_f64();
    match (produced, failure, copied) {
        (Err(e), _, _) => Err(e),
        (Ok(_), Some(e), _) => Err(e),
        (Ok(Some(read)), None, Some((copied, sum))) if read == copied => Ok(Copied {
            rows: read,
            checksum: sum.map(|s| s.hex()),
            times,
        }),
        (Ok(Some(read)), None, Some((copied, _))) => Err(PipelineError::CountMismatch {
            table: plan.table.clone(),
            read,
            staged: copied,
        }),
        (Ok(_), None, _) => Err(PipelineError::transform(
            &plan.table,
            TransformError::CopyEndedEarly,
        )),
    }
}

/// One COPY session: the encoded batches it takes from the shared queue
/// (hashed here, beside the encoder), framed by [`CopyIn`]. Says `started`
/// once its COPY is open. Returns its row count and checksum, or `None` if
/// the queue closed early (the COPY is aborted by dropping it). A failure
/// closes the budget, which stops the encoder. With `frozen` (the statements
/// opening a frozen COPY's transaction) the COPY runs in that transaction,
/// committed once the COPY completes and rolled back otherwise.
#[allow(clippy::too_many_arguments)]
async fn copy_writer(
    client: Arc<Client>,
    frozen: Option<String>,
    copy_sql: String,
    table: String,
    frames: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Frame>>>,
    mut checksum: Option<RowChecksum>,
    budget: ByteBudget,
    started: mpsc::Sender<()>,
) -> Result<Option<(u64, Option<RowChecksum>)>, PipelineError> {
    let written = async {
        if let Some(begin) = &frozen {
            client
                .batch_execute(begin)
                .await
                .map_err(|e| PipelineError::postgres(&table, "starting COPY", e))?;
        }
        let mut copy = CopyIn::start(&client, &copy_sql, &table).await?;
        let _ = started.send(()).await;
        drop(started);
        loop {
            let frame = frames.lock().await.recv().await;
            match frame {
                Some(Frame::Data(bytes, reserved)) => {
                    if let Some(c) = checksum.as_mut() {
                        c.add_tuples(&bytes).map_err(|message| {
                            PipelineError::transform(&table, TransformError::Checksum(message))
                        })?;
                    }
                    copy.send(bytes).await?;
                    drop(reserved);
                }
                Some(Frame::Finish) => {
                    let n = copy.finish().await?;
                    if frozen.is_some() {
                        client
                            .batch_execute("COMMIT")
                            .await
                            .map_err(|e| PipelineError::postgres(&table, "COPY", e))?;
                    }
                    return Ok(Some((n, checksum)));
                }
                None => return Ok(None),
            }
        }
    }
    .await;
    if frozen.is_some() && !matches!(written, Ok(Some(_))) {
        // The COPY was aborted (or failed): end its transaction too.
        let _ = client.batch_execute("ROLLBACK").await;
    }
    if written.is_err() {
        budget.close();
    }
    written
}
