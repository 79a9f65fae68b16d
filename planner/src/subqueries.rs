//! Scalar subqueries with PostgreSQL's semantics on DataFusion.
//!
//! DataFusion plans a correlated scalar subquery only when its one output is
//! an aggregate, its correlation is by equality, and no conjunct of its
//! WHERE reads outer columns alone; PostgreSQL accepts any scalar subquery
//! and fails only at run time, when one yields more than one row. Clients
//! write the plain form (`(SELECT c FROM t WHERE t.id = o.id)`), often
//! inside `CASE` and with outer-only guards (SQLAlchemy's reflection adds
//! `WHERE o.atthasdef AND ...`). [`rewrite_scalar_subqueries`] turns those
//! into the plannable form with the same result:
//! - the output is wrapped in `quiver_subquery_value(...)`, an aggregate
//!   that yields the one value, NULL for no row, and PostgreSQL's error
//!   21000 for more than one ([`SubqueryValue`]); over the emulated
//!   catalog it is `first_value(...)` instead, because the emulation can
//!   list a row twice where PostgreSQL has one;
//! - conjuncts that read only outer columns move out, in front of the
//!   subquery: `(SELECT v FROM t WHERE o.f AND k)` becomes
//!   `CASE WHEN o.f THEN (SELECT v FROM t WHERE k) END` (both are NULL
//!   when `o.f` is not true);
//! - the subquery is parenthesised once more, which keeps
//!   datafusion-pg-catalog's `RemoveSubqueryFromProjection` (it replaces
//!   every correlated subquery of a select list by NULL) away from it.
//!
//! A catalog subquery DataFusion cannot plan either way (outer columns in
//! its output, a non-equality correlation) becomes NULL, as that rule would
//! have made it: only client introspection reads the catalog, and these
//! ask for features Quiver does not have (identity columns, collations).
//! A subquery over user tables is never nulled: it plans or fails with an
//! error.

use std::collections::HashSet;
use std::ops::ControlFlow;

use arrow::array::{ArrayRef, AsArray};
use arrow::datatypes::{DataType, Field, FieldRef, UInt64Type};
use datafusion::common::ScalarValue;
use datafusion::error::Result;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Signature, Volatility,
};
use sqlparser::ast::helpers::attached_token::AttachedToken;
use sqlparser::ast::{
    BinaryOperator, CaseWhen, Expr, GroupByExpr, Query, Select, SelectItem, SetExpr, Statement,
    TableFactor, Value, visit_expressions_mut,
};

use crate::rewrite::{call, holds_aggregate_call, is_catalog_table};
use crate::{SqlError, sqlstate};

/// Name of the [`SubqueryValue`] aggregate.
pub const SUBQUERY_VALUE: &str = "quiver_subquery_value";

/// Aggregates that yield NULL over no rows, so that an outer-only guard can
/// move in front of the subquery (`count` yields 0 and cannot).
const NULL_ON_EMPTY: [&str; 10] = [
    SUBQUERY_VALUE,
    "first_value",
    "max",
    "min",
    "sum",
    "avg",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
];

/// Rewrites every scalar subquery of `statement` into the form DataFusion
/// plans (see the module documentation).
pub fn rewrite_scalar_subqueries(statement: &mut Statement) {
    let _ = visit_expressions_mut(statement, |expr| {
        if let Expr::Subquery(query) = expr {
            *expr = rewrite_one(query);
        }
        ControlFlow::<()>::Continue(())
    });
}

/// Whether `sql` may hold a scalar subquery (a parenthesised SELECT), as a
/// cheap test before parsing it a second time.
pub fn may_hold_subquery(sql: &str) -> bool {
    let bytes = sql.as_bytes();
    bytes.iter().enumerate().any(|(i, b)| {
        *b == b'('
            && sql[i + 1..]
                .trim_start_matches(|c: char| c.is_whitespace() || c == '(')
                .get(..6)
                .is_some_and(|w| w.eq_ignore_ascii_case("select"))
    })
}

