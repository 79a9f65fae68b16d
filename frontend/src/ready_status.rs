//! The status byte of ReadyForQuery after a simple query, taken from the
//! session's transaction block.
//!
//! pgwire's simple-query loop derives the byte from the status before the
//! query and the responses: any error inside an open block reports a
//! failed block. That is wrong when the failing statement ended the block:
//! a COMMIT that fails (a key another session committed first) rolls the
//! transaction back, and PostgreSQL then reports idle, so drivers do not
//! need a ROLLBACK to go on. The loop itself stays pgwire's (it owns query
//! cancellation), so the connection it writes to is wrapped and the byte
//! is set from the session on the way out; everything else passes through.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Sink;
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireConnectionState, SessionExtensions};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::ProtocolVersion;
use pgwire::messages::response::{ReadyForQuery, TransactionStatus};
use pgwire::messages::startup::SecretKey;

use crate::session::Session;

/// A client connection whose ReadyForQuery messages carry the session's
/// transaction status.
pub(crate) struct SessionStatus<'a, C> {
    inner: &'a mut C,
    session: Arc<Session>,
}

impl<'a, C> SessionStatus<'a, C> {
    pub(crate) fn new(inner: &'a mut C, session: Arc<Session>) -> Self {
        SessionStatus { inner, session }
    }
}

impl<C> Sink<PgWireBackendMessage> for SessionStatus<'_, C>
where
    C: ClientInfo + Sink<PgWireBackendMessage> + Unpin,
{
    type Error = C::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut *self.get_mut().inner).poll_ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: PgWireBackendMessage) -> Result<(), Self::Error> {
        let this = self.get_mut();
        let item = match item {
            PgWireBackendMessage::ReadyForQuery(_) => {
                let status = this.session.transaction_status();
                this.inner.set_transaction_status(status);
                PgWireBackendMessage::ReadyForQuery(ReadyForQuery::new(status))
            }
            other => other,
        };
        Pin::new(&mut *this.inner).start_send(item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut *self.get_mut().inner).poll_close(cx)
    }
}

impl<C: ClientPortalStore> ClientPortalStore for SessionStatus<'_, C> {
    type PortalStore = C::PortalStore;

    fn portal_store(&self) -> &Self::PortalStore {
        self.inner.portal_store()
    }
}

impl<C: ClientInfo> ClientInfo for SessionStatus<'_, C> {
    fn socket_addr(&self) -> SocketAddr {
        self.inner.socket_addr()
    }

    fn is_secure(&self) -> bool {
        self.inner.is_secure()
    }

    fn protocol_version(&self) -> ProtocolVersion {
        self.inner.protocol_version()
    }

    fn set_protocol_version(&mut self, version: ProtocolVersion) {
        self.inner.set_protocol_version(version)
    }

    fn pid_and_secret_key(&self) -> (i32, SecretKey) {
        self.inner.pid_and_secret_key()
    }

    fn set_pid_and_secret_key(&mut self, pid: i32, secret_key: SecretKey) {
        self.inner.set_pid_and_secret_key(pid, secret_key)
    }

    fn state(&self) -> PgWireConnectionState {
        self.inner.state()
    }

    fn set_state(&mut self, new_state: PgWireConnectionState) {
        self.inner.set_state(new_state)
    }

    fn transaction_status(&self) -> TransactionStatus {
        self.inner.transaction_status()
    }

    fn set_transaction_status(&mut self, new_status: TransactionStatus) {
        self.inner.set_transaction_status(new_status)
    }

    fn metadata(&self) -> &HashMap<String, String> {
        self.inner.metadata()
    }

    fn metadata_mut(&mut self) -> &mut HashMap<String, String> {
        self.inner.metadata_mut()
    }

    fn session_extensions(&self) -> &SessionExtensions {
        self.inner.session_extensions()
    }

    fn sni_server_name(&self) -> Option<&str> {
        self.inner.sni_server_name()
    }

    fn client_certificates<'a>(&self) -> Option<&[rustls_pki_types::CertificateDer<'a>]> {
        self.inner.client_certificates()
    }
}
