//! Integration tests against a real PostgreSQL + PostGIS (an ephemeral
//! cluster per test binary; see `support`).

mod bounded_memory;
mod changes;
mod cli;
mod conformance;
mod doctor;
mod faults;
mod flight_source;
mod grid;
mod hardening;
mod incremental;
mod incremental_faults;
mod refresh;
mod runs;
mod secrets;
mod signals;
mod snapshots;
mod snowflake;
mod support;
mod swap_keeps;
mod tls;
mod types;
mod udf_postgis;
mod watch;
