//! One execute path for every statement, shared by the simple and the
//! extended protocol: statements arrive parsed (and, for the extended
//! protocol, with parameters already bound as literals).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use pgwire::api::Type;
use pgwire::api::results::Tag;
use quiver_api::{CoordinatorApi, QueryApi, StreamingApi, TableInfo};
use quiver_planner::rewrite::{
    normalize_operators, rewrite_array_subqueries, rewrite_vector_casts,
};
use quiver_planner::subqueries;
use quiver_planner::vector::{VectorOperatorPlanner, udfs};
use quiver_planner::{SqlError, sqlstate};
use quiver_types::{SegmentId, Timestamp};
use sqlparser::ast::{Expr, ObjectName, Statement, Value};

use crate::column_names::{
    ColumnName, alias_computed_expressions, apply_names, postgres_column_names,
};
use crate::error::{from_api, from_datafusion};
use crate::session::{Consistency, Session, TransactionState};
use crate::settings::{bind_current_setting, search_list};
use crate::table::{QuiverSchema, ReadSnapshot};
use crate::vector_search::SearchSettings;

pub const DATABASE: &str = "postgres";
pub const SCHEMA: &str = "public";

/// Roles as `pg_roles` / psql's `\du` show them: the `postgres` superuser
/// of a fresh `initdb`, then the roles of the coordinator's catalog.
#[derive(Clone)]
struct CatalogRoles {
    coordinator: Arc<dyn CoordinatorApi>,
}

impl std::fmt::Debug for CatalogRoles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CatalogRoles")
    }
}

#[async_trait::async_trait]
impl datafusion_pg_catalog::pg_catalog::context::PgCatalogContextProvider for CatalogRoles {
    async fn roles(&self) -> Vec<String> {
        let mut names = vec!["postgres".to_string()];
        names.extend(self.coordinator.roles().into_iter().map(|r| r.name));
        names
    }

    async fn role(&self, name: &str) -> Option<datafusion_pg_catalog::pg_catalog::context::Role> {
        let role = |superuser, login, create_db, create_role| {
            datafusion_pg_catalog::pg_catalog::context::Role {
                name: name.to_string(),
                is_superuser: superuser,
                can_login: login,
                can_create_db: create_db,
                can_create_role: create_role,
                can_create_user: create_role,
                can_replication: superuser,
                grants: vec![],
                inherited_roles: vec![],
            }
        };
        if name == "postgres" {
            return Some(role(true, true, true, true));
        }
        let r = self.coordinator.role(name)?;
        Some(role(r.superuser, r.login, r.create_db, r.create_role))
    }
}

/// The roles a frontend talks to (in-process or remote).
pub struct Backends {
    pub coordinator: Arc<dyn CoordinatorApi>,
    pub streaming: Arc<dyn StreamingApi>,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends").finish_non_exhaustive()
    }
}

impl Backends {
    /// The snapshot a scan reads at: the statement's pinned one, else the
    /// newest every shard has applied.
    pub async fn read_ts(&self, pinned: Option<Timestamp>) -> datafusion::error::Result<Timestamp> {
        match pinned {
            Some(ts) => Ok(ts),
            None => self
                .streaming
                .applied_ts()
                .await
                .map_err(crate::error::api_err),
        }
    }

    /// A table by name. A miss refreshes the catalog copy once first: with
    /// proxies in other processes, the table may have been created through
    /// another proxy a moment ago.
    pub async fn table_info(&self, name: &str) -> Option<TableInfo> {
        if let Some(info) = self.coordinator.table(name) {
            return Some(info);
        }
        if let Err(e) = self.coordinator.refresh_catalog().await {
            tracing::warn!(error = %e, "refreshing the catalog failed");
        }
        self.coordinator.table(name)
    }

    /// [`Self::table_info`], or PostgreSQL's error for a missing relation.
    pub async fn lookup_table(&self, name: &str) -> Result<TableInfo, SqlError> {
        self.table_info(name).await.ok_or_else(|| {
            SqlError::new(
                sqlstate::UNDEFINED_TABLE,
                format!("relation \"{name}\" does not exist"),
            )
        })
    }

