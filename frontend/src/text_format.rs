//! PostgreSQL's text output for types whose Arrow encoders print differently:
//! floats (PostgreSQL prints `4`, not `4.0`, and `1e-07`) and timestamps
//! (PostgreSQL drops a zero fractional part). Applied only to columns sent
//! in text format; binary results are untouched.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Float32Type, Float64Type, TimeUnit, TimestampMicrosecondType};
use pgwire::api::portal::Format;

/// Formats a float the way PostgreSQL does with `extra_float_digits = 1`
/// (shortest round-trip digits).
pub fn format_float(text: &str) -> String {
    match text {
        "NaN" => return "NaN".into(),
        "inf" => return "Infinity".into(),
        "-inf" => return "-Infinity".into(),
        _ => {}
    }
    if let Some((mantissa, exp)) = text.split_once('e') {
        let mantissa = mantissa.strip_suffix(".0").unwrap_or(mantissa);
        let (sign, digits) = match exp.strip_prefix('-') {
            Some(d) => ('-', d),
            None => ('+', exp),
        };
        return format!("{mantissa}e{sign}{digits:0>2}");
    }
    text.strip_suffix(".0").unwrap_or(text).to_string()
}

fn float_column<T: arrow::datatypes::ArrowPrimitiveType>(
    array: &ArrayRef,
    fmt: impl Fn(T::Native) -> String,
) -> ArrayRef {
    let values = array.as_primitive::<T>();
    Arc::new(StringArray::from_iter(values.iter().map(|v| v.map(&fmt))))
}

fn timestamp_column(array: &ArrayRef, with_tz: bool) -> ArrayRef {
    let values = array.as_primitive::<TimestampMicrosecondType>();
    Arc::new(StringArray::from_iter(values.iter().map(|v| {
        v.and_then(chrono::DateTime::from_timestamp_micros)
            .map(|t| {
                let mut s = t.naive_utc().format("%Y-%m-%d %H:%M:%S").to_string();
                let micros = t.timestamp_subsec_micros();
                if micros != 0 {
                    let frac = format!("{micros:06}");
                    s.push('.');
                    s.push_str(frac.trim_end_matches('0'));
                }
                if with_tz {
                    s.push_str("+00");
                }
                s
            })
    })))
}

/// Rewrites text-format float and timestamp columns into PostgreSQL's text.
pub fn postgres_text(batch: RecordBatch, format: &Format) -> RecordBatch {
    let mut changed = false;
    let columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .enumerate()
        .map(|(i, col)| {
            if !format.is_text(i) {
                return col.clone();
            }
            let new = match col.data_type() {
                DataType::Float64 => Some(float_column::<Float64Type>(col, |v| {
                    format_float(ryu::Buffer::new().format(v))
                })),
                DataType::Float32 => Some(float_column::<Float32Type>(col, |v| {
                    format_float(ryu::Buffer::new().format(v))
                })),
                DataType::Timestamp(TimeUnit::Microsecond, tz) => {
                    Some(timestamp_column(col, tz.is_some()))
                }
                _ => None,
            };
            match new {
                Some(n) => {
                    changed = true;
                    n
                }
                None => col.clone(),
            }
        })
        .collect();
    if !changed {
        return batch;
    }
    let fields: Vec<arrow::datatypes::Field> = batch
        .schema()
        .fields()
        .iter()
        .zip(&columns)
        .map(|(f, c)| f.as_ref().clone().with_data_type(c.data_type().clone()))
        .collect();
    let schema = Arc::new(arrow::datatypes::Schema::new(fields));
    RecordBatch::try_new(schema, columns).unwrap_or(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_postgres() {
        assert_eq!(format_float("4.0"), "4");
        assert_eq!(format_float("1.4142135"), "1.4142135");
        assert_eq!(format_float("1e-7"), "1e-07");
        assert_eq!(format_float("1.5e20"), "1.5e+20");
        assert_eq!(format_float("-0.25"), "-0.25");
    }
}
