//! The PostgreSQL wire protocol (pgwire): startup, simple and extended query.
//! Both query protocols end in [`Engine::execute`].

use std::fmt::Debug;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::common::ParamValues;
use futures::{Sink, stream};
use pgwire::api::auth::StartupHandler;
use pgwire::api::copy::CopyHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{CopyResponse, FieldInfo, QueryResponse, Response};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireServerHandlers, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::copy::{CopyData, CopyDone, CopyFail};
use pgwire::messages::extendedquery::Sync as PgSync;
use pgwire::messages::response::ReadyForQuery;
use pgwire::messages::simplequery::Query;
use pgwire::types::format::FormatOptions;
use quiver_planner::SqlError;
use sqlparser::ast::Statement;
use tokio::net::TcpListener;

use crate::engine::{Engine, Output};
use crate::error::{to_error_info, to_pgwire};
use crate::ready_status::SessionStatus;
use crate::session::Session;

/// A parsed statement as kept between Parse and Execute.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub sql: String,
    pub kind: PreparedKind,
    pub param_types: Vec<Type>,
    pub result: Option<SchemaRef>,
}

#[derive(Debug, Clone)]
pub enum PreparedKind {
    Statement(Box<Statement>),
    Checkpoint,
}

pub struct Handlers {
    engine: Arc<Engine>,
    parser: Arc<QuiverParser>,
}

pub struct QuiverParser {
    engine: Arc<Engine>,
}

/// Sends the NOTICE messages a statement raised.
async fn send_notices<C>(client: &mut C, session: &Session) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    use futures::SinkExt;
    for notice in session.take_notices() {
        let info = ErrorInfo::new(
            notice.severity.to_string(),
            notice.code.to_string(),
            notice.message,
        );
        client
            .send(PgWireBackendMessage::NoticeResponse(info.into()))
            .await?;
    }
    Ok(())
}

fn session_of<C: ClientInfo + ?Sized>(engine: &Engine, client: &C) -> Arc<Session> {
    client.session_extensions().get_or_insert_with(|| {
        let session = engine.new_session();
        if let Some(user) = client.metadata().get("user") {
            session.set_user(user);
        }
        session
    })
}

/// `CHECKPOINT` is PostgreSQL's own statement but unknown to sqlparser.
fn is_checkpoint(sql: &str) -> bool {
    sql.trim()
        .trim_end_matches(';')
        .trim()
        .eq_ignore_ascii_case("checkpoint")
}

fn fields(
    schema: &SchemaRef,
    format: &Format,
    options: Option<Arc<FormatOptions>>,
) -> PgWireResult<Vec<FieldInfo>> {
    arrow_pg::datatypes::arrow_schema_to_pg_fields(schema, format, options)
}

fn into_response(
    output: Output,
    format: &Format,
    options: Arc<FormatOptions>,
) -> PgWireResult<Response> {
    match output {
        Output::Command(tag) => Ok(Response::Execution(tag)),
        Output::TransactionStart(tag) => Ok(Response::TransactionStart(tag)),
        Output::TransactionEnd(tag) => Ok(Response::TransactionEnd(tag)),
        Output::CopyIn(format, columns) => {
            let format = match format {
                crate::copy_in::CopyFormat::Binary => 1,
                _ => 0,
            };
            Ok(Response::CopyIn(CopyResponse::new(
                format,
                columns,
                stream::empty(),
            )))
        }
        Output::CopyOut(copy_options, schema, batches) => {
            let code = if copy_options.format == crate::copy_in::CopyFormat::Binary {
                1
            } else {
                0
            };
            let columns = schema.fields().len();
            let data = crate::copy_out::encode(&copy_options, &schema, batches, options)?;
            Ok(Response::CopyOut(CopyResponse::new(
                code,
                columns,
                stream::iter(data),
            )))
        }
        Output::Rows(schema, batches) => {
            let fields = Arc::new(fields(&schema, format, Some(options))?);
            let rows: Vec<_> = batches
                .into_iter()
                .map(|b| crate::text_format::postgres_text(b, format))
                .flat_map(|b| arrow_pg::datatypes::encode_recordbatch(fields.clone(), b))
                .collect();
            Ok(Response::Query(QueryResponse::new(
                fields,
                stream::iter(rows),
            )))
        }
    }
}

