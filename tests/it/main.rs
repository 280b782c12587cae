//! Integration tests against a real PostgreSQL + PostGIS (an ephemeral
//! cluster per test binary; see `support`).

mod cli;
mod conformance;
mod grid;
mod refresh;
mod snowflake;
mod support;
mod types;
mod udf_postgis;
