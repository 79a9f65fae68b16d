//! Per-connection state.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::prelude::SessionContext;
use parking_lot::Mutex;
use quiver_planner::{SqlError, sqlstate};
use quiver_types::Timestamp;

use crate::transaction::{PendingWrites, Transaction};

/// `SET quiver.consistency`: which writes a read is guaranteed to see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Everything acknowledged before the read started, by anyone.
    Strong,
    /// Every write acknowledged before the read started, by any session
    /// (PostgreSQL's read committed), found from the shards' newest time
    /// tick without asking the timestamp oracle; plus a write timestamp the
    /// client carried over with `SET quiver.last_write_ts`. The default.
    Session,
    /// Everything older than the configured staleness bound.
    Bounded,
    /// Whatever every shard has already applied; never waits.
    Eventually,
}

impl Consistency {
    pub fn parse(value: &str) -> Result<Self, SqlError> {
        match value.to_ascii_lowercase().as_str() {
            "strong" => Ok(Consistency::Strong),
            "session" => Ok(Consistency::Session),
            "bounded" => Ok(Consistency::Bounded),
            "eventually" => Ok(Consistency::Eventually),
            other => Err(SqlError::new(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!(
                    "invalid value for parameter \"quiver.consistency\": \"{other}\" (expected strong, session, bounded or eventually)"
                ),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Consistency::Strong => "strong",
            Consistency::Session => "session",
            Consistency::Bounded => "bounded",
            Consistency::Eventually => "eventually",
        }
    }
}

pub struct Session {
    /// This connection's DataFusion context (its config carries the
    /// statement's read snapshot).
    pub ctx: SessionContext,
    pub consistency: Mutex<Consistency>,
    last_write: AtomicU64,
    /// Other `SET` variables, echoed back by `SHOW`.
    pub settings: Mutex<HashMap<String, String>>,
    /// The `COPY ... FROM STDIN` receiving data, if any.
    pub copy_in: Mutex<Option<crate::copy_in::CopyIn>>,
    /// `PREPARE`d statements by name.
    pub prepared: Mutex<HashMap<String, crate::prepared::SqlPrepared>>,
    /// NOTICE messages for the client, sent before the statement's result.
    notices: Mutex<Vec<Notice>>,
    transaction: Mutex<TransactionState>,
    /// The role the connection logged in as (`current_user`).
    user: Mutex<String>,
    /// Inside a transaction block: how to undo its `SET`s.
    settings_undo: Mutex<Option<SettingsUndo>>,
}

/// `SET` is transactional in PostgreSQL: ROLLBACK undoes every `SET` of
/// the block, and COMMIT undoes only `SET LOCAL`.
#[derive(Debug)]
struct SettingsUndo {
    at_begin: HashMap<String, String>,
    consistency_at_begin: Consistency,
    /// Per name set with `SET LOCAL`: the value COMMIT restores.
    local: HashMap<String, Option<String>>,
    /// Per savepoint, innermost last: the settings when it was made.
    savepoints: Vec<SettingsSavepoint>,
}

#[derive(Debug)]
struct SettingsSavepoint {
    name: String,
    settings: HashMap<String, String>,
    consistency: Consistency,
    local: HashMap<String, Option<String>>,
}

/// A NOTICE or WARNING for the client.
#[derive(Debug, Clone)]
pub struct Notice {
    pub severity: &'static str,
    pub code: &'static str,
    pub message: String,
}

/// Where the session is in PostgreSQL's transaction state machine.
#[derive(Debug, Default)]
pub enum TransactionState {
    /// Autocommit: every statement commits on its own.
    #[default]
    Idle,
    /// Inside `BEGIN`: writes are buffered.
    Open(Box<Transaction>),
    /// A statement failed inside the block: everything but COMMIT/ROLLBACK
    /// (or ROLLBACK TO SAVEPOINT, which revives the block) is refused.
    Failed(Box<Transaction>),
}

impl Session {
    pub fn new(ctx: SessionContext) -> Self {
        Session {
            ctx,
            consistency: Mutex::new(Consistency::Session),
            last_write: AtomicU64::new(0),
            settings: Mutex::new(HashMap::new()),
            copy_in: Mutex::new(None),
            prepared: Mutex::new(HashMap::new()),
            notices: Mutex::new(Vec::new()),
            transaction: Mutex::new(TransactionState::Idle),
            user: Mutex::new("postgres".to_string()),
            settings_undo: Mutex::new(None),
        }
    }

    /// A block begins: its `SET`s can be undone from here.
    pub fn begin_settings_scope(&self) {
        *self.settings_undo.lock() = Some(SettingsUndo {
            at_begin: self.settings.lock().clone(),
            consistency_at_begin: *self.consistency.lock(),
            local: HashMap::new(),
            savepoints: Vec::new(),
        });
    }

    /// `SAVEPOINT name`: remembers the settings to return to.
    pub fn settings_savepoint(&self, name: &str) {
        if let Some(undo) = self.settings_undo.lock().as_mut() {
            undo.savepoints.push(SettingsSavepoint {
                name: name.to_string(),
                settings: self.settings.lock().clone(),
                consistency: *self.consistency.lock(),
                local: undo.local.clone(),
            });
        }
    }

    /// `ROLLBACK TO SAVEPOINT name`: the settings as they were at it (the
    /// savepoint stays; later ones go).
    pub fn rollback_settings_to(&self, name: &str) {
        let mut undo = self.settings_undo.lock();
        let Some(undo) = undo.as_mut() else { return };
        let Some(at) = undo.savepoints.iter().rposition(|s| s.name == name) else {
            return;
        };
        undo.savepoints.truncate(at + 1);
        let point = &undo.savepoints[at];
        *self.settings.lock() = point.settings.clone();
        *self.consistency.lock() = point.consistency;
        undo.local = point.local.clone();
    }

    /// `RELEASE SAVEPOINT name`: it and later ones go, the settings stay.
    pub fn release_settings_savepoint(&self, name: &str) {
        if let Some(undo) = self.settings_undo.lock().as_mut()
            && let Some(at) = undo.savepoints.iter().rposition(|s| s.name == name)
        {
            undo.savepoints.truncate(at);
        }
    }

    /// `RESET ALL` is a session-level change of every setting: pending
    /// `SET LOCAL` restores no longer apply at COMMIT.
    pub fn forget_local_settings(&self) {
        if let Some(undo) = self.settings_undo.lock().as_mut() {
            undo.local.clear();
        }
    }

    /// Records that `name` is about to be set; `local` for `SET LOCAL`.
    /// Returns false when `SET LOCAL` is used outside a block (no effect).
    pub fn note_setting_change(&self, name: &str, local: bool) -> bool {
        let mut undo = self.settings_undo.lock();
        match undo.as_mut() {
            None => !local,
            Some(undo) if local => {
                if !undo.local.contains_key(name) {
                    let current = if name == "quiver.consistency" {
                        Some(self.consistency.lock().name().to_string())
                    } else {
                        self.settings.lock().get(name).cloned()
                    };
                    undo.local.insert(name.to_string(), current);
                }
                true
            }
            Some(undo) => {
                // A session-level SET after a SET LOCAL outlives the block.
                undo.local.remove(name);
                true
            }
        }
    }

    /// The block ended: COMMIT keeps its `SET`s but not its `SET LOCAL`s;
    /// ROLLBACK keeps none.
    pub fn end_settings_scope(&self, committed: bool) {
        let Some(undo) = self.settings_undo.lock().take() else {
            return;
        };
        if !committed {
            *self.settings.lock() = undo.at_begin;
            *self.consistency.lock() = undo.consistency_at_begin;
            return;
        }
        for (name, value) in undo.local {
            if name == "quiver.consistency" {
                if let Some(c) = value.as_deref().and_then(|v| Consistency::parse(v).ok()) {
                    *self.consistency.lock() = c;
                }
                continue;
            }
            let mut settings = self.settings.lock();
            match value {
                Some(v) => settings.insert(name, v),
                None => settings.remove(&name),
            };
        }
    }

    pub fn user(&self) -> String {
        self.user.lock().clone()
    }

    pub fn set_user(&self, user: &str) {
        *self.user.lock() = user.to_string();
    }

    pub fn in_transaction_block(&self) -> bool {
        !matches!(*self.transaction.lock(), TransactionState::Idle)
    }

    pub fn transaction_failed(&self) -> bool {
        matches!(*self.transaction.lock(), TransactionState::Failed(_))
    }

    /// After an error: an open block fails (PostgreSQL aborts it whole).
    pub fn fail_transaction(&self) {
        let mut state = self.transaction.lock();
        if let TransactionState::Open(_) = &*state
            && let TransactionState::Open(txn) = std::mem::take(&mut *state)
        {
            *state = TransactionState::Failed(txn);
        }
    }

    /// The status byte of ReadyForQuery: idle, in a block, or in a failed one.
    pub fn transaction_status(&self) -> pgwire::messages::response::TransactionStatus {
        use pgwire::messages::response::TransactionStatus;
        match &*self.transaction.lock() {
            TransactionState::Idle => TransactionStatus::Idle,
            TransactionState::Open(_) => TransactionStatus::Transaction,
            TransactionState::Failed(_) => TransactionStatus::Error,
        }
    }

    /// Replaces the transaction state, returning the old one.
    pub fn set_transaction(&self, state: TransactionState) -> TransactionState {
        std::mem::replace(&mut *self.transaction.lock(), state)
    }

    /// Takes the open transaction out (to work on it across awaits); the
    /// caller puts it back with [`Session::set_transaction`]. Meanwhile the
    /// block counts as failed, so a statement cancelled halfway leaves it
    /// failed rather than silently gone.
    pub fn take_open_transaction(&self) -> Option<Box<Transaction>> {
        let mut state = self.transaction.lock();
        match std::mem::take(&mut *state) {
            TransactionState::Open(txn) => {
                *state = TransactionState::Failed(Box::default());
                Some(txn)
            }
            other => {
                *state = other;
                None
            }
        }
    }

    /// The pending-writes overlay of the open transaction, if it wrote.
    pub fn overlay(&self) -> Result<Option<Arc<PendingWrites>>, SqlError> {
        match &mut *self.transaction.lock() {
            TransactionState::Open(txn) => txn.overlay(),
            _ => Ok(None),
        }
    }

    pub fn notice(&self, message: impl Into<String>) {
        self.notices.lock().push(Notice {
            severity: "NOTICE",
            code: "00000",
            message: message.into(),
        });
    }

    pub fn warning(&self, code: &'static str, message: impl Into<String>) {
        self.notices.lock().push(Notice {
            severity: "WARNING",
            code,
            message: message.into(),
        });
    }

    pub fn take_notices(&self) -> Vec<Notice> {
        std::mem::take(&mut *self.notices.lock())
    }

    /// `SET` variable value, if set in this session.
    pub fn setting(&self, name: &str) -> Option<String> {
        self.settings.lock().get(name).cloned()
    }

    pub fn last_write(&self) -> Timestamp {
        Timestamp(self.last_write.load(Ordering::Acquire))
    }

    pub fn record_write(&self, ts: Timestamp) {
        self.last_write.fetch_max(ts.0, Ordering::AcqRel);
    }
}