#[async_trait]
impl QueryParser for QuiverParser {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        if is_checkpoint(sql) {
            return Ok(Some(Prepared {
                sql: sql.to_string(),
                kind: PreparedKind::Checkpoint,
                param_types: vec![],
                result: None,
            }));
        }
        let mut statements = match self.engine.parse(sql) {
            Ok(statements) => statements,
            Err(e) => {
                fail_open_block(&session_of(&self.engine, client));
                return Err(to_pgwire(e));
            }
        };
        if statements.len() > 1 {
            return Err(to_pgwire(SqlError::new(
                "42601",
                "cannot insert multiple commands into a prepared statement",
            )));
        }
        let Some(statement) = statements.pop() else {
            return Ok(None);
        };
        let session = session_of(&self.engine, client);
        let (statement, param_types, result) = crate::declared_types::describe_with_declared_types(
            &self.engine,
            &session,
            statement,
            types,
        )
        .await
        .map_err(to_pgwire)?;
        Ok(Some(Prepared {
            sql: sql.to_string(),
            kind: PreparedKind::Statement(Box::new(statement)),
            param_types,
            result,
        }))
    }

    fn get_parameter_types(&self, stmt: &Prepared) -> PgWireResult<Vec<Type>> {
        Ok(stmt.param_types.clone())
    }

    fn get_result_schema(
        &self,
        stmt: &Prepared,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        match &stmt.result {
            Some(schema) => fields(schema, format.unwrap_or(&Format::UnifiedText), None),
            None => Ok(vec![]),
        }
    }
}

#[async_trait]
impl SimpleQueryHandler for Handlers {
    async fn on_query<C>(&self, client: &mut C, query: Query) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session_of(&self.engine, client);
        let result = self
            ._on_query(&mut SessionStatus::new(client, session.clone()), query)
            .await;
        if result.is_err() {
            // pgwire answers an error (a cancelled statement) with a
            // ReadyForQuery of the connection's own status, past the wrapper.
            client.set_transaction_status(session.transaction_status());
        }
        result
    }

    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session_of(&self.engine, client);
        let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
        if is_checkpoint(query) {
            let out = self.engine.checkpoint().await;
            return Ok(vec![match out {
                Ok(o) => into_response(o, &Format::UnifiedText, options)?,
                Err(e) => Response::Error(Box::new(to_error_info(e))),
            }]);
        }
        let statements = match self.engine.parse(query) {
            Ok(s) => s,
            Err(e) => {
                // As any failing statement: a syntax error fails an open block.
                fail_open_block(&session);
                return Ok(vec![Response::Error(Box::new(to_error_info(e)))]);
            }
        };
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let mut responses = Vec::with_capacity(statements.len());
        for statement in statements {
            let result = self.engine.execute(&session, statement).await;
            send_notices(client, &session).await?;
            match result {
                Ok(out) => {
                    responses.push(into_response(out, &Format::UnifiedText, options.clone())?)
                }
                Err(e) => {
                    // Like PostgreSQL: stop at the first failing statement.
                    responses.push(Response::Error(Box::new(to_error_info(e))));
                    break;
                }
            }
        }
        Ok(responses)
    }
}

#[async_trait]
impl ExtendedQueryHandler for Handlers {
    type Statement = Prepared;
    type QueryParser = QuiverParser;

    fn query_parser(&self) -> Arc<QuiverParser> {
        self.parser.clone()
    }

    /// Sync ends an extended-protocol exchange with ReadyForQuery, whose
    /// status byte is the session's transaction block.
    async fn on_sync<C>(&self, client: &mut C, _message: PgSync) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        use futures::SinkExt;
        let session = session_of(&self.engine, client);
        let status = session.transaction_status();
        client.set_transaction_status(status);
        client.portal_store().rm_portal(pgwire::api::DEFAULT_NAME);
        client
            .send(PgWireBackendMessage::ReadyForQuery(ReadyForQuery::new(
                status,
            )))
            .await?;
        client.flush().await?;
        Ok(())
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Prepared>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session_of(&self.engine, client);
        let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
        let prepared = &portal.statement.statement;
        let output = match &prepared.kind {
            PreparedKind::Checkpoint => self.engine.checkpoint().await,
            PreparedKind::Statement(statement) => {
                let server_types: Vec<Option<&Type>> =
                    prepared.param_types.iter().map(Some).collect();
                let params = arrow_pg::datatypes::df::deserialize_parameters_with_server_types(
                    portal,
                    &[],
                    &server_types,
                )
                .inspect_err(|_| fail_open_block(&session))?;
                let values = match params {
                    ParamValues::List(list) => with_untyped_nulls(
                        portal,
                        &server_types,
                        list.into_iter().map(|v| v.value).collect(),
                    ),
                    ParamValues::Map(_) => vec![],
                };
                self.engine
                    .execute_with_parameters(&session, statement, &values)
                    .await
            }
        };
        send_notices(client, &session).await?;
        match output {
            Ok(out) => into_response(out, &portal.result_column_format, options),
            Err(e) => Err(to_pgwire(e)),
        }
    }
}

