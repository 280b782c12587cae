//! Deterministic grid data: the tables of `shared/datasets.md` as parquet,
//! shaped exactly like a decoded Snowflake result (upper-case names, Snowflake
//! type tags, Decimal128 / Int64 / zoned timestamps, GeoJSON GEOGRAPHY text).
//!
//! Same table, rows and seed give byte-identical files: a private SplitMix64
//! stream per table (so no dependency upgrade can change the data), fixed
//! batch and row-group sizes, and no clocks. Geometry text is formatted with
//! fixed-point integer arithmetic because it dominates generation time.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Decimal128Builder, Float64Builder, Int64Builder,
    StringBuilder, TimestampNanosecondBuilder,
};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use schemas::datasets::{self, Dataset};
use schemas::snowflake::SnowflakeType;

/// Why generating a table failed, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Parquet {
        path: String,
        #[source]
        source: parquet::errors::ParquetError,
    },
}

/// Rows per generated batch (and a quarter of a row group).
const BATCH_ROWS: usize = 32_768;
const ROW_GROUP_ROWS: usize = 131_072;

/// The service territory.
const LAT: (f64, f64) = (29.0, 31.0);
const LON: (f64, f64) = (-96.0, -94.0);

/// 2024-01-01T00:00:00 in seconds since the Unix epoch: timestamps span 2024,
/// crossing both US daylight-saving changes (March 10 and November 3).
const YEAR_2024: i64 = 1_704_067_200;

/// SplitMix64: tiny, fast, and fixed forever.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub out: PathBuf,
    /// Grid tables to write; all when empty.
    pub tables: Vec<&'static Dataset>,
    /// Rows per table; each table's default when `None`.
    pub rows: Option<u64>,
    pub seed: u64,
}

/// One written file.
#[derive(Debug, Clone)]
pub struct Generated {
    pub table: &'static str,
    pub path: PathBuf,
    pub rows: u64,
}

/// Writes `<out>/<SNOWFLAKE_TABLE>.parquet` for each selected table.
pub fn generate(options: &GenerateOptions) -> Result<Vec<Generated>, GenerateError> {
    std::fs::create_dir_all(&options.out).map_err(|source| GenerateError::Io {
        context: format!("creating {}", options.out.display()),
        source,
    })?;
    let tables: Vec<&Dataset> = if options.tables.is_empty() {
        datasets::ALL.iter().collect()
    } else {
        options.tables.clone()
    };
    tables
        .into_iter()
        .map(|d| {
            let rows = options.rows.unwrap_or(d.default_rows);
            let path = options.out.join(format!("{}.parquet", d.snowflake_table));
            write_table(d, rows, options.seed, &path)?;
            Ok(Generated {
                table: d.name,
                path,
                rows,
            })
        })
        .collect()
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> GenerateError + '_ {
    move |source| GenerateError::Io {
        context: format!("writing {}", path.display()),
        source,
    }
}

fn pq(path: &Path) -> impl Fn(parquet::errors::ParquetError) -> GenerateError + '_ {
    move |source| GenerateError::Parquet {
        path: path.display().to_string(),
        source,
    }
}

/// Writes one table, streaming batches so memory stays flat.
pub fn write_table(d: &Dataset, rows: u64, seed: u64, path: &Path) -> Result<(), GenerateError> {
    let schema = d.arrow_schema();
    let mut props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).map_err(pq(path))?))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by(format!("floe generate {}", env!("CARGO_PKG_VERSION")));
    // Geometry and JSON text is near-unique: dictionaries only cost time.
    for c in d.columns {
        if matches!(c.ty, SnowflakeType::Geography | SnowflakeType::Variant) {
            props = props.set_column_dictionary_enabled(ColumnPath::from(c.name), false);
        }
    }
    let tmp = path.with_extension("parquet.tmp");
    let file = File::create(&tmp).map_err(io(path))?;
    let mut writer =
        ArrowWriter::try_new(file, Arc::clone(&schema), Some(props.build())).map_err(pq(path))?;
    // Mixing the table's name into the seed keeps tables independent.
    let name_hash = d.name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let mut rng = Rng::new(seed ^ name_hash);
    let mut start = 0u64;
    while start < rows {
        let n = (rows - start).min(BATCH_ROWS as u64) as usize;
        let batch = make_batch(d, &schema, start, n, &mut rng).map_err(|e| pq(path)(e.into()))?;
        writer.write(&batch).map_err(pq(path))?;
        start += n as u64;
    }
    writer.close().map_err(pq(path))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    Ok(())
}