fn rewrite_one(original: &Query) -> Expr {
    let over_catalog = reads_only_catalog(original);
    let mut query = Box::new(original.clone());
    let Some(select) = plain_select(&mut query) else {
        return Expr::Nested(Box::new(Expr::Subquery(query)));
    };
    let inner = inner_names(select);
    let Some(Correlation { outer_only, keep }) = split_where(select.selection.clone(), &inner)
    else {
        return unplannable(original, over_catalog);
    };
    let output = match &mut select.projection[0] {
        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
        _ => return unplannable(original, over_catalog),
    };
    if references(output, &inner).outer {
        return unplannable(original, over_catalog);
    }
    if !holds_aggregate_call(output) {
        let wrapper = if over_catalog {
            "first_value"
        } else {
            SUBQUERY_VALUE
        };
        *output = call(wrapper, vec![output.clone()]);
    } else if !outer_only.is_empty() && !is_call_to(output, &NULL_ON_EMPTY) {
        // `count(*)` over no rows is 0, so its guard cannot move out.
        return unplannable(original, over_catalog);
    }
    select.selection = join_conjuncts(keep);
    let subquery = Expr::Nested(Box::new(Expr::Subquery(query)));
    match join_conjuncts(outer_only) {
        None => subquery,
        Some(guard) => Expr::Nested(Box::new(Expr::Case {
            case_token: AttachedToken::empty(),
            end_token: AttachedToken::empty(),
            operand: None,
            conditions: vec![CaseWhen {
                condition: guard,
                result: subquery,
            }],
            else_result: None,
        })),
    }
}

/// A subquery DataFusion cannot decorrelate: NULL over the catalog, left for
/// DataFusion to reject otherwise.
fn unplannable(query: &Query, over_catalog: bool) -> Expr {
    if over_catalog {
        Expr::value(Value::Null)
    } else {
        Expr::Nested(Box::new(Expr::Subquery(Box::new(query.clone()))))
    }
}

/// The SELECT of a single-output subquery without grouping, ordering,
/// limits or set operations, over at least one relation.
fn plain_select(query: &mut Query) -> Option<&mut Select> {
    if query.with.is_some()
        || query.order_by.is_some()
        || query.limit_clause.is_some()
        || query.fetch.is_some()
    {
        return None;
    }
    let SetExpr::Select(select) = query.body.as_mut() else {
        return None;
    };
    let plain = select.projection.len() == 1
        && matches!(
            select.projection[0],
            SelectItem::UnnamedExpr(_) | SelectItem::ExprWithAlias { .. }
        )
        && matches!(&select.group_by, GroupByExpr::Expressions(e, _) if e.is_empty())
        && select.having.is_none()
        && select.distinct.is_none()
        && !select.from.is_empty();
    plain.then_some(select.as_mut())
}

fn reads_only_catalog(query: &Query) -> bool {
    let SetExpr::Select(select) = query.body.as_ref() else {
        return false;
    };
    !select.from.is_empty()
        && select.from.iter().all(|t| {
            is_catalog_table(&t.relation) && t.joins.iter().all(|j| is_catalog_table(&j.relation))
        })
}

/// The names a column of the subquery's own relations is qualified with:
/// each relation's alias, else its (unqualified) table name.
fn inner_names(select: &Select) -> HashSet<String> {
    let mut names = HashSet::new();
    let mut add = |factor: &TableFactor| match factor {
        TableFactor::Table {
            alias: Some(alias), ..
        }
        | TableFactor::Derived {
            alias: Some(alias), ..
        }
        | TableFactor::Function {
            alias: Some(alias), ..
        } => {
            names.insert(alias.name.value.to_ascii_lowercase());
        }
        TableFactor::Table { name, .. } => {
            if let Some(last) = name.0.last().and_then(|p| p.as_ident()) {
                names.insert(last.value.to_ascii_lowercase());
            }
        }
        _ => {}
    };
    for table in &select.from {
        add(&table.relation);
        for join in &table.joins {
            add(&join.relation);
        }
    }
    names
}

/// What the columns an expression reads belong to.
#[derive(Default)]
struct References {
    /// Qualified with a name of the subquery's relations, or unqualified
    /// (which SQL resolves innermost first).
    inner: bool,
    /// Qualified with any other name: the enclosing query's.
    outer: bool,
    /// Holds a subquery of its own.
    subquery: bool,
}

