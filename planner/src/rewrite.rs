//! Statement preprocessing: PostgreSQL/pgvector syntax that DataFusion's SQL
//! planner does not know, turned into syntax it does.

use std::ops::ControlFlow;

use datafusion::common::ScalarValue;
use sqlparser::ast::{
    CastKind, DataType as SqlDataType, Expr, Function, FunctionArg, FunctionArgExpr,
    FunctionArgumentList, FunctionArguments, Ident, ObjectName, ObjectNamePart, Statement, Value,
    VisitMut, visit_expressions_mut,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer};

use crate::vector::{L1_OPERATOR_TOKEN, format_vector_literal};
use crate::{SqlError, sqlstate};

/// Token-level respellings before parsing:
/// - sqlparser splits pgvector's `<+>` into `<`, `+`, `>`; it becomes a
///   custom operator token (`<#+>`) the PostgreSQL dialect keeps whole.
/// - `'pg_catalog.f'::regproc` becomes the bare name `'f'`: the pg_catalog
///   emulation keeps function references (`pg_type.typinput`, ...) as names,
///   and its own regproc rewrite would cast those names to OIDs and fail
///   (JDBC's type cache compares `typinput = 'pg_catalog.array_in'::regproc`).
pub fn normalize_operators(sql: &str) -> String {
    let lower = sql.to_ascii_lowercase();
    if let Some(respelled) = create_user_as_role(sql, &lower) {
        return respelled;
    }
    if !sql.contains("<+>") && !lower.contains("regproc") {
        return sql.to_string();
    }
    let dialect = PostgreSqlDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, sql)
        .with_unescape(false)
        .tokenize()
    else {
        return sql.to_string();
    };
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    while i < tokens.len() {
        if i + 2 < tokens.len()
            && tokens[i] == Token::Lt
            && tokens[i + 1] == Token::Plus
            && tokens[i + 2] == Token::Gt
        {
            out.push_str(L1_OPERATOR_TOKEN);
            i += 3;
            continue;
        }
        if i + 2 < tokens.len()
            && let Token::SingleQuotedString(name) = &tokens[i]
            && tokens[i + 1] == Token::DoubleColon
            && matches!(&tokens[i + 2], Token::Word(w) if w.value.eq_ignore_ascii_case("regproc"))
        {
            let bare = name.strip_prefix("pg_catalog.").unwrap_or(name);
            out.push_str(&Token::SingleQuotedString(bare.to_string()).to_string());
            i += 3;
            continue;
        }
        out.push_str(&tokens[i].to_string());
        i += 1;
    }
    out
}

/// psql's `\d` reads column defaults with
/// `(SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid, true) FROM
/// pg_catalog.pg_attrdef d WHERE d.adrelid = a.attrelid AND d.adnum =
/// a.attnum AND a.atthasdef)`, which the pg_catalog emulation replaces by
/// NULL; this puts `quiver_column_default(a.attrelid, a.attnum)` there first.
pub fn psql_column_defaults(sql: &str) -> String {
    const PATTERN: &str = "(SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid, true) FROM pg_catalog.pg_attrdef d WHERE d.adrelid = a.attrelid AND d.adnum = a.attnum AND a.atthasdef)";
    if !sql.contains("pg_attrdef d") {
        return sql.to_string();
    }
    let squeeze = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let squeezed = squeeze(sql);
    match squeezed.find(PATTERN) {
        Some(at) => format!(
            "{}pg_catalog.quiver_column_default(a.attrelid, a.attnum){}",
            &squeezed[..at],
            &squeezed[at + PATTERN.len()..]
        ),
        None => sql.to_string(),
    }
}

/// PostgreSQL's `CREATE USER name [WITH] options` is `CREATE ROLE name
/// WITH LOGIN options`; sqlparser only knows the latter.
fn create_user_as_role(sql: &str, lower: &str) -> Option<String> {
    let trimmed = lower.trim_start();
    let rest = trimmed.strip_prefix("create")?.trim_start();
    let rest = rest.strip_prefix("user")?;
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    // Same offsets in the original text (ASCII case folding keeps them).
    let offset = sql.len() - rest.len();
    let after_user = &sql[offset..];
    let name_start = after_user.len() - after_user.trim_start().len();
    let tail = &after_user[name_start..];
    let name_len = if let Some(quoted) = tail.strip_prefix('"') {
        quoted.find('"')? + 2
    } else {
        tail.find(|c: char| c.is_whitespace() || c == ';')
            .unwrap_or(tail.len())
    };
    let (name, options) = tail.split_at(name_len);
    let options = options.trim_start();
    let options = match options.get(..4) {
        Some(w)
            if w.eq_ignore_ascii_case("with") && options[4..].starts_with(char::is_whitespace) =>
        {
            &options[4..]
        }
        _ => options,
    };
    Some(format!("CREATE ROLE {name} WITH LOGIN {options}"))
}

