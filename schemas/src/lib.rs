//! floe's type system.
//!
//! Everything that describes *shape* rather than moving data lives here, so
//! that the operators, the pipeline, the CLI and the tests agree on one
//! vocabulary without depending on each other:
//!
//! - [`pg`]: Postgres column types, how an Arrow field maps onto one, and DDL;
//! - [`geometry`]: how a geometry column is tagged in Arrow field metadata
//!   (GeoArrow's `geoarrow.wkb` extension plus type and SRID);
//! - [`snowflake`]: Snowflake's logical types and the Arrow types a decoded
//!   Snowflake result carries;
//! - [`snowflake_arrow`]: Snowflake's Arrow chunk encoding, decoded into
//!   plain Arrow (client) and produced from it (emulator);
//! - [`datasets`]: the grid tables floe ships with (generator, demo, config);
//! - [`config`]: `floe.toml`, parsed and validated;
//! - [`duration`]: durations as the config and the CLI write them.

pub mod config;
pub mod datasets;
pub mod duration;
pub mod error;
pub mod geometry;
pub mod pg;
pub mod snowflake;
pub mod snowflake_arrow;
pub mod watch;

pub use error::SchemaError;
