//! PostGIS-named scalar UDFs producing EWKB.
//!
//! One [`ScalarUDFImpl`] shell serves every function: it checks argument
//! types at plan time, computes the output field (geometry type and SRID in
//! its metadata, so the sink can declare `geometry(<type>,<srid>)`), casts
//! inputs once per batch and hands them to the function's kernel in
//! [`constructors`], [`processing`] or [`measurement`].

mod constructors;
mod measurement;
mod processing;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow::array::builder::NullBufferBuilder;
use arrow::array::{Array, ArrayRef, BinaryArray, BinaryBuilder, Float64Builder};
use arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use arrow::compute::{can_cast_types, cast};
use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{plan_err, Result, ScalarValue};
use datafusion::error::DataFusionError;
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use rayon::prelude::*;
use schemas::config::OnInvalidGeometry;
use schemas::geometry::{GeometryInfo, GeometryKind};

use crate::error::GeometryError;

/// How geometry functions treat input they cannot parse.
#[derive(Debug, Clone, Default)]
pub struct GeometryOptions {
    pub on_invalid: OnInvalidGeometry,
    /// Counts values replaced by NULL under [`OnInvalidGeometry::Null`].
    pub invalid_count: Arc<AtomicU64>,
}

/// What kind of value an argument must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arg {
    Number,
    Srid,
    Text,
    Geometry,
    /// Text or binary, read as it comes (`to_geography`).
    TextOrBinary,
}

impl Arg {
    fn arrow(self) -> DataType {
        match self {
            Arg::Number => DataType::Float64,
            Arg::Srid => DataType::Int32,
            Arg::Text => DataType::Utf8,
            Arg::Geometry => DataType::Binary,
            Arg::TextOrBinary => DataType::Utf8,
        }
    }

    fn accepts(self, dt: &DataType) -> bool {
        match self {
            Arg::Number | Arg::Srid => dt.is_numeric() || dt.is_null(),
            Arg::Text => matches!(
                dt,
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null
            ),
            Arg::Geometry => matches!(
                dt,
                DataType::Binary | DataType::LargeBinary | DataType::BinaryView | DataType::Null
            ),
            Arg::TextOrBinary => Arg::Text.accepts(dt) || Arg::Geometry.accepts(dt),
        }
    }
}

/// The functions floe provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Function {
    Point,
    MakeLine,
    GeomFromGeoJson,
    GeomFromText,
    GeomFromWkb,
    ToGeography,
    SetSrid,
    Multi,
    Centroid,
    Simplify,
    Area,
    Length,
}

impl Function {
    const ALL: [Function; 12] = [
        Function::Point,
        Function::MakeLine,
        Function::GeomFromGeoJson,
        Function::GeomFromText,
        Function::GeomFromWkb,
        Function::ToGeography,
        Function::SetSrid,
        Function::Multi,
        Function::Centroid,
        Function::Simplify,
        Function::Area,
        Function::Length,
    ];

    fn name(self) -> &'static str {
        match self {
            Function::Point => "st_point",
            Function::MakeLine => "st_makeline",
            Function::GeomFromGeoJson => "st_geomfromgeojson",
            Function::GeomFromText => "st_geomfromtext",
            Function::GeomFromWkb => "st_geomfromwkb",
            Function::ToGeography => "to_geography",
            Function::SetSrid => "st_setsrid",
            Function::Multi => "st_multi",
            Function::Centroid => "st_centroid",
            Function::Simplify => "st_simplify",
            Function::Area => "st_area",
            Function::Length => "st_length",
        }
    }

    /// Required arguments, then optional trailing ones.
    fn args(self) -> (&'static [Arg], &'static [Arg]) {
        use Arg::*;
        match self {
            Function::Point => (&[Number, Number], &[Srid]),
            Function::MakeLine => (&[Geometry, Geometry], &[]),
            Function::GeomFromGeoJson => (&[Text], &[]),
            Function::GeomFromText => (&[Text], &[Srid]),
            Function::GeomFromWkb => (&[Geometry], &[Srid]),
            Function::ToGeography => (&[TextOrBinary], &[]),
            Function::SetSrid => (&[Geometry, Srid], &[]),
            Function::Multi | Function::Centroid | Function::Area | Function::Length => {
                (&[Geometry], &[])
            }
            Function::Simplify => (&[Geometry, Number], &[]),
        }
    }

    fn usage(self) -> String {
        let (req, opt) = self.args();
        let show = |a: &Arg| match a {
            Arg::Number => "double",
            Arg::Srid => "srid",
            Arg::Text => "text",
            Arg::Geometry => "geometry",
            Arg::TextOrBinary => "text or binary",
        };
        let mut parts: Vec<String> = req.iter().map(|a| show(a).to_string()).collect();
        parts.extend(opt.iter().map(|a| format!("[{}]", show(a))));
        format!("{}({})", self.name(), parts.join(", "))
    }
}

