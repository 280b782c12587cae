//! floe's transforms: DataFusion SQL over a table named `source`, with
//! PostGIS-named geometry functions that produce PostGIS-ready EWKB.
//!
//! Pure geometry work lives in [`ewkb`] (byte-level EWKB helpers, text and
//! binary parsers via geozero, algorithms via `geo`), [`geojson`] reads
//! GeoJSON geometries in one pass, [`ellipsoid`] measures areas and lengths
//! and [`centroid`] finds polygons' centroids straight from EWKB; the files under `udf/`
//! only adapt arguments, tag output fields with geometry type and SRID, and
//! turn bad input into errors that name the row and the value.

pub mod centroid;
pub mod ellipsoid;
pub mod error;
pub mod ewkb;
pub mod geojson;
pub mod transform;
pub mod udf;

#[cfg(test)]
mod test_rng;

pub use error::{GeometryError, OperatorError};
pub use transform::{register_source, session_context, TransformOptions};
pub use udf::{register_all, GeometryOptions};