fn references(expr: &Expr, inner: &HashSet<String>) -> References {
    let mut refs = References::default();
    let _ = sqlparser::ast::visit_expressions(expr, |e| {
        match e {
            Expr::Identifier(_) => refs.inner = true,
            Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
                let qualifier = parts[parts.len() - 2].value.to_ascii_lowercase();
                if inner.contains(&qualifier) {
                    refs.inner = true;
                } else {
                    refs.outer = true;
                }
            }
            Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => {
                refs.subquery = true
            }
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    refs
}

/// A subquery's WHERE, split by what each conjunct reads.
struct Correlation {
    /// Conjuncts over outer columns only.
    outer_only: Vec<Expr>,
    /// Inner-only conjuncts and equalities between an inner and an outer
    /// side: the shapes DataFusion decorrelates.
    keep: Vec<Expr>,
}

/// `None` when a conjunct correlates in a shape DataFusion cannot plan.
fn split_where(selection: Option<Expr>, inner: &HashSet<String>) -> Option<Correlation> {
    let mut correlation = Correlation {
        outer_only: Vec::new(),
        keep: Vec::new(),
    };
    let mut conjuncts = Vec::new();
    if let Some(selection) = selection {
        flatten_and(selection, &mut conjuncts);
    }
    for conjunct in conjuncts {
        let refs = references(&conjunct, inner);
        if !refs.outer {
            correlation.keep.push(conjunct);
        } else if refs.subquery {
            return None;
        } else if !refs.inner {
            correlation.outer_only.push(conjunct);
        } else if is_equi_correlation(&conjunct, inner) {
            correlation.keep.push(conjunct);
        } else {
            return None;
        }
    }
    Some(correlation)
}

fn is_equi_correlation(conjunct: &Expr, inner: &HashSet<String>) -> bool {
    let Expr::BinaryOp {
        left,
        op: BinaryOperator::Eq,
        right,
    } = strip_nesting(conjunct)
    else {
        return false;
    };
    let (l, r) = (references(left, inner), references(right, inner));
    (l.inner && !l.outer && r.outer && !r.inner) || (l.outer && !l.inner && r.inner && !r.outer)
}

fn flatten_and(expr: Expr, out: &mut Vec<Expr>) {
    match expr {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            flatten_and(*left, out);
            flatten_and(*right, out);
        }
        Expr::Nested(inner)
            if matches!(
                inner.as_ref(),
                Expr::BinaryOp {
                    op: BinaryOperator::And,
                    ..
                }
            ) =>
        {
            flatten_and(*inner, out)
        }
        other => out.push(other),
    }
}

fn join_conjuncts(conjuncts: Vec<Expr>) -> Option<Expr> {
    conjuncts.into_iter().reduce(|left, right| Expr::BinaryOp {
        left: Box::new(left),
        op: BinaryOperator::And,
        right: Box::new(right),
    })
}

fn strip_nesting(mut expr: &Expr) -> &Expr {
    while let Expr::Nested(inner) = expr {
        expr = inner;
    }
    expr
}

fn is_call_to(expr: &Expr, names: &[&str]) -> bool {
    matches!(expr, Expr::Function(f)
    if f.name.0.last().and_then(|p| p.as_ident()).is_some_and(|i| {
        names.iter().any(|n| i.value.eq_ignore_ascii_case(n))
    }))
}

/// `quiver_subquery_value(x)`: the value of a scalar subquery's one row,
/// NULL without rows, error 21000 with more (PostgreSQL's rule).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct SubqueryValue {
    signature: Signature,
}

impl SubqueryValue {
    pub fn udaf() -> AggregateUDF {
        AggregateUDF::new_from_impl(SubqueryValue {
            signature: Signature::any(1, Volatility::Immutable),
        })
    }
}

impl AggregateUDFImpl for SubqueryValue {
    fn name(&self) -> &str {
        SUBQUERY_VALUE
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        Ok(args[0].clone())
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(SubqueryValueAccumulator {
            value: ScalarValue::try_from(args.return_field.data_type())?,
            rows: 0,
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![
            Field::new("value", args.return_field.data_type().clone(), true).into(),
            Field::new("rows", DataType::UInt64, false).into(),
        ])
    }
}

#[derive(Debug)]
struct SubqueryValueAccumulator {
    value: ScalarValue,
    rows: u64,
}

impl SubqueryValueAccumulator {
    fn add(&mut self, rows: u64, value: impl FnOnce() -> Result<ScalarValue>) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        self.rows += rows;
        if self.rows > 1 {
            return Err(SqlError::new(
                sqlstate::CARDINALITY_VIOLATION,
                "more than one row returned by a subquery used as an expression",
            )
            .into_datafusion());
        }
        self.value = value()?;
        Ok(())
    }
}

