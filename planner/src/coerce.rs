//! Column types from SQL, and assignment of computed values to a table's
//! columns with PostgreSQL's rules (assignment casts, NOT NULL, pgvector's
//! dimension checks).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::DataType;
use arrow::util::display::FormatOptions;
use quiver_types::{ColumnDef, ColumnType, TableSchema};
use sqlparser::ast::{DataType as SqlDataType, ExactNumberInfo, TimezoneInfo};

use crate::rewrite::vector_type_dim;
use crate::vector::to_vectors;
use crate::{SqlError, sqlstate};

/// Maps a SQL column type onto a Quiver column type.
pub fn column_type(data_type: &SqlDataType) -> Result<ColumnType, SqlError> {
    use SqlDataType as T;
    Ok(match data_type {
        T::SmallInt(_) | T::Int2(_) => ColumnType::SmallInt,
        T::Int(_) | T::Integer(_) | T::Int4(_) => ColumnType::Integer,
        T::BigInt(_) | T::Int8(_) => ColumnType::BigInt,
        T::Real | T::Float4 => ColumnType::Real,
        T::Float(info) => match info {
            ExactNumberInfo::Precision(p) | ExactNumberInfo::PrecisionAndScale(p, _)
                if *p <= 24 =>
            {
                ColumnType::Real
            }
            _ => ColumnType::Double,
        },
        T::DoublePrecision | T::Float8 | T::Double(_) | T::Float64 => ColumnType::Double,
        T::Text | T::String(_) => ColumnType::Text,
        T::Varchar(_)
        | T::CharacterVarying(_)
        | T::CharVarying(_)
        | T::Char(_)
        | T::Character(_) => ColumnType::Varchar,
        T::Boolean | T::Bool => ColumnType::Boolean,
        T::Timestamp(_, TimezoneInfo::Tz | TimezoneInfo::WithTimeZone) => ColumnType::TimestampTz,
        T::Timestamp(_, _) | T::Datetime(_) => ColumnType::Timestamp,
        T::Date => ColumnType::Date,
        T::JSONB | T::JSON => ColumnType::Jsonb,
        other => match vector_type_dim(other) {
            Some(Some(n)) if (1..=crate::vector::MAX_DIM as u32).contains(&n) => {
                ColumnType::Vector(n)
            }
            Some(Some(n)) => {
                return Err(SqlError::new(
                    sqlstate::DATA_EXCEPTION,
                    format!(
                        "dimensions for type vector must be between 1 and {}, got {n}",
                        crate::vector::MAX_DIM
                    ),
                ));
            }
            Some(None) => {
                return Err(SqlError::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "vector columns must declare their dimensions, e.g. vector(384)",
                ));
            }
            None => {
                return Err(SqlError::new(
                    sqlstate::UNDEFINED_OBJECT,
                    format!("type \"{other}\" does not exist"),
                ));
            }
        },
    })
}

fn arrow_type_name(t: &DataType) -> String {
    match t {
        DataType::Int8 | DataType::Int16 => "smallint".into(),
        DataType::Int32 => "integer".into(),
        DataType::Int64 => "bigint".into(),
        DataType::Float32 => "real".into(),
        DataType::Float64 => "double precision".into(),
        DataType::Boolean => "boolean".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text".into(),
        DataType::Date32 => "date".into(),
        DataType::Timestamp(_, None) => "timestamp without time zone".into(),
        DataType::Timestamp(_, Some(_)) => "timestamp with time zone".into(),
        DataType::FixedSizeList(_, _) | DataType::List(_) => "vector".into(),
        other => other.to_string(),
    }
}

fn is_numeric(t: &DataType) -> bool {
    t.is_numeric()
}

