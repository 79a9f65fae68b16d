//! Session settings: `SET`, `SHOW`, `current_setting()`, and the
//! vector-search knobs (`diskann.search_list` and pgvector's names for it).

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema};
use pgwire::api::results::Tag;
use quiver_planner::{SqlError, sqlstate};
use sqlparser::ast::{Expr, ObjectName, Reset, Set, Statement, Value};

use crate::engine::{Engine, Output};
use crate::session::{Consistency, Session};

impl Engine {
    pub(crate) fn set(&self, session: &Session, set: Set) -> Result<Output, SqlError> {
        match set {
            Set::SingleAssignment {
                scope,
                variable,
                values,
                ..
            } => {
                let name = variable_name(&variable);
                let local = matches!(scope, Some(sqlparser::ast::ContextModifier::Local));
                if !session.note_setting_change(&name, local) {
                    session.warning("25P01", "SET LOCAL can only be used in transaction blocks");
                    return Ok(Output::Command(Tag::new("SET")));
                }
                if let [Expr::Identifier(word)] = values.as_slice()
                    && word.quote_style.is_none()
                    && word.value.eq_ignore_ascii_case("default")
                {
                    reset_setting(session, &name);
                    return Ok(Output::Command(Tag::new("SET")));
                }
                let value = values.first().map(setting_value).unwrap_or_default();
                if name == "quiver.consistency" {
                    *session.consistency.lock() = Consistency::parse(&value)?;
                } else if name == LAST_WRITE_TS {
                    // Read-your-writes across connections: a client hands
                    // the timestamp `SHOW quiver.last_write_ts` gave it on
                    // one connection (any proxy) to the next, whose reads
                    // then wait until that write is visible.
                    let ts = value.parse::<u64>().map_err(|_| {
                        SqlError::new(
                            sqlstate::INVALID_PARAMETER_VALUE,
                            format!(
                                "invalid value for parameter \"{name}\": \"{value}\" (a timestamp from SHOW {LAST_WRITE_TS})"
                            ),
                        )
                    })?;
                    session.record_write(quiver_types::Timestamp(ts));
                } else if SEARCH_SETTINGS.contains(&name.as_str()) {
                    let n = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=10_000).contains(n));
                    if n.is_none() {
                        return Err(SqlError::new(
                            sqlstate::INVALID_PARAMETER_VALUE,
                            format!(
                                "invalid value for parameter \"{name}\": \"{value}\" (an integer from 1 to 10000)"
                            ),
                        ));
                    }
                    session.settings.lock().insert(name, value);
                } else {
                    session.settings.lock().insert(name, value);
                }
                Ok(Output::Command(Tag::new("SET")))
            }
            // SET TIME ZONE, SET NAMES, ...: accepted, nothing to change.
            _ => Ok(Output::Command(Tag::new("SET"))),
        }
    }

    /// `RESET name` / `RESET ALL`: back to the session's defaults.
    pub(crate) fn reset(&self, session: &Session, reset: &Reset) -> Output {
        match reset {
            Reset::ALL => {
                session.forget_local_settings();
                session.settings.lock().clear();
                *session.consistency.lock() = Consistency::Session;
            }
            Reset::ConfigurationParameter(name) => {
                let name = variable_name(name);
                session.note_setting_change(&name, false);
                reset_setting(session, &name)
            }
        }
        Output::Command(Tag::new("RESET"))
    }

    pub(crate) fn show(
        &self,
        session: &Session,
        variable: &[sqlparser::ast::Ident],
    ) -> Result<Output, SqlError> {
        let name = variable
            .iter()
            .map(|i| i.value.to_ascii_lowercase())
            .collect::<Vec<_>>()
            .join(".");
        let value = setting(session, &name)?;
        let schema = Arc::new(Schema::new(vec![Field::new(name, DataType::Utf8, false)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(arrow::array::StringArray::from(vec![value]))],
        )
        .map_err(|e| SqlError::new("XX000", e.to_string()))?;
        Ok(Output::Rows(schema, vec![batch]))
    }
}

/// Forgets a session's own value of `name`. The last write's timestamp is
/// a fact about the session, not a preference: it stays.
fn reset_setting(session: &Session, name: &str) {
    if name == "quiver.consistency" {
        *session.consistency.lock() = Consistency::Session;
    } else if name != LAST_WRITE_TS {
        session.settings.lock().remove(name);
    }
}