/// `n` rows of table `d` whose keys are numbered from `start` (`write_table`'s
/// own batches; the emulator's change traffic draws new rows from it too).
pub(crate) fn make_batch(
    d: &Dataset,
    schema: &SchemaRef,
    start: u64,
    n: usize,
    rng: &mut Rng,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let columns = match d.name {
        "topology" => topology(start, n, rng),
        "assets" => assets(start, n, rng),
        "vegetation" => vegetation(start, n, rng),
        "transformers" => transformers(start, n, rng),
        "power_lines" => power_lines(start, n, rng),
        _ => buildings(start, n, rng),
    };
    // Builders produce plain types; put each column under its schema field (zones, precision).
    let columns: Vec<ArrayRef> = columns
        .into_iter()
        .zip(schema.fields())
        .map(|(a, f)| match f.data_type() {
            DataType::Timestamp(_, Some(tz)) => {
                let ts = a
                    .as_any()
                    .downcast_ref::<arrow::array::TimestampNanosecondArray>()
                    .map(|t| t.clone().with_timezone(tz.as_ref()));
                ts.map(|t| Arc::new(t) as ArrayRef).unwrap_or(a)
            }
            _ => a,
        })
        .collect();
    RecordBatch::try_new(Arc::clone(schema), columns)
}

const ASSET_TYPES: &[&str] = &[
    "POLE",
    "TRANSFORMER",
    "SWITCH",
    "METER",
    "SUBSTATION",
    "FUSE",
    "RECLOSER",
    "CAPACITOR",
];
const PHASES: &[&str] = &["A", "B", "C", "AB", "BC", "AC", "ABC"];
const VOLTAGES_CENTI_KV: &[i128] = &[416, 1247, 1320, 2494, 3450, 6900, 13800];
const STATUSES: &[&str] = &["IN_SERVICE", "PLANNED", "MAINTENANCE", "RETIRED"];
const SPECIES: &[&str] = &[
    "Live Oak",
    "Loblolly Pine",
    "Pecan",
    "Cedar Elm",
    "Yaupon Holly",
    "Chinese Tallow",
    "Bald Cypress",
    "Sweetgum",
];
const KVA_DECI: &[i128] = &[
    250, 375, 500, 750, 1000, 1670, 2500, 5000, 7500, 15000, 25000,
];
const VOLTAGE_CLASSES: &[&str] = &["DISTRIBUTION", "SUBTRANSMISSION", "TRANSMISSION"];
const BUILDING_TYPES: &[&str] = &[
    "residential",
    "commercial",
    "industrial",
    "retail",
    "school",
    "church",
    "warehouse",
    "garage",
];
/// Names with accents, umlauts and non-Latin scripts, as real asset registers have.
const NAME_STEMS: &[&str] = &[
    "Pole",
    "Señal Norte",
    "Übergabestation",
    "Poste Élan",
    "Río Bravo Tap",
    "変電所",
    "Østre Feeder",
    "Crossing",
];
const CONDUCTORS: &[&str] = &["ACSR", "AAC", "XLPE", "Copper"];

fn asset_id(i: u64) -> String {
    format!("A{i:07}")
}

fn utc_nanos(rng: &mut Rng) -> i64 {
    // Whole microseconds, so values survive Postgres's microsecond precision exactly.
    let micros = rng.below(366 * 86_400 * 1_000_000) as i64;
    (YEAR_2024 * 1_000_000 + micros) * 1_000
}

fn decimal(values: Vec<Option<i128>>, p: u8, s: i8) -> ArrayRef {
    let mut b = Decimal128Builder::with_capacity(values.len());
    b.extend(values);
    Arc::new(
        b.finish()
            .with_precision_and_scale(p, s)
            .expect("generator precision is valid"),
    )
}

