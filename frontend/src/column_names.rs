//! PostgreSQL's names for unaliased result columns.
//!
//! DataFusion names a computed column after the whole expression
//! (`l2_distance(items.embedding,Utf8("[1,2,3]"))`); PostgreSQL uses the
//! column name for a column reference, the function name for a call, the
//! type name for a cast of a non-column, and `?column?` otherwise. Clients
//! that read rows as dictionaries depend on these names.

use sqlparser::ast::{Expr, Query, SelectItem, SetExpr, Statement};

pub(crate) fn expr_name(expr: &Expr) -> String {
    match expr {
        Expr::Identifier(ident) => ident.value.clone(),
        Expr::CompoundIdentifier(parts) => {
            parts.last().map(|i| i.value.clone()).unwrap_or_default()
        }
        Expr::Function(f) => {
            let name = f
                .name
                .0
                .last()
                .and_then(|p| p.as_ident())
                .map(|i| i.value.to_ascii_lowercase())
                .unwrap_or_default();
            // `x::vector` and `x::text` were rewritten into these calls; like
            // a cast, they are named after a column argument, else the type.
            let cast_to = match name.as_str() {
                "to_vector" => Some("vector"),
                "quiver_text" => Some("text"),
                _ => None,
            };
            match (cast_to, first_argument(f)) {
                (Some(_), Some(arg @ (Expr::Identifier(_) | Expr::CompoundIdentifier(_)))) => {
                    expr_name(arg)
                }
                (Some(type_name), _) => type_name.into(),
                (None, _) => name,
            }
        }
        Expr::Cast {
            expr, data_type, ..
        } => match expr.as_ref() {
            Expr::Identifier(_) | Expr::CompoundIdentifier(_) => expr_name(expr),
            _ => data_type.to_string().to_ascii_lowercase(),
        },
        Expr::Nested(inner) => expr_name(inner),
        _ => "?column?".into(),
    }
}

fn first_argument(f: &sqlparser::ast::Function) -> Option<&Expr> {
    match &f.args {
        sqlparser::ast::FunctionArguments::List(list) => match list.args.first()? {
            sqlparser::ast::FunctionArg::Unnamed(sqlparser::ast::FunctionArgExpr::Expr(e)) => {
                Some(e)
            }
            _ => None,
        },
        _ => None,
    }
}

/// The PostgreSQL names of a query's result columns, or `None` when they
/// cannot be matched one-to-one (wildcards, set operations).
pub fn postgres_column_names(statement: &Statement) -> Option<Vec<Option<String>>> {
    let Statement::Query(query) = statement else {
        return None;
    };
    select_names(query)
}

fn select_names(query: &Query) -> Option<Vec<Option<String>>> {
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    select
        .projection
        .iter()
        .map(|item| match item {
            // An explicit alias is kept as DataFusion reports it.
            SelectItem::ExprWithAlias { .. } => Some(None),
            SelectItem::UnnamedExpr(expr) => Some(Some(expr_name(expr))),
            _ => None,
        })
        .collect()
}

/// Gives every unaliased computed column an internal alias. PostgreSQL
/// allows two result columns to be the same expression (`SELECT a <-> q,
/// l2_distance(a, q)`); DataFusion rejects duplicate expression names, so
/// a query it rejected for that is planned again with these aliases.
/// [`postgres_column_names`], computed beforehand, still reports the
/// PostgreSQL names. Returns whether anything changed.
pub fn alias_computed_expressions(statement: &mut Statement) -> bool {
    let Statement::Query(query) = statement else {
        return false;
    };
    let SetExpr::Select(select) = query.body.as_mut() else {
        return false;
    };
    let mut changed = false;
    for (i, item) in select.projection.iter_mut().enumerate() {
        if let SelectItem::UnnamedExpr(expr) = item
            && !matches!(expr, Expr::Identifier(_) | Expr::CompoundIdentifier(_))
        {
            *item = SelectItem::ExprWithAlias {
                expr: expr.clone(),
                alias: sqlparser::ast::Ident::new(format!("__quiver_column_{i}")),
            };
            changed = true;
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;

    fn names(sql: &str) -> Option<Vec<Option<String>>> {
        postgres_column_names(&Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap()[0])
    }

    #[test]
    fn names_follow_postgres() {
        assert_eq!(
            names(
                "SELECT id, t.name, l2_distance(v, '[1]'), v <-> '[1]', count(*), 1 AS one, 1 + 1, x::text, '1'::text FROM t"
            ),
            Some(vec![
                Some("id".into()),
                Some("name".into()),
                Some("l2_distance".into()),
                Some("?column?".into()),
                Some("count".into()),
                None,
                Some("?column?".into()),
                Some("x".into()),
                Some("text".into()),
            ])
        );
        assert_eq!(names("SELECT * FROM t"), None);
        let mut dup = Parser::parse_sql(&PostgreSqlDialect {}, "SELECT a, f(a), a + 1 FROM t")
            .unwrap()
            .remove(0);
        assert!(alias_computed_expressions(&mut dup));
        assert_eq!(
            dup.to_string(),
            "SELECT a, f(a) AS __quiver_column_1, a + 1 AS __quiver_column_2 FROM t"
        );
        assert_eq!(names("SELECT 1 UNION SELECT 2"), None);
    }
}