    /// The query node serving a segment; a retryable error while none does
    /// (its node died and the segment is not placed elsewhere yet).
    pub fn query_node(
        &self,
        segment: SegmentId,
    ) -> Result<Arc<dyn QueryApi>, quiver_api::ApiError> {
        self.coordinator.segment_node(segment).ok_or_else(|| {
            quiver_api::ApiError::new(
                quiver_api::StatusCode::Unavailable,
                format!("segment {segment} has no live query node; retry shortly"),
            )
        })
    }
}

/// Fails the session's transaction block when dropped armed: on an error,
/// or when the statement is cancelled (its future dropped) halfway.
struct AbortBlockOnDrop<'a> {
    session: &'a Session,
    armed: bool,
}

impl Drop for AbortBlockOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.session.fail_transaction();
        }
    }
}

/// What a statement produced.
pub enum Output {
    Rows(SchemaRef, Vec<RecordBatch>),
    Command(Tag),
    /// `COPY ... FROM STDIN` started: the client sends data next.
    CopyIn(crate::copy_in::CopyFormat, usize),
    /// `COPY ... TO STDOUT`: rows to send as CopyData.
    CopyOut(crate::copy_in::CopyOptions, SchemaRef, Vec<RecordBatch>),
    /// `BEGIN`: the session is now in a transaction block.
    TransactionStart(Tag),
    /// `COMMIT` / `ROLLBACK`: the block ended.
    TransactionEnd(Tag),
}

