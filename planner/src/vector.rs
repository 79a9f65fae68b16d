//! pgvector's `vector` type for DataFusion: text parsing, the distance
//! operators and functions, with pgvector's error messages and SQLSTATEs.
//!
//! Vectors are `FixedSizeList(Float32, n)` columns tagged with the
//! `pg.vector` field metadata. Every function also accepts vector text
//! (`'[1,2,3]'`, e.g. an untyped parameter) and float/integer lists
//! (`ARRAY[1,2,3]`), converting them the way pgvector's casts do.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, Float32Array, Float64Array, GenericListArray,
    OffsetSizeTrait,
};
use arrow::buffer::ScalarBuffer;
use arrow::datatypes::{DataType, Field, FieldRef, Float32Type};
use datafusion::common::{DFSchema, Result, ScalarValue};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::planner::{ExprPlanner, PlannerResult, RawBinaryExpr};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use quiver_types::{PG_VECTOR_KEY, vector_data_type};
use sqlparser::ast::BinaryOperator;

use crate::{SqlError, sqlstate};

/// pgvector's limit on dimensions.
pub const MAX_DIM: usize = 16_000;

/// The custom operator spelling `<+>` is rewritten to before parsing (see
/// [`crate::rewrite::normalize_operators`]); sqlparser splits `<+>` otherwise.
pub const L1_OPERATOR_TOKEN: &str = "<#+>";

/// Parses pgvector text (`[1, 2.5, -3]`), rejecting what pgvector rejects.
pub fn parse_vector_text(text: &str) -> std::result::Result<Vec<f32>, SqlError> {
    let malformed = || {
        SqlError::new(
            sqlstate::INVALID_TEXT_REPRESENTATION,
            format!("invalid input syntax for type vector: \"{text}\""),
        )
    };
    let inner = text
        .trim()
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .ok_or_else(malformed)?;
    if inner.trim().is_empty() {
        return Err(SqlError::new(
            sqlstate::DATA_EXCEPTION,
            "vector must have at least 1 dimension",
        ));
    }
    let mut out = Vec::new();
    for part in inner.split(',') {
        let v: f32 = part.trim().parse().map_err(|_| malformed())?;
        out.push(v);
    }
    check_values(&out)?;
    Ok(out)
}

/// NaN, infinities and dimension limits, as pgvector checks them.
pub fn check_values(values: &[f32]) -> std::result::Result<(), SqlError> {
    if values.len() > MAX_DIM {
        return Err(SqlError::new(
            sqlstate::DATA_EXCEPTION,
            format!("vector cannot have more than {MAX_DIM} dimensions"),
        ));
    }
    for v in values {
        if v.is_nan() {
            return Err(SqlError::new(
                sqlstate::DATA_EXCEPTION,
                "NaN not allowed in vector",
            ));
        }
        if v.is_infinite() {
            return Err(SqlError::new(
                sqlstate::DATA_EXCEPTION,
                "infinite value not allowed in vector",
            ));
        }
    }
    Ok(())
}

/// Formats a vector like pgvector's output function.
pub fn format_vector(values: &[f32]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(2 + values.len() * 10);
    out.push('[');
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // Writing to a String cannot fail.
        let _ = write!(out, "{v}");
    }
    out.push(']');
    out
}

/// A vector as a literal that parses back to exactly the same floats, for
/// SQL text no one reads (bound parameters): ryu's shortest round-trip
/// form, several times faster than `Display` (`1.0` rather than `1`).
pub fn format_vector_literal(values: &[f32]) -> String {
    let mut buffer = ryu::Buffer::new();
    let mut out = String::with_capacity(2 + values.len() * 12);
    out.push('[');
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        if v.is_finite() {
            out.push_str(buffer.format_finite(*v));
        } else {
            out.push_str(&v.to_string());
        }
    }
    out.push(']');
    out
}