/// The `n` of a `vector(n)` type name, `Some(None)` for plain `vector`,
/// `None` if the type is not a vector.
pub fn vector_type_dim(data_type: &SqlDataType) -> Option<Option<u32>> {
    let SqlDataType::Custom(name, args) = data_type else {
        return None;
    };
    let last = name.0.last().and_then(|p| p.as_ident())?;
    if !last.value.eq_ignore_ascii_case("vector") {
        return None;
    }
    Some(args.first().and_then(|a| a.parse::<u32>().ok()))
}

/// `name(args...)` as an AST call.
pub fn call(name: &str, args: Vec<Expr>) -> Expr {
    Expr::Function(Function {
        name: ObjectName(vec![ObjectNamePart::Identifier(Ident::new(name))]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: args
                .into_iter()
                .map(|e| FunctionArg::Unnamed(FunctionArgExpr::Expr(e)))
                .collect(),
            clauses: vec![],
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: vec![],
    })
}

/// Rewrites `x::vector(n)` / `CAST(x AS vector)` into `to_vector(x, n)`.
pub fn rewrite_vector_casts(statement: &mut Statement) {
    let _ = visit_expressions_mut(statement, |expr| {
        if let Expr::Cast {
            kind: CastKind::DoubleColon | CastKind::Cast,
            expr: inner,
            data_type,
            ..
        } = expr
            && let Some(dim) = vector_type_dim(data_type)
        {
            let mut args = vec![(**inner).clone()];
            if let Some(n) = dim {
                args.push(Expr::value(Value::Number(n.to_string(), false)));
            }
            *expr = call("to_vector", args);
        } else if let Expr::Cast {
            kind: CastKind::DoubleColon | CastKind::Cast,
            expr: inner,
            data_type: SqlDataType::Text,
            ..
        } = expr
        {
            // DataFusion cannot cast a vector (FixedSizeList) to text.
            *expr = call("quiver_text", vec![(**inner).clone()]);
        }
        ControlFlow::<()>::Continue(())
    });
}

/// Rewrites PostgreSQL's array constructor from a subquery,
/// `ARRAY(SELECT x FROM ...)`, into `(SELECT array_agg(x) FROM ...)`, which
/// DataFusion plans (also when correlated). psql's `\du` and `\d+` use it.
/// Only single-column plain SELECTs are rewritten.
pub fn rewrite_array_subqueries(statement: &mut Statement) {
    let _ = visit_expressions_mut(statement, |expr| {
        if let Expr::Function(f) = expr
            && f.name.0.len() == 1
            && f.name.0[0]
                .as_ident()
                .is_some_and(|i| i.value.eq_ignore_ascii_case("array"))
            && let FunctionArguments::Subquery(query) = &f.args
            && query.order_by.is_none()
            && query.limit_clause.is_none()
            && let sqlparser::ast::SetExpr::Select(select) = query.body.as_ref()
            && select.projection.len() == 1
            && matches!(select.group_by, sqlparser::ast::GroupByExpr::Expressions(ref e, _) if e.is_empty())
        {
            let item = match &select.projection[0] {
                sqlparser::ast::SelectItem::UnnamedExpr(e) => Some(e.clone()),
                sqlparser::ast::SelectItem::ExprWithAlias { expr, .. } => Some(expr.clone()),
                _ => None,
            };
            if unnests_reloptions(select) {
                // psql's `\d+` collects a table's TOAST options with
                // `ARRAY(SELECT ... FROM unnest(tc.reloptions) x)`; DataFusion
                // has no `unnest` table function, and Quiver's catalog has no
                // relation options, so the array is always empty.
                *expr = Expr::Cast {
                    kind: CastKind::Cast,
                    expr: Box::new(Expr::value(Value::Null)),
                    data_type: SqlDataType::Array(sqlparser::ast::ArrayElemTypeDef::SquareBracket(
                        Box::new(SqlDataType::Text),
                        None,
                    )),
                    array: false,
                    format: None,
                };
            } else if let Some(item) = item {
                let mut query = query.clone();
                if let sqlparser::ast::SetExpr::Select(select) = query.body.as_mut() {
                    select.projection = vec![sqlparser::ast::SelectItem::UnnamedExpr(call(
                        "array_agg",
                        vec![item],
                    ))];
                }
                *expr = Expr::Subquery(query);
            }
        }
        ControlFlow::<()>::Continue(())
    });
}

pub(crate) fn is_catalog_table(relation: &sqlparser::ast::TableFactor) -> bool {
    let sqlparser::ast::TableFactor::Table {
        name, args: None, ..
    } = relation
    else {
        return false;
    };
    let parts: Vec<String> = name
        .0
        .iter()
        .filter_map(|p| p.as_ident())
        .map(|i| i.value.to_ascii_lowercase())
        .collect();
    match parts.as_slice() {
        [schema, _] => schema == "pg_catalog" || schema == "information_schema",
        [table] => table.starts_with("pg_"),
        _ => false,
    }
}

/// Whether a SELECT reads `FROM [pg_catalog.]unnest(<x>.reloptions)`.
fn unnests_reloptions(select: &sqlparser::ast::Select) -> bool {
    let [from] = select.from.as_slice() else {
        return false;
    };
    let sqlparser::ast::TableFactor::Table {
        name,
        args: Some(args),
        ..
    } = &from.relation
    else {
        return false;
    };
    name.0
        .last()
        .and_then(|p| p.as_ident())
        .is_some_and(|i| i.value.eq_ignore_ascii_case("unnest"))
        && args
            .args
            .iter()
            .any(|a| a.to_string().to_ascii_lowercase().ends_with("reloptions"))
}

/// Positions (0-based) of the `$n` parameters that are operands of a
/// pgvector operator or arguments of a vector function: like pgvector, the
/// server describes those parameters as `vector`, so drivers bind them in
/// pgvector's text or binary format.
pub fn vector_parameter_positions(statement: &Statement) -> std::collections::BTreeSet<usize> {
    fn position(e: &Expr) -> Option<usize> {
        match e {
            Expr::Value(v) => match &v.value {
                Value::Placeholder(p) => p
                    .trim_start_matches('$')
                    .parse::<usize>()
                    .ok()?
                    .checked_sub(1),
                _ => None,
            },
            Expr::Nested(inner) => position(inner),
            _ => None,
        }
    }
    const VECTOR_FUNCTIONS: [&str; 8] = [
        "l2_distance",
        "inner_product",
        "cosine_distance",
        "l1_distance",
        "vector_dims",
        "vector_norm",
        "l2_normalize",
        "to_vector",
    ];
    let mut found = std::collections::BTreeSet::new();
    let mut copy = statement.clone();
    let _ = visit_expressions_mut(&mut copy, |expr| {
        match expr {
            Expr::BinaryOp { left, op, right } => {
                let is_vector_op = match op {
                    sqlparser::ast::BinaryOperator::LtDashGt
                    | sqlparser::ast::BinaryOperator::Spaceship => true,
                    sqlparser::ast::BinaryOperator::Custom(c) => {
                        c == "<#>" || c == L1_OPERATOR_TOKEN
                    }
                    _ => false,
                };
                if is_vector_op {
                    found.extend(position(left));
                    found.extend(position(right));
                }
            }
            Expr::Function(f)
                if f.name.0.len() == 1
                    && f.name.0[0].as_ident().is_some_and(|i| {
                        VECTOR_FUNCTIONS.contains(&i.value.to_ascii_lowercase().as_str())
                    }) =>
            {
                if let FunctionArguments::List(list) = &f.args {
                    for arg in &list.args {
                        if let FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) = arg {
                            found.extend(position(e));
                        }
                    }
                }
            }
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    found
}

/// A SQL literal expression carrying `value`.
pub fn scalar_to_sql(value: &ScalarValue) -> Result<Expr, SqlError> {
    if value.is_null() {
        return Ok(Expr::value(Value::Null));
    }
    let typed = |text: String, ty: SqlDataType| Expr::Cast {
        kind: CastKind::DoubleColon,
        expr: Box::new(Expr::value(Value::SingleQuotedString(text))),
        data_type: ty,
        array: false,
        format: None,
    };
    Ok(match value {
        ScalarValue::Boolean(Some(b)) => Expr::value(Value::Boolean(*b)),
        ScalarValue::Int8(Some(v)) => number(v.to_string()),
        ScalarValue::Int16(Some(v)) => number(v.to_string()),
        ScalarValue::Int32(Some(v)) => number(v.to_string()),
        ScalarValue::Int64(Some(v)) => number(v.to_string()),
        ScalarValue::UInt8(Some(v)) => number(v.to_string()),
        ScalarValue::UInt16(Some(v)) => number(v.to_string()),
        ScalarValue::UInt32(Some(v)) => number(v.to_string()),
        ScalarValue::UInt64(Some(v)) => number(v.to_string()),
        ScalarValue::Float32(Some(v)) if v.is_finite() => typed(v.to_string(), SqlDataType::Real),
        ScalarValue::Float64(Some(v)) if v.is_finite() => {
            typed(v.to_string(), SqlDataType::DoublePrecision)
        }
        ScalarValue::Float32(Some(v)) => typed(v.to_string(), SqlDataType::Real),
        ScalarValue::Float64(Some(v)) => typed(v.to_string(), SqlDataType::DoublePrecision),
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => Expr::value(Value::SingleQuotedString(s.clone())),
        ScalarValue::FixedSizeList(_) | ScalarValue::List(_) | ScalarValue::LargeList(_) => {
            match crate::vector::list_scalar_vector(value)
                .map_err(|e| SqlError::new(sqlstate::INVALID_PARAMETER_VALUE, e.to_string()))?
            {
                Some(row) => Expr::value(Value::SingleQuotedString(format_vector_literal(&row))),
                None => Expr::value(Value::Null),
            }
        }
        other => {
            // Dates, timestamps, decimals: their display form is valid input.
            Expr::value(Value::SingleQuotedString(other.to_string()))
        }
    })
}

/// A number literal as an AST expression.
pub fn number(text: impl Into<String>) -> Expr {
    Expr::value(Value::Number(text.into(), false))
}

/// `CASE WHEN c1 THEN r1 ... [ELSE e] END` as an AST expression.
pub fn case_when(conditions: Vec<(Expr, Expr)>, else_result: Option<Expr>) -> Expr {
    Expr::Case {
        case_token: sqlparser::ast::helpers::attached_token::AttachedToken::empty(),
        end_token: sqlparser::ast::helpers::attached_token::AttachedToken::empty(),
        operand: None,
        conditions: conditions
            .into_iter()
            .map(|(condition, result)| sqlparser::ast::CaseWhen { condition, result })
            .collect(),
        else_result: else_result.map(Box::new),
    }
}

/// The arguments of a call when they are all plain positional expressions.
pub fn unnamed_args(function: &Function) -> Option<Vec<&Expr>> {
    let FunctionArguments::List(list) = &function.args else {
        return None;
    };
    list.args
        .iter()
        .map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
            _ => None,
        })
        .collect()
}

/// The 0-based position of parameter marker `$n`, `None` for a malformed
/// name or `$0`.
pub fn parameter_position(name: &str) -> Option<usize> {
    name.strip_prefix('$')?
        .parse::<usize>()
        .ok()?
        .checked_sub(1)
}

/// The identity function a declared parameter's cast is wrapped in.
pub const DECLARED_PARAMETER: &str = "quiver_declared_parameter";

/// Positions (0-based) of the parameter markers that are a `LIMIT` or
/// `OFFSET` of some query of the statement.
pub fn limit_parameter_positions(statement: &Statement) -> std::collections::BTreeSet<usize> {
    use sqlparser::ast::{LimitClause, Query, Visit, Visitor};
    struct Limits(std::collections::BTreeSet<usize>);
    impl Visitor for Limits {
        type Break = ();
        fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
            let exprs: Vec<&Expr> = match &query.limit_clause {
                Some(LimitClause::LimitOffset { limit, offset, .. }) => limit
                    .iter()
                    .chain(offset.as_ref().map(|o| &o.value))
                    .collect(),
                Some(LimitClause::OffsetCommaLimit { offset, limit }) => vec![offset, limit],
                None => Vec::new(),
            };
            for e in exprs {
                if let Expr::Value(v) = e
                    && let Value::Placeholder(name) = &v.value
                    && let Some(i) = parameter_position(name)
                {
                    self.0.insert(i);
                }
            }
            ControlFlow::Continue(())
        }
    }
    let mut limits = Limits(Default::default());
    let _ = statement.visit(&mut limits);
    limits.0
}

