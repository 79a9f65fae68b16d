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

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, StructArray, UInt64Array};
use arrow::datatypes::{DataType, Field, FieldRef, UInt64Type};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, ColumnarValue, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};
use sqlparser::ast::{
    BinaryOperator, Expr, GroupByExpr, Query, Select, SelectItem, SetExpr, Statement, TableFactor,
    Value, VisitMut, VisitorMut,
};

use crate::rewrite::{call, case_when, is_catalog_table};
use crate::{SqlError, sqlstate};

/// Name of the [`SubqueryValue`] aggregate.
pub const SUBQUERY_VALUE: &str = "quiver_subquery_value";
/// Name of the scalar function that turns its (value, rows) into the value
/// or error 21000.
pub const SUBQUERY_RESULT: &str = "quiver_subquery_result";

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
/// plans (see the module documentation). `is_aggregate` names the
/// aggregate functions the session knows.
pub fn rewrite_scalar_subqueries(statement: &mut Statement, is_aggregate: &dyn Fn(&str) -> bool) {
    let _ = statement.visit(&mut ScalarSubqueries {
        is_aggregate,
        set_operands: HashSet::new(),
    });
}

struct ScalarSubqueries<'a> {
    is_aggregate: &'a dyn Fn(&str) -> bool,
    /// The subqueries of `x op ANY (SELECT ...)` / `ALL`: sets, not scalars.
    set_operands: HashSet<*const Query>,
}

impl VisitorMut for ScalarSubqueries<'_> {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        if let Expr::AnyOp { right, .. } | Expr::AllOp { right, .. } = expr
            && let Expr::Subquery(query) = right.as_ref()
        {
            self.set_operands.insert(&**query as *const Query);
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        if let Expr::Subquery(query) = expr
            && !self.set_operands.contains(&(&**query as *const Query))
        {
            *expr = rewrite_one(query, self.is_aggregate);
        }
        ControlFlow::Continue(())
    }
}

/// Whether `sql` may hold a scalar subquery (a parenthesised SELECT), as a
/// cheap test before parsing it a second time. Whitespace, further
/// parentheses and comments may stand between the two.
pub fn may_hold_subquery(sql: &str) -> bool {
    sql.match_indices('(').any(|(i, _)| {
        let mut rest = &sql[i + 1..];
        loop {
            rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '(');
            if let Some(comment) = rest.strip_prefix("/*") {
                rest = comment.split_once("*/").map_or("", |(_, after)| after);
            } else if let Some(comment) = rest.strip_prefix("--") {
                rest = comment.split_once('\n').map_or("", |(_, after)| after);
            } else {
                break;
            }
        }
        rest.get(..6)
            .is_some_and(|w| w.eq_ignore_ascii_case("select"))
    })
}