pub struct Engine {
    pub backends: Arc<Backends>,
    sql_parser: PostgresCompatibilityParser,
    base_state: SessionState,
    /// Staleness bound of `bounded` consistency.
    pub bounded_staleness: Duration,
    /// Most bytes one transaction block may buffer.
    pub transaction_buffer_bytes: usize,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Engine {
    pub fn new(
        backends: Arc<Backends>,
        bounded_staleness: Duration,
        transaction_buffer_bytes: usize,
    ) -> Result<Self, SqlError> {
        let config = SessionConfig::new()
            .with_default_catalog_and_schema(DATABASE, SCHEMA)
            .with_information_schema(true)
            .set_str("datafusion.sql_parser.dialect", "postgres");
        let ctx = SessionContext::new_with_config(config);
        let catalog = ctx
            .catalog(DATABASE)
            .ok_or_else(|| SqlError::new("XX000", "default catalog missing"))?;
        let public = Arc::new(QuiverSchema {
            backends: backends.clone(),
            pg_catalog: std::sync::OnceLock::new(),
        });
        catalog
            .register_schema(SCHEMA, public.clone())
            .map_err(from_datafusion)?;
        catalog
            .register_schema(
                crate::system_views::SCHEMA,
                Arc::new(crate::system_views::SystemSchema {
                    backends: backends.clone(),
                }),
            )
            .map_err(from_datafusion)?;
        for udf in udfs() {
            ctx.register_udf(udf);
        }
        ctx.register_udaf(subqueries::SubqueryValue::udaf());
        ctx.register_udf(subqueries::subquery_result_udf());
        ctx.register_udf(quiver_planner::like::like_escape_udf());
        ctx.register_udf(crate::settings::unrecognized_setting_udf());
        ctx.register_udf(quiver_planner::int_vectors::int_vector_udf());
        ctx.register_udf(quiver_planner::catalog_functions::to_regtype_udf());
        ctx.register_udf(quiver_planner::catalog_functions::version_udf());
        // avg/sum also accept vectors (element-wise), as in pgvector.
        let state = ctx.state();
        for (name, average) in [("avg", true), ("sum", false)] {
            let inner = datafusion::execution::FunctionRegistry::udaf(&state, name)
                .map_err(from_datafusion)?
                .as_ref()
                .clone();
            ctx.register_udaf(quiver_planner::vector_agg::VectorAwareAggregate::wrap(
                inner, average,
            ));
        }
        datafusion_pg_catalog::pg_catalog::setup_pg_catalog(
            &ctx,
            DATABASE,
            CatalogRoles {
                coordinator: backends.coordinator.clone(),
            },
        )
        .map_err(|e| from_datafusion(*e))?;
        if let Ok(format_type) =
            datafusion::execution::FunctionRegistry::udf(&ctx.state(), "format_type")
        {
            ctx.register_udf(
                quiver_planner::catalog_functions::VectorAwareFormatType::wrap(format_type),
            );
        }
        ctx.register_udf(quiver_planner::catalog_functions::pg_get_expr_udf());
        ctx.register_udf(crate::pg_catalog::pg_get_serial_sequence_udf(
            backends.clone(),
        ));
        ctx.register_udf(crate::pg_catalog::PgGetIndexdef::udf(backends.clone()));
        ctx.register_udf(quiver_planner::catalog_functions::json_build_object_udf());
        ctx.register_udf(quiver_planner::catalog_functions::pg_size_pretty_udf());
        for udf in quiver_planner::catalog_functions::null_text_udfs()
            .into_iter()
            .chain(quiver_planner::catalog_functions::visibility_udfs())
        {
            if datafusion::execution::FunctionRegistry::udf(&ctx.state(), udf.name()).is_err() {
                ctx.register_udf(udf);
            }
        }
        if let Some(inner) = catalog.schema("pg_catalog") {
            let table_oids = crate::pg_catalog::TableOids::default();
            for udf in
                crate::relation_size::size_udfs(backends.coordinator.clone(), table_oids.clone())
            {
                ctx.register_udf(udf);
            }
            ctx.register_udf(crate::pg_catalog::column_default_udf(
                backends.clone(),
                table_oids.clone(),
            ));
            let hidden_relations = crate::pg_catalog::HiddenRelations::default();
            ctx.register_udf(crate::pg_catalog::table_is_visible_udf(
                hidden_relations.clone(),
            ));
            let pg_catalog = Arc::new(crate::pg_catalog::PgCatalog {
                inner,
                backends: backends.clone(),
                table_oids,
                hidden_relations,
            });
            let _ = public.pg_catalog.set(pg_catalog.clone());
            catalog
                .register_schema("pg_catalog", pg_catalog)
                .map_err(from_datafusion)?;
        }
        let state = ctx.state();
        let operator_planner = VectorOperatorPlanner::new(&state).map_err(from_datafusion)?;
        let mut planners = state.expr_planners().to_vec();
        planners.insert(0, Arc::new(operator_planner));
        let base_state = SessionStateBuilder::new_from_existing(state)
            .with_expr_planners(planners)
            .with_optimizer_rule(Arc::new(quiver_planner::vector_search::VectorSearchRule))
            .with_query_planner(Arc::new(crate::vector_search::QuiverQueryPlanner))
            .build();
        Ok(Engine {
            backends,
            sql_parser: PostgresCompatibilityParser::new(),
            base_state,
            bounded_staleness,
            transaction_buffer_bytes,
        })
    }

    /// The one way SQL text becomes statements: pgvector's `<+>` respelled,
    /// PostgreSQL-client compatibility rewrites (pg_catalog queries),
    /// scalar subqueries made plannable, and `::vector` casts turned into
    /// `to_vector()` calls.
    pub fn parse(&self, sql: &str) -> Result<Vec<Statement>, SqlError> {
        let text = quiver_planner::rewrite::psql_column_defaults(&normalize_operators(sql));
        let is_aggregate = |name: &str| self.is_aggregate(name);
        let mut statements = self
            .sql_parser
            .parse(&text)
            .map_err(|e| SqlError::new(sqlstate::SYNTAX_ERROR, e.to_string()))?;
        let mut subqueries_done = false;
        if subqueries::may_hold_subquery(&text)
            && let Some(rewritten) = self.parse_with_scalar_subqueries(&text, &statements)
        {
            statements = rewritten;
            subqueries_done = true;
        }
        for s in &mut statements {
            rewrite_vector_casts(s);
            quiver_planner::like::rewrite_like_escapes(s);
            quiver_planner::int_vectors::rewrite_int_vector_expansions(s);
            quiver_planner::table_functions::name_set_function_columns(s);
            if !subqueries_done {
                rewrite_array_subqueries(s);
                subqueries::rewrite_scalar_subqueries(s, &is_aggregate);
            }
        }
        Ok(statements)
    }

    /// The compatibility parser replaces every correlated subquery of a
    /// select list by NULL, before Quiver could make it plannable: for
    /// statements with subqueries, parse again and make them plannable
    /// before its rules run. Not when its substitutions of known client
    /// queries fired (its output then differs from its rules applied to
    /// the plain parse): those replacements are kept.
    fn parse_with_scalar_subqueries(
        &self,
        text: &str,
        compat: &[Statement],
    ) -> Option<Vec<Statement>> {
        let is_aggregate = |name: &str| self.is_aggregate(name);
        let plain =
            sqlparser::parser::Parser::parse_sql(&sqlparser::dialect::PostgreSqlDialect {}, text)
                .ok()?;
        let unchanged = plain.len() == compat.len()
            && plain
                .iter()
                .zip(compat)
                .all(|(p, c)| self.sql_parser.rewrite(p.clone()).to_string() == c.to_string());
        unchanged.then(|| {
            plain
                .into_iter()
                .map(|mut s| {
                    rewrite_array_subqueries(&mut s);
                    subqueries::rewrite_scalar_subqueries(&mut s, &is_aggregate);
                    self.sql_parser.rewrite(s)
                })
                .collect()
        })
    }

    fn is_aggregate(&self, name: &str) -> bool {
        self.base_state.aggregate_functions().contains_key(name)
    }

    /// Parses SQL that must hold exactly one statement.
    pub fn parse_one(&self, sql: &str) -> Result<Statement, SqlError> {
        let mut statements = self.parse(sql)?;
        match (statements.pop(), statements.is_empty()) {
            (Some(s), true) => Ok(s),
            _ => Err(SqlError::new(
                sqlstate::SYNTAX_ERROR,
                "expected exactly one statement",
            )),
        }
    }

    pub fn new_session(&self) -> Session {
        Session::new(SessionContext::new_with_state(self.base_state.clone()))
    }

    /// Picks the snapshot a read runs at, honouring the session's level.
    pub async fn read_snapshot(&self, session: &Session) -> Result<Timestamp, SqlError> {
        let streaming = &self.backends.streaming;
        let level = *session.consistency.lock();
        let ts = match level {
            Consistency::Strong => {
                let now = self
                    .backends
                    .coordinator
                    .allocate_timestamp()
                    .await
                    .map_err(from_api)?;
                streaming.wait_applied(now).await.map_err(from_api)?
            }
            Consistency::Session => {
                // Everything acknowledged before this read, by anyone (as in
                // PostgreSQL), which includes the session's own writes; the
                // session's own timestamp still counts when a client carried
                // it over from another proxy (`SET quiver.last_write_ts`).
                let acknowledged = streaming.acknowledged_ts().await.map_err(from_api)?;
                let own = session.last_write();
                if own > acknowledged {
                    streaming.wait_applied(own).await.map_err(from_api)?
                } else {
                    acknowledged
                }
            }
            Consistency::Bounded => {
                let applied = streaming.applied_ts().await.map_err(from_api)?;
                let bound = Timestamp::compose(
                    now_ms().saturating_sub(self.bounded_staleness.as_millis() as u64),
                    0,
                );
                let own = session.last_write().max(bound);
                if own > applied {
                    streaming.wait_applied(own).await.map_err(from_api)?
                } else {
                    applied
                }
            }
            Consistency::Eventually => streaming.applied_ts().await.map_err(from_api)?,
        };
        Ok(ts)
    }

    /// Sets the snapshot (and vector-search settings) the next plan uses.
    pub fn pin_snapshot(&self, session: &Session, ts: Timestamp) {
        let settings = SearchSettings {
            search_list: search_list(session),
        };
        // A transaction's own writes overlay what its statements read.
        let pending = session.overlay().ok().flatten().unwrap_or_default();
        let state = session.ctx.state_ref();
        let mut state = state.write();
        let config = state.config_mut();
        config.set_extension(Arc::new(ReadSnapshot(ts)));
        config.set_extension(Arc::new(settings));
        config.set_extension(pending);
    }

    /// Writes one statement's change: at once in autocommit, into the
    /// transaction's buffer inside a block. The write runs as its own task:
    /// a cancel request (which drops the statement) cannot stop it between
    /// its WAL append and its apply.
    pub async fn write(
        &self,
        session: &Session,
        request: quiver_api::WriteRequest,
    ) -> Result<quiver_api::WriteResult, SqlError> {
        if let Some(mut txn) = session.take_open_transaction() {
            let result = txn
                .apply(
                    self.backends.streaming.as_ref(),
                    request,
                    self.transaction_buffer_bytes,
                )
                .await;
            session.set_transaction(TransactionState::Open(txn));
            return result;
        }
        let streaming = self.backends.streaming.clone();
        let result = tokio::spawn(async move { streaming.write(request).await })
            .await
            .map_err(|e| SqlError::new("XX000", format!("write task failed: {e}")))?
            .map_err(from_api)?;
        session.record_write(result.ts);
        Ok(result)
    }

    pub async fn plan(
        &self,
        session: &Session,
        mut statement: Statement,
    ) -> Result<LogicalPlan, SqlError> {
        bind_current_setting(&mut statement, session)?;
        crate::relation_size::bind_relation_sizes(
            &mut statement,
            self.backends.coordinator.as_ref(),
        )?;
        session
            .ctx
            .state()
            .statement_to_plan(datafusion::sql::parser::Statement::Statement(Box::new(
                statement,
            )))
            .await
            .map_err(from_datafusion)
    }

    /// Plans a query; one whose result columns repeat an expression (legal
    /// in PostgreSQL, rejected by DataFusion) is planned again with the
    /// computed columns aliased.
    async fn plan_query(
        &self,
        session: &Session,
        statement: Statement,
    ) -> Result<LogicalPlan, SqlError> {
        let mut retry = statement.clone();
        match self.plan(session, statement).await {
            Err(e)
                if e.message
                    .contains("Projections require unique expression names")
                    && alias_computed_expressions(&mut retry) =>
            {
                self.plan(session, retry).await
            }
            other => other,
        }
    }

    /// Runs a query at the session's snapshot and collects its rows.
    pub async fn run_query(
        &self,
        session: &Session,
        statement: Statement,
    ) -> Result<Output, SqlError> {
        let ts = self.read_snapshot(session).await?;
        self.run_query_at(session, statement, ts).await
    }

    pub async fn run_query_at(
        &self,
        session: &Session,
        statement: Statement,
        ts: Timestamp,
    ) -> Result<Output, SqlError> {
        self.pin_snapshot(session, ts);
        let explain = matches!(statement, Statement::Explain { analyze: false, .. });
        session
            .ctx
            .state_ref()
            .write()
            .config_mut()
            .set_extension(Arc::new(crate::vector_search::ExplainSearch(explain)));
        let names = postgres_column_names(&statement);
        let plan = self.plan_query(session, statement).await?;
        let df = session
            .ctx
            .execute_logical_plan(plan)
            .await
            .map_err(from_datafusion)?;
        let schema = with_postgres_names(df.schema().as_arrow(), names);
        let batches = df.collect().await.map_err(from_datafusion)?;
        Ok(Output::Rows(schema, batches))
    }

    pub async fn execute(
        &self,
        session: &Session,
        statement: Statement,
    ) -> Result<Output, SqlError> {
        let ends_block = matches!(
            statement,
            Statement::Commit { .. } | Statement::Rollback { .. }
        );
        // Boxed: a statement's future is large (tens of KiB in debug builds),
        // and moving it by value into `guarded` overflowed the stack.
        self.guarded(
            session,
            ends_block,
            Box::pin(self.execute_statement(session, statement)),
        )
        .await
    }

    /// Executes a statement whose `$n` parameter markers take `params` (the
    /// extended protocol's Bind). A k-NN statement is served with the values
    /// as they are; anything else has them bound into its syntax tree.
    pub async fn execute_with_parameters(
        &self,
        session: &Session,
        statement: &Statement,
        params: &[ScalarValue],
    ) -> Result<Output, SqlError> {
        if let Some(knn) =
            crate::knn_fast_path::recognize_with_parameters(self, session, statement, params)
        {
            return self
                .guarded(
                    session,
                    false,
                    Box::pin(crate::knn_fast_path::run(self, session, knn)),
                )
                .await;
        }
        let mut statement = statement.clone();
        if let Err(e) = quiver_planner::rewrite::bind_parameters(&mut statement, params) {
            // A value that cannot be bound fails an open block like any
            // other error of the statement.
            return self
                .guarded(session, false, Box::pin(async { Err(e) }))
                .await;
        }
        self.execute(session, statement).await
    }

    /// Runs one statement's work under PostgreSQL's transaction-block rules:
    /// refused in a failed block (unless it ends the block), and any error
    /// or cancellation fails the block.
    async fn guarded(
        &self,
        session: &Session,
        ends_block: bool,
        work: impl std::future::Future<Output = Result<Output, SqlError>>,
    ) -> Result<Output, SqlError> {
        if session.transaction_failed() && !ends_block {
            return Err(SqlError::new(
                sqlstate::IN_FAILED_TRANSACTION,
                "current transaction is aborted, commands ignored until end of transaction block",
            ));
        }
        // PostgreSQL aborts the whole transaction on any error, and on a
        // cancelled statement (whose future is dropped here).
        let mut abort_on_drop = AbortBlockOnDrop {
            session,
            armed: true,
        };
        let result = work.await;
        abort_on_drop.armed = result.is_err();
        if let Err(e) = &result
            && e.sqlstate == sqlstate::UNDEFINED_TABLE
        {
            // The streaming node refused a table this proxy's catalog copy
            // still has (dropped or replaced through another proxy): the
            // next statement must see the catalog as it is.
            if let Err(e) = self.backends.coordinator.refresh_catalog().await {
                tracing::warn!(error = %e, "refreshing the catalog failed");
            }
        }
        result
    }

    async fn execute_statement(
        &self,
        session: &Session,
        statement: Statement,
    ) -> Result<Output, SqlError> {
        match statement {
            Statement::Query(_) => {
                match crate::knn_fast_path::recognize(self, session, &statement) {
                    Some(knn) => crate::knn_fast_path::run(self, session, knn).await,
                    None => self.run_query(session, statement).await,
                }
            }
            Statement::Explain { .. } => self.run_query(session, statement).await,
            Statement::CreateTable(create) => crate::ddl::create_table(self, create).await,
            Statement::Drop {
                object_type: sqlparser::ast::ObjectType::Role | sqlparser::ast::ObjectType::User,
                if_exists,
                names,
                ..
            } => self.drop_roles(&names, if_exists).await,
            Statement::Drop {
                object_type: sqlparser::ast::ObjectType::Index,
                if_exists,
                names,
                ..
            } => crate::index_ddl::drop_index(self, session, if_exists, &names).await,
            Statement::Drop {
                object_type,
                if_exists,
                names,
                ..
            } => crate::ddl::drop(self, object_type, if_exists, names).await,
            Statement::Vacuum(_) if session.in_transaction_block() => Err(SqlError::new(
                sqlstate::ACTIVE_TRANSACTION,
                "VACUUM cannot run inside a transaction block",
            )),
            Statement::Vacuum(vacuum) => self.vacuum(vacuum.table_name.as_ref()).await,
            // Planner statistics: Quiver keeps none, so there is nothing to
            // gather (pgvector's docs run ANALYZE after a load); the table
            // must exist, as in PostgreSQL.
            Statement::Analyze(analyze) => {
                if let Some(name) = &analyze.table_name {
                    let table = crate::ddl::table_name(name)?;
                    self.backends.lookup_table(&table).await?;
                }
                Ok(Output::Command(Tag::new("ANALYZE")))
            }
            Statement::Truncate(_) if session.in_transaction_block() => Err(SqlError::new(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "TRUNCATE inside a transaction block is not supported",
            )),
            Statement::CreateIndex(create) => {
                crate::index_ddl::create_index(self, session, create).await
            }
            Statement::Truncate(truncate) => crate::ddl::truncate(self, truncate).await,
            Statement::CreateExtension(ext) => crate::ddl::create_extension(ext),
            Statement::Insert(insert) => crate::dml::insert(self, session, insert).await,
            Statement::Update(update) => crate::dml::update(self, session, update).await,
            Statement::Delete(delete) => crate::dml::delete(self, session, delete).await,
            Statement::Set(set) => self.set(session, set),
            Statement::Reset(reset) => Ok(self.reset(session, &reset.reset)),
            Statement::Copy {
                source,
                to,
                target,
                options,
                legacy_options,
                ..
            } => {
                let options = crate::copy_in::CopyOptions::parse(&options, &legacy_options)?;
                if to {
                    return crate::copy_out::run(self, session, source, &target, options).await;
                }
                let copy = crate::copy_in::start(self, &source, &target, options).await?;
                let out = Output::CopyIn(copy.format(), copy.columns());
                *session.copy_in.lock() = Some(copy);
                Ok(out)
            }
            Statement::ShowVariable { variable } => self.show(session, &variable),
            Statement::Prepare {
                name,
                data_types,
                statement,
            } => self.prepare(session, &name, data_types, *statement),
            Statement::Execute {
                name, parameters, ..
            } => {
                self.execute_prepared(session, name.as_ref(), parameters)
                    .await
            }
            Statement::Deallocate { name, .. } => self.deallocate(session, &name),
            Statement::CreateRole(create) => self.create_role(create).await,
            Statement::AlterRole { name, operation } => self.alter_role(&name, &operation).await,
            Statement::StartTransaction { modes, .. } => self.begin(session, &modes),
            Statement::Commit { chain: false, .. } => self.commit(session).await,
            Statement::Rollback {
                chain: false,
                savepoint: None,
            } => Ok(self.rollback(session)),
            Statement::Savepoint { name } => self.savepoint(session, &name, "SAVEPOINT"),
            Statement::ReleaseSavepoint { name } => self.savepoint(session, &name, "RELEASE"),
            Statement::Rollback {
                chain: false,
                savepoint: Some(name),
            } => self.rollback_to_savepoint(session, &name),
            Statement::Rollback { .. } | Statement::Commit { .. } => Err(SqlError::new(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "chained transactions (AND CHAIN) are not supported",
            )),
            other => Err(SqlError::new(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!(
                    "statement not supported: {}",
                    first_words(&other.to_string())
                ),
            )),
        }
    }

    /// `CHECKPOINT`: seal and flush every growing segment.
    pub async fn checkpoint(&self) -> Result<Output, SqlError> {
        self.backends
            .streaming
            .flush_all()
            .await
            .map_err(from_api)?;
        Ok(Output::Command(Tag::new("CHECKPOINT")))
    }

    /// `VACUUM [table]`: compacts sealed segments now (merges undersized
    /// ones, rewrites those with deleted rows); background compaction does
    /// the same by thresholds.
    async fn vacuum(&self, table: Option<&ObjectName>) -> Result<Output, SqlError> {
        let info = match table {
            None => None,
            Some(name) => {
                let table = crate::ddl::table_name(name)?;
                Some(self.backends.lookup_table(&table).await?)
            }
        };
        self.backends
            .streaming
            .compact(info.as_ref())
            .await
            .map_err(from_api)?;
        Ok(Output::Command(Tag::new("VACUUM")))
    }

    /// Parameter types and result columns of a statement, without running it.
    pub async fn describe(
        &self,
        session: &Session,
        statement: &Statement,
    ) -> Result<(Vec<Type>, Option<SchemaRef>), SqlError> {
        match statement {
            Statement::Query(_) | Statement::Explain { .. } => {
                let names = postgres_column_names(statement);
                let plan = self.plan_query(session, statement.clone()).await?;
                let mut params = ordered_param_types(&plan)?;
                for i in quiver_planner::rewrite::vector_parameter_positions(statement) {
                    if let Some(slot) = params.get_mut(i) {
                        *slot = arrow_pg::datatypes::pg_vector_type();
                    }
                }
                Ok((
                    params,
                    Some(with_postgres_names(plan.schema().as_arrow(), names)),
                ))
            }
            Statement::ShowVariable { variable } => {
                let name = variable
                    .iter()
                    .map(|i| i.value.clone())
                    .collect::<Vec<_>>()
                    .join(".");
                Ok((
                    vec![],
                    Some(Arc::new(Schema::new(vec![Field::new(
                        name,
                        DataType::Utf8,
                        false,
                    )]))),
                ))
            }
            Statement::Insert(_) | Statement::Update(_) | Statement::Delete(_) => {
                crate::dml::describe(self, session, statement).await
            }
            _ => Ok((vec![Type::UNKNOWN; count_parameters(statement)], None)),
        }
    }
}

/// The result schema with PostgreSQL's names for unaliased columns.
fn with_postgres_names(schema: &Schema, names: Option<Vec<ColumnName>>) -> SchemaRef {
    match names.and_then(|n| apply_names(n, schema.fields().len())) {
        Some(names) if names.len() == schema.fields().len() => Arc::new(Schema::new_with_metadata(
            schema
                .fields()
                .iter()
                .zip(names)
                .map(|(f, name)| match name {
                    Some(name) => f.as_ref().clone().with_name(name),
                    None => f.as_ref().clone(),
                })
                .collect::<Vec<_>>(),
            schema.metadata().clone(),
        )),
        _ => Arc::new(schema.clone()),
    }
}

fn first_words(sql: &str) -> String {
    sql.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// `$1..$n` types DataFusion inferred, `UNKNOWN` where it could not.
pub fn ordered_param_types(plan: &LogicalPlan) -> Result<Vec<Type>, SqlError> {
    let types = plan.get_parameter_types().map_err(from_datafusion)?;
    let mut ordered: Vec<(usize, Option<DataType>)> = types
        .into_iter()
        .filter_map(|(name, t)| {
            name.trim_start_matches('$')
                .parse::<usize>()
                .ok()
                .map(|n| (n, t))
        })
        .collect();
    ordered.sort_by_key(|(n, _)| *n);
    let count = ordered.last().map_or(0, |(n, _)| *n);
    let mut out = vec![Type::UNKNOWN; count];
    for (n, t) in ordered {
        if let Some(t) = t {
            out[n - 1] = arrow_pg::datatypes::into_pg_type(&t).unwrap_or(Type::UNKNOWN);
        }
    }
    Ok(out)
}

/// The highest `$n` in a statement.
pub fn count_parameters(statement: &Statement) -> usize {
    let mut max = 0usize;
    let mut copy = statement.clone();
    let _ = sqlparser::ast::visit_expressions_mut(&mut copy, |e| {
        if let Expr::Value(v) = e
            && let Value::Placeholder(p) = &v.value
            && let Ok(n) = p.trim_start_matches('$').parse::<usize>()
        {
            max = max.max(n);
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    max
}
