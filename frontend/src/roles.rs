//! `CREATE ROLE` / `CREATE USER`, `ALTER ROLE ... [WITH] PASSWORD ...`,
//! `DROP ROLE`. Roles live in the coordinator's catalog; the proxy turns a
//! password into a SCRAM-SHA-256 verifier before it leaves the session, so
//! no password is stored or sent on.

use pgwire::api::results::Tag;
use quiver_api::{RoleInfo, StatusCode};
use quiver_planner::{SqlError, sqlstate};
use sqlparser::ast::{
    AlterRoleOperation, CreateRole, Expr, Ident, ObjectName, Password, RoleOption, Value,
};

use crate::engine::{Engine, Output};

/// Roles that exist without the catalog (the `initdb` superuser).
const BUILT_IN: &str = "postgres";

fn role_name(name: &ObjectName) -> String {
    name.0
        .last()
        .and_then(|p| p.as_ident())
        .map(folded)
        .unwrap_or_default()
}

fn folded(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_ascii_lowercase()
    }
}

fn role_error(e: quiver_api::ApiError) -> SqlError {
    match e.code {
        // Roles are not relations: PostgreSQL says 42710, not 42P07.
        StatusCode::DuplicateObject => SqlError::new("42710", e.message),
        _ => crate::error::from_api(e),
    }
}

/// The verifier for `PASSWORD 'text'`; `None` for `PASSWORD NULL`.
fn verifier(password: &Password) -> Result<Option<quiver_api::ScramVerifier>, SqlError> {
    match password {
        Password::NullPassword => Ok(None),
        Password::Password(Expr::Value(v)) => match &v.value {
            Value::SingleQuotedString(text) => Ok(Some(crate::auth::scram_verifier(text))),
            Value::Null => Ok(None),
            _ => Err(SqlError::new(
                sqlstate::SYNTAX_ERROR,
                "a password must be a string literal",
            )),
        },
        Password::Password(_) => Err(SqlError::new(
            sqlstate::SYNTAX_ERROR,
            "a password must be a string literal",
        )),
    }
}

impl Engine {
    pub(crate) async fn create_role(&self, create: CreateRole) -> Result<Output, SqlError> {
        let password = create
            .password
            .as_ref()
            .map(verifier)
            .transpose()?
            .flatten();
        for name in &create.names {
            let name = role_name(name);
            if name == BUILT_IN {
                if create.if_not_exists {
                    continue;
                }
                return Err(SqlError::new(
                    "42710",
                    format!("role \"{name}\" already exists"),
                ));
            }
            let role = RoleInfo {
                name,
                superuser: create.superuser.unwrap_or(false),
                login: create.login.unwrap_or(false),
                create_db: create.create_db.unwrap_or(false),
                create_role: create.create_role.unwrap_or(false),
                scram: password.clone(),
            };
            self.backends
                .coordinator
                .create_role(role, create.if_not_exists)
                .await
                .map_err(role_error)?;
        }
        Ok(Output::Command(Tag::new("CREATE ROLE")))
    }

    pub(crate) async fn alter_role(
        &self,
        name: &Ident,
        operation: &AlterRoleOperation,
    ) -> Result<Output, SqlError> {
        let name = folded(name);
        let AlterRoleOperation::WithOptions { options } = operation else {
            return Err(SqlError::new(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "only ALTER ROLE ... [WITH] options is supported",
            ));
        };
        let coordinator = &self.backends.coordinator;
        let mut role = coordinator.role(&name).ok_or_else(|| {
            SqlError::new(
                sqlstate::UNDEFINED_OBJECT,
                format!("role \"{name}\" does not exist"),
            )
        })?;
        for option in options {
            match option {
                RoleOption::Password(p) => role.scram = verifier(p)?,
                RoleOption::Login(v) => role.login = *v,
                RoleOption::SuperUser(v) => role.superuser = *v,
                RoleOption::CreateDB(v) => role.create_db = *v,
                RoleOption::CreateRole(v) => role.create_role = *v,
                other => {
                    return Err(SqlError::new(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        format!("role option {other} is not supported"),
                    ));
                }
            }
        }
        coordinator.alter_role(role).await.map_err(role_error)?;
        Ok(Output::Command(Tag::new("ALTER ROLE")))
    }

    pub(crate) async fn drop_roles(
        &self,
        names: &[ObjectName],
        if_exists: bool,
    ) -> Result<Output, SqlError> {
        for name in names {
            let name = role_name(name);
            if name == BUILT_IN {
                return Err(SqlError::new(
                    "55006",
                    format!(
                        "cannot drop role {name} because it is required by the database system"
                    ),
                ));
            }
            self.backends
                .coordinator
                .drop_role(&name, if_exists)
                .await
                .map_err(role_error)?;
        }
        Ok(Output::Command(Tag::new("DROP ROLE")))
    }
}