/// A batch of vectors as one flat buffer (`dim` floats per row); rows with
/// NULL are `None`. A `vector` column is viewed in place, not copied.
pub struct Vectors {
    pub dim: usize,
    pub values: ScalarBuffer<f32>,
    pub valid: Vec<bool>,
}

impl Vectors {
    pub fn len(&self) -> usize {
        self.valid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.valid.is_empty()
    }

    pub fn row(&self, i: usize) -> Option<&[f32]> {
        self.valid[i].then(|| &self.values[i * self.dim..(i + 1) * self.dim])
    }

    /// Builds the Arrow vector column, checking every row has `dim` values.
    pub fn into_array(self) -> Result<ArrayRef> {
        let dim = self.dim as i32;
        let values = Float32Array::new(self.values, None);
        let nulls = arrow::buffer::NullBuffer::from(self.valid);
        let field = Arc::new(Field::new_list_field(DataType::Float32, false));
        Ok(Arc::new(FixedSizeListArray::try_new(
            field,
            dim,
            Arc::new(values),
            Some(nulls),
        )?))
    }
}

/// Packs per-row vectors (`None` = NULL) into [`Vectors`]; every row must
/// have the same dimension.
pub fn from_rows(rows: Vec<Option<Vec<f32>>>) -> std::result::Result<Vectors, SqlError> {
    let dim = rows.iter().flatten().map(Vec::len).next().unwrap_or(0);
    let mut values = Vec::with_capacity(rows.len() * dim);
    let mut valid = Vec::with_capacity(rows.len());
    for row in rows {
        match row {
            Some(v) => {
                if v.len() != dim {
                    return Err(dimension_mismatch(dim, v.len()));
                }
                values.extend_from_slice(&v);
                valid.push(true);
            }
            None => {
                values.extend(std::iter::repeat_n(0.0, dim));
                valid.push(false);
            }
        }
    }
    Ok(Vectors {
        dim,
        values: values.into(),
        valid,
    })
}

pub fn dimension_mismatch(a: usize, b: usize) -> SqlError {
    SqlError::new(
        sqlstate::DATA_EXCEPTION,
        format!("different vector dimensions {a} and {b}"),
    )
}

fn list_rows<O: OffsetSizeTrait>(list: &GenericListArray<O>) -> Result<Vec<Option<Vec<f32>>>> {
    let mut rows = Vec::with_capacity(list.len());
    for i in 0..list.len() {
        if list.is_null(i) {
            rows.push(None);
            continue;
        }
        rows.push(Some(float_values(&list.value(i))?));
    }
    Ok(rows)
}

fn float_values(values: &ArrayRef) -> Result<Vec<f32>> {
    if values.null_count() > 0 {
        return Err(
            SqlError::new(sqlstate::DATA_EXCEPTION, "array must not contain nulls")
                .into_datafusion(),
        );
    }
    let casted = arrow::compute::cast(values, &DataType::Float32).map_err(|_| {
        SqlError::new(
            sqlstate::DATATYPE_MISMATCH,
            format!("cannot cast type {} to vector", values.data_type()),
        )
        .into_datafusion()
    })?;
    let v = casted.as_primitive::<Float32Type>().values().to_vec();
    check_values(&v).map_err(SqlError::into_datafusion)?;
    Ok(v)
}

/// The vector a list-typed scalar (a decoded `vector` parameter) holds;
/// `None` for NULL.
pub fn list_scalar_vector(value: &ScalarValue) -> Result<Option<Vec<f32>>> {
    let array = value.to_array()?;
    Ok(to_vectors(&array)?.row(0).map(|v| v.to_vec()))
}

