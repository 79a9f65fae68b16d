//! Roles made by `CREATE ROLE` / `CREATE USER`, with their SCRAM verifiers,
//! kept in the meta store so every proxy authenticates against the same
//! set and they survive restarts.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use quiver_api::{ApiError, ApiResult, RoleInfo, StatusCode};
use quiver_meta::{MetaOp, MetaStore, keys};

use crate::CoordinatorError;

pub(crate) struct Roles {
    meta: Arc<dyn MetaStore>,
    roles: RwLock<HashMap<String, RoleInfo>>,
    // Serializes changes, so the check and the write agree.
    changes: tokio::sync::Mutex<()>,
}

fn duplicate(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::DuplicateObject,
        format!("role \"{name}\" already exists"),
    )
}

fn missing(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::UndefinedObject,
        format!("role \"{name}\" does not exist"),
    )
}

impl Roles {
    pub(crate) async fn open(meta: Arc<dyn MetaStore>) -> Result<Self, CoordinatorError> {
        let roles = quiver_meta::scan_json::<RoleInfo>(meta.as_ref(), keys::ROLES)
            .await?
            .into_iter()
            .map(|(_, r)| (r.name.clone(), r))
            .collect();
        Ok(Roles {
            meta,
            roles: RwLock::new(roles),
            changes: tokio::sync::Mutex::new(()),
        })
    }

    async fn store(&self, role: &RoleInfo) -> ApiResult<()> {
        self.meta
            .batch(vec![quiver_meta::put_json_op(keys::role(&role.name), role)])
            .await
            .map_err(CoordinatorError::from)?;
        self.roles.write().insert(role.name.clone(), role.clone());
        Ok(())
    }

    pub(crate) async fn create(&self, role: RoleInfo, if_not_exists: bool) -> ApiResult<bool> {
        let _change = self.changes.lock().await;
        if self.roles.read().contains_key(&role.name) {
            return if if_not_exists {
                Ok(false)
            } else {
                Err(duplicate(&role.name))
            };
        }
        self.store(&role).await?;
        Ok(true)
    }

    pub(crate) async fn alter(&self, role: RoleInfo) -> ApiResult<()> {
        let _change = self.changes.lock().await;
        if !self.roles.read().contains_key(&role.name) {
            return Err(missing(&role.name));
        }
        self.store(&role).await
    }

    pub(crate) async fn drop(&self, name: &str, if_exists: bool) -> ApiResult<bool> {
        let _change = self.changes.lock().await;
        if !self.roles.read().contains_key(name) {
            return if if_exists {
                Ok(false)
            } else {
                Err(missing(name))
            };
        }
        self.meta
            .batch(vec![MetaOp::Delete {
                key: keys::role(name),
            }])
            .await
            .map_err(CoordinatorError::from)?;
        self.roles.write().remove(name);
        Ok(true)
    }

    pub(crate) fn get(&self, name: &str) -> Option<RoleInfo> {
        self.roles.read().get(name).cloned()
    }

    pub(crate) fn list(&self) -> Vec<RoleInfo> {
        let mut roles: Vec<RoleInfo> = self.roles.read().values().cloned().collect();
        roles.sort_by(|a, b| a.name.cmp(&b.name));
        roles
    }
}
