//! PostgreSQL's `int2vector` and `oidvector` catalog columns
//! (`pg_index.indkey`, `indclass`, `indoption`, `indcollation`). The
//! emulation keeps them as text, space-separated, which is exactly their
//! text output (psycopg and SQLAlchemy split it on spaces). Queries that
//! expand them (`unnest(indkey)`, `generate_subscripts(indkey, 1)`, as
//! SQLAlchemy's key and index reflection does) get them as integer lists
//! through `quiver_int_vector(text)`; their subscripts start at 0, as
//! these types' do in PostgreSQL.

use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::array::{Array, AsArray, Int64Builder, ListBuilder};
use arrow::datatypes::{DataType, Field};
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};
use sqlparser::ast::{
    BinaryOperator, CastKind, DataType as SqlDataType, Expr, Statement, visit_expressions_mut,
};

use crate::rewrite::{call, case_when, number, unnamed_args};
use crate::{SqlError, sqlstate};

const INT_VECTOR: &str = "quiver_int_vector";

/// The catalog columns of type `int2vector` or `oidvector`.
const VECTOR_COLUMNS: [&str; 4] = ["indkey", "indclass", "indoption", "indcollation"];

/// `unnest(v)` → `unnest(quiver_int_vector(v))` and
/// `generate_subscripts(v, 1)` → `unnest(generate_series(0,
/// array_length(quiver_int_vector(v), 1) - 1))` for those columns.
pub fn rewrite_int_vector_expansions(statement: &mut Statement) {
    let _ = visit_expressions_mut(statement, |expr| {
        let Expr::Function(f) = expr else {
            return ControlFlow::<()>::Continue(());
        };
        let Some(name) = f
            .name
            .0
            .last()
            .and_then(|p| p.as_ident())
            .map(|i| i.value.to_ascii_lowercase())
        else {
            return ControlFlow::Continue(());
        };
        let Some(args) = unnamed_args(f) else {
            return ControlFlow::Continue(());
        };
        match (name.as_str(), args.as_slice()) {
            ("unnest", [column]) if is_vector_column(column) => {
                *expr = call("unnest", vec![call(INT_VECTOR, vec![(*column).clone()])]);
            }
            ("generate_subscripts", [column, dim]) if is_vector_column(column) => {
                // The vectors are one-dimensional: another dimension has no
                // subscripts (`generate_series(0, -1)` is empty). The
                // dimension is often a bound parameter, so this is decided
                // at run time.
                let length = Expr::Cast {
                    kind: CastKind::Cast,
                    expr: Box::new(call(
                        "array_length",
                        vec![call(INT_VECTOR, vec![(*column).clone()]), number("1")],
                    )),
                    data_type: SqlDataType::BigInt(None),
                    array: false,
                    format: None,
                };
                let first_dimension = Expr::BinaryOp {
                    left: Box::new((*dim).clone()),
                    op: BinaryOperator::Eq,
                    right: Box::new(number("1")),
                };
                let last_subscript = Expr::BinaryOp {
                    left: Box::new(length),
                    op: BinaryOperator::Minus,
                    right: Box::new(number("1")),
                };
                let last = case_when(vec![(first_dimension, last_subscript)], Some(number("-1")));
                *expr = call(
                    "unnest",
                    vec![call("generate_series", vec![number("0"), last])],
                );
            }
            _ => {}
        }
        ControlFlow::Continue(())
    });
}

fn is_vector_column(expr: &Expr) -> bool {
    let column = match expr {
        Expr::Identifier(i) => i,
        Expr::CompoundIdentifier(parts) => match parts.last() {
            Some(i) => i,
            None => return false,
        },
        _ => return false,
    };
    VECTOR_COLUMNS
        .iter()
        .any(|c| column.value.eq_ignore_ascii_case(c))
}

/// `quiver_int_vector(text)`: `'1 3'` as the list `[1, 3]`.
pub fn int_vector_udf() -> ScalarUDF {
    create_udf(
        INT_VECTOR,
        vec![DataType::Utf8],
        DataType::List(Arc::new(Field::new("item", DataType::Int64, true))),
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let texts = arrays[0].as_string::<i32>();
            let mut out = ListBuilder::new(Int64Builder::new());
            for i in 0..texts.len() {
                if texts.is_null(i) {
                    out.append_null();
                    continue;
                }
                for item in texts.value(i).split_whitespace() {
                    let value = item.parse::<i64>().map_err(|_| {
                        SqlError::new(
                            sqlstate::INVALID_TEXT_REPRESENTATION,
                            format!("invalid input syntax for type int2vector: \"{item}\""),
                        )
                        .into_datafusion()
                    })?;
                    out.values().append_value(value);
                }
                out.append(true);
            }
            Ok(ColumnarValue::Array(Arc::new(out.finish())))
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;

    #[test]
    fn expansions_of_vector_columns_read_integer_lists_from_zero() {
        let mut statement = Parser::parse_sql(
            &PostgreSqlDialect {},
            "SELECT unnest(i.indkey), generate_subscripts(i.indkey, 1), unnest(i.other) FROM pg_index i",
        )
        .unwrap()
        .remove(0);
        rewrite_int_vector_expansions(&mut statement);
        assert_eq!(
            statement.to_string(),
            "SELECT unnest(quiver_int_vector(i.indkey)), \
             unnest(generate_series(0, CASE WHEN 1 = 1 THEN CAST(array_length(quiver_int_vector(i.indkey), 1) AS BIGINT) - 1 ELSE -1 END)), \
             unnest(i.other) FROM pg_index i"
        );
    }
}
