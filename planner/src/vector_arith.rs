//! pgvector's element-wise arithmetic: `vector + vector`, `vector - vector`
//! and `vector * vector` (pgvector's `vector_add`, `vector_sub` and
//! `vector_mul`), with its errors: different dimensions (22000) and a
//! result that overflows `real` (22003).
//!
//! DataFusion has no arithmetic on lists, so the operator planner turns
//! these operators into the functions when either side is a vector.

use std::sync::Arc;

use arrow::datatypes::{DataType, FieldRef};
use datafusion::common::{DFSchema, Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ExprSchemable, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};
use sqlparser::ast::BinaryOperator;

use crate::vector::{dimension_mismatch, vector_field, vector_operand};
use crate::{SqlError, sqlstate};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Op {
    Add,
    Sub,
    Mul,
}

impl Op {
    fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            Op::Add => a + b,
            Op::Sub => a - b,
            Op::Mul => a * b,
        }
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct VectorArithmetic {
    name: &'static str,
    op: Op,
    signature: Signature,
}

/// The dimension either argument fixes at plan time.
fn planned_dim(args: &ReturnFieldArgs) -> Option<usize> {
    args.arg_fields.iter().find_map(|f| match f.data_type() {
        DataType::FixedSizeList(_, n) => Some(*n as usize),
        _ => None,
    })
}

impl ScalarUDFImpl for VectorArithmetic {
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
        Ok(Arc::new(vector_field(self.name, planned_dim(&args), true)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let (left, left_scalar) = vector_operand(&args.args[0])?;
        let (right, right_scalar) = vector_operand(&args.args[1])?;
        let all_scalar = left_scalar && right_scalar;
        let n = if all_scalar { 1 } else { rows };
        let mut out: Vec<Option<Vec<f32>>> = Vec::with_capacity(n);
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
            let values: Vec<f32> = a
                .iter()
                .zip(b)
                .map(|(x, y)| self.op.apply(*x, *y))
                .collect();
            let out_of_range = |message: &str| {
                SqlError::new(sqlstate::NUMERIC_VALUE_OUT_OF_RANGE, message).into_datafusion()
            };
            if values.iter().any(|v| v.is_infinite()) {
                return Err(out_of_range("value out of range: overflow"));
            }
            // pgvector: a product of two non-zero floats that rounds to 0.
            if self.op == Op::Mul
                && values
                    .iter()
                    .zip(a.iter().zip(b))
                    .any(|(r, (x, y))| *r == 0.0 && *x != 0.0 && *y != 0.0)
            {
                return Err(out_of_range("value out of range: underflow"));
            }
            out.push(Some(values));
        }
        let vectors = crate::vector::from_rows(out).map_err(SqlError::into_datafusion)?;
        let mut array = vectors.into_array()?;
        if array.data_type() != args.return_field.data_type() {
            // A list-typed result (dimension unknown at plan time), or all
            // rows NULL.
            array = match args.return_field.data_type() {
                t @ DataType::List(_) => arrow::compute::cast(&array, t)?,
                t => arrow::array::new_null_array(t, array.len()),
            };
        }
        if all_scalar {
            Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
                &array, 0,
            )?))
        } else {
            Ok(ColumnarValue::Array(array))
        }
    }
}

fn function(name: &'static str, op: Op) -> ScalarUDF {
    ScalarUDF::new_from_impl(VectorArithmetic {
        name,
        op,
        signature: Signature::any(2, Volatility::Immutable),
    })
}

/// `vector_add`, `vector_sub`, `vector_mul`.
pub fn udfs() -> Vec<ScalarUDF> {
    vec![
        function("vector_add", Op::Add),
        function("vector_sub", Op::Sub),
        function("vector_mul", Op::Mul),
    ]
}

/// A vector of known (`vector(n)`) or unknown dimension (`x::vector`).
/// A `real[]` is typed the same, and PostgreSQL has no arithmetic on
/// arrays, so reading it as a vector takes nothing away.
fn is_vector(expr: &Expr, schema: &DFSchema) -> bool {
    matches!(
        expr.get_type(schema),
        Ok(DataType::FixedSizeList(item, _) | DataType::List(item))
            if item.data_type() == &DataType::Float32
    )
}

/// The function for `left op right` when either side is a vector.
pub(crate) fn plan(
    op: &BinaryOperator,
    left: &Expr,
    right: &Expr,
    schema: &DFSchema,
) -> Option<ScalarUDF> {
    let op = match op {
        BinaryOperator::Plus => Op::Add,
        BinaryOperator::Minus => Op::Sub,
        BinaryOperator::Multiply => Op::Mul,
        _ => return None,
    };
    if !is_vector(left, schema) && !is_vector(right, schema) {
        return None;
    }
    let name = match op {
        Op::Add => "vector_add",
        Op::Sub => "vector_sub",
        Op::Mul => "vector_mul",
    };
    Some(function(name, op))
}
