//! `LIKE ... ESCAPE 'c'` with any escape character. DataFusion's LIKE knows
//! only the backslash; SQLAlchemy's reflection (`get_schema_names`) and
//! other clients escape with `/`. The pattern is rewritten into the
//! backslash form at run time (it is often a parameter), by
//! `quiver_like_escape(pattern, escape)`.

use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::array::{Array, AsArray, StringArray};
use arrow::datatypes::DataType;
use datafusion::error::Result;
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};
use sqlparser::ast::{Expr, Statement, Value, visit_expressions_mut};

use crate::rewrite::call;
use crate::{SqlError, sqlstate};

const LIKE_ESCAPE: &str = "quiver_like_escape";

/// Rewrites `x [NOT] [I]LIKE p ESCAPE 'c'` (c other than a backslash) into
/// `x [NOT] [I]LIKE quiver_like_escape(p, 'c')`.
pub fn rewrite_like_escapes(statement: &mut Statement) {
    let _ = visit_expressions_mut(statement, |expr| {
        if let Expr::Like {
            pattern,
            escape_char,
            ..
        }
        | Expr::ILike {
            pattern,
            escape_char,
            ..
        } = expr
            && let Some(escape) = escape_char.as_ref()
            && let Value::SingleQuotedString(c) | Value::EscapedStringLiteral(c) = &escape.value
            && c != "\\"
        {
            let c = c.clone();
            **pattern = call(
                LIKE_ESCAPE,
                vec![
                    (**pattern).clone(),
                    Expr::value(Value::SingleQuotedString(c)),
                ],
            );
            *escape_char = None;
        }
        ControlFlow::<()>::Continue(())
    });
}

/// `pattern` written with `escape` (one character, or none when empty)
/// as a backslash-escaped LIKE pattern.
fn to_backslash_pattern(pattern: &str, escape: &str) -> Result<String, SqlError> {
    let mut chars = escape.chars();
    let escape = match (chars.next(), chars.next()) {
        (None, _) => None,
        (Some(c), None) => Some(c),
        _ => {
            return Err(SqlError::new(
                sqlstate::INVALID_ESCAPE_CHARACTER,
                "invalid escape string: escape string must be empty or one character",
            ));
        }
    };
    let mut out = String::with_capacity(pattern.len() + 4);
    let mut it = pattern.chars();
    while let Some(c) = it.next() {
        if Some(c) == escape {
            let Some(next) = it.next() else {
                return Err(SqlError::new(
                    sqlstate::INVALID_ESCAPE_SEQUENCE,
                    "LIKE pattern must not end with escape character",
                ));
            };
            out.push('\\');
            out.push(next);
        } else if c == '\\' {
            out.push_str("\\\\");
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

/// The `quiver_like_escape(pattern, escape)` function.
pub fn like_escape_udf() -> ScalarUDF {
    create_udf(
        LIKE_ESCAPE,
        vec![DataType::Utf8, DataType::Utf8],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let (patterns, escapes) = (arrays[0].as_string::<i32>(), arrays[1].as_string::<i32>());
            let out = (0..patterns.len())
                .map(|i| {
                    if patterns.is_null(i) || escapes.is_null(i) {
                        return Ok(None);
                    }
                    to_backslash_pattern(patterns.value(i), escapes.value(i))
                        .map(Some)
                        .map_err(SqlError::into_datafusion)
                })
                .collect::<Result<StringArray>>()?;
            Ok(ColumnarValue::Array(Arc::new(out)))
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_move_to_backslash_escapes() {
        assert_eq!(to_backslash_pattern("pg/_%", "/").unwrap(), "pg\\_%");
        assert_eq!(to_backslash_pattern("a//b", "/").unwrap(), "a\\/b");
        assert_eq!(to_backslash_pattern("a\\b_", "/").unwrap(), "a\\\\b_");
        assert_eq!(to_backslash_pattern("a\\b%", "").unwrap(), "a\\\\b%");
        assert_eq!(
            to_backslash_pattern("x!", "!").unwrap_err().sqlstate,
            "22025"
        );
        assert_eq!(
            to_backslash_pattern("x", "ab").unwrap_err().sqlstate,
            "22019"
        );
    }
}