/// Converts any array pgvector would accept as a vector into [`Vectors`].
pub fn to_vectors(array: &ArrayRef) -> Result<Vectors> {
    match array.data_type() {
        DataType::FixedSizeList(field, dim) if field.data_type() == &DataType::Float32 => {
            let list = array.as_fixed_size_list();
            let values = list.values().as_primitive::<Float32Type>();
            let offset = list.offset() * *dim as usize;
            let len = list.len() * *dim as usize;
            Ok(Vectors {
                dim: *dim as usize,
                values: values.values().slice(offset, len),
                valid: (0..list.len()).map(|i| list.is_valid(i)).collect(),
            })
        }
        DataType::FixedSizeList(_, _) => {
            let list = array.as_fixed_size_list();
            let rows = (0..list.len())
                .map(|i| {
                    if list.is_null(i) {
                        Ok(None)
                    } else {
                        float_values(&list.value(i)).map(Some)
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            from_rows(rows).map_err(SqlError::into_datafusion)
        }
        DataType::List(_) => {
            from_rows(list_rows(array.as_list::<i32>())?).map_err(SqlError::into_datafusion)
        }
        DataType::LargeList(_) => {
            from_rows(list_rows(array.as_list::<i64>())?).map_err(SqlError::into_datafusion)
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let strings = arrow::compute::cast(array, &DataType::Utf8)?;
            let strings = strings.as_string::<i32>();
            let rows = strings
                .iter()
                .map(|s| s.map(parse_vector_text).transpose())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(SqlError::into_datafusion)?;
            from_rows(rows).map_err(SqlError::into_datafusion)
        }
        DataType::Null => Ok(Vectors {
            dim: 0,
            values: ScalarBuffer::from(Vec::<f32>::new()),
            valid: vec![false; array.len()],
        }),
        other => Err(SqlError::new(
            sqlstate::DATATYPE_MISMATCH,
            format!("cannot cast type {} to vector", pg_name_of(other)),
        )
        .into_datafusion()),
    }
}

fn pg_name_of(t: &DataType) -> &'static str {
    match t {
        DataType::Int16 => "smallint",
        DataType::Int32 => "integer",
        DataType::Int64 => "bigint",
        DataType::Float32 => "real",
        DataType::Float64 => "double precision",
        DataType::Boolean => "boolean",
        _ => "unknown",
    }
}

/// The Arrow field of a vector result, tagged so it is sent as `vector`.
pub fn vector_field(name: &str, dim: Option<usize>, nullable: bool) -> Field {
    let data_type = match dim {
        Some(d) => vector_data_type(d as u32),
        None => DataType::List(Arc::new(Field::new_list_field(DataType::Float32, false))),
    };
    Field::new(name, data_type, nullable).with_metadata(HashMap::from([(
        PG_VECTOR_KEY.to_string(),
        "vector".to_string(),
    )]))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    L2,
    NegativeInnerProduct,
    InnerProduct,
    Cosine,
    L1,
    Dims,
    Norm,
    Normalize,
    /// `x::vector` / `x::vector(n)`: the optional second argument is `n`.
    Cast,
    /// `x::text`: pgvector's text form for vectors, a plain cast otherwise.
    Text,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct VectorFunction {
    name: &'static str,
    kind: Kind,
    signature: Signature,
}

fn function(name: &'static str, kind: Kind, arity: usize) -> ScalarUDF {
    let signature = if kind == Kind::Cast {
        Signature::one_of(
            vec![
                datafusion::logical_expr::TypeSignature::Any(1),
                datafusion::logical_expr::TypeSignature::Any(2),
            ],
            Volatility::Immutable,
        )
    } else {
        Signature::any(arity, Volatility::Immutable)
    };
    ScalarUDF::new_from_impl(VectorFunction {
        name,
        kind,
        signature,
    })
}

use quiver_types::VectorMetric;
use quiver_types::distance::{dot, l1, l2_squared};

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        ab += (*x as f64) * (*y as f64);
        aa += (*x as f64) * (*x as f64);
        bb += (*y as f64) * (*y as f64);
    }
    let denom = (aa * bb).sqrt();
    if denom == 0.0 {
        return f64::NAN;
    }
    1.0 - (ab / denom).clamp(-1.0, 1.0)
}

/// The value of pgvector's ordering operator for a metric (`<->`, `<#>`,
/// `<=>`), computed exactly as the SQL functions compute it.
pub fn operator_distance(metric: VectorMetric, a: &[f32], b: &[f32]) -> f64 {
    match metric {
        VectorMetric::L2 => (l2_squared(a, b) as f64).sqrt(),
        VectorMetric::InnerProduct => -(dot(a, b) as f64),
        VectorMetric::Cosine => cosine(a, b),
    }
}

/// An argument of a two-vector function as vectors, and whether it is one
/// scalar (the query vector, converted once rather than per row).
pub(crate) fn vector_operand(a: &ColumnarValue) -> Result<(Vectors, bool)> {
    match a {
        ColumnarValue::Scalar(s) => Ok((to_vectors(&s.to_array_of_size(1)?)?, true)),
        ColumnarValue::Array(arr) => Ok((to_vectors(arr)?, false)),
    }
}

fn as_array(value: &ColumnarValue, rows: usize) -> Result<ArrayRef> {
    value.to_array(rows)
}

impl VectorFunction {
    fn distance(&self, args: &[ColumnarValue], rows: usize) -> Result<ColumnarValue> {
        let all_scalar = args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let n = if all_scalar { 1 } else { rows };
        let (left, left_scalar) = vector_operand(&args[0])?;
        let (right, right_scalar) = vector_operand(&args[1])?;
        let mut out: Vec<Option<f64>> = Vec::with_capacity(n);
        for i in 0..n {
            let a = left.row(if left_scalar { 0 } else { i });
            let b = right.row(if right_scalar { 0 } else { i });
            let (Some(a), Some(b)) = (a, b) else {
                out.push(None);
                continue;
            };
            if a.len() != b.len() {
                return Err(dimension_mismatch(a.len(), b.len()).into_datafusion());
            }
            let d = match self.kind {
                Kind::L2 => operator_distance(VectorMetric::L2, a, b),
                Kind::InnerProduct => dot(a, b) as f64,
                Kind::NegativeInnerProduct => operator_distance(VectorMetric::InnerProduct, a, b),
                Kind::Cosine => operator_distance(VectorMetric::Cosine, a, b),
                Kind::L1 => l1(a, b) as f64,
                _ => unreachable_kind()?,
            };
            out.push(Some(d));
        }
        let array: ArrayRef = Arc::new(Float64Array::from(out));
        if all_scalar {
            Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
                &array, 0,
            )?))
        } else {
            Ok(ColumnarValue::Array(array))
        }
    }
}