#[derive(Debug)]
struct GeoUdf {
    function: Function,
    signature: Signature,
    options: GeometryOptions,
}

impl PartialEq for GeoUdf {
    fn eq(&self, other: &Self) -> bool {
        self.function == other.function
            && self.options.on_invalid == other.options.on_invalid
            && Arc::ptr_eq(&self.options.invalid_count, &other.options.invalid_count)
    }
}
impl Eq for GeoUdf {}
impl std::hash::Hash for GeoUdf {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.function.hash(state);
    }
}

/// The geometry a field argument carries, if it is tagged.
fn arg_geometry(field: &Field) -> Option<GeometryInfo> {
    GeometryInfo::from_field(field)
}

/// A literal SRID argument, if the argument is a constant.
fn literal_srid(arg: Option<&Option<&ScalarValue>>) -> Option<i32> {
    let v = (*arg?)?;
    v.cast_to(&DataType::Int32).ok().and_then(|s| match s {
        ScalarValue::Int32(Some(i)) => Some(i),
        _ => None,
    })
}

impl ScalarUDFImpl for GeoUdf {
    fn name(&self) -> &str {
        self.function.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(match self.function {
            Function::Area | Function::Length => DataType::Float64,
            _ => DataType::Binary,
        })
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let f = self.function;
        let (req, opt) = f.args();
        let n = args.arg_fields.len();
        if n < req.len() || n > req.len() + opt.len() {
            return plan_err!("{} takes {} arguments, got {n}", f.usage(), req.len());
        }
        for (i, (field, want)) in args
            .arg_fields
            .iter()
            .zip(req.iter().chain(opt))
            .enumerate()
        {
            if !want.accepts(field.data_type()) {
                return plan_err!(
                    "{}: argument {} (`{}`) is {}, expected {:?}",
                    f.usage(),
                    i + 1,
                    field.name(),
                    field.data_type(),
                    want
                );
            }
        }
        let input = args.arg_fields.first().and_then(|a| arg_geometry(a));
        let input_srid = input.and_then(|g| g.srid);
        let input_kind = input.map(|g| g.kind).unwrap_or(GeometryKind::Geometry);
        let info = |kind, srid| Some(GeometryInfo { kind, srid });
        let geometry = match f {
            Function::Point => info(
                GeometryKind::Point,
                if n == 2 {
                    Some(0)
                } else {
                    literal_srid(args.scalar_arguments.get(2))
                },
            ),
            Function::MakeLine => {
                let other = args
                    .arg_fields
                    .get(1)
                    .and_then(|a| arg_geometry(a))
                    .and_then(|g| g.srid);
                info(
                    GeometryKind::LineString,
                    input_srid.filter(|s| Some(*s) == other),
                )
            }
            Function::GeomFromGeoJson | Function::ToGeography => {
                info(GeometryKind::Geometry, Some(4326))
            }
            Function::GeomFromText | Function::GeomFromWkb => info(
                GeometryKind::Geometry,
                literal_srid(args.scalar_arguments.get(1)),
            ),
            Function::SetSrid => info(input_kind, literal_srid(args.scalar_arguments.get(1))),
            Function::Multi => info(input_kind.to_multi(), input_srid),
            Function::Centroid => info(GeometryKind::Point, input_srid),
            Function::Simplify => info(input_kind, input_srid),
            Function::Area | Function::Length => None,
        };
        let field = match geometry {
            Some(g) => g.field(f.name(), true),
            None => Field::new(f.name(), DataType::Float64, true),
        };
        Ok(Arc::new(field))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let f = self.function;
        let (req, opt) = f.args();
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let arrays: Vec<ArrayRef> = arrays
            .iter()
            .zip(req.iter().chain(opt))
            .map(|(a, want)| {
                // Text is read in place from Utf8View (what DataFusion's parquet
                // reader produces) as well as Utf8: no copy of the values.
                let in_place = (*want == Arg::Text && a.data_type() == &DataType::Utf8View)
                    || (*want == Arg::TextOrBinary && Arg::TextOrBinary.accepts(a.data_type()));
                if a.data_type() == &want.arrow() || in_place {
                    Ok(Arc::clone(a))
                } else if can_cast_types(a.data_type(), &want.arrow()) {
                    cast(a, &want.arrow()).map_err(DataFusionError::from)
                } else {
                    plan_err!("{}: cannot use {} as {:?}", f.usage(), a.data_type(), want)
                }
            })
            .collect::<Result<_>>()?;
        let rows = args.number_rows;
        let mut ctx = Ctx {
            function: f.name(),
            options: &self.options,
        };
        let out = match f {
            Function::Point => constructors::point(&arrays, rows, &mut ctx)?,
            Function::MakeLine => constructors::makeline(&arrays, rows, &mut ctx)?,
            Function::GeomFromGeoJson => constructors::from_geojson(&arrays, rows, &mut ctx)?,
            Function::GeomFromText => constructors::from_text(&arrays, rows, &mut ctx)?,
            Function::GeomFromWkb => constructors::from_wkb(&arrays, rows, &mut ctx)?,
            Function::ToGeography => constructors::to_geography(&arrays, rows, &mut ctx)?,
            Function::SetSrid => processing::set_srid(&arrays, rows, &mut ctx)?,
            Function::Multi => processing::multi(&arrays, rows, &mut ctx)?,
            Function::Centroid => processing::centroid(&arrays, rows, &mut ctx)?,
            Function::Simplify => processing::simplify(&arrays, rows, &mut ctx)?,
            Function::Area => measurement::area(&arrays, rows, &mut ctx)?,
            Function::Length => measurement::length(&arrays, rows, &mut ctx)?,
        };
        Ok(ColumnarValue::Array(out))
    }
}

