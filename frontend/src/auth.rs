//! Connection startup: who may connect and how.
//!
//! - `trust` (the embedded default, meant for loopback): no password; the
//!   role must exist (`postgres` or a configured user).
//! - `scram-sha-256`: pgwire's SCRAM exchange against the users of
//!   `[frontend]` (passwords are salted and hashed at startup; only the
//!   verifier is kept). A wrong password and an unknown user fail the same
//!   way, with 28P01 "password authentication failed", revealing nothing.
//! - TLS with the configured certificate and key; with `required = true` a
//!   connection that did not negotiate TLS is refused (28000) before any
//!   authentication, like a `hostssl` line in pg_hba.conf.
//!
//! Every mode sends PostgreSQL's ParameterStatus set with Quiver's
//! `server_version`, and refuses databases other than `postgres` (3D000).

use std::collections::HashMap;
use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use futures::Sink;
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::sasl::scram::{ScramAuth, gen_salted_password};
use pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use pgwire::api::{
    ClientInfo, ConnectionManager, PidSecretKeyGenerator, RandomPidSecretKeyGenerator,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use crate::config::{AuthMethod, FrontendConfig};
use crate::engine::DATABASE;

/// SCRAM iteration count (PostgreSQL's default).
const SCRAM_ITERATIONS: usize = 4096;

/// A user's SCRAM verifier: the salt and the salted password.
#[derive(Clone)]
struct Verifier {
    salt: Vec<u8>,
    salted: Vec<u8>,
}

impl Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(..)")
    }
}

fn random_bytes(n: usize) -> Vec<u8> {
    use ring::rand::SecureRandom;
    let mut out = vec![0u8; n];
    // The system RNG does not fail on supported platforms; a zero salt
    // would still be a valid (if weaker) salt.
    let _ = ring::rand::SystemRandom::new().fill(&mut out);
    out
}

impl Verifier {
    fn new(password: &str) -> Self {
        let salt = random_bytes(16);
        let salted = gen_salted_password(password, &salt, SCRAM_ITERATIONS);
        Verifier { salt, salted }
    }
}

/// A SCRAM-SHA-256 verifier for a new password (`CREATE ROLE ... PASSWORD`).
pub fn scram_verifier(password: &str) -> quiver_api::ScramVerifier {
    let v = Verifier::new(password);
    quiver_api::ScramVerifier {
        salt: v.salt,
        salted_password: v.salted,
        iterations: SCRAM_ITERATIONS as u32,
    }
}

/// The users who may log in: those of the config file, then the roles of
/// the catalog that have LOGIN.
pub struct Users {
    verifiers: HashMap<String, Verifier>,
    coordinator: Arc<dyn quiver_api::CoordinatorApi>,
}

impl Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Users")
            .field("configured", &self.verifiers.len())
            .finish()
    }
}

impl Users {
    pub fn new(config: &FrontendConfig, coordinator: Arc<dyn quiver_api::CoordinatorApi>) -> Self {
        Users {
            verifiers: config
                .users
                .iter()
                .map(|u| (u.name.clone(), Verifier::new(&u.password)))
                .collect(),
            coordinator,
        }
    }

    fn exists(&self, name: &str) -> bool {
        name == "postgres"
            || self.verifiers.contains_key(name)
            || self.coordinator.role(name).is_some_and(|r| r.login)
    }

    fn verifier(&self, name: &str) -> Option<Verifier> {
        if let Some(v) = self.verifiers.get(name) {
            return Some(v.clone());
        }
        let role = self.coordinator.role(name).filter(|r| r.login)?;
        // Only PostgreSQL's iteration count is advertised to clients.
        let scram = role
            .scram
            .filter(|s| s.iterations as usize == SCRAM_ITERATIONS)?;
        Some(Verifier {
            salt: scram.salt,
            salted: scram.salted_password,
        })
    }
}

#[async_trait]
impl AuthSource for Users {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let verifier = login
            .user()
            .and_then(|u| self.verifier(u))
            // An unknown user gets a random verifier: the exchange runs to
            // the end and fails exactly like a wrong password.
            .unwrap_or_else(|| Verifier {
                salt: random_bytes(16),
                salted: random_bytes(32),
            });
        Ok(Password::new(Some(verifier.salt), verifier.salted))
    }
}