fn unreachable_kind() -> Result<f64> {
    Err(datafusion::error::DataFusionError::Internal(
        "vector function kind mismatch".into(),
    ))
}

/// The dimension a `::vector(n)` cast or a literal argument fixes at plan time.
fn planned_dim(args: &ReturnFieldArgs) -> Option<usize> {
    if let Some(Some(ScalarValue::Int64(Some(n)))) = args.scalar_arguments.get(1) {
        return Some(*n as usize);
    }
    match args.arg_fields.first().map(|f| f.data_type().clone()) {
        Some(DataType::FixedSizeList(_, n)) => Some(n as usize),
        _ => match args.scalar_arguments.first() {
            Some(Some(ScalarValue::Utf8(Some(s)))) => parse_vector_text(s).ok().map(|v| v.len()),
            _ => None,
        },
    }
}

impl ScalarUDFImpl for VectorFunction {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Err(datafusion::error::DataFusionError::Internal(
            "return_field_from_args is used".into(),
        ))
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let field = match self.kind {
            Kind::Dims => Field::new(self.name, DataType::Int32, true),
            Kind::Norm => Field::new(self.name, DataType::Float64, true),
            Kind::Normalize => vector_field(self.name, planned_dim(&args), true),
            Kind::Cast => vector_field(self.name, planned_dim(&args), true),
            Kind::Text => Field::new(self.name, DataType::Utf8, true),
            _ => Field::new(self.name, DataType::Float64, true),
        };
        Ok(Arc::new(field))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        match self.kind {
            Kind::L2
            | Kind::InnerProduct
            | Kind::NegativeInnerProduct
            | Kind::Cosine
            | Kind::L1 => self.distance(&args.args, rows),
            Kind::Text => {
                let array = as_array(&args.args[0], rows)?;
                let out: ArrayRef = match array.data_type() {
                    DataType::FixedSizeList(f, _) | DataType::List(f)
                        if f.data_type() == &DataType::Float32 =>
                    {
                        let v = to_vectors(&array)?;
                        Arc::new(arrow::array::StringArray::from(
                            (0..v.len())
                                .map(|i| v.row(i).map(format_vector))
                                .collect::<Vec<_>>(),
                        ))
                    }
                    _ => arrow::compute::cast(&array, &DataType::Utf8)?,
                };
                Ok(ColumnarValue::Array(out))
            }
            Kind::Dims | Kind::Norm => {
                let v = to_vectors(&as_array(&args.args[0], rows)?)?;
                let array: ArrayRef = if self.kind == Kind::Dims {
                    Arc::new(arrow::array::Int32Array::from(
                        (0..v.len())
                            .map(|i| v.row(i).map(|r| r.len() as i32))
                            .collect::<Vec<_>>(),
                    ))
                } else {
                    Arc::new(Float64Array::from(
                        (0..v.len())
                            .map(|i| v.row(i).map(|r| (dot(r, r) as f64).sqrt()))
                            .collect::<Vec<_>>(),
                    ))
                };
                Ok(ColumnarValue::Array(array))
            }
            Kind::Normalize | Kind::Cast => {
                let mut v = to_vectors(&as_array(&args.args[0], rows)?)?;
                let expected = match args.return_field.data_type() {
                    DataType::FixedSizeList(_, n) => Some(*n as usize),
                    _ => None,
                };
                if let Some(n) = expected
                    && v.dim != n
                    && v.valid.iter().any(|b| *b)
                {
                    return Err(SqlError::new(
                        sqlstate::DATA_EXCEPTION,
                        format!("expected {n} dimensions, not {}", v.dim),
                    )
                    .into_datafusion());
                }
                if self.kind == Kind::Normalize && v.dim > 0 {
                    let mut values = v.values.to_vec();
                    for row in values.chunks_mut(v.dim) {
                        let norm = (dot(row, row) as f64).sqrt();
                        if norm > 0.0 {
                            row.iter_mut().for_each(|x| *x = (*x as f64 / norm) as f32);
                        }
                    }
                    v.values = values.into();
                }
                let array = if expected.is_some() || v.dim > 0 {
                    v.into_array()?
                } else {
                    arrow::array::new_null_array(args.return_field.data_type(), rows)
                };
                if expected.is_none() && array.data_type() != args.return_field.data_type() {
                    // A list-typed result (dimension unknown at plan time).
                    let list = arrow::compute::cast(&array, args.return_field.data_type())?;
                    return Ok(ColumnarValue::Array(list));
                }
                Ok(ColumnarValue::Array(array))
            }
        }
    }
}

