//! Where a run's time goes, measured on the stream as it flows.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures::stream::BoxStream;
use futures::StreamExt;
use serde::Serialize;

use crate::postgres::copy::CopyTimes;

/// Where a table's run spent its time, in seconds. The stream stages
/// (source, snapshot, transform, encode, waiting on Postgres) run
/// concurrently with Postgres ingesting; index build and verification run
/// side by side; so the stages do not add up to the run's wall time.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stages {
    /// Opening the source: Snowflake's query (until its first result
    /// arrives; the login is made beside the run's precheck, before this),
    /// a Flight `DoGet`, a parquet file's metadata.
    pub source_open: f64,
    /// Waiting on the source's stream (reading, downloading, decoding);
    /// `None` when DataFusion reads parquet inside the transform.
    pub source: Option<f64>,
    /// Waiting on the snapshot writer to take the batches.
    pub snapshot: Option<f64>,
    /// The transform (DataFusion), the stages above excluded.
    pub transform: f64,
    /// Encoding Arrow batches into binary COPY.
    pub encode: f64,
    /// Waiting on Postgres: for COPY to take queued bytes (the in-flight
    /// budget full), then for COPY to complete.
    pub postgres_wait: f64,
    pub index_build: f64,
    /// The staged table's count and checksum, beside the index build.
    pub verify: f64,
    pub swap: f64,
}

/// Nanosecond counters the stream stages add to from their tasks.
#[derive(Debug, Default)]
pub struct StageClock {
    source: AtomicU64,
    tee: AtomicU64,
    timed_source: AtomicBool,
    snapshotting: AtomicBool,
}

/// The stages after COPY, as the load measured them.
#[derive(Debug, Clone, Copy)]
pub struct AfterCopy {
    pub index_build: f64,
    pub verify: f64,
    pub swap: f64,
}

impl StageClock {
    /// Times the source's stream (waiting on it counts as `source`).
    pub fn time_source<T: Send + 'static>(
        self: &Arc<Self>,
        stream: BoxStream<'static, T>,
    ) -> BoxStream<'static, T> {
        self.timed_source.store(true, Ordering::Relaxed);
        timed(stream, Arc::clone(self), |c| &c.source)
    }

    /// Times the stream out of the snapshot tee (source and snapshot writer).
    pub fn time_snapshot<T: Send + 'static>(
        self: &Arc<Self>,
        stream: BoxStream<'static, T>,
    ) -> BoxStream<'static, T> {
        self.snapshotting.store(true, Ordering::Relaxed);
        timed(stream, Arc::clone(self), |c| &c.tee)
    }

    /// The run's stages from what the clocks measured.
    pub fn stages(&self, source_open: f64, streamed: CopyTimes, after: AfterCopy) -> Stages {
        let source = secs(self.source.load(Ordering::Relaxed));
        let teed = secs(self.tee.load(Ordering::Relaxed));
        let timed_source = self.timed_source.load(Ordering::Relaxed);
        let snapshotting = self.snapshotting.load(Ordering::Relaxed);
        // The outermost timed stream holds the ones inside it.
        let upstream = if snapshotting {
            teed
        } else if timed_source {
            source
        } else {
            0.0
        };
        Stages {
            source_open,
            source: timed_source.then_some(source),
            snapshot: snapshotting.then(|| (teed - source).max(0.0)),
            transform: (streamed.pulling - upstream).max(0.0),
            encode: streamed.encoding,
            postgres_wait: streamed.waiting,
            index_build: after.index_build,
            verify: after.verify,
            swap: after.swap,
        }
    }
}

/// Counts the time a stream's consumer waits on it: from asking for the
/// next item to getting it (downloads and decoding in other tasks included).
fn timed<T: Send + 'static>(
    mut inner: BoxStream<'static, T>,
    into: Arc<StageClock>,
    pick: fn(&StageClock) -> &AtomicU64,
) -> BoxStream<'static, T> {
    let mut asked: Option<Instant> = None;
    futures::stream::poll_fn(move |cx| {
        let started = *asked.get_or_insert_with(Instant::now);
        let polled = inner.poll_next_unpin(cx);
        if polled.is_ready() {
            asked = None;
            pick(&into).fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
        polled
    })
    .boxed()
}

fn secs(nanos: u64) -> f64 {
    nanos as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transform_is_what_pulling_took_beyond_the_outermost_timed_stream() {
        let clock = StageClock::default();
        let streamed = CopyTimes {
            pulling: 5.0,
            encoding: 1.0,
            waiting: 2.0,
        };
        let after = AfterCopy {
            index_build: 3.0,
            verify: 1.5,
            swap: 0.1,
        };
        // DataFusion read the parquet itself: no source stage.
        let s = clock.stages(0.2, streamed, after);
        assert_eq!((s.source, s.snapshot, s.transform), (None, None, 5.0));

        clock.source.store(2_000_000_000, Ordering::Relaxed);
        clock.timed_source.store(true, Ordering::Relaxed);
        let s = clock.stages(0.2, streamed, after);
        assert_eq!((s.source, s.snapshot, s.transform), (Some(2.0), None, 3.0));

        clock.tee.store(2_500_000_000, Ordering::Relaxed);
        clock.snapshotting.store(true, Ordering::Relaxed);
        let s = clock.stages(0.2, streamed, after);
        assert_eq!(s.snapshot, Some(0.5));
        assert_eq!(s.transform, 2.5);
        assert_eq!((s.index_build, s.verify, s.swap), (3.0, 1.5, 0.1));
    }
}
