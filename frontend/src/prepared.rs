//! SQL-level prepared statements: `PREPARE name [(types)] AS statement`,
//! `EXECUTE name [(arguments)]`, `DEALLOCATE [PREPARE] name | ALL`.
//!
//! A prepared statement is kept parsed in the session; `EXECUTE` puts its
//! arguments in place of `$1..$n` (cast to the declared types) and runs the
//! result through the one execute path, like the extended protocol does
//! with bound parameters.

use std::ops::ControlFlow;

use pgwire::api::results::Tag;
use quiver_planner::{SqlError, sqlstate};
use sqlparser::ast::{CastKind, DataType, Expr, Ident, ObjectName, Statement, Value};

use crate::engine::{Engine, Output};
use crate::session::Session;

/// A `PREPARE`d statement.
#[derive(Debug, Clone)]
pub struct SqlPrepared {
    statement: Statement,
    types: Vec<DataType>,
}

fn name_of(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_ascii_lowercase()
    }
}

fn undefined(name: &str) -> SqlError {
    SqlError::new(
        "26000",
        format!("prepared statement \"{name}\" does not exist"),
    )
}

impl Engine {
    pub(crate) fn prepare(
        &self,
        session: &Session,
        name: &Ident,
        types: Vec<DataType>,
        statement: Statement,
    ) -> Result<Output, SqlError> {
        let name = name_of(name);
        let mut prepared = session.prepared.lock();
        if prepared.contains_key(&name) {
            return Err(SqlError::new(
                "42P05",
                format!("prepared statement \"{name}\" already exists"),
            ));
        }
        prepared.insert(name, SqlPrepared { statement, types });
        Ok(Output::Command(Tag::new("PREPARE")))
    }

    pub(crate) async fn execute_prepared(
        &self,
        session: &Session,
        name: Option<&ObjectName>,
        arguments: Vec<Expr>,
    ) -> Result<Output, SqlError> {
        let name = name
            .and_then(|n| n.0.last())
            .and_then(|p| p.as_ident())
            .map(name_of)
            .unwrap_or_default();
        let prepared = session
            .prepared
            .lock()
            .get(&name)
            .cloned()
            .ok_or_else(|| undefined(&name))?;
        let expected =
            crate::engine::count_parameters(&prepared.statement).max(prepared.types.len());
        if arguments.len() != expected {
            return Err(SqlError::new(
                sqlstate::SYNTAX_ERROR,
                format!(
                    "wrong number of parameters for prepared statement \"{name}\": expected {expected}, got {}",
                    arguments.len()
                ),
            ));
        }
        let mut statement = prepared.statement;
        let _ = sqlparser::ast::visit_expressions_mut(&mut statement, |e| {
            if let Expr::Value(v) = e
                && let Value::Placeholder(p) = &v.value
                && let Ok(n) = p.trim_start_matches('$').parse::<usize>()
                && let Some(argument) = n.checked_sub(1).and_then(|i| arguments.get(i))
            {
                *e = match prepared.types.get(n - 1) {
                    Some(ty) => Expr::Cast {
                        kind: CastKind::Cast,
                        expr: Box::new(Expr::Nested(Box::new(argument.clone()))),
                        data_type: ty.clone(),
                        array: false,
                        format: None,
                    },
                    None => Expr::Nested(Box::new(argument.clone())),
                };
            }
            ControlFlow::<()>::Continue(())
        });
        // The declared types may include `vector(n)`: respell casts as the
        // parser would have.
        quiver_planner::rewrite::rewrite_vector_casts(&mut statement);
        Box::pin(self.execute(session, statement)).await
    }

    pub(crate) fn deallocate(&self, session: &Session, name: &Ident) -> Result<Output, SqlError> {
        let all = name.quote_style.is_none() && name.value.eq_ignore_ascii_case("all");
        let name = name_of(name);
        let mut prepared = session.prepared.lock();
        if all {
            prepared.clear();
        } else if prepared.remove(&name).is_none() {
            return Err(undefined(&name));
        }
        Ok(Output::Command(Tag::new("DEALLOCATE")))
    }
}
