//! Nearest-neighbour queries as a plan node.
//!
//! `ORDER BY col <op> q LIMIT k` (through projections, aliases and WHERE
//! filters over one table) is a top-k vector search. [`VectorSearchRule`]
//! replaces that query's table scan with a [`VectorSearchNode`], which
//! returns, for every part of the table (each sealed segment, each shard's
//! growing rows), the k nearest rows matching the filters: by index or
//! exactly, chosen per part when the node is executed. The Sort, Filter and
//! Limit above stay in place, so they produce the global top-k from those
//! candidates exactly as they would from a full scan: the rewrite can only
//! make a query cheaper, never change which operators decide the answer.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchemaRef, Result, TableReference};
use datafusion::logical_expr::{
    Extension, LogicalPlan, Projection, TableSource, UserDefinedLogicalNodeCore,
};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};
use datafusion::prelude::Expr;
use quiver_types::VectorMetric;

use crate::vector::to_vectors;

/// A top-k vector search over one table (a leaf: it replaces the scan).
#[derive(Clone)]
pub struct VectorSearchNode {
    pub table_name: TableReference,
    pub source: Arc<dyn TableSource>,
    /// The scan's projection (indices into the table's columns).
    pub projection: Option<Vec<usize>>,
    /// The scan's output schema, which this node keeps.
    pub projected_schema: DFSchemaRef,
    /// The vector column (index into the table's columns).
    pub column: usize,
    pub column_name: String,
    pub metric: VectorMetric,
    pub query: Arc<Vec<f32>>,
    /// Rows wanted (the Sort's fetch: LIMIT plus OFFSET).
    pub k: usize,
    /// Predicates over the table's columns (unqualified) that every
    /// returned row satisfies.
    pub filters: Vec<Expr>,
}

impl VectorSearchNode {
    fn key(&self) -> (String, &Option<Vec<usize>>, usize, usize, Vec<u32>, String) {
        (
            self.table_name.to_string(),
            &self.projection,
            self.column,
            self.k,
            self.query.iter().map(|f| f.to_bits()).collect(),
            format!("{:?}{:?}", self.metric, self.filters),
        )
    }
}

impl fmt::Debug for VectorSearchNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_for_explain(f)
    }
}

impl PartialEq for VectorSearchNode {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for VectorSearchNode {}

impl Hash for VectorSearchNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state)
    }
}

impl PartialOrd for VectorSearchNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        self.key().partial_cmp(&other.key())
    }
}

impl UserDefinedLogicalNodeCore for VectorSearchNode {
    fn name(&self) -> &str {
        "VectorSearch"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.projected_schema
    }

    fn expressions(&self) -> Vec<Expr> {
        // Opaque to other rules: the filters are already applied inside.
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "VectorSearch: table={} column={} op={} k={}",
            self.table_name,
            self.column_name,
            self.metric.operator(),
            self.k
        )?;
        if !self.filters.is_empty() {
            let filters: Vec<String> = self.filters.iter().map(|e| e.to_string()).collect();
            write!(f, " filter=[{}]", filters.join(" AND "))?;
        }
        Ok(())
    }

    fn with_exprs_and_inputs(&self, _exprs: Vec<Expr>, _inputs: Vec<LogicalPlan>) -> Result<Self> {
        Ok(self.clone())
    }
}

/// Finds `ORDER BY distance LIMIT k` over a single-table chain and puts a
/// [`VectorSearchNode`] in place of the scan.
#[derive(Debug, Default)]
pub struct VectorSearchRule;

fn strip_qualifiers(expr: Expr) -> Result<Expr> {
    Ok(expr
        .transform(|e| match e {
            Expr::Column(c) => Ok(Transformed::yes(Expr::Column(Column::new_unqualified(
                c.name,
            )))),
            other => Ok(Transformed::no(other)),
        })?
        .data)
}

/// Rewrites references to a projection's outputs into its input's terms.
fn through_projection(expr: Expr, p: &Projection) -> Option<Expr> {
    let mut failed = false;
    let out = expr
        .transform(|e| match e {
            Expr::Column(c) => {
                let matches: Vec<usize> = p
                    .schema
                    .iter()
                    .enumerate()
                    .filter(|(_, (q, f))| {
                        f.name() == &c.name
                            && c.relation.as_ref().is_none_or(|r| q.is_none_or(|q| q == r))
                    })
                    .map(|(i, _)| i)
                    .collect();
                match matches.as_slice() {
                    [i] => Ok(Transformed::yes(p.expr[*i].clone().unalias())),
                    _ => {
                        failed = true;
                        Ok(Transformed::no(Expr::Column(c)))
                    }
                }
            }
            other => Ok(Transformed::no(other)),
        })
        .ok()?
        .data;
    (!failed).then_some(out)
}