#[async_trait]
impl CopyHandler for Handlers {
    async fn on_copy_data<C>(&self, client: &mut C, copy_data: CopyData) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session_of(&self.engine, client);
        if let Some(copy) = session.copy_in.lock().as_mut() {
            copy.push(&copy_data.data);
        }
        Ok(())
    }

    async fn on_copy_done<C>(&self, client: &mut C, _done: CopyDone) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        use futures::SinkExt;
        let session = session_of(&self.engine, client);
        let copy = session.copy_in.lock().take().ok_or_else(|| {
            to_pgwire(SqlError::new(
                "08P01",
                "COPY data received without a COPY in progress",
            ))
        })?;
        let result = crate::copy_in::finish(&self.engine, &session, copy).await;
        if result.is_err() {
            fail_open_block(&session);
        }
        // pgwire's ReadyForQuery after COPY carries the connection's status.
        client.set_transaction_status(session.transaction_status());
        match result {
            Ok(Output::Command(tag)) => {
                client
                    .send(PgWireBackendMessage::CommandComplete(tag.into()))
                    .await?;
                Ok(())
            }
            Ok(_) => Err(to_pgwire(SqlError::new("XX000", "COPY produced rows"))),
            Err(e) => Err(to_pgwire(e)),
        }
    }

    async fn on_copy_fail<C>(&self, client: &mut C, fail: CopyFail) -> PgWireError
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        session_of(&self.engine, client).copy_in.lock().take();
        to_pgwire(SqlError::new(
            "57014",
            format!("COPY from stdin failed: {}", fail.message),
        ))
    }
}

/// arrow-pg leaves out a NULL parameter of no known type (psycopg sends
/// `None` untyped, and `SELECT %s` gives the server no type either), which
/// shifts every later parameter; put those NULLs back in their places.
fn with_untyped_nulls(
    portal: &Portal<Prepared>,
    server_types: &[Option<&Type>],
    values: Vec<datafusion::scalar::ScalarValue>,
) -> Vec<datafusion::scalar::ScalarValue> {
    let expected = portal.parameter_len();
    if values.len() >= expected {
        return values;
    }
    let untyped = |ty: Option<&Type>| ty.is_none_or(|t| *t == Type::UNKNOWN);
    let mut decoded = values.into_iter();
    (0..expected)
        .filter_map(|i| {
            let untyped_null = portal.parameters.get(i).is_some_and(|v| v.is_none())
                && untyped(
                    portal
                        .statement
                        .parameter_types
                        .get(i)
                        .and_then(|t| t.as_ref()),
                )
                && untyped(server_types.get(i).copied().flatten());
            if untyped_null {
                Some(datafusion::scalar::ScalarValue::Null)
            } else {
                decoded.next()
            }
        })
        .collect()
}

/// An error fails the session's open transaction block (PostgreSQL's
/// "current transaction is aborted" until ROLLBACK).
fn fail_open_block(session: &Session) {
    if session.in_transaction_block() {
        session.fail_transaction();
    }
}

/// Accepts the `postgres` role on the `postgres` database, like a fresh initdb.
pub struct Factory {
    handlers: Arc<Handlers>,
    users: Arc<crate::auth::Users>,
    config: crate::config::FrontendConfig,
    connections: Arc<pgwire::api::ConnectionManager>,
}

impl PgWireServerHandlers for Factory {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.handlers.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.handlers.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        // One per connection: the SCRAM exchange keeps per-connection state.
        Arc::new(crate::auth::QuiverStartup::new(
            &self.config,
            self.users.clone(),
            self.connections.clone(),
        ))
    }

    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        Arc::new(pgwire::api::cancel::DefaultCancelHandler::new(
            self.connections.clone(),
        ))
    }

    fn copy_handler(&self) -> Arc<impl CopyHandler> {
        self.handlers.clone()
    }
}

/// Serves the wire protocol on `listener` until the task is dropped.
pub async fn serve(
    engine: Arc<Engine>,
    listener: TcpListener,
    config: &crate::config::FrontendConfig,
) -> std::io::Result<()> {
    let tls = match &config.tls {
        Some(tls) => Some(crate::auth::tls_acceptor(&tls.cert, &tls.key)?),
        None => None,
    };
    let users = Arc::new(crate::auth::Users::new(
        config,
        engine.backends.coordinator.clone(),
    ));
    let factory = Arc::new(Factory {
        handlers: Arc::new(Handlers {
            engine: engine.clone(),
            parser: Arc::new(QuiverParser { engine }),
        }),
        users,
        config: config.clone(),
        connections: Arc::new(pgwire::api::ConnectionManager::new()),
    });
    loop {
        let (socket, addr) = listener.accept().await?;
        let factory = factory.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            if let Err(e) = pgwire::tokio::process_socket(socket, tls, factory).await {
                tracing::debug!(%addr, error = %e, "connection ended with an error");
            }
        });
    }
}