fn topology(start: u64, n: usize, rng: &mut Rng) -> Vec<ArrayRef> {
    let mut id = Int64Builder::with_capacity(n);
    let (mut from_id, mut to_id) = (StringBuilder::new(), StringBuilder::new());
    let (mut from_ty, mut to_ty) = (StringBuilder::new(), StringBuilder::new());
    let (mut circuit, mut feeder, mut sub, mut phase) = (
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
    );
    let mut volt = Vec::with_capacity(n);
    let (mut flat, mut flon, mut tlat, mut tlon, mut len) = (
        Float64Builder::with_capacity(n),
        Float64Builder::with_capacity(n),
        Float64Builder::with_capacity(n),
        Float64Builder::with_capacity(n),
        Float64Builder::with_capacity(n),
    );
    let mut energized = BooleanBuilder::with_capacity(n);
    let mut installed = Date32Builder::with_capacity(n);
    let mut updated = TimestampNanosecondBuilder::with_capacity(n);
    let mut attrs = StringBuilder::new();
    for k in 0..n as u64 {
        let i = start + k;
        id.append_value(1_000_000 + i as i64);
        from_id.append_value(asset_id(rng.below(120_000)));
        to_id.append_value(asset_id(rng.below(120_000)));
        from_ty.append_value(rng.pick(ASSET_TYPES));
        to_ty.append_value(rng.pick(ASSET_TYPES));
        let c = rng.below(800);
        circuit.append_value(format!("CKT-{c:04}"));
        if rng.chance(0.02) {
            feeder.append_null();
        } else {
            feeder.append_value(format!("FDR-{:04}", c * 3 + rng.below(3)));
        }
        sub.append_value(format!("SUB-{:03}", c / 8));
        phase.append_value(rng.pick(PHASES));
        volt.push(Some(*rng.pick(VOLTAGES_CENTI_KV)));
        let (la, lo) = (
            rng.range(LAT.0 + 0.01, LAT.1 - 0.01),
            rng.range(LON.0 + 0.01, LON.1 - 0.01),
        );
        // A short span in a random direction, never zero length.
        let (dla, dlo) = (
            rng.range(0.0002, 0.004) * sign(rng),
            rng.range(0.0002, 0.004) * sign(rng),
        );
        flat.append_value(la);
        flon.append_value(lo);
        tlat.append_value(la + dla);
        tlon.append_value(lo + dlo);
        if rng.chance(0.01) {
            len.append_null();
        } else {
            len.append_value(((dla * 110_900.0).powi(2) + (dlo * 96_900.0).powi(2)).sqrt());
        }
        energized.append_value(!rng.chance(0.03));
        if rng.chance(0.05) {
            installed.append_null();
        } else {
            installed.append_value(rng.below(54 * 365) as i32);
        }
        updated.append_value(utc_nanos(rng));
        if rng.chance(0.10) {
            attrs.append_null();
        } else {
            attrs.append_value(format!(
                r#"{{"conductor":"{}","span_ft":{},"overhead":{},"tags":["grid","{}"]}}"#,
                rng.pick(CONDUCTORS),
                rng.below(900) + 50,
                rng.chance(0.8),
                rng.pick(PHASES)
            ));
        }
    }
    vec![
        Arc::new(id.finish()),
        Arc::new(from_id.finish()),
        Arc::new(to_id.finish()),
        Arc::new(from_ty.finish()),
        Arc::new(to_ty.finish()),
        Arc::new(circuit.finish()),
        Arc::new(feeder.finish()),
        Arc::new(sub.finish()),
        Arc::new(phase.finish()),
        decimal(volt, 6, 2),
        Arc::new(flat.finish()),
        Arc::new(flon.finish()),
        Arc::new(tlat.finish()),
        Arc::new(tlon.finish()),
        Arc::new(len.finish()),
        Arc::new(energized.finish()),
        Arc::new(installed.finish()),
        Arc::new(updated.finish()),
        Arc::new(attrs.finish()),
    ]
}