/// `f(col, q)` or `f(q, col)` for a distance function with a constant query.
fn distance_call(expr: &Expr) -> Option<(VectorMetric, String, Vec<f32>)> {
    let Expr::ScalarFunction(call) = expr else {
        return None;
    };
    let metric = VectorMetric::from_function(call.func.name())?;
    let [a, b] = call.args.as_slice() else {
        return None;
    };
    let (column, constant) = match (a, b) {
        (Expr::Column(c), other) | (other, Expr::Column(c)) => (c, other),
        _ => return None,
    };
    let Expr::Literal(value, _) = constant else {
        return None;
    };
    let array = value.to_array_of_size(1).ok()?;
    let vectors = to_vectors(&array).ok()?;
    let query = vectors.row(0)?.to_vec();
    Some((metric, column.name.clone(), query))
}

impl OptimizerRule for VectorSearchRule {
    fn name(&self) -> &str {
        "quiver_vector_search"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::TopDown)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        match search_node(&plan) {
            Some(node) => {
                let LogicalPlan::Sort(mut sort) = plan else {
                    unreachable!("search_node matches only Sort")
                };
                let input = Arc::unwrap_or_clone(sort.input).transform_up(|p| match p {
                    LogicalPlan::TableScan(_) => {
                        Ok(Transformed::yes(LogicalPlan::Extension(Extension {
                            node: Arc::new(node.clone()),
                        })))
                    }
                    other => Ok(Transformed::no(other)),
                })?;
                sort.input = Arc::new(input.data);
                Ok(Transformed::yes(LogicalPlan::Sort(sort)))
            }
            None => Ok(Transformed::no(plan)),
        }
    }
}

