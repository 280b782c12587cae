//! Completeness against the source: the count and checksum before the
//! swap prove that staging holds what floe read, not that floe read all
//! there was. A source that announces its size (Snowflake's `total`, a
//! Flight stream's `total_records`) is held to it here, at the source,
//! before the transform (which may filter rows on purpose).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};

/// `batches`, ending in the error `short(read)` instead of its end when it
/// delivered a number of rows other than `announced`.
pub fn held_to<E: Send + 'static>(
    batches: BoxStream<'static, Result<RecordBatch, E>>,
    announced: u64,
    short: impl FnOnce(u64) -> E + Send + 'static,
) -> BoxStream<'static, Result<RecordBatch, E>> {
    let read = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&read);
    let counted = batches.inspect_ok(move |b| {
        counter.fetch_add(b.num_rows() as u64, Ordering::Relaxed);
    });
    let end = stream::once(async move {
        let read = read.load(Ordering::Relaxed);
        (read != announced).then(|| Err(short(read)))
    })
    .filter_map(|checked| async move { checked });
    counted.chain(end).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;

    fn batch(rows: i64) -> RecordBatch {
        RecordBatch::try_from_iter([("id", Arc::new(Int64Array::from_iter_values(0..rows)) as _)])
            .unwrap()
    }

    async fn ends(batches: Vec<i64>, announced: u64) -> Result<u64, String> {
        let s = stream::iter(batches.into_iter().map(|n| Ok(batch(n)))).boxed();
        let mut rows = 0;
        let mut s = held_to(s, announced, move |read| {
            format!("read {read} of {announced}")
        });
        while let Some(b) = s.next().await {
            rows += b?.num_rows() as u64;
        }
        Ok(rows)
    }

    #[tokio::test]
    async fn a_stream_short_or_long_of_what_was_announced_ends_in_an_error() {
        assert_eq!(ends(vec![3, 4], 7).await, Ok(7));
        assert_eq!(ends(vec![3], 7).await, Err("read 3 of 7".into()));
        assert_eq!(ends(vec![3, 4, 1], 7).await, Err("read 8 of 7".into()));
        assert_eq!(ends(vec![], 0).await, Ok(0));
    }
}