fn sign(rng: &mut Rng) -> f64 {
    if rng.chance(0.5) {
        -1.0
    } else {
        1.0
    }
}

fn assets(start: u64, n: usize, rng: &mut Rng) -> Vec<ArrayRef> {
    let (mut id, mut ty, mut name) = (
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
    );
    let (mut lat, mut lon) = (
        Float64Builder::with_capacity(n),
        Float64Builder::with_capacity(n),
    );
    let (mut circuit, mut status) = (StringBuilder::new(), StringBuilder::new());
    let mut commissioned = TimestampNanosecondBuilder::with_capacity(n);
    let mut props = StringBuilder::new();
    for k in 0..n as u64 {
        let i = start + k;
        id.append_value(asset_id(i));
        let t = rng.pick(ASSET_TYPES);
        ty.append_value(t);
        name.append_value(format!("{} {}", rng.pick(NAME_STEMS), i));
        lat.append_value(rng.range(LAT.0, LAT.1));
        lon.append_value(rng.range(LON.0, LON.1));
        circuit.append_value(format!("CKT-{:04}", rng.below(800)));
        status.append_value(rng.pick(STATUSES));
        if rng.chance(0.02) {
            commissioned.append_null();
        } else {
            commissioned
                .append_value(utc_nanos(rng) - rng.below(30 * 365) as i64 * 86_400_000_000_000);
        }
        if rng.chance(0.05) {
            props.append_null();
        } else {
            props.append_value(format!(
                r#"{{"type":"{t}","manufacturer":"{}","rating":{},"inspected":{}}}"#,
                rng.pick(&["ABB", "Siemens", "Eaton", "Hubbell", "S&C"]),
                rng.below(500),
                rng.chance(0.7)
            ));
        }
    }
    vec![
        Arc::new(id.finish()),
        Arc::new(ty.finish()),
        Arc::new(name.finish()),
        Arc::new(lat.finish()),
        Arc::new(lon.finish()),
        Arc::new(circuit.finish()),
        Arc::new(status.finish()),
        Arc::new(commissioned.finish()),
        Arc::new(props.finish()),
    ]
}

/// Appends a coordinate with 7 decimals (about 1 cm), integer arithmetic only.
fn push_coord(out: &mut String, v: f64) {
    let scaled = (v * 1e7).round() as i64;
    if scaled < 0 {
        out.push('-');
    }
    let a = scaled.unsigned_abs();
    let (int, frac) = (a / 10_000_000, a % 10_000_000);
    let mut digits = [0u8; 20];
    let mut k = 0;
    let mut x = int;
    loop {
        digits[k] = b'0' + (x % 10) as u8;
        k += 1;
        x /= 10;
        if x == 0 {
            break;
        }
    }
    for d in digits[..k].iter().rev() {
        out.push(*d as char);
    }
    out.push('.');
    let mut f = [b'0'; 7];
    let mut y = frac;
    for slot in f.iter_mut().rev() {
        *slot = b'0' + (y % 10) as u8;
        y /= 10;
    }
    for d in f {
        out.push(d as char);
    }
}

/// Appends a closed ring `[[x,y],...]` of `vertices` distinct points around a
/// centre: strictly increasing angles make it star-shaped, hence simple.
/// `reverse` gives clockwise order (holes).
fn push_ring(
    out: &mut String,
    rng: &mut Rng,
    cx: f64,
    cy: f64,
    r: f64,
    vertices: usize,
    reverse: bool,
) {
    let mut pts = Vec::with_capacity(vertices + 1);
    for k in 0..vertices {
        let angle = std::f64::consts::TAU * (k as f64 + rng.unit() * 0.5) / vertices as f64;
        let radius = r * rng.range(0.6, 1.0);
        // Longitude degrees are shorter than latitude degrees at 30°N.
        pts.push((cx + radius * angle.cos() / 0.866, cy + radius * angle.sin()));
    }
    if reverse {
        pts.reverse();
    }
    pts.push(pts[0]);
    out.push('[');
    for (k, (x, y)) in pts.iter().enumerate() {
        if k > 0 {
            out.push(',');
        }
        out.push('[');
        push_coord(out, *x);
        out.push(',');
        push_coord(out, *y);
        out.push(']');
    }
    out.push(']');
}