/// A value a kernel could not use: what it was and why.
pub(crate) struct Invalid {
    pub value: String,
    pub reason: String,
}

/// Per-invocation context kernels use to report invalid input.
pub(crate) struct Ctx<'a> {
    function: &'static str,
    options: &'a GeometryOptions,
}

impl Ctx<'_> {
    /// Turns an invalid value into an error, or counts it when NULL is asked for.
    fn invalid(&mut self, row: usize, bad: Invalid) -> Result<()> {
        match self.options.on_invalid {
            OnInvalidGeometry::Null => {
                self.options.invalid_count.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            OnInvalidGeometry::Error => Err(DataFusionError::External(Box::new(GeometryError {
                function: self.function,
                row_in_batch: row,
                value: bad.value,
                reason: bad.reason,
            }))),
        }
    }

    /// Builds a geometry column: `f` appends row `i`'s EWKB to the piece's
    /// value buffer and says whether there is a value (`Ok(false)` is NULL;
    /// whatever it appended then, or on error, is dropped). Pieces of the
    /// batch run on all cores (see [`pieces`]).
    ///
    /// The EWKB is written where the array keeps it, not into a scratch
    /// buffer copied after: building footprints' polygons are copied enough
    /// times on their way to COPY.
    pub(crate) fn geometry(
        &mut self,
        rows: usize,
        f: impl Fn(usize, &mut Vec<u8>) -> std::result::Result<bool, Invalid> + Sync,
    ) -> Result<ArrayRef> {
        let function = self.function;
        let parts: Vec<Result<(BinaryArray, Rejected)>> = pieces(rows)
            .into_par_iter()
            .map(|range| {
                let mut values: Vec<u8> = Vec::with_capacity(range.len() * 32);
                let mut offsets: Vec<i32> = Vec::with_capacity(range.len() + 1);
                offsets.push(0);
                let mut nulls = NullBufferBuilder::new(range.len());
                let mut bad = Vec::new();
                for i in range {
                    let start = values.len();
                    match f(i, &mut values) {
                        Ok(true) => nulls.append_non_null(),
                        Ok(false) => {
                            values.truncate(start);
                            nulls.append_null();
                        }
                        Err(invalid) => {
                            values.truncate(start);
                            bad.push((i, invalid));
                            nulls.append_null();
                        }
                    }
                    let end = i32::try_from(values.len()).map_err(|_| {
                        DataFusionError::Execution(format!(
                            "{function}: more than 2 GiB of geometry in {PIECE_ROWS} rows"
                        ))
                    })?;
                    offsets.push(end);
                }
                let array = BinaryArray::try_new(
                    OffsetBuffer::new(ScalarBuffer::from(offsets)),
                    Buffer::from_vec(values),
                    nulls.finish(),
                )?;
                Ok((array, bad))
            })
            .collect();
        let mut arrays: Vec<BinaryArray> = Vec::with_capacity(parts.len());
        for part in parts {
            let (array, bad) = part?;
            // In row order: the first invalid row is the one reported.
            for (i, invalid) in bad {
                self.invalid(i, invalid)?;
            }
            arrays.push(array);
        }
        match arrays.len() {
            0 => Ok(Arc::new(BinaryBuilder::new().finish())),
            1 => Ok(Arc::new(arrays.remove(0))),
            _ => {
                let refs: Vec<&dyn Array> = arrays.iter().map(|a| a as &dyn Array).collect();
                Ok(arrow::compute::concat(&refs)?)
            }
        }
    }

    /// Builds a Float64 column from per-row results (`Ok(None)` is NULL),
    /// pieces of the batch on all cores.
    pub(crate) fn float(
        &mut self,
        rows: usize,
        f: impl Fn(usize) -> std::result::Result<Option<f64>, Invalid> + Sync,
    ) -> Result<ArrayRef> {
        let parts: Vec<(Vec<Option<f64>>, Rejected)> = pieces(rows)
            .into_par_iter()
            .map(|range| {
                let mut values = Vec::with_capacity(range.len());
                let mut bad = Vec::new();
                for i in range {
                    match f(i) {
                        Ok(v) => values.push(v),
                        Err(invalid) => {
                            values.push(None);
                            bad.push((i, invalid));
                        }
                    }
                }
                (values, bad)
            })
            .collect();
        let mut builder = Float64Builder::with_capacity(rows);
        for (values, bad) in parts {
            for (i, invalid) in bad {
                self.invalid(i, invalid)?;
            }
            for v in values {
                builder.append_option(v);
            }
        }
        Ok(Arc::new(builder.finish()))
    }
}

