//! Parameter types a client declares in its Parse message.
//!
//! PostgreSQL gives a parameter the type the client declared for it, so
//! `SELECT $1` with an `int8` parameter returns an `int8` column. The
//! planner infers parameter types from context only (`id = $1`); where it
//! finds none, the statement would be described and answered as text. For
//! those parameters the statement is rewritten to `CAST($n AS declared)`
//! when it is parsed, so its description, its binding and its result all
//! follow the declaration; a parameter declared with no type becomes text,
//! PostgreSQL's resolution of an unknown. Parameters the planner can type
//! keep that type: their values are decoded with it, as before.

use arrow::datatypes::SchemaRef;
use pgwire::api::Type;
use sqlparser::ast::Statement;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::engine::Engine;
use crate::session::Session;
use quiver_planner::SqlError;

/// The SQL spelling of a declared parameter type the planner can cast to
/// without losing values (not NUMERIC: the planner's default decimal has
/// fewer digits than PostgreSQL's, so numerics stay text).
fn sql_type_name(ty: &Type) -> Option<&'static str> {
    Some(match *ty {
        Type::BOOL => "boolean",
        Type::INT2 => "smallint",
        Type::INT4 => "integer",
        Type::INT8 => "bigint",
        Type::FLOAT4 => "real",
        Type::FLOAT8 => "double precision",
        Type::TEXT | Type::VARCHAR | Type::BPCHAR => "text",
        Type::BYTEA => "bytea",
        Type::DATE => "date",
        Type::TIMESTAMP => "timestamp",
        Type::TIMESTAMPTZ => "timestamptz",
        _ => return None,
    })
}

/// Describes `statement` the way [`Engine::describe`] does, after casting
/// each parameter the planner cannot type to the type the client declared.
/// Returns the statement to keep for execution with its description.
pub async fn describe_with_declared_types(
    engine: &Engine,
    session: &Session,
    statement: Statement,
    declared: &[Option<Type>],
) -> Result<(Statement, Vec<Type>, Option<SchemaRef>), SqlError> {
    let (types, schema) = engine.describe(session, &statement).await?;
    if !matches!(statement, Statement::Query(_)) {
        return Ok((statement, types, schema));
    }
    // A LIMIT or OFFSET value is never a result column; left bare, it keeps
    // the statement on the direct k-NN path.
    let limits = quiver_planner::rewrite::limit_parameter_positions(&statement);
    let mut casts = Vec::new();
    for (i, inferred) in types.iter().enumerate() {
        if *inferred != Type::UNKNOWN || limits.contains(&i) {
            continue;
        }
        // PostgreSQL resolves a parameter nothing types to text; a declared
        // type the planner cannot hold exactly is passed as text too.
        let declared_type = match declared.get(i) {
            Some(Some(t)) if *t != Type::UNKNOWN => t.clone(),
            _ => Type::TEXT,
        };
        let (client, name) = match sql_type_name(&declared_type) {
            Some(name) => (declared_type, name),
            None => (Type::TEXT, "text"),
        };
        let data_type = Parser::new(&PostgreSqlDialect {})
            .try_with_sql(name)
            .and_then(|mut p| p.parse_data_type())
            .map_err(|e| SqlError::new("XX000", format!("type {name}: {e}")))?;
        casts.push((i, data_type, client));
    }
    if casts.is_empty() {
        return Ok((statement, types, schema));
    }
    let mut rewritten = statement.clone();
    let positions: Vec<_> = casts.iter().map(|(i, t, _)| (*i, t.clone())).collect();
    quiver_planner::rewrite::cast_parameters(&mut rewritten, &positions);
    match engine.describe(session, &rewritten).await {
        Ok((mut types, schema)) => {
            for (i, _, client) in casts {
                if let Some(slot) = types.get_mut(i) {
                    *slot = client;
                }
            }
            Ok((rewritten, types, schema))
        }
        // The cast cannot be planned (the planner lacks the type): keep the
        // statement as the client wrote it.
        Err(_) => Ok((statement, types, schema)),
    }
}