/// The commit timestamp of the session's last write (0 before any); set it
/// to make the session's reads wait for a write made elsewhere.
const LAST_WRITE_TS: &str = "quiver.last_write_ts";

/// How a built-in parameter's value is read from the session.
type SettingValue = fn(&Session) -> String;

/// The parameters every session has (besides its own `SET`s), with their
/// values; `SHOW`, `current_setting('x')` and `current_setting($1)` all
/// read this one table.
const BUILT_IN_SETTINGS: [(&str, SettingValue); 13] = [
    ("quiver.consistency", |s| {
        s.consistency.lock().name().to_string()
    }),
    (LAST_WRITE_TS, |s| s.last_write().0.to_string()),
    ("server_version", |_| {
        quiver_planner::catalog_functions::POSTGRES_VERSION.to_string()
    }),
    ("server_version_num", |_| "160006".to_string()),
    ("server_encoding", |_| "UTF8".to_string()),
    ("client_encoding", |_| "UTF8".to_string()),
    ("standard_conforming_strings", |_| "on".to_string()),
    ("timezone", |_| "UTC".to_string()),
    ("datestyle", |_| "ISO, MDY".to_string()),
    ("search_path", |_| "\"$user\", public".to_string()),
    ("transaction_isolation", |_| "read committed".to_string()),
    ("transaction.isolation.level", |_| {
        "read committed".to_string()
    }),
    ("default_table_access_method", |_| "heap".to_string()),
];

/// A configuration parameter's value for `SHOW` and `current_setting`.
pub(crate) fn setting(session: &Session, name: &str) -> Result<String, SqlError> {
    if let Some((_, value)) = BUILT_IN_SETTINGS.iter().find(|(n, _)| *n == name) {
        return Ok(value(session));
    }
    // The candidate list every search uses, unless the session set it.
    if name == "diskann.search_list" {
        return Ok(search_list(session).to_string());
    }
    // pgvector's knobs read as pgvector's defaults until set; only a value
    // that was set maps onto the candidate list (see `search_list`).
    let pgvector_default = match name {
        "hnsw.ef_search" => Some("40"),
        "ivfflat.probes" => Some("1"),
        _ => None,
    };
    let set = session.settings.lock().get(name).cloned();
    set.or(pgvector_default.map(str::to_string)).ok_or_else(|| {
        SqlError::new(
            sqlstate::UNDEFINED_OBJECT,
            format!("unrecognized configuration parameter \"{name}\""),
        )
    })
}

/// Replaces `current_setting('name' [, missing_ok])` by the session's value
/// (settings live in the session, which DataFusion functions cannot see).
pub(crate) fn bind_current_setting(
    statement: &mut Statement,
    session: &Session,
) -> Result<(), SqlError> {
    use sqlparser::ast::{FunctionArg, FunctionArgExpr, FunctionArguments};
    let mut failure = None;
    let user = session.user();
    let _ = sqlparser::ast::visit_expressions_mut(statement, |e| {
        // current_user and friends name the session's role (DataFusion's
        // catalog functions know no sessions).
        if let Expr::Function(f) = e
            && matches!(
                f.name.to_string().to_ascii_lowercase().as_str(),
                "current_user" | "session_user" | "user" | "current_role"
            )
            && match &f.args {
                FunctionArguments::None => true,
                FunctionArguments::List(list) => list.args.is_empty(),
                FunctionArguments::Subquery(_) => false,
            }
        {
            *e = Expr::value(Value::SingleQuotedString(user.clone()));
            return std::ops::ControlFlow::Continue(());
        }
        if let Expr::Function(f) = e
            && f.name.to_string().eq_ignore_ascii_case("current_setting")
            && let FunctionArguments::List(list) = &f.args
        {
            let arg = |i: usize| match list.args.get(i) {
                Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v)))) => {
                    Some(v.value.clone())
                }
                _ => None,
            };
            let missing_ok = matches!(arg(1), Some(Value::Boolean(true)));
            if !matches!(arg(0), Some(Value::SingleQuotedString(_)))
                && let Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(name))) = list.args.first()
            {
                // A name known only at run time (a bound parameter).
                *e = settings_lookup(session, name.clone(), missing_ok);
                return std::ops::ControlFlow::Continue(());
            }
            if let Some(Value::SingleQuotedString(name)) = arg(0) {
                let value = match setting(session, &name.to_ascii_lowercase()) {
                    Ok(v) => Value::SingleQuotedString(v),
                    Err(_) if missing_ok => Value::Null,
                    Err(err) => {
                        failure = Some(err);
                        return std::ops::ControlFlow::Break(());
                    }
                };
                *e = Expr::value(value);
            }
        }
        std::ops::ControlFlow::Continue(())
    });
    failure.map_or(Ok(()), Err)
}