fn is_text(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// Converts `array` into the stored representation of column `def`.
pub fn coerce_column(array: &ArrayRef, def: &ColumnDef, table: &str) -> Result<ArrayRef, SqlError> {
    let out = match def.ty {
        ColumnType::Vector(dim) => {
            let source = array.data_type();
            if !(is_text(source)
                || matches!(
                    source,
                    DataType::List(_)
                        | DataType::LargeList(_)
                        | DataType::FixedSizeList(_, _)
                        | DataType::Null
                ))
            {
                return Err(type_mismatch(def, source));
            }
            let vectors = to_vectors(array).map_err(SqlError::from_datafusion)?;
            let n = vectors.len();
            if vectors.dim != dim as usize && vectors.valid.iter().any(|v| *v) {
                return Err(SqlError::new(
                    sqlstate::DATA_EXCEPTION,
                    format!("expected {dim} dimensions, not {}", vectors.dim),
                ));
            }
            if vectors.dim == 0 {
                arrow::array::new_null_array(&def.ty.arrow_type(), n)
            } else {
                vectors.into_array().map_err(SqlError::from_datafusion)?
            }
        }
        ty => {
            let target = ty.arrow_type();
            let source = array.data_type();
            if source == &target {
                array.clone()
            } else {
                let allowed = source == &DataType::Null
                    || is_text(source)
                    || is_text(&target)
                    || (is_numeric(source) && is_numeric(&target))
                    || (matches!(source, DataType::Timestamp(_, _) | DataType::Date32)
                        && matches!(target, DataType::Timestamp(_, _) | DataType::Date32));
                if !allowed {
                    return Err(type_mismatch(def, source));
                }
                let options = CastOptions {
                    safe: false,
                    format_options: FormatOptions::default(),
                };
                cast_with_options(array, &target, &options).map_err(|e| {
                    if is_text(source) {
                        let bad = first_uncastable(array, &target).unwrap_or_default();
                        SqlError::new(
                            sqlstate::INVALID_TEXT_REPRESENTATION,
                            format!("invalid input syntax for type {}: \"{bad}\"", ty.pg_name()),
                        )
                    } else {
                        SqlError::new("22003", format!("{} out of range: {e}", ty.pg_name()))
                    }
                })?
            }
        }
    };
    if !def.nullable && out.null_count() > 0 {
        return Err(SqlError::new(
            sqlstate::NOT_NULL_VIOLATION,
            format!(
                "null value in column \"{}\" of relation \"{table}\" violates not-null constraint",
                def.name
            ),
        ));
    }
    Ok(out)
}

fn first_uncastable(array: &ArrayRef, target: &DataType) -> Option<String> {
    let strings = arrow::compute::cast(array, &DataType::Utf8).ok()?;
    let strings = strings
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()?;
    for s in strings.iter().flatten() {
        let one: ArrayRef = Arc::new(arrow::array::StringArray::from(vec![s]));
        let options = CastOptions {
            safe: false,
            format_options: FormatOptions::default(),
        };
        if cast_with_options(&one, target, &options).is_err() {
            return Some(s.to_string());
        }
    }
    None
}

fn type_mismatch(def: &ColumnDef, source: &DataType) -> SqlError {
    SqlError::new(
        sqlstate::DATATYPE_MISMATCH,
        format!(
            "column \"{}\" is of type {} but expression is of type {}",
            def.name,
            def.ty.pg_name(),
            arrow_type_name(source)
        ),
    )
}

/// Builds the rows to store from computed columns: `values[i]` goes to
/// column `targets[i]`; columns not named get NULL.
pub fn build_rows(
    schema: &TableSchema,
    table: &str,
    targets: &[usize],
    values: &[ArrayRef],
    rows: usize,
) -> Result<RecordBatch, SqlError> {
    let mut columns = Vec::with_capacity(schema.columns.len());
    for (idx, def) in schema.columns.iter().enumerate() {
        let column = match targets.iter().position(|&t| t == idx) {
            Some(pos) => coerce_column(&values[pos], def, table)?,
            None => coerce_column(
                &arrow::array::new_null_array(&DataType::Null, rows),
                def,
                table,
            )?,
        };
        columns.push(column);
    }
    RecordBatch::try_new(schema.arrow_schema(), columns)
        .map_err(|e| SqlError::new("XX000", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};

    fn def(ty: ColumnType, nullable: bool) -> ColumnDef {
        ColumnDef {
            default: None,
            name: "c".into(),
            ty,
            nullable,
        }
    }

    #[test]
    fn vectors_are_checked_like_pgvector() {
        let text: ArrayRef = Arc::new(StringArray::from(vec!["[1,2,3]"]));
        assert!(coerce_column(&text, &def(ColumnType::Vector(3), true), "t").is_ok());
        let e = coerce_column(&text, &def(ColumnType::Vector(2), true), "t").unwrap_err();
        assert_eq!(
            (e.sqlstate, e.message.as_str()),
            ("22000", "expected 2 dimensions, not 3")
        );
        let bad: ArrayRef = Arc::new(StringArray::from(vec!["[1,x]"]));
        assert_eq!(
            coerce_column(&bad, &def(ColumnType::Vector(2), true), "t")
                .unwrap_err()
                .sqlstate,
            "22P02"
        );
    }

    #[test]
    fn scalar_assignment_rules() {
        let text: ArrayRef = Arc::new(StringArray::from(vec!["abc"]));
        let e = coerce_column(&text, &def(ColumnType::BigInt, true), "t").unwrap_err();
        assert_eq!(e.sqlstate, "22P02");
        assert_eq!(e.message, "invalid input syntax for type bigint: \"abc\"");
        let b: ArrayRef = Arc::new(arrow::array::BooleanArray::from(vec![true]));
        assert_eq!(
            coerce_column(&b, &def(ColumnType::Integer, true), "t")
                .unwrap_err()
                .sqlstate,
            "42804"
        );
        let n: ArrayRef = Arc::new(Int64Array::from(vec![None::<i64>]));
        assert_eq!(
            coerce_column(&n, &def(ColumnType::BigInt, false), "t")
                .unwrap_err()
                .sqlstate,
            "23502"
        );
    }
}
