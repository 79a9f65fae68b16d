//! PostgreSQL's names for the column of a scalar set-returning function in
//! `FROM`.
//!
//! In PostgreSQL, `FROM generate_series(1, 3) i` names the function's one
//! column `i` (the table alias names the column too), and without an alias
//! the column is named after the function (`generate_series`). DataFusion
//! calls it `value` whatever the alias, so the idiom every pgvector tutorial
//! uses to make rows — `INSERT INTO items (embedding) SELECT ARRAY[i, i, i]
//! FROM generate_series(1, 1000) i` — failed with "column i does not
//! exist". The alias gets a column list naming that column, which DataFusion
//! applies.

use std::ops::ControlFlow;

use sqlparser::ast::{
    Ident, Statement, TableAlias, TableAliasColumnDef, TableFactor, VisitMut, VisitorMut,
};

/// Functions in `FROM` that return one column of a scalar type.
const SCALAR_SET_FUNCTIONS: [&str; 1] = ["generate_series"];

struct NameColumns;

fn one_column_alias(alias: &mut Option<TableAlias>, function: &str) {
    match alias {
        Some(a) if a.columns.is_empty() => {
            let name = a.name.clone();
            a.columns.push(TableAliasColumnDef {
                name,
                data_type: None,
            });
        }
        Some(_) => {}
        None => {
            *alias = Some(TableAlias {
                explicit: true,
                name: Ident::new(function),
                columns: vec![TableAliasColumnDef::from_name(function)],
                at: None,
            });
        }
    }
}

impl VisitorMut for NameColumns {
    type Break = ();

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        match factor {
            TableFactor::Table {
                name,
                args: Some(_),
                alias,
                ..
            } => {
                let function = name
                    .0
                    .last()
                    .and_then(|p| p.as_ident())
                    .map(|i| i.value.to_ascii_lowercase());
                if let Some(function) = function
                    && name.0.len() == 1
                    && SCALAR_SET_FUNCTIONS.contains(&function.as_str())
                {
                    one_column_alias(alias, &function);
                }
            }
            TableFactor::UNNEST {
                alias,
                array_exprs,
                with_offset: false,
                with_ordinality: false,
                ..
            } if array_exprs.len() == 1 => one_column_alias(alias, "unnest"),
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

/// Names the column of `generate_series(...)` / `unnest(array)` in `FROM`
/// as PostgreSQL does (the table alias, else the function's name).
pub fn name_set_function_columns(statement: &mut Statement) {
    let _ = statement.visit(&mut NameColumns);
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;

    fn rewritten(sql: &str) -> String {
        let mut s = Parser::parse_sql(&PostgreSqlDialect {}, sql)
            .unwrap()
            .remove(0);
        name_set_function_columns(&mut s);
        s.to_string()
    }

    #[test]
    fn aliases_name_the_column() {
        assert_eq!(
            rewritten("SELECT i FROM generate_series(1, 3) i"),
            "SELECT i FROM generate_series(1, 3) i (i)"
        );
        assert_eq!(
            rewritten("SELECT * FROM generate_series(1, 3)"),
            "SELECT * FROM generate_series(1, 3) AS generate_series (generate_series)"
        );
        // Explicit column lists and other relations stay as written.
        assert_eq!(
            rewritten("SELECT g.n FROM generate_series(1, 3) AS g(n), t AS i"),
            "SELECT g.n FROM generate_series(1, 3) AS g (n), t AS i"
        );
        assert_eq!(
            rewritten("SELECT x FROM unnest(ARRAY[1, 2]) x"),
            "SELECT x FROM UNNEST(ARRAY[1, 2]) x (x)"
        );
    }
}