fn parameters() -> DefaultServerParameterProvider {
    let mut parameters = DefaultServerParameterProvider::default();
    parameters.server_version = quiver_planner::catalog_functions::POSTGRES_VERSION.to_string();
    parameters
}

fn fatal(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".into(),
        code.into(),
        message,
    )))
}

/// One connection's startup handler.
pub struct QuiverStartup {
    users: Arc<Users>,
    require_tls: bool,
    scram: Option<SASLAuthStartupHandler<DefaultServerParameterProvider>>,
    /// Where the connection registers its (pid, secret key), so a
    /// CancelRequest from another socket can stop its running statement.
    connections: Arc<ConnectionManager>,
}

impl QuiverStartup {
    pub fn new(
        config: &FrontendConfig,
        users: Arc<Users>,
        connections: Arc<ConnectionManager>,
    ) -> Self {
        let scram = (config.auth == AuthMethod::ScramSha256).then(|| {
            let mut auth = ScramAuth::new(users.clone());
            auth.set_iterations(SCRAM_ITERATIONS);
            SASLAuthStartupHandler::new(Arc::new(parameters()))
                .with_scram(auth)
                .with_connection_manager(connections.clone())
        });
        QuiverStartup {
            users,
            require_tls: config.tls.as_ref().is_some_and(|t| t.required),
            scram,
            connections,
        }
    }
}

#[async_trait]
impl StartupHandler for QuiverStartup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let PgWireFrontendMessage::Startup(startup) = &message {
            let user = startup.parameters.get("user").cloned().unwrap_or_default();
            let database = startup
                .parameters
                .get("database")
                .cloned()
                .unwrap_or_else(|| user.clone());
            if self.require_tls && !client.is_secure() {
                return Err(fatal(
                    "28000",
                    format!(
                        "no pg_hba.conf entry for user \"{user}\", database \"{database}\", no encryption"
                    ),
                ));
            }
            if !self.users.exists(&user) {
                // The role may have been created through another proxy a
                // moment ago.
                if let Err(e) = self.users.coordinator.refresh_catalog().await {
                    tracing::warn!(error = %e, "refreshing the catalog failed");
                }
            }
            if self.scram.is_none() && !self.users.exists(&user) {
                let reason = if self.users.coordinator.role(&user).is_some() {
                    "is not permitted to log in"
                } else {
                    "does not exist"
                };
                return Err(fatal("28000", format!("role \"{user}\" {reason}")));
            }
            if database != DATABASE {
                return Err(fatal(
                    "3D000",
                    format!("database \"{database}\" does not exist"),
                ));
            }
            if self.scram.is_none() {
                pgwire::api::auth::protocol_negotiation(client, startup).await?;
                pgwire::api::auth::save_startup_parameters_to_metadata(client, startup);
                let (pid, secret) = RandomPidSecretKeyGenerator::default().generate(client);
                client.set_pid_and_secret_key(pid, secret.clone());
                let (handle, guard) = self.connections.register(pid, secret);
                client.session_extensions().insert(handle);
                client.session_extensions().insert(guard);
                return pgwire::api::auth::finish_authentication(client, &parameters()).await;
            }
        }
        let Some(scram) = &self.scram else {
            return Ok(());
        };
        match scram.on_startup(client, message).await {
            // PostgreSQL's wording, naming the user (pgwire leaves it empty).
            Err(PgWireError::InvalidPassword(_)) => {
                let user = client.metadata().get("user").cloned().unwrap_or_default();
                Err(fatal(
                    "28P01",
                    format!("password authentication failed for user \"{user}\""),
                ))
            }
            other => other,
        }
    }
}

/// The TLS acceptor for the configured PEM certificate chain and key.
pub fn tls_acceptor(cert: &Path, key: &Path) -> std::io::Result<pgwire::tokio::TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let invalid = |what: &Path, e: &dyn std::fmt::Display| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{}: {e}", what.display()),
        )
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| invalid(cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(cert, &e))?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| invalid(key, &e))?;
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| invalid(cert, &e))?
    .with_no_client_auth()
    .with_single_cert(certs, key_der)
    .map_err(|e| invalid(cert, &e))?;
    Ok(pgwire::tokio::TlsAcceptor::from(Arc::new(config)))
}
