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
    /// Failed attempts so far (a failed build is retried with backoff).
    pub failures: u32,
}

impl BuildStatus {
    fn new(state: BuildState) -> Self {
        BuildStatus {
            state,
            started: None,
            duration_ms: None,
            error: None,
            failures: 0,
        }
    }
}

/// Failed builds are retried after 5 s, 10 s, 20 s, ... up to 5 minutes
/// apart (an object store or data node outage heals by itself), at most
/// this many times before the failure stays until a restart or VACUUM.
pub const MAX_BUILD_FAILURES: u32 = 10;

/// How long to wait before retrying a build that failed `failures` times.
pub fn retry_delay(failures: u32) -> std::time::Duration {
    let secs = 5u64.saturating_mul(1 << failures.saturating_sub(1).min(6));
    std::time::Duration::from_secs(secs.min(300))
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
        let failures = match st.status.get(&key) {
            Some(s) if s.state != BuildState::Failed => return,
            Some(s) => s.failures,
            None => 0,
        };
        let mut status = BuildStatus::new(BuildState::Queued);
        status.failures = failures;
        st.status.insert(key, status);
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

    /// Records a build's outcome; returns the number of failures so far
    /// when it failed (`None` if it succeeded or was forgotten).
    pub fn finish(&self, key: BuildKey, result: Result<(), String>) -> Option<u32> {
        let mut st = self.state.lock();
        let s = st.status.get_mut(&key)?;
        if let Some(started) = s.started.take() {
            s.duration_ms = Some(started.elapsed().as_millis() as u64);
        }
        match result {
            Ok(()) => {
                s.state = BuildState::Done;
                None
            }
            Err(e) => {
                s.state = BuildState::Failed;
                s.error = Some(e);
                s.failures += 1;
                Some(s.failures)
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

#[cfg(test)]
mod tests {
    use super::*;
    use quiver_types::{IndexId, SegmentId};

    #[tokio::test]
    async fn a_failed_build_can_be_queued_again_and_counts_its_failures() {
        let builds = IndexBuilds::default();
        let key = (SegmentId(1), IndexId(1));
        builds.enqueue(key);
        builds.enqueue(key); // already queued: no second entry
        assert_eq!(builds.next().await, key);
        assert_eq!(builds.finish(key, Err("object store down".into())), Some(1));
        builds.enqueue(key);
        assert_eq!(builds.next().await, key);
        assert_eq!(builds.finish(key, Err("still down".into())), Some(2));
        builds.enqueue(key);
        assert_eq!(builds.next().await, key);
        assert_eq!(builds.finish(key, Ok(())), None);
        builds.enqueue(key); // done: stays done
        assert_eq!(builds.snapshot()[0].1.state, BuildState::Done);
        assert_eq!(builds.snapshot()[0].1.failures, 2);
    }

    #[test]
    fn retries_back_off_to_five_minutes() {
        assert_eq!(retry_delay(1).as_secs(), 5);
        assert_eq!(retry_delay(2).as_secs(), 10);
        assert_eq!(retry_delay(4).as_secs(), 40);
        assert_eq!(retry_delay(9).as_secs(), 300);
    }
}
