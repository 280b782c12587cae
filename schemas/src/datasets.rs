//! The grid tables floe ships with (see `shared/datasets.md`).
//!
//! These describe the *Snowflake side*: names, Snowflake types, nullability
//! and default sizes. The generator writes parquet in exactly this shape and
//! the shipped `floe.toml` maps each table onto its PostGIS cache.

use arrow_schema::{Schema, SchemaRef};
use std::sync::Arc;

use crate::snowflake::SnowflakeType;
use crate::snowflake::SnowflakeType as T;

/// One column of a grid table.
#[derive(Debug, Clone, Copy)]
pub struct DatasetColumn {
    pub name: &'static str,
    pub ty: SnowflakeType,
    pub nullable: bool,
}

/// One grid table as it exists in Snowflake.
#[derive(Debug, Clone, Copy)]
pub struct Dataset {
    /// floe's short name (the config's table key).
    pub name: &'static str,
    /// The Snowflake table name (upper case, as Snowflake reports it).
    pub snowflake_table: &'static str,
    /// The PostGIS cache table it feeds.
    pub target_table: &'static str,
    /// Row count when the generator is not told otherwise.
    pub default_rows: u64,
    pub columns: &'static [DatasetColumn],
}

impl Dataset {
    /// The Arrow schema of the table as a decoded Snowflake result.
    pub fn arrow_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns
                .iter()
                .map(|c| c.ty.arrow_field(c.name, c.nullable))
                .collect::<Vec<_>>(),
        ))
    }
}

const fn col(name: &'static str, ty: SnowflakeType, nullable: bool) -> DatasetColumn {
    DatasetColumn { name, ty, nullable }
}

pub const TOPOLOGY: Dataset = Dataset {
    name: "topology",
    snowflake_table: "FLUX_OPS_CENTER_TOPOLOGY",
    target_table: "topology_connections_cache",
    default_rows: 153_592,
    columns: &[
        col("CONNECTION_ID", T::Number(38, 0), false),
        col("FROM_ASSET_ID", T::Varchar(64), false),
        col("TO_ASSET_ID", T::Varchar(64), false),
        col("FROM_ASSET_TYPE", T::Varchar(32), false),
        col("TO_ASSET_TYPE", T::Varchar(32), false),
        col("CIRCUIT_ID", T::Varchar(32), false),
        col("FEEDER_ID", T::Varchar(32), true),
        col("SUBSTATION_ID", T::Varchar(32), false),
        col("PHASE", T::Varchar(3), false),
        col("VOLTAGE_KV", T::Number(6, 2), false),
        col("FROM_LATITUDE", T::Float, false),
        col("FROM_LONGITUDE", T::Float, false),
        col("TO_LATITUDE", T::Float, false),
        col("TO_LONGITUDE", T::Float, false),
        col("LENGTH_M", T::Float, true),
        col("IS_ENERGIZED", T::Boolean, false),
        col("INSTALLED_DATE", T::Date, true),
        col("UPDATED_AT", T::TimestampNtz(9), false),
        col("ATTRIBUTES", T::Variant, true),
    ],
};

pub const ASSETS: Dataset = Dataset {
    name: "assets",
    snowflake_table: "FLUX_OPS_CENTER_ASSETS",
    target_table: "assets_cache",
    default_rows: 120_000,
    columns: &[
        col("ASSET_ID", T::Varchar(64), false),
        col("ASSET_TYPE", T::Varchar(32), false),
        col("NAME", T::Varchar(200), false),
        col("LAT", T::Float, false),
        col("LON", T::Float, false),
        col("CIRCUIT_ID", T::Varchar(32), false),
        col("STATUS", T::Varchar(16), false),
        col("COMMISSIONED_AT", T::TimestampLtz(9), true),
        col("PROPERTIES", T::Variant, true),
    ],
};

pub const VEGETATION: Dataset = Dataset {
    name: "vegetation",
    snowflake_table: "VEGETATION_RISK_ZONES",
    target_table: "vegetation_cache",
    default_rows: 40_000,
    columns: &[
        col("ZONE_ID", T::Number(38, 0), false),
        col("SPECIES", T::Varchar(100), false),
        col("RISK_SCORE", T::Number(5, 2), false),
        col("LAST_TRIMMED", T::Date, true),
        col("CANOPY", T::Geography, false),
    ],
};

pub const TRANSFORMERS: Dataset = Dataset {
    name: "transformers",
    snowflake_table: "TRANSFORMERS",
    target_table: "transformers_cache",
    default_rows: 60_000,
    columns: &[
        col("TRANSFORMER_ID", T::Varchar(64), false),
        col("KVA_RATING", T::Number(8, 1), false),
        col("PHASE", T::Varchar(3), false),
        col("LOAD_PCT", T::Float, true),
        col("LAT", T::Float, false),
        col("LON", T::Float, false),
        col("FEEDER_ID", T::Varchar(32), false),
        col("LAST_READING_AT", T::TimestampTz(9), false),
    ],
};

pub const POWER_LINES: Dataset = Dataset {
    name: "power_lines",
    snowflake_table: "GRID_POWER_LINES",
    target_table: "power_lines_cache",
    default_rows: 13_000,
    columns: &[
        col("LINE_ID", T::Varchar(64), false),
        col("CIRCUIT_ID", T::Varchar(32), false),
        col("VOLTAGE_CLASS", T::Varchar(16), false),
        col("ROUTE", T::Geography, false),
    ],
};

pub const BUILDING_FOOTPRINTS: Dataset = Dataset {
    name: "building_footprints",
    snowflake_table: "BUILDING_FOOTPRINTS",
    target_table: "building_footprints",
    default_rows: 2_670_707,
    columns: &[
        col("BUILDING_ID", T::Number(38, 0), false),
        col("BUILDING_TYPE", T::Varchar(32), true),
        col("HEIGHT_M", T::Float, true),
        col("LEVELS", T::Number(3, 0), true),
        col("FOOTPRINT", T::Geography, false),
    ],
};

/// Every grid table, in the order floe loads them.
pub const ALL: &[Dataset] = &[
    TOPOLOGY,
    ASSETS,
    VEGETATION,
    TRANSFORMERS,
    POWER_LINES,
    BUILDING_FOOTPRINTS,
];

/// Finds a grid table by floe name, Snowflake name (any case) or cache table name.
pub fn find(name: &str) -> Option<&'static Dataset> {
    ALL.iter().find(|d| {
        d.name == name || d.snowflake_table.eq_ignore_ascii_case(name) || d.target_table == name
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_is_found_by_each_of_its_names() {
        for d in ALL {
            for n in [d.name, d.snowflake_table, d.target_table] {
                assert_eq!(find(n).map(|f| f.name), Some(d.name), "{n}");
            }
        }
        assert_eq!(
            find("flux_ops_center_topology").map(|d| d.name),
            Some("topology")
        );
        assert!(find("nope").is_none());
    }
}