/// The functions `register` installs, by SQL name.
pub fn udfs() -> Vec<ScalarUDF> {
    vec![
        function("l2_distance", Kind::L2, 2),
        function("inner_product", Kind::InnerProduct, 2),
        function("negative_inner_product", Kind::NegativeInnerProduct, 2),
        function("cosine_distance", Kind::Cosine, 2),
        function("l1_distance", Kind::L1, 2),
        function("vector_dims", Kind::Dims, 1),
        function("vector_norm", Kind::Norm, 1),
        function("l2_normalize", Kind::Normalize, 1),
        function("to_vector", Kind::Cast, 2),
        function("quiver_text", Kind::Text, 1),
    ]
    .into_iter()
    .chain(crate::vector_arith::udfs())
    // Not a vector function, but wherever statements are planned or their
    // filters evaluated (proxies, query nodes) it must exist too.
    .chain(std::iter::once(declared_parameter_udf()))
    .collect()
}

/// [`crate::rewrite::DECLARED_PARAMETER`]: returns its argument.
#[derive(Debug, PartialEq, Eq, Hash)]
struct DeclaredParameter {
    signature: Signature,
}

impl ScalarUDFImpl for DeclaredParameter {
    fn name(&self) -> &str {
        crate::rewrite::DECLARED_PARAMETER
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(arg_types[0].clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        Ok(args.args[0].clone())
    }
}

fn declared_parameter_udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(DeclaredParameter {
        signature: Signature::any(1, Volatility::Immutable),
    })
}

