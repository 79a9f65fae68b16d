//! `avg(vector)` and `sum(vector)`: element-wise aggregates, as in pgvector.
//!
//! DataFusion resolves `avg`/`sum` by name and its numeric signatures reject
//! lists while the SQL planner builds the aggregate, so an analyzer rule is
//! too late. Instead [`VectorAwareAggregate`] replaces the registered
//! `avg`/`sum`: vector arguments get the element-wise accumulator, every
//! other argument is delegated unchanged to DataFusion's own function.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, UInt64Array};
use arrow::datatypes::{DataType, Field, FieldRef, Float64Type};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::type_coercion::functions::fields_with_udf;
use datafusion::logical_expr::utils::AggregateOrderSensitivity;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, GroupsAccumulator, ReversedUDAF, SetMonotonicity,
    Signature, Volatility,
};

use crate::vector::{dimension_mismatch, to_vectors, vector_field};

/// `avg` or `sum` that also accepts `vector` arguments.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct VectorAwareAggregate {
    inner: AggregateUDF,
    average: bool,
    signature: Signature,
}

impl VectorAwareAggregate {
    /// Wraps DataFusion's `avg` (`average = true`) or `sum`.
    pub fn wrap(inner: AggregateUDF, average: bool) -> AggregateUDF {
        AggregateUDF::new_from_impl(VectorAwareAggregate {
            inner,
            average,
            signature: Signature::user_defined(Volatility::Immutable),
        })
    }
}

fn vector_dim(t: &DataType) -> Option<usize> {
    match t {
        DataType::FixedSizeList(f, n) if f.data_type() == &DataType::Float32 => Some(*n as usize),
        _ => None,
    }
}

fn is_vector_call(fields: &[FieldRef]) -> bool {
    fields.len() == 1 && vector_dim(fields[0].data_type()).is_some()
}

impl AggregateUDFImpl for VectorAwareAggregate {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let fields: Vec<FieldRef> = arg_types
            .iter()
            .map(|t| Arc::new(Field::new("arg", t.clone(), true)))
            .collect();
        if is_vector_call(&fields) {
            return Ok(arg_types.to_vec());
        }
        Ok(fields_with_udf(&fields, &self.inner)?
            .iter()
            .map(|f| f.data_type().clone())
            .collect())
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types {
            [t] if vector_dim(t).is_some() => Ok(t.clone()),
            _ => self.inner.return_type(arg_types),
        }
    }

    fn return_field(&self, arg_fields: &[FieldRef]) -> Result<FieldRef> {
        if is_vector_call(arg_fields) {
            let dim = vector_dim(arg_fields[0].data_type());
            return Ok(Arc::new(vector_field(self.name(), dim, true)));
        }
        self.inner.return_field(arg_fields)
    }

    fn is_nullable(&self) -> bool {
        self.inner.is_nullable()
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        if vector_dim(args.return_field.data_type()).is_some() {
            return Ok(Box::new(VectorAccumulator {
                data_type: args.return_field.data_type().clone(),
                average: self.average,
                sum: Vec::new(),
                count: 0,
            }));
        }
        self.inner.accumulator(args)
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        if vector_dim(args.return_field.data_type()).is_some() {
            return Ok(vec![
                Arc::new(Field::new(
                    format!("{}[sum]", args.name),
                    DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true))),
                    true,
                )),
                Arc::new(Field::new(
                    format!("{}[count]", args.name),
                    DataType::UInt64,
                    true,
                )),
            ]);
        }
        self.inner.state_fields(args)
    }

    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        vector_dim(args.return_field.data_type()).is_none()
            && self.inner.groups_accumulator_supported(args)
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        self.inner.create_groups_accumulator(args)
    }

    fn create_sliding_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        if vector_dim(args.return_field.data_type()).is_some() {
            return self.accumulator(args);
        }
        self.inner.create_sliding_accumulator(args)
    }

    fn order_sensitivity(&self) -> AggregateOrderSensitivity {
        self.inner.order_sensitivity()
    }

    fn reverse_expr(&self) -> ReversedUDAF {
        ReversedUDAF::Identical
    }

    fn default_value(&self, data_type: &DataType) -> Result<ScalarValue> {
        if vector_dim(data_type).is_some() {
            return ScalarValue::try_from(data_type);
        }
        self.inner.default_value(data_type)
    }

    fn set_monotonicity(&self, data_type: &DataType) -> SetMonotonicity {
        if vector_dim(data_type).is_some() {
            return SetMonotonicity::NotMonotonic;
        }
        self.inner.inner().set_monotonicity(data_type)
    }
}

/// Element-wise sum (and count, for the average) in f64.
#[derive(Debug)]
struct VectorAccumulator {
    /// The result type, `FixedSizeList(Float32, dim)`.
    data_type: DataType,
    average: bool,
    sum: Vec<f64>,
    count: u64,
}

impl VectorAccumulator {
    fn add(&mut self, row: impl ExactSizeIterator<Item = f64>) -> Result<()> {
        if self.count == 0 {
            self.sum = vec![0.0; row.len()];
        }
        if self.sum.len() != row.len() {
            return Err(dimension_mismatch(self.sum.len(), row.len()).into_datafusion());
        }
        for (s, v) in self.sum.iter_mut().zip(row) {
            *s += v;
        }
        Ok(())
    }
}

impl Accumulator for VectorAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let v = to_vectors(&values[0])?;
        for i in 0..v.len() {
            if let Some(row) = v.row(i) {
                self.add(row.iter().map(|x| *x as f64))?;
                self.count += 1;
            }
        }
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let sums = states[0].as_list::<i32>();
        let counts = states[1]
            .as_any()
            .downcast_ref::<UInt64Array>()
            .ok_or_else(|| {
                datafusion::error::DataFusionError::Internal("vector aggregate count state".into())
            })?;
        for i in 0..sums.len() {
            let n = counts.value(i);
            if sums.is_null(i) || counts.is_null(i) || n == 0 {
                continue;
            }
            let part = sums.value(i);
            self.add(part.as_primitive::<Float64Type>().values().iter().copied())?;
            self.count += n;
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let values: ArrayRef = Arc::new(Float64Array::from(self.sum.clone()));
        Ok(vec![
            ScalarValue::List(Arc::new(arrow::array::ListArray::new(
                Arc::new(Field::new_list_field(DataType::Float64, true)),
                arrow::buffer::OffsetBuffer::from_lengths([self.sum.len()]),
                values,
                None,
            ))),
            ScalarValue::UInt64(Some(self.count)),
        ])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let dim = self.sum.len();
        if self.count == 0 || dim == 0 {
            // No rows: a NULL of the vector type, like pgvector.
            return ScalarValue::try_from(&self.data_type);
        }
        let divisor = if self.average { self.count as f64 } else { 1.0 };
        let values: Vec<f32> = self.sum.iter().map(|s| (s / divisor) as f32).collect();
        let list = arrow::array::FixedSizeListArray::try_new(
            Arc::new(Field::new_list_field(DataType::Float32, false)),
            dim as i32,
            Arc::new(arrow::array::Float32Array::from(values)),
            None,
        )?;
        Ok(ScalarValue::FixedSizeList(Arc::new(list)))
    }

    fn size(&self) -> usize {
        std::mem::size_of::<Self>() + self.sum.capacity() * std::mem::size_of::<f64>()
    }
}
