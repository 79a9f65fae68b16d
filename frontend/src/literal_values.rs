//! The bulk-load fast path of `INSERT ... VALUES`: when every value is a
//! plain literal (what drivers and ORMs send, parameters included once bound),
//! the columns are built straight from the literals instead of planning and
//! running the VALUES list through DataFusion, which costs far more than the
//! insert itself for wide vector rows. Anything else (expressions, function
//! calls, subqueries) takes the general path.

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, NullArray, StringArray};
use sqlparser::ast::{
    Expr, Function, FunctionArg, FunctionArgExpr, FunctionArguments, SetExpr, UnaryOperator, Value,
    Values,
};

/// One literal, as far as column building cares.
enum Literal<'a> {
    Null,
    Bool(bool),
    /// Number text, with its sign applied.
    Number(String),
    Text(&'a str),
}

fn function_name_is(f: &Function, name: &str) -> bool {
    f.name.0.len() == 1
        && f.name.0[0]
            .as_ident()
            .is_some_and(|i| i.value.eq_ignore_ascii_case(name))
}

fn literal(expr: &Expr) -> Option<Literal<'_>> {
    match expr {
        Expr::Value(v) => match &v.value {
            Value::Null => Some(Literal::Null),
            Value::Boolean(b) => Some(Literal::Bool(*b)),
            Value::Number(n, _) => Some(Literal::Number(n.clone())),
            Value::SingleQuotedString(s) => Some(Literal::Text(s)),
            _ => None,
        },
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match expr.as_ref() {
            Expr::Value(v) => match &v.value {
                Value::Number(n, _) => Some(Literal::Number(format!("-{n}"))),
                _ => None,
            },
            _ => None,
        },
        // `'[1,2,3]'::vector` (already rewritten to `to_vector('[...]')`):
        // the column coercion parses and checks vector text itself.
        Expr::Function(f) if function_name_is(f, "to_vector") => match &f.args {
            FunctionArguments::List(list) if list.args.len() == 1 => match &list.args[0] {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(inner)) => match literal(inner)? {
                    t @ Literal::Text(_) => Some(t),
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

/// Builds one Arrow column per VALUES position, or `None` if some value is
/// not a plain literal (or the rows differ in length).
pub fn literal_columns(body: &SetExpr) -> Option<(Vec<ArrayRef>, usize)> {
    let SetExpr::Values(Values { rows, .. }) = body else {
        return None;
    };
    let width = rows.first()?.content.len();
    let mut columns: Vec<Vec<Literal<'_>>> =
        (0..width).map(|_| Vec::with_capacity(rows.len())).collect();
    for row in rows {
        if row.content.len() != width {
            return None;
        }
        for (col, expr) in columns.iter_mut().zip(&row.content) {
            col.push(literal(expr)?);
        }
    }
    let arrays = columns
        .into_iter()
        .map(build_column)
        .collect::<Option<Vec<_>>>()?;
    Some((arrays, rows.len()))
}

fn build_column(values: Vec<Literal<'_>>) -> Option<ArrayRef> {
    let (mut text, mut number, mut boolean) = (false, false, false);
    for v in &values {
        match v {
            Literal::Null => {}
            Literal::Bool(_) => boolean = true,
            Literal::Number(_) => number = true,
            Literal::Text(_) => text = true,
        }
    }
    // Mixed booleans and other kinds: let DataFusion decide (it rejects or coerces).
    if boolean && (text || number) {
        return None;
    }
    let array: ArrayRef = if text {
        // Numbers next to strings become their text; the column coercion
        // casts text to the column's type with PostgreSQL's rules.
        Arc::new(StringArray::from_iter(values.iter().map(|v| match v {
            Literal::Null | Literal::Bool(_) => None,
            Literal::Number(n) => Some(n.clone()),
            Literal::Text(s) => Some((*s).to_string()),
        })))
    } else if boolean {
        Arc::new(BooleanArray::from_iter(values.iter().map(|v| match v {
            Literal::Bool(b) => Some(*b),
            _ => None,
        })))
    } else if number {
        let ints: Option<Vec<Option<i64>>> = values
            .iter()
            .map(|v| match v {
                Literal::Number(n) => n.parse::<i64>().ok().map(Some),
                _ => Some(None),
            })
            .collect();
        match ints {
            Some(ints) => Arc::new(Int64Array::from(ints)),
            None => {
                let floats: Option<Vec<Option<f64>>> = values
                    .iter()
                    .map(|v| match v {
                        Literal::Number(n) => n.parse::<f64>().ok().map(Some),
                        _ => Some(None),
                    })
                    .collect();
                Arc::new(Float64Array::from(floats?))
            }
        }
    } else {
        Arc::new(NullArray::new(values.len()))
    };
    Some(array)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlparser::ast::Statement;
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;

    fn body(sql: &str) -> SetExpr {
        let Statement::Insert(insert) = Parser::parse_sql(&PostgreSqlDialect {}, sql)
            .unwrap()
            .remove(0)
        else {
            panic!("not an insert");
        };
        *insert.source.unwrap().body
    }

    #[test]
    fn plain_literals_take_the_fast_path() {
        let (cols, rows) = literal_columns(&body(
            "INSERT INTO t VALUES (1, -2.5, 'a', NULL, true), (2, 3, '[1,2]', NULL, NULL)",
        ))
        .unwrap();
        assert_eq!(rows, 2);
        assert_eq!(cols[0].data_type(), &arrow::datatypes::DataType::Int64);
        assert_eq!(cols[1].data_type(), &arrow::datatypes::DataType::Float64);
        assert_eq!(cols[2].data_type(), &arrow::datatypes::DataType::Utf8);
        assert_eq!(cols[3].data_type(), &arrow::datatypes::DataType::Null);
        assert_eq!(cols[4].data_type(), &arrow::datatypes::DataType::Boolean);
    }

    #[test]
    fn expressions_take_the_general_path() {
        assert!(literal_columns(&body("INSERT INTO t VALUES (1 + 1)")).is_none());
        assert!(literal_columns(&body("INSERT INTO t VALUES (now())")).is_none());
        assert!(literal_columns(&body("INSERT INTO t SELECT 1")).is_none());
        assert!(literal_columns(&body("INSERT INTO t VALUES (true), (1)")).is_none());
    }
}
