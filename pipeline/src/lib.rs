//! floe's I/O and orchestration: sources, the Postgres sink, snapshots and
//! the run driver.
//!
//! A table's run is one lazy stream: source → DataFusion transform → COPY
//! encoder → a byte-bounded queue → the Postgres COPY writer. The queue is
//! the only buffer between tasks, and it is bounded in encoded bytes
//! (`load.max_in_flight_bytes`), so memory is set by configuration and not by
//! the size of the table. The load goes into a staging table that is swapped
//! into place only after it has been verified (see
//! [`postgres::refresh::StagedRefresh`]).
//!
//! Where things are: [`run`] drives one table (planning, stages, report,
//! record); [`source`] resolves and opens where its rows come from
//! (snapshot, parquet, Flight, Snowflake); [`postgres`] is the sink (COPY,
//! encoding, the staged refresh, `sync_runs`, doctor); [`snapshot`] and
//! [`replay`] keep and reload what runs read; [`bench`] is the ceiling
//! `floe bench` measures against.

pub mod bench;
pub mod budget;
pub mod cluster;
pub mod counters;
pub mod error;
pub mod flight;
pub mod incremental;
pub mod postgres;
pub mod replay;
pub mod retry;
pub mod run;
pub mod snapshot;
pub mod source;
mod task;
pub mod watch;

pub use error::PipelineError;