/// A piece's invalid values, with their rows in the batch, in row order.
type Rejected = Vec<(usize, Invalid)>;

/// Rows per piece when a kernel splits a batch across cores. The transform
/// runs as one stream (row order and row numbers in errors stay exact), so
/// without this a geometry-heavy table used one core while Postgres waited:
/// building footprints' GeoJSON parsing, centroids and geodesic areas were
/// 54 s of a 65 s load on two cores. Pieces this size keep the split's own
/// cost (a task each, one copy of the output) small next to the work.
const PIECE_ROWS: usize = 1024;

fn pieces(rows: usize) -> Vec<std::ops::Range<usize>> {
    (0..rows)
        .step_by(PIECE_ROWS)
        .map(|start| start..(start + PIECE_ROWS).min(rows))
        .collect()
}

/// Registers every geometry function on `ctx`.
pub fn register_all(ctx: &SessionContext, options: &GeometryOptions) {
    for function in Function::ALL {
        let (req, opt) = function.args();
        let arities = (req.len()..=req.len() + opt.len())
            .map(datafusion::logical_expr::TypeSignature::Any)
            .collect();
        let udf = GeoUdf {
            function,
            signature: Signature::one_of(arities, Volatility::Immutable),
            options: options.clone(),
        };
        ctx.register_udf(ScalarUDF::new_from_impl(udf));
    }
}

/// Downcasts a cast argument (the shell guarantees the type).
pub(crate) fn downcast<T: 'static>(a: &ArrayRef) -> &T {
    a.as_any()
        .downcast_ref::<T>()
        .expect("argument was cast to the kernel's type by the UDF shell")
}

#[cfg(test)]
mod tests;