/// Rewrites pgvector's operators into the distance functions while planning.
#[derive(Debug)]
pub struct VectorOperatorPlanner {
    by_operator: Vec<(BinaryOperator, Arc<ScalarUDF>)>,
}

impl VectorOperatorPlanner {
    pub fn new(registry: &dyn FunctionRegistry) -> Result<Self> {
        Ok(VectorOperatorPlanner {
            by_operator: vec![
                (BinaryOperator::LtDashGt, registry.udf("l2_distance")?),
                (BinaryOperator::Spaceship, registry.udf("cosine_distance")?),
                (
                    BinaryOperator::Custom("<#>".into()),
                    registry.udf("negative_inner_product")?,
                ),
                (
                    BinaryOperator::Custom(L1_OPERATOR_TOKEN.into()),
                    registry.udf("l1_distance")?,
                ),
            ],
        })
    }
}

impl ExprPlanner for VectorOperatorPlanner {
    fn plan_binary_op(
        &self,
        expr: RawBinaryExpr,
        schema: &DFSchema,
    ) -> Result<PlannerResult<RawBinaryExpr>> {
        if let Some(udf) = crate::vector_arith::plan(&expr.op, &expr.left, &expr.right, schema) {
            return Ok(PlannerResult::Planned(Expr::ScalarFunction(
                ScalarFunction::new_udf(Arc::new(udf), vec![expr.left, expr.right]),
            )));
        }
        let Some((_, udf)) = self.by_operator.iter().find(|(op, _)| *op == expr.op) else {
            return Ok(PlannerResult::Original(expr));
        };
        Ok(PlannerResult::Planned(Expr::ScalarFunction(
            ScalarFunction::new_udf(udf.clone(), vec![expr.left, expr.right]),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_pgvector() {
        assert_eq!(
            parse_vector_text("[1, 2.5,-3]").unwrap(),
            vec![1.0, 2.5, -3.0]
        );
        assert_eq!(parse_vector_text("[1,a]").unwrap_err().sqlstate, "22P02");
        assert_eq!(parse_vector_text("1,2").unwrap_err().sqlstate, "22P02");
        assert_eq!(
            parse_vector_text("[NaN]").unwrap_err().message,
            "NaN not allowed in vector"
        );
        assert_eq!(
            parse_vector_text("[inf]").unwrap_err().message,
            "infinite value not allowed in vector"
        );
        assert_eq!(format_vector(&[1.0, 2.5, -3.0]), "[1,2.5,-3]");
        let odd = [1.0e-7f32, -0.1, 3.4028235e38, 123456.79, 0.0];
        let literal = format_vector_literal(&odd);
        assert_eq!(
            parse_vector_text(&literal).unwrap(),
            odd.to_vec(),
            "{literal}"
        );
    }

    #[test]
    fn distances_match_definitions() {
        let a = [1.0, 2.0, 3.0];
        let b = [4.0, 5.0, 6.0];
        assert_eq!(l2_squared(&a, &b), 27.0);
        assert_eq!(dot(&a, &b), 32.0);
        assert_eq!(l1(&a, &b), 9.0);
        assert!((cosine(&a, &b) - (1.0 - 32.0 / (14f64.sqrt() * 77f64.sqrt()))).abs() < 1e-12);
    }
}