fn rewrite_one(original: &Query, is_aggregate: &dyn Fn(&str) -> bool) -> Expr {
    let over_catalog = reads_only_catalog(original);
    let mut query = Box::new(original.clone());
    let Some(select) = plain_select(&mut query) else {
        // Grouped, ordered, limited...: left to DataFusion, except a
        // correlated one over the catalog (which it cannot plan).
        return if over_catalog && is_correlated(original) {
            Expr::value(Value::Null)
        } else {
            Expr::Nested(Box::new(Expr::Subquery(query)))
        };
    };
    let Some(inner) = inner_names(select) else {
        return unplannable(original, over_catalog);
    };
    let Some(Correlation { outer_only, keep }) = split_where(select.selection.clone(), &inner)
    else {
        return unplannable(original, over_catalog);
    };
    let output = match &mut select.projection[0] {
        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
        _ => return unplannable(original, over_catalog),
    };
    let output_refs = references(output, &inner);
    if output_refs.outer || output_refs.subquery {
        return unplannable(original, over_catalog);
    }
    let strict = !over_catalog && !holds_aggregate_or_window(output, is_aggregate);
    if strict {
        *output = call(SUBQUERY_VALUE, vec![output.clone()]);
    } else if over_catalog && !holds_aggregate_or_window(output, is_aggregate) {
        *output = call("first_value", vec![output.clone()]);
    } else if !outer_only.is_empty() && !is_call_to(output, &NULL_ON_EMPTY) {
        // `count(*)` over no rows is 0, so its guard cannot move out.
        return unplannable(original, over_catalog);
    }
    select.selection = join_conjuncts(keep);
    let subquery = if strict {
        // The aggregate yields (value, rows) per correlation key; whether
        // more than one row is an error is decided per outer row, by the
        // rows that read it (PostgreSQL fails only for those).
        call(SUBQUERY_RESULT, vec![Expr::Subquery(query)])
    } else {
        Expr::Nested(Box::new(Expr::Subquery(query)))
    };
    match join_conjuncts(outer_only) {
        None => subquery,
        Some(guard) => Expr::Nested(Box::new(case_when(vec![(guard, subquery)], None))),
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
/// `None` when the FROM clause holds a relation of another kind (nested
/// joins, UNNEST, ...), whose names are not worked out here.
fn inner_names(select: &Select) -> Option<HashSet<String>> {
    let mut names = HashSet::new();
    let mut known = true;
    let mut add = |factor: &TableFactor| match factor {
        TableFactor::Table {
            alias: Some(alias), ..
        }
        | TableFactor::Derived {
            alias: Some(alias), ..
        } => {
            names.insert(alias.name.value.to_ascii_lowercase());
        }
        TableFactor::Table { name, .. } => {
            if let Some(last) = name.0.last().and_then(|p| p.as_ident()) {
                names.insert(last.value.to_ascii_lowercase());
            }
        }
        _ => known = false,
    };
    for table in &select.from {
        add(&table.relation);
        for join in &table.joins {
            add(&join.relation);
        }
    }
    known.then_some(names)
}

/// Whether a (non-plain) subquery reads a column of an enclosing query:
/// any qualifier that names none of its own relations.
fn is_correlated(query: &Query) -> bool {
    let SetExpr::Select(select) = query.body.as_ref() else {
        return true;
    };
    let Some(inner) = inner_names(select) else {
        return true;
    };
    let mut outer = false;
    let _ = sqlparser::ast::visit_expressions(query, |e| {
        if let Expr::CompoundIdentifier(parts) = e
            && parts.len() >= 2
            && !inner.contains(&parts[parts.len() - 2].value.to_ascii_lowercase())
        {
            outer = true;
        }
        ControlFlow::<()>::Continue(())
    });
    outer
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

/// The columns `expr` reads itself; those of a subquery inside it are
/// that subquery's business (it only sets `subquery`).
fn references(expr: &Expr, inner: &HashSet<String>) -> References {
    struct Classify<'a> {
        inner: &'a HashSet<String>,
        refs: References,
        depth: usize,
    }
    impl sqlparser::ast::Visitor for Classify<'_> {
        type Break = ();

        fn pre_visit_query(&mut self, _query: &Query) -> ControlFlow<()> {
            self.refs.subquery = true;
            self.depth += 1;
            ControlFlow::Continue(())
        }

        fn post_visit_query(&mut self, _query: &Query) -> ControlFlow<()> {
            self.depth -= 1;
            ControlFlow::Continue(())
        }

        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
            if self.depth > 0 {
                return ControlFlow::Continue(());
            }
            match expr {
                Expr::Identifier(_) => self.refs.inner = true,
                Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
                    let qualifier = parts[parts.len() - 2].value.to_ascii_lowercase();
                    if self.inner.contains(&qualifier) {
                        self.refs.inner = true;
                    } else {
                        self.refs.outer = true;
                    }
                }
                _ => {}
            }
            ControlFlow::Continue(())
        }
    }
    let mut classify = Classify {
        inner,
        refs: References::default(),
        depth: 0,
    };
    let _ = sqlparser::ast::Visit::visit(expr, &mut classify);
    classify.refs
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

