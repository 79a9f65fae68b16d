//! Per-connection state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::prelude::SessionContext;
use parking_lot::Mutex;
use quiver_planner::{SqlError, sqlstate};
use quiver_types::Timestamp;

/// `SET quiver.consistency`: which writes a read is guaranteed to see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Everything acknowledged before the read started, by anyone.
    Strong,
    /// This connection's own writes (read-your-writes) plus whatever every
    /// shard has already applied. The default.
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
    /// NOTICE messages for the client, sent before the statement's result.
    notices: Mutex<Vec<String>>,
}

impl Session {
    pub fn new(ctx: SessionContext) -> Self {
        Session {
            ctx,
            consistency: Mutex::new(Consistency::Session),
            last_write: AtomicU64::new(0),
            settings: Mutex::new(HashMap::new()),
            copy_in: Mutex::new(None),
            notices: Mutex::new(Vec::new()),
        }
    }

    pub fn notice(&self, message: impl Into<String>) {
        self.notices.lock().push(message.into());
    }

    pub fn take_notices(&self) -> Vec<String> {
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