fn vegetation(start: u64, n: usize, rng: &mut Rng) -> Vec<ArrayRef> {
    let mut id = Int64Builder::with_capacity(n);
    let mut species = StringBuilder::new();
    let mut risk = Vec::with_capacity(n);
    let mut trimmed = Date32Builder::with_capacity(n);
    let mut canopy = StringBuilder::with_capacity(n, n * 1200);
    let mut g = String::with_capacity(4096);
    for k in 0..n as u64 {
        id.append_value((start + k) as i64 + 1);
        species.append_value(rng.pick(SPECIES));
        risk.push(Some(rng.below(10_001) as i128));
        if rng.chance(0.1) {
            trimmed.append_null();
        } else {
            trimmed.append_value(19_000 + rng.below(1_800) as i32);
        }
        g.clear();
        let (cx, cy) = (
            rng.range(LON.0 + 0.01, LON.1 - 0.01),
            rng.range(LAT.0 + 0.01, LAT.1 - 0.01),
        );
        let r = rng.range(0.0005, 0.003);
        if rng.chance(0.1) {
            // Two parts side by side, far enough apart never to touch.
            g.push_str(r#"{"type":"MultiPolygon","coordinates":[["#);
            let (a, b) = (4 + rng.below(27) as usize, 4 + rng.below(27) as usize);
            push_ring(&mut g, rng, cx, cy, r, a, false);
            g.push_str("],[");
            push_ring(&mut g, rng, cx + 3.0 * r / 0.866, cy, r, b, false);
            g.push_str("]]}");
        } else {
            g.push_str(r#"{"type":"Polygon","coordinates":["#);
            let v = 4 + rng.below(56) as usize;
            push_ring(&mut g, rng, cx, cy, r, v, false);
            g.push_str("]}");
        }
        canopy.append_value(&g);
    }
    vec![
        Arc::new(id.finish()),
        Arc::new(species.finish()),
        decimal(risk, 5, 2),
        Arc::new(trimmed.finish()),
        Arc::new(canopy.finish()),
    ]
}

fn transformers(start: u64, n: usize, rng: &mut Rng) -> Vec<ArrayRef> {
    let mut id = StringBuilder::new();
    let mut kva = Vec::with_capacity(n);
    let mut phase = StringBuilder::new();
    let mut load = Float64Builder::with_capacity(n);
    let (mut lat, mut lon) = (
        Float64Builder::with_capacity(n),
        Float64Builder::with_capacity(n),
    );
    let mut feeder = StringBuilder::new();
    let mut reading = TimestampNanosecondBuilder::with_capacity(n);
    for k in 0..n as u64 {
        id.append_value(format!("T{:07}", start + k));
        kva.push(Some(*rng.pick(KVA_DECI)));
        phase.append_value(rng.pick(PHASES));
        if rng.chance(0.04) {
            load.append_null();
        } else {
            load.append_value((rng.range(0.0, 130.0) * 100.0).round() / 100.0);
        }
        lat.append_value(rng.range(LAT.0, LAT.1));
        lon.append_value(rng.range(LON.0, LON.1));
        feeder.append_value(format!("FDR-{:04}", rng.below(2400)));
        reading.append_value(utc_nanos(rng));
    }
    vec![
        Arc::new(id.finish()),
        decimal(kva, 8, 1),
        Arc::new(phase.finish()),
        Arc::new(load.finish()),
        Arc::new(lat.finish()),
        Arc::new(lon.finish()),
        Arc::new(feeder.finish()),
        Arc::new(reading.finish()),
    ]
}

fn power_lines(start: u64, n: usize, rng: &mut Rng) -> Vec<ArrayRef> {
    let (mut id, mut circuit, mut class) = (
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
    );
    let mut route = StringBuilder::with_capacity(n, n * 2000);
    let mut g = String::with_capacity(16_384);
    for k in 0..n as u64 {
        id.append_value(format!("L{:06}", start + k));
        circuit.append_value(format!("CKT-{:04}", rng.below(800)));
        class.append_value(rng.pick(VOLTAGE_CLASSES));
        // A wandering route of 2–400 vertices, each step 50–200 m.
        let vertices = 2 + rng.below(399) as usize;
        let (mut x, mut y) = (
            rng.range(LON.0 + 0.2, LON.1 - 0.2),
            rng.range(LAT.0 + 0.2, LAT.1 - 0.2),
        );
        let mut heading = rng.range(0.0, std::f64::consts::TAU);
        g.clear();
        g.push_str(r#"{"type":"LineString","coordinates":["#);
        for v in 0..vertices {
            if v > 0 {
                g.push(',');
                heading += rng.range(-0.5, 0.5);
                let step = rng.range(0.0005, 0.002);
                x += step * heading.cos() / 0.866;
                y += step * heading.sin();
            }
            g.push('[');
            push_coord(&mut g, x);
            g.push(',');
            push_coord(&mut g, y);
            g.push(']');
        }
        g.push_str("]}");
        route.append_value(&g);
    }
    vec![
        Arc::new(id.finish()),
        Arc::new(circuit.finish()),
        Arc::new(class.finish()),
        Arc::new(route.finish()),
    ]
}

fn buildings(start: u64, n: usize, rng: &mut Rng) -> Vec<ArrayRef> {
    let mut id = Int64Builder::with_capacity(n);
    let mut ty = StringBuilder::new();
    let mut height = Float64Builder::with_capacity(n);
    let mut levels = Int64Builder::with_capacity(n);
    let mut footprint = StringBuilder::with_capacity(n, n * 560);
    let mut g = String::with_capacity(2048);
    for k in 0..n as u64 {
        id.append_value((start + k) as i64 + 1);
        if rng.chance(0.08) {
            ty.append_null();
        } else {
            ty.append_value(rng.pick(BUILDING_TYPES));
        }
        if rng.chance(0.15) {
            height.append_null();
        } else {
            height.append_value((rng.range(3.0, 60.0) * 10.0).round() / 10.0);
        }
        if rng.chance(0.2) {
            levels.append_null();
        } else {
            levels.append_value(1 + rng.below(40) as i64);
        }
        let (cx, cy) = (
            rng.range(LON.0 + 0.001, LON.1 - 0.001),
            rng.range(LAT.0 + 0.001, LAT.1 - 0.001),
        );
        let r = rng.range(0.00005, 0.0002);
        // 4–40 positions including the closing one.
        let outer = 3 + rng.below(37) as usize;
        g.clear();
        g.push_str(r#"{"type":"Polygon","coordinates":["#);
        push_ring(&mut g, rng, cx, cy, r, outer, false);
        // Some courtyards: a hole well inside the outer ring's inscribed circle.
        if outer >= 8 && rng.chance(0.05) {
            g.push(',');
            let v = 3 + rng.below(6) as usize;
            push_ring(&mut g, rng, cx, cy, r * 0.3, v, true);
        }
        g.push_str("]}");
        footprint.append_value(&g);
    }
    vec![
        Arc::new(id.finish()),
        Arc::new(ty.finish()),
        Arc::new(height.finish()),
        Arc::new(levels.finish()),
        Arc::new(footprint.finish()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinates_format_with_seven_decimals() {
        let mut s = String::new();
        push_coord(&mut s, -95.12345674);
        s.push(' ');
        push_coord(&mut s, 0.5);
        s.push(' ');
        push_coord(&mut s, -0.00000004);
        assert_eq!(s, "-95.1234567 0.5000000 0.0000000");
    }

    #[test]
    fn same_arguments_give_identical_files_and_other_seeds_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, seed| {
            let p = dir.path().join(name);
            write_table(&datasets::VEGETATION, 2_000, seed, &p).unwrap();
            std::fs::read(p).unwrap()
        };
        let (a, b, c) = (
            write("a.parquet", 7),
            write("b.parquet", 7),
            write("c.parquet", 8),
        );
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
