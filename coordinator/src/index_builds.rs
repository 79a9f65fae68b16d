//! Index build scheduling: which (segment, index) pairs need a build, the
//! queue data nodes work through, and each build's status.
//!
//! The queue lives in memory; after a restart it is recomputed from the
//! catalog and the recorded manifests (a sealed segment without a manifest
//! for one of its table's indexes is queued again), so nothing is lost.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use parking_lot::Mutex;
use quiver_api::BuildState;
use quiver_types::{IndexId, SegmentId};
use tokio::sync::Notify;

pub type BuildKey = (SegmentId, IndexId);

#[derive(Debug, Clone)]
pub struct BuildStatus {
    pub state: BuildState,
    pub started: Option<Instant>,
    pub duration_ms: Option<u64>,
    pub error: Option<String>,
}

impl BuildStatus {
    fn new(state: BuildState) -> Self {
        BuildStatus {
            state,
            started: None,
            duration_ms: None,
            error: None,
        }
    }
}

#[derive(Default)]
pub struct IndexBuilds {
    state: Mutex<State>,
    wake: Notify,
}

#[derive(Default)]
struct State {
    queue: VecDeque<BuildKey>,
    status: HashMap<BuildKey, BuildStatus>,
}

impl IndexBuilds {
    /// Queues a build unless one is queued, running or done.
    pub fn enqueue(&self, key: BuildKey) {
        let mut st = self.state.lock();
        if let Some(s) = st.status.get(&key)
            && s.state != BuildState::Failed
        {
            return;
        }
        st.status.insert(key, BuildStatus::new(BuildState::Queued));
        st.queue.push_back(key);
        drop(st);
        self.wake.notify_one();
    }

    /// Records a build that is already complete (or not needed).
    pub fn mark(&self, key: BuildKey, state: BuildState, duration_ms: Option<u64>) {
        let mut status = BuildStatus::new(state);
        status.duration_ms = duration_ms;
        self.state.lock().status.insert(key, status);
    }

    /// The next queued build, marked running; waits while the queue is empty.
    pub async fn next(&self) -> BuildKey {
        loop {
            let notified = self.wake.notified();
            {
                let mut st = self.state.lock();
                while let Some(key) = st.queue.pop_front() {
                    if let Some(s) = st.status.get_mut(&key)
                        && s.state == BuildState::Queued
                    {
                        s.state = BuildState::Running;
                        s.started = Some(Instant::now());
                        return key;
                    }
                }
            }
            notified.await;
        }
    }

    pub fn finish(&self, key: BuildKey, result: Result<(), String>) {
        let mut st = self.state.lock();
        if let Some(s) = st.status.get_mut(&key) {
            if let Some(started) = s.started.take() {
                s.duration_ms = Some(started.elapsed().as_millis() as u64);
            }
            match result {
                Ok(()) => s.state = BuildState::Done,
                Err(e) => {
                    s.state = BuildState::Failed;
                    s.error = Some(e);
                }
            }
        }
    }

    /// Forgets builds matching `pred` (dropped index or segment); a running
    /// one finishes but its result is discarded by the caller's re-check.
    pub fn forget(&self, pred: impl Fn(&BuildKey) -> bool) {
        let mut st = self.state.lock();
        st.status.retain(|k, _| !pred(k));
        st.queue.retain(|k| !pred(k));
    }

    pub fn snapshot(&self) -> Vec<(BuildKey, BuildStatus)> {
        let st = self.state.lock();
        let mut v: Vec<_> = st.status.iter().map(|(k, s)| (*k, s.clone())).collect();
        v.sort_by_key(|(k, _)| (k.1, k.0));
        v
    }
}