/// `current_setting(<expr>)` as a CASE over the session's settings, with
/// `quiver_unrecognized_setting(<expr>)` (an error) for other names.
fn settings_lookup(session: &Session, name: Expr, missing_ok: bool) -> Expr {
    use quiver_planner::rewrite::{call, case_when};
    let mut names: Vec<String> = BUILT_IN_SETTINGS
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    names.extend(session.settings.lock().keys().cloned());
    let lowered = call("lower", vec![name.clone()]);
    let conditions = names
        .into_iter()
        .filter_map(|n| {
            let value = setting(session, &n).ok()?;
            let is_named = Expr::BinaryOp {
                left: Box::new(lowered.clone()),
                op: sqlparser::ast::BinaryOperator::Eq,
                right: Box::new(Expr::value(Value::SingleQuotedString(n))),
            };
            Some((is_named, Expr::value(Value::SingleQuotedString(value))))
        })
        .collect();
    let otherwise = if missing_ok {
        Expr::value(Value::Null)
    } else {
        call(UNRECOGNIZED_SETTING, vec![name])
    };
    case_when(conditions, Some(otherwise))
}

const UNRECOGNIZED_SETTING: &str = "quiver_unrecognized_setting";

/// `quiver_unrecognized_setting(name)`: PostgreSQL's error for an unknown
/// parameter (volatile, so that it is never folded at plan time).
pub(crate) fn unrecognized_setting_udf() -> datafusion::logical_expr::ScalarUDF {
    use arrow::array::AsArray;
    use datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
    create_udf(
        UNRECOGNIZED_SETTING,
        vec![arrow::datatypes::DataType::Utf8],
        arrow::datatypes::DataType::Utf8,
        Volatility::Volatile,
        std::sync::Arc::new(|args: &[ColumnarValue]| {
            let names = ColumnarValue::values_to_arrays(args)?;
            let names = names[0].as_string::<i32>();
            // current_setting is strict: a NULL name is a NULL setting.
            match names.iter().flatten().next() {
                None => Ok(ColumnarValue::Array(arrow::array::new_null_array(
                    &arrow::datatypes::DataType::Utf8,
                    arrow::array::Array::len(names),
                ))),
                Some(name) => Err(SqlError::new(
                    sqlstate::UNDEFINED_OBJECT,
                    format!("unrecognized configuration parameter \"{name}\""),
                )
                .into_datafusion()),
            }
        }),
    )
}

/// Settings that size graph searches: Quiver's own and pgvector's, which
/// map onto it so pgvector applications keep their tuning knob.
const SEARCH_SETTINGS: [&str; 3] = ["diskann.search_list", "hnsw.ef_search", "ivfflat.probes"];

pub(crate) fn search_list(session: &Session) -> usize {
    let get = |name: &str| session.setting(name).and_then(|v| v.parse::<usize>().ok());
    get("diskann.search_list")
        .or_else(|| get("hnsw.ef_search"))
        // One probed list of an IVF index is roughly ten graph candidates.
        .or_else(|| get("ivfflat.probes").map(|p| p.saturating_mul(10)))
        .unwrap_or(crate::vector_search::DEFAULT_SEARCH_LIST)
}

fn variable_name(name: &ObjectName) -> String {
    name.0
        .iter()
        .filter_map(|p| p.as_ident())
        .map(|i| i.value.to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(".")
}

fn setting_value(expr: &Expr) -> String {
    match expr {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
            other => other.to_string(),
        },
        Expr::Identifier(i) => i.value.clone(),
        other => other.to_string(),
    }
}