/// Wraps the parameter markers at the given positions (0-based) in a cast
/// to the type a client declared for a parameter the planner cannot type
/// from context, inside [`DECLARED_PARAMETER`] (an identity function) so
/// that result columns are still named as PostgreSQL names the bare
/// parameter (`?column?`), also once the value is bound.
pub fn cast_parameters<T: VisitMut>(statement: &mut T, casts: &[(usize, SqlDataType)]) {
    let _ = visit_expressions_mut(statement, |expr| {
        if let Expr::Value(v) = expr
            && let Value::Placeholder(name) = &v.value
            && let Some(i) = parameter_position(name)
            && let Some((_, data_type)) = casts.iter().find(|(p, _)| *p == i)
        {
            let cast = Expr::Cast {
                kind: CastKind::Cast,
                expr: Box::new(expr.clone()),
                data_type: data_type.clone(),
                array: false,
                format: None,
            };
            *expr = call(DECLARED_PARAMETER, vec![cast]);
        }
        ControlFlow::<()>::Continue(())
    });
}

/// Replaces `$n` parameter markers by the bound values (extended protocol).
pub fn bind_parameters<T: VisitMut>(
    statement: &mut T,
    params: &[ScalarValue],
) -> Result<(), SqlError> {
    let mut failure = None;
    let _ = visit_expressions_mut(statement, |expr| {
        if let Expr::Value(v) = expr
            && let Value::Placeholder(name) = &v.value
        {
            match parameter_position(name).and_then(|i| params.get(i)) {
                Some(value) => match scalar_to_sql(value) {
                    Ok(lit) => *expr = lit,
                    Err(e) => {
                        failure = Some(e);
                        return ControlFlow::Break(());
                    }
                },
                None => {
                    failure = Some(SqlError::new(
                        "08P01",
                        format!("there is no parameter {name}"),
                    ));
                    return ControlFlow::Break(());
                }
            }
        }
        ControlFlow::Continue(())
    });
    failure.map_or(Ok(()), Err)
}