/// The search a Sort node stands for, if it is one.
fn search_node(plan: &LogicalPlan) -> Option<VectorSearchNode> {
    let LogicalPlan::Sort(sort) = plan else {
        return None;
    };
    let k = sort.fetch?;
    let [order] = sort.expr.as_slice() else {
        return None;
    };
    if !order.asc {
        return None;
    }
    let mut expr = order.expr.clone();
    let mut filters: Vec<Expr> = Vec::new();
    let mut node = sort.input.as_ref();
    let scan = loop {
        match node {
            LogicalPlan::Projection(p) => {
                expr = through_projection(expr, p)?;
                filters = filters
                    .into_iter()
                    .map(|f| through_projection(f, p))
                    .collect::<Option<Vec<_>>>()?;
                node = p.input.as_ref();
            }
            LogicalPlan::Filter(f) => {
                filters.push(f.predicate.clone());
                node = f.input.as_ref();
            }
            LogicalPlan::SubqueryAlias(a) => {
                // The alias renames the relation; below it, columns carry
                // the input's qualifier.
                expr = strip_qualifiers(expr).ok()?;
                filters = filters
                    .into_iter()
                    .map(strip_qualifiers)
                    .collect::<Result<Vec<_>>>()
                    .ok()?;
                node = a.input.as_ref();
            }
            LogicalPlan::TableScan(scan) => break scan,
            _ => return None,
        }
    };
    if scan.fetch.is_some() || !scan.filters.is_empty() {
        return None;
    }
    // `q::vector` folds to a literal that keeps its original name as an alias.
    let expr = strip_qualifiers(expr.unalias_nested().data).ok()?;
    let (metric, column_name, query) = distance_call(&expr)?;
    let schema = scan.source.schema();
    let column = schema.index_of(&column_name).ok()?;
    match schema.field(column).data_type() {
        DataType::FixedSizeList(item, dim)
            if item.data_type() == &DataType::Float32 && *dim as usize == query.len() => {}
        _ => return None,
    }
    let filters = filters
        .into_iter()
        .map(strip_qualifiers)
        .collect::<Result<Vec<_>>>()
        .ok()?;
    // Subqueries are planned as joins before this rule; anything left that
    // needs another plan stays on the general path.
    let needs_other_plan = |e: &Expr| {
        e.exists(|e| {
            Ok(matches!(
                e,
                Expr::ScalarSubquery(_)
                    | Expr::InSubquery(_)
                    | Expr::Exists(_)
                    | Expr::OuterReferenceColumn(..)
                    | Expr::Placeholder(_)
            ))
        })
        .unwrap_or(true)
    };
    if filters.iter().any(needs_other_plan) {
        return None;
    }
    Some(VectorSearchNode {
        table_name: scan.table_name.clone(),
        source: scan.source.clone(),
        projection: scan.projection.clone(),
        projected_schema: scan.projected_schema.clone(),
        column,
        column_name,
        metric,
        query: Arc::new(query),
        k,
        filters,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{FixedSizeListArray, Float32Array, Int32Array, Int64Array, RecordBatch};
    use arrow::datatypes::{Field, Schema};
    use datafusion::datasource::MemTable;
    use datafusion::execution::SessionStateBuilder;
    use datafusion::prelude::SessionContext;

    use crate::vector::{VectorOperatorPlanner, udfs};

    async fn optimized(sql: &str) -> String {
        let item = Arc::new(Field::new("item", DataType::Float32, false));
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("cat", DataType::Int32, true),
            Field::new("emb", DataType::FixedSizeList(item.clone(), 2), true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(Int32Array::from(vec![1, 2])),
                Arc::new(FixedSizeListArray::new(
                    item,
                    2,
                    Arc::new(Float32Array::from(vec![0.0, 0.0, 1.0, 1.0])),
                    None,
                )),
            ],
        )
        .unwrap();
        let ctx = SessionContext::new_with_config(
            datafusion::prelude::SessionConfig::new()
                .set_str("datafusion.sql_parser.dialect", "postgres"),
        );
        for udf in udfs() {
            ctx.register_udf(udf);
        }
        ctx.register_table(
            "t",
            Arc::new(MemTable::try_new(schema, vec![vec![batch]]).unwrap()),
        )
        .unwrap();
        ctx.register_table("u", ctx.table_provider("t").await.unwrap())
            .unwrap();
        let state = ctx.state();
        let mut planners = state.expr_planners().to_vec();
        planners.insert(0, Arc::new(VectorOperatorPlanner::new(&state).unwrap()));
        let state = SessionStateBuilder::new_from_existing(state)
            .with_expr_planners(planners)
            .with_optimizer_rule(Arc::new(VectorSearchRule))
            .build();
        let sql = crate::rewrite::normalize_operators(sql);
        let plan = state.create_logical_plan(&sql).await.unwrap();
        state.optimize(&plan).unwrap().display_indent().to_string()
    }

    #[tokio::test]
    async fn rewrites_nearest_neighbour_queries() {
        for sql in [
            "SELECT id FROM t ORDER BY emb <-> '[1,1]' LIMIT 3",
            "SELECT id, emb <=> '[1,1]' AS d FROM t ORDER BY d LIMIT 3",
            "SELECT x.id FROM t AS x WHERE x.cat > 1 ORDER BY x.emb <#> '[1,1]' LIMIT 2 OFFSET 1",
            "SELECT * FROM (SELECT id, emb FROM t WHERE cat = 1) s ORDER BY l2_distance(s.emb, '[1,1]') LIMIT 1",
        ] {
            let plan = optimized(sql).await;
            assert!(plan.contains("VectorSearch"), "{sql}\n{plan}");
        }
        let plan =
            optimized("SELECT id FROM t WHERE cat > 1 ORDER BY emb <-> '[1,1]' LIMIT 2 OFFSET 1")
                .await;
        assert!(
            plan.contains("k=3") && plan.contains("filter=[cat > Int32(1)]"),
            "{plan}"
        );
    }

    #[tokio::test]
    async fn leaves_other_orderings_alone() {
        for sql in [
            "SELECT id FROM t ORDER BY emb <-> '[1,1]'",
            "SELECT id FROM t ORDER BY emb <-> '[1,1]' DESC LIMIT 3",
            "SELECT id FROM t ORDER BY emb <-> '[1,1]', id LIMIT 3",
            "SELECT id FROM t ORDER BY inner_product(emb, emb) LIMIT 3",
            "SELECT id FROM t ORDER BY emb <-> '[1,1,1]' LIMIT 3",
            "SELECT t.id FROM t JOIN u ON t.id = u.id ORDER BY t.emb <-> '[1,1]' LIMIT 3",
            "SELECT cat, count(*) AS n FROM t GROUP BY cat ORDER BY n LIMIT 1",
        ] {
            let plan = optimized(sql).await;
            assert!(!plan.contains("VectorSearch"), "{sql}\n{plan}");
        }
    }
}
