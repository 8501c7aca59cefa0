use sluice_store::{Store, StoreError};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// What an activity knows about its invocation.
#[derive(Clone)]
pub struct ActivityContext {
    pub(crate) instance_id: String,
    pub(crate) activity_id: u64,
    pub(crate) name: String,
    pub(crate) attempt: u32,
    pub(crate) cancellation: CancellationToken,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) item_id: u64,
    pub(crate) lock_token: u64,
    pub(crate) lease: Duration,
    pub(crate) heartbeat: Arc<Heartbeat>,
}

/// When an attempt last reported progress, for its heartbeat timeout.
pub(crate) struct Heartbeat {
    started: Instant,
    /// Milliseconds after `started` of the last heartbeat (0: none yet).
    last_ms: AtomicU64,
}

impl Heartbeat {
    pub(crate) fn new() -> Self {
        Self {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn beat(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Resolves when `limit` has passed since the last heartbeat (or the start).
    pub(crate) async fn expired(&self, limit: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = self.started + last + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

impl ActivityContext {
    /// The orchestration instance that scheduled this activity.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// The command id of this activity within its execution.
    pub fn activity_id(&self) -> u64 {
        self.activity_id
    }

    /// The registered name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// 1 for the first attempt, then 2, 3, ... (crash re-deliveries count too).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// True once the instance was cancelled or finished, the attempt timed out, or the lease was
    /// lost: the result will not be used, so the activity may stop early.
    pub fn is_cancelled(&self) -> bool {
        self.cancellation.is_cancelled()
    }

    /// Resolves when [`ActivityContext::is_cancelled`] becomes true.
    pub async fn cancelled(&self) {
        self.cancellation.cancelled().await
    }

    /// Reports that the attempt is making progress. An activity scheduled with a heartbeat
    /// timeout (`ActivityOptions::heartbeat_timeout`) must call it at least that often, or
    /// the attempt is cancelled and fails with code `activity_heartbeat_timed_out` (then
    /// retried by its policy): that catches an attempt that hangs long before its attempt
    /// timeout would. Cheap (an atomic store, no I/O); the lease is renewed separately.
    pub fn heartbeat(&self) {
        self.heartbeat.beat();
    }

    /// Extends the lease now. The runtime renews leases by itself every third of the lease;
    /// call this from long computations that block the renewal task's thread, or to learn early
    /// that the lease was lost. Returns whether the instance still wants the result.
    pub async fn renew_lease(&self) -> Result<bool, StoreError> {
        let still_wanted = self
            .store
            .renew_activity_lease(self.item_id, self.lock_token, self.lease)
            .await?;
        if !still_wanted {
            self.cancellation.cancel();
        }
        Ok(still_wanted)
    }
}