/// Whether `expr` calls an aggregate (as the session names them) or a
/// window function: then it is left as written.
fn holds_aggregate_or_window(expr: &Expr, is_aggregate: &dyn Fn(&str) -> bool) -> bool {
    sqlparser::ast::visit_expressions(expr, |e| {
        let found = matches!(e, Expr::Function(f)
        if f.over.is_some()
            || f.name.0.last().and_then(|p| p.as_ident()).is_some_and(|i| {
                is_aggregate(&i.value.to_ascii_lowercase())
            }));
        if found {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .is_break()
}

fn is_call_to(expr: &Expr, names: &[&str]) -> bool {
    matches!(expr, Expr::Function(f)
    if f.name.0.last().and_then(|p| p.as_ident()).is_some_and(|i| {
        names.iter().any(|n| i.value.eq_ignore_ascii_case(n))
    }))
}

/// `quiver_subquery_value(x)`: a scalar subquery's rows per correlation
/// key, as `{value, rows}`: the value of its (first) row and how many rows
/// there were. `quiver_subquery_result` turns that into the value (NULL
/// without rows) or PostgreSQL's error 21000, for the outer rows that read
/// it only.
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

fn value_and_rows(value: &DataType) -> DataType {
    DataType::Struct(
        vec![
            Field::new("value", value.clone(), true),
            Field::new("rows", DataType::UInt64, false),
        ]
        .into(),
    )
}

impl AggregateUDFImpl for SubqueryValue {
    fn name(&self) -> &str {
        SUBQUERY_VALUE
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        Ok(value_and_rows(&args[0]))
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let value_type = args.exprs[0].data_type(args.schema)?;
        Ok(Box::new(SubqueryValueAccumulator {
            value: ScalarValue::try_from(&value_type)?,
            rows: 0,
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![
            Field::new("value", args.input_fields[0].data_type().clone(), true).into(),
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
        if rows > 0 && self.rows == 0 {
            self.value = value()?;
        }
        self.rows = self.rows.saturating_add(rows);
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
        let fields = match value_and_rows(&self.value.data_type()) {
            DataType::Struct(fields) => fields,
            _ => unreachable!("value_and_rows is a struct"),
        };
        let value = self.value.to_array_of_size(1)?;
        let rows = Arc::new(UInt64Array::from(vec![self.rows])) as ArrayRef;
        Ok(ScalarValue::Struct(Arc::new(StructArray::new(
            fields,
            vec![value, rows],
            None,
        ))))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.value.size() - std::mem::size_of_val(&self.value)
    }
}

/// `quiver_subquery_result({value, rows})`: the value, NULL for no row (or
/// no struct: an outer row no key matched), error 21000 for more rows.
pub fn subquery_result_udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(SubqueryResult {
        signature: Signature::any(1, Volatility::Immutable),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct SubqueryResult {
    signature: Signature,
}

impl ScalarUDFImpl for SubqueryResult {
    fn name(&self) -> &str {
        SUBQUERY_RESULT
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        match &args[0] {
            DataType::Struct(fields) if fields.len() == 2 => Ok(fields[0].data_type().clone()),
            other => Err(DataFusionError::Plan(format!(
                "{SUBQUERY_RESULT} expects {{value, rows}}, got {other}"
            ))),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let input = args.args[0].to_array(args.number_rows)?;
        let input = input.as_struct();
        let rows = input.column(1).as_primitive::<UInt64Type>();
        let many =
            (0..input.len()).any(|i| input.is_valid(i) && rows.is_valid(i) && rows.value(i) > 1);
        if many {
            return Err(SqlError::new(
                sqlstate::CARDINALITY_VIOLATION,
                "more than one row returned by a subquery used as an expression",
            )
            .into_datafusion());
        }
        // Without a struct (no matching key) the value is NULL already.
        let values = input.column(0).clone();
        Ok(ColumnarValue::Array(match input.nulls() {
            Some(nulls) if nulls.null_count() > 0 => {
                let keep = arrow::array::BooleanArray::new(nulls.inner().clone(), None);
                arrow::compute::nullif(&values, &arrow::compute::not(&keep)?)?
            }
            _ => values,
        }))
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
        let aggregates = ["count", "max", "min", "sum", "array_agg", "first_value"];
        rewrite_scalar_subqueries(&mut statement, &|name| aggregates.contains(&name));
        statement.to_string()
    }

    #[test]
    fn a_plain_correlated_subquery_yields_its_one_value() {
        assert_eq!(
            rewritten("SELECT a, (SELECT c FROM t2 WHERE t2.b = t1.a) FROM t1"),
            "SELECT a, quiver_subquery_result((SELECT quiver_subquery_value(c) FROM t2 WHERE t2.b = t1.a)) FROM t1"
        );
    }

    #[test]
    fn outer_only_conjuncts_move_in_front_of_the_subquery() {
        assert_eq!(
            rewritten(
                "SELECT (SELECT x.c FROM t2 AS x WHERE t1.f AND x.b = t1.a AND x.c <> 'z') FROM t1"
            ),
            "SELECT (CASE WHEN t1.f THEN quiver_subquery_result((SELECT quiver_subquery_value(x.c) FROM t2 AS x WHERE x.b = t1.a AND x.c <> 'z')) END) FROM t1"
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
    fn set_operands_and_unknown_shapes_are_left_alone() {
        assert_eq!(
            rewritten("SELECT a FROM t1 WHERE a > ANY(SELECT b FROM t2)"),
            "SELECT a FROM t1 WHERE a > ANY(SELECT b FROM t2)"
        );
        assert_eq!(
            rewritten("SELECT (SELECT stddev(c) FROM t2 WHERE t2.b = t1.a) FROM t1"),
            "SELECT quiver_subquery_result((SELECT quiver_subquery_value(stddev(c)) FROM t2 WHERE t2.b = t1.a)) FROM t1",
            "stddev is no aggregate for this predicate, so it is wrapped"
        );
        assert_eq!(
            rewritten("SELECT (SELECT max(c) OVER () FROM t2 WHERE t2.b = t1.a) FROM t1"),
            "SELECT ((SELECT max(c) OVER () FROM t2 WHERE t2.b = t1.a)) FROM t1"
        );
        assert_eq!(
            rewritten(
                "SELECT (SELECT x.c FROM (t2 AS x JOIN t3 AS y ON x.b = y.b) WHERE y.c = 1) FROM t1"
            ),
            "SELECT ((SELECT x.c FROM (t2 AS x JOIN t3 AS y ON x.b = y.b) WHERE y.c = 1)) FROM t1"
        );
        assert_eq!(
            rewritten(
                "SELECT (SELECT c FROM t2 WHERE t2.b = t1.a AND EXISTS (SELECT 1 FROM t3 WHERE t3.k = t2.b)) FROM t1"
            ),
            "SELECT quiver_subquery_result((SELECT quiver_subquery_value(c) FROM t2 WHERE t2.b = t1.a AND EXISTS (SELECT 1 FROM t3 WHERE t3.k = t2.b))) FROM t1",
            "a nested subquery's own columns are not the outer query's"
        );
        assert_eq!(
            rewritten(
                "SELECT (SELECT c.relname FROM pg_class c WHERE c.oid = a.attrelid ORDER BY 1 LIMIT 1), \
                 (SELECT n.oid FROM pg_namespace n ORDER BY 1 LIMIT 1) FROM pg_attribute a"
            ),
            "SELECT NULL, ((SELECT n.oid FROM pg_namespace n ORDER BY 1 LIMIT 1)) FROM pg_attribute a"
        );
    }

    #[test]
    fn subquery_text_is_spotted() {
        assert!(may_hold_subquery("select (select 1)"));
        assert!(may_hold_subquery("select ( \n SELECT 1)"));
        assert!(may_hold_subquery("select * from t where a in ((select 1))"));
        assert!(may_hold_subquery("select (/* why */ select 1)"));
        assert!(may_hold_subquery("select ( -- why\n select 1)"));
        assert!(!may_hold_subquery("select count(*) from t"));
        assert!(!may_hold_subquery("select (/* unterminated"));
    }
}