#[cfg(test)]
mod create_user_tests {
    use super::normalize_operators;

    #[test]
    fn create_user_is_a_login_role() {
        assert_eq!(
            normalize_operators("CREATE USER dave WITH PASSWORD 'x'"),
            "CREATE ROLE dave WITH LOGIN  PASSWORD 'x'"
        );
        assert_eq!(
            normalize_operators("create user \"Eve\" password 'y';"),
            "CREATE ROLE \"Eve\" WITH LOGIN password 'y';"
        );
        assert_eq!(normalize_operators("CREATE USERS x"), "CREATE USERS x");
        assert_eq!(normalize_operators("SELECT user"), "SELECT user");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlparser::parser::Parser;

    fn parse(sql: &str) -> Statement {
        Parser::parse_sql(&PostgreSqlDialect {}, &normalize_operators(sql))
            .unwrap()
            .remove(0)
    }

    #[test]
    fn l1_operator_survives_parsing() {
        let s = parse("SELECT a <+> '[1,2]' FROM t");
        assert!(s.to_string().contains(L1_OPERATOR_TOKEN));
        let s = parse("SELECT 'a <+> b', x FROM t");
        assert!(s.to_string().contains("'a <+> b'"));
    }

    #[test]
    fn vector_casts_become_calls() {
        let mut s = parse("SELECT '[1,2]'::vector(2), CAST(x AS vector) FROM t");
        rewrite_vector_casts(&mut s);
        let text = s.to_string();
        assert!(text.contains("to_vector('[1,2]', 2)"), "{text}");
        assert!(text.contains("to_vector(x)"), "{text}");
    }

    #[test]
    fn finds_vector_parameters() {
        let s = parse("SELECT id FROM t WHERE id > $1 ORDER BY v <-> $2 LIMIT $3");
        assert_eq!(
            vector_parameter_positions(&s)
                .into_iter()
                .collect::<Vec<_>>(),
            vec![1]
        );
        let s = parse("SELECT cosine_distance(v, $1), v <+> $2 FROM t");
        assert_eq!(
            vector_parameter_positions(&s)
                .into_iter()
                .collect::<Vec<_>>(),
            vec![0, 1]
        );
    }

    #[test]
    fn array_subqueries_become_array_agg() {
        let mut s = parse("SELECT ARRAY(SELECT b.n FROM b WHERE b.k = a.k) AS m FROM a");
        rewrite_array_subqueries(&mut s);
        assert_eq!(
            s.to_string(),
            "SELECT (SELECT array_agg(b.n) FROM b WHERE b.k = a.k) AS m FROM a"
        );
    }

    #[test]
    fn binds_parameters_as_literals() {
        let mut s = parse("SELECT * FROM t WHERE id = $1 AND name = $2");
        bind_parameters(
            &mut s,
            &[
                ScalarValue::Int64(Some(5)),
                ScalarValue::Utf8(Some("o'k".into())),
            ],
        )
        .unwrap();
        assert_eq!(
            s.to_string(),
            "SELECT * FROM t WHERE id = 5 AND name = 'o''k'"
        );
        assert!(bind_parameters(&mut parse("SELECT $3"), &[]).is_err());
    }
}
