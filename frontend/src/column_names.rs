//! PostgreSQL's names for unaliased result columns.
//!
//! DataFusion names a computed column after the whole expression
//! (`l2_distance(items.embedding,Utf8("[1,2,3]"))`); PostgreSQL uses the
//! column name for a column reference, the function name for a call, the
//! type name for a cast of a non-column, and `?column?` otherwise. Clients
//! that read rows as dictionaries depend on these names.

use sqlparser::ast::{Expr, Query, SelectItem, SetExpr, Statement};

/// An identifier as PostgreSQL stores it: unquoted names are lower-cased
/// (ASCII letters only, as PostgreSQL does in UTF-8 databases).
pub(crate) fn folded_name(ident: &sqlparser::ast::Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_ascii_lowercase(),
    }
}

pub(crate) fn expr_name(expr: &Expr) -> String {
    match expr {
        // PostgreSQL folds unquoted names to lower case (ASCII only).
        Expr::Identifier(ident) => folded_name(ident),
        Expr::CompoundIdentifier(parts) => parts.last().map(folded_name).unwrap_or_default(),
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
            // The wrapper that gives a parameter its declared type
            // (`declared_types`): invisible, as in PostgreSQL.
            if name == quiver_planner::rewrite::DECLARED_PARAMETER {
                return "?column?".into();
            }
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

/// The PostgreSQL names of a query's result columns, one entry per select
/// item (`None`: keep DataFusion's name), or `None` when they cannot be
/// matched to the output (set operations, more than one wildcard). A
/// wildcard's columns keep their names; [`apply_names`] expands it.
pub fn postgres_column_names(statement: &Statement) -> Option<Vec<ColumnName>> {
    let Statement::Query(query) = statement else {
        return None;
    };
    select_names(query)
}

/// The name of one select item's result column(s).
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnName {
    /// As DataFusion reports it (an explicit alias).
    Keep,
    Rename(String),
    /// `*` or `t.*`: every column of its relations, names kept.
    Wildcard,
}

fn select_names(query: &Query) -> Option<Vec<ColumnName>> {
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    let names: Vec<ColumnName> = select
        .projection
        .iter()
        .map(|item| match item {
            SelectItem::ExprWithAlias { .. } => Some(ColumnName::Keep),
            SelectItem::UnnamedExpr(expr) => Some(ColumnName::Rename(expr_name(expr))),
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                Some(ColumnName::Wildcard)
            }
            _ => None,
        })
        .collect::<Option<_>>()?;
    (names.iter().filter(|n| **n == ColumnName::Wildcard).count() <= 1).then_some(names)
}

/// One name per output column (`None`: keep), a wildcard standing for
/// however many columns the output has beyond the other items.
pub fn apply_names(names: Vec<ColumnName>, width: usize) -> Option<Vec<Option<String>>> {
    let expanded = (width + 1).checked_sub(names.len())?;
    let has_wildcard = names.contains(&ColumnName::Wildcard);
    if !has_wildcard && names.len() != width {
        return None;
    }
    let mut out = Vec::with_capacity(width);
    for name in names {
        match name {
            ColumnName::Keep => out.push(None),
            ColumnName::Rename(n) => out.push(Some(n)),
            ColumnName::Wildcard => out.extend(std::iter::repeat_n(None, expanded)),
        }
    }
    (out.len() == width).then_some(out)
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
        let names =
            postgres_column_names(&Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap()[0])?;
        let width = names.len();
        apply_names(names, width)
    }

    #[test]
    fn a_wildcard_keeps_its_columns_and_the_rest_are_named() {
        let statement =
            &Parser::parse_sql(&PostgreSqlDialect {}, "SELECT *, v <-> '[1]' FROM t").unwrap()[0];
        let names = postgres_column_names(statement).unwrap();
        assert_eq!(
            apply_names(names, 3),
            Some(vec![None, None, Some("?column?".into())])
        );
        let two = &Parser::parse_sql(&PostgreSqlDialect {}, "SELECT *, * FROM t").unwrap()[0];
        assert_eq!(postgres_column_names(two), None);
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
        assert_eq!(names("SELECT * FROM t"), Some(vec![None]));
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
