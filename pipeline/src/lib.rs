//! floe's I/O and orchestration: sources, the Postgres sink, the generator
//! and the run driver.
//!
//! A table's run is one lazy stream: source → DataFusion transform → COPY
//! encoder → a byte-bounded queue → the Postgres COPY writer. The queue is
//! the only buffer between tasks, and it is bounded in encoded bytes
//! (`load.max_in_flight_bytes`), so memory is set by configuration and not by
//! the size of the table. The load goes into a staging table that is swapped
//! into place only after it has been verified (see [`postgres::refresh`]).

pub mod bench;
pub mod cluster;
pub mod error;
pub mod flight;
pub mod generate;
pub mod postgres;
pub mod replay;
pub mod retry;
pub mod run;
pub mod snapshot;
pub mod snowflake;
pub mod source;

pub use error::PipelineError;