impl Accumulator for SubqueryValueAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let column = &values[0];
        for row in 0..column.len() {
            self.add(1, || ScalarValue::try_from_array(column, row))?;
        }
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let (values, rows) = (&states[0], states[1].as_primitive::<UInt64Type>());
        for row in 0..rows.len() {
            self.add(rows.value(row), || ScalarValue::try_from_array(values, row))?;
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![
            self.value.clone(),
            ScalarValue::UInt64(Some(self.rows)),
        ])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(self.value.clone())
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.value.size() - std::mem::size_of_val(&self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;

    fn rewritten(sql: &str) -> String {
        let mut statement = Parser::parse_sql(&PostgreSqlDialect {}, sql)
            .unwrap()
            .remove(0);
        rewrite_scalar_subqueries(&mut statement);
        statement.to_string()
    }

    #[test]
    fn a_plain_correlated_subquery_yields_its_one_value() {
        assert_eq!(
            rewritten("SELECT a, (SELECT c FROM t2 WHERE t2.b = t1.a) FROM t1"),
            "SELECT a, ((SELECT quiver_subquery_value(c) FROM t2 WHERE t2.b = t1.a)) FROM t1"
        );
    }

    #[test]
    fn outer_only_conjuncts_move_in_front_of_the_subquery() {
        assert_eq!(
            rewritten(
                "SELECT (SELECT x.c FROM t2 AS x WHERE t1.f AND x.b = t1.a AND x.c <> 'z') FROM t1"
            ),
            "SELECT (CASE WHEN t1.f THEN ((SELECT quiver_subquery_value(x.c) FROM t2 AS x WHERE x.b = t1.a AND x.c <> 'z')) END) FROM t1"
        );
    }

    #[test]
    fn count_keeps_its_outer_guard_inside() {
        let sql = "SELECT (SELECT count(*) FROM t2 WHERE t1.f AND t2.b = t1.a) FROM t1";
        assert_eq!(
            rewritten(sql),
            "SELECT ((SELECT count(*) FROM t2 WHERE t1.f AND t2.b = t1.a)) FROM t1"
        );
    }

    #[test]
    fn catalog_subqueries_take_first_value_or_null_when_unplannable() {
        assert_eq!(
            rewritten(
                "SELECT (SELECT d.adbin FROM pg_catalog.pg_attrdef d WHERE d.adrelid = a.attrelid) FROM pg_attribute a"
            ),
            "SELECT ((SELECT first_value(d.adbin) FROM pg_catalog.pg_attrdef d WHERE d.adrelid = a.attrelid)) FROM pg_attribute a"
        );
        assert_eq!(
            rewritten(
                "SELECT (SELECT a.attname || s.seqstart FROM pg_sequence s WHERE s.seqrelid = a.attrelid) FROM pg_attribute a"
            ),
            "SELECT NULL FROM pg_attribute a"
        );
        assert_eq!(
            rewritten(
                "SELECT (SELECT t.typname FROM pg_type t WHERE t.oid <> a.atttypid) FROM pg_attribute a"
            ),
            "SELECT NULL FROM pg_attribute a"
        );
    }

    #[test]
    fn user_subqueries_are_never_nulled() {
        assert_eq!(
            rewritten("SELECT (SELECT c FROM t2 WHERE t2.b < t1.a) FROM t1"),
            "SELECT ((SELECT c FROM t2 WHERE t2.b < t1.a)) FROM t1"
        );
    }

    #[test]
    fn subquery_text_is_spotted() {
        assert!(may_hold_subquery("select (select 1)"));
        assert!(may_hold_subquery("select ( \n SELECT 1)"));
        assert!(may_hold_subquery("select * from t where a in ((select 1))"));
        assert!(!may_hold_subquery("select count(*) from t"));
    }
}
