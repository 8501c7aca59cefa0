//! Wake-ups across processes: LISTEN/NOTIFY on a channel named after the schema.
//!
//! NOTIFY is a hint, never a transport: everything it announces is already committed, and a
//! missed notification costs only latency (the runtime still polls, slowly). It is also
//! coalesced: a notifying commit takes a cluster-wide lock, so a process sends at most one
//! notification per [`NOTIFY_INTERVAL`], in a transaction of its own after the commits it
//! announces, carrying what kinds of work appeared and which instances finished.
//!
//! The listener has a connection of its own, checked every [`HEALTH_INTERVAL`] (a half-open
//! socket would otherwise leave it deaf without an error) and reopened with backoff when it
//! fails; after each (re)connection it wakes every local dispatcher once, in case something
//! was announced while it was away. A process ignores its own notifications (its commits wake
//! its dispatchers directly).

use deadpool_postgres::Pool;
use sluice_store::Signals;
use std::collections::BTreeSet;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_postgres::AsyncMessage;

/// At most one notification per process this often.
pub(crate) const NOTIFY_INTERVAL: Duration = Duration::from_millis(10);
/// How often the listener proves its connection alive.
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// How long the proof may take.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// Payloads stay under PostgreSQL's 8,000-byte limit; finished ids beyond this are sent as
/// "some finished" (every waiter re-reads its status).
const PAYLOAD_BYTES_MAX: usize = 7_000;

/// What a process has to announce.
#[derive(Default)]
struct Pending {
    orchestrations: bool,
    activities: bool,
    finished: BTreeSet<String>,
}

/// The announcing half: commits record what they made visible; a task sends it.
pub(crate) struct Announcer {
    pending: Mutex<Pending>,
    ready: Notify,
}

impl Announcer {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn orchestrations(&self) {
        self.pending().orchestrations = true;
        self.ready.notify_one();
    }

    pub(crate) fn activities(&self) {
        self.pending().activities = true;
        self.ready.notify_one();
    }

    pub(crate) fn finished(&self, instance_id: &str) {
        self.pending().finished.insert(instance_id.to_string());
        self.ready.notify_one();
    }
}

/// Listener health, for tests and metrics.
#[derive(Debug, Default)]
pub(crate) struct ListenerState {
    pub(crate) listening: AtomicBool,
}

/// The payload: `<origin> <kinds> [finished ids, tab-separated]`, kinds a subset of `o`
/// (orchestration work), `a` (activity work), `f` (the listed instances finished) and `F`
/// (more finished than fit: wake every waiter).
fn payload(origin: &str, pending: Pending) -> String {
    let mut kinds = String::new();
    if pending.orchestrations {
        kinds.push('o');
    }
    if pending.activities {
        kinds.push('a');
    }
    let mut ids = String::new();
    let mut overflow = false;
    for id in &pending.finished {
        if ids.len() + id.len() + 1 > PAYLOAD_BYTES_MAX || id.contains('\t') {
            overflow = true;
            break;
        }
        ids.push('\t');
        ids.push_str(id);
    }
    if !pending.finished.is_empty() {
        kinds.push(if overflow { 'F' } else { 'f' });
    }
    if overflow {
        ids.clear();
    }
    format!("{origin} {kinds}{ids}")
}

fn apply(payload: &str, origin: &str, signals: &Signals) {
    let Some((from, rest)) = payload.split_once(' ') else {
        return;
    };
    if from == origin {
        return;
    }
    let (kinds, ids) = rest.split_once('\t').unwrap_or((rest, ""));
    if kinds.contains('o') {
        signals.orchestrations.notify_one();
    }
    if kinds.contains('a') {
        signals.activities.notify_one();
    }
    if kinds.contains('F') {
        signals.notify_all_finished();
    } else if kinds.contains('f') {
        for id in ids.split('\t').filter(|id| !id.is_empty()) {
            signals.notify_finished(id);
        }
    }
}

/// A name for this process's notifications.
pub(crate) fn origin() -> String {
    let seed = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
    format!("{seed:016x}")
}

pub(crate) fn announcer() -> Arc<Announcer> {
    Arc::new(Announcer {
        pending: Mutex::new(Pending::default()),
        ready: Notify::new(),
    })
}

/// Sends what the announcer collected, at most once per [`NOTIFY_INTERVAL`], until aborted.
pub(crate) async fn announce(
    pool: Pool,
    channel: String,
    origin: String,
    announcer: Arc<Announcer>,
) {
    loop {
        announcer.ready.notified().await;
        let pending = std::mem::take(&mut *announcer.pending());
        if !pending.orchestrations && !pending.activities && pending.finished.is_empty() {
            continue;
        }
        let text = payload(&origin, pending);
        let sent = match pool.get().await {
            Ok(client) => client
                .execute("SELECT pg_notify($1, $2)", &[&channel, &text])
                .await
                .map(|_| ())
                .map_err(|error| error.to_string()),
            Err(error) => Err(error.to_string()),
        };
        if let Err(error) = sent {
            // Only latency is lost: the other processes poll.
            tracing::debug!(%error, "sending a wake-up notification failed");
        }
        tokio::time::sleep(NOTIFY_INTERVAL).await;
    }
}

/// Listens on `channel` and wakes this process's dispatchers and waiters, reconnecting with
/// backoff, until aborted.
pub(crate) async fn listen(
    connect: sluice_postgres::ConnectOptions,
    config: tokio_postgres::Config,
    channel: String,
    origin: String,
    signals: Arc<Signals>,
    state: Arc<ListenerState>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match listen_once(&connect, &config, &channel, &origin, &signals, &state).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(error) => {
                tracing::warn!(%error, ?backoff, "the wake-up listener lost its connection; reconnecting (the runtime polls meanwhile)");
            }
        }
        state.listening.store(false, Ordering::SeqCst);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn listen_once(
    connect: &sluice_postgres::ConnectOptions,
    config: &tokio_postgres::Config,
    channel: &str,
    origin: &str,
    signals: &Signals,
    state: &ListenerState,
) -> Result<(), String> {
    let (client, mut connection) = config
        .connect(connect.tls())
        .await
        .map_err(|error| connect.connect_failure(&error).to_string())?;
    let (sender, mut notifications) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(notification)) => {
                    if sender.send(notification.payload().to_string()).is_err() {
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(error) => return Err(error.to_string()),
            }
        }
        Ok(())
    });
    let _driver = AbortOnDrop(driver.abort_handle());
    let quoted = format!("\"{}\"", channel.replace('"', "\"\""));
    client
        .batch_execute(&format!("LISTEN {quoted}"))
        .await
        .map_err(|e| e.to_string())?;
    state.listening.store(true, Ordering::SeqCst);
    // Anything announced while this process was not listening: look once.
    signals.orchestrations.notify_one();
    signals.activities.notify_one();
    signals.notify_all_finished();
    loop {
        tokio::select! {
            received = notifications.recv() => match received {
                Some(text) => apply(&text, origin, signals),
                None => return Err("the listener's connection closed".into()),
            },
            () = tokio::time::sleep(HEALTH_INTERVAL) => {
                match tokio::time::timeout(HEALTH_TIMEOUT, client.simple_query("SELECT 1")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => return Err(error.to_string()),
                    Err(_) => return Err(format!("no answer to a health check within {HEALTH_TIMEOUT:?}")),
                }
            }
        }
    }
}

/// Aborts a task when dropped.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_skip_their_origin() {
        let signals = Signals::default();
        let mut pending = Pending {
            orchestrations: true,
            ..Pending::default()
        };
        pending.finished.insert("a".into());
        pending.finished.insert("b".into());
        let text = payload("me", pending);
        assert_eq!(text, "me of\ta\tb");
        apply(&text, "me", &signals); // its own: ignored
        let waiter = signals.finished_notifier("b");
        let notified = waiter.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        apply(&text, "other", &signals);
        assert!(futures_now(notified.as_mut()));
    }

    #[test]
    fn too_many_finished_ids_become_a_broadcast() {
        let mut pending = Pending::default();
        for i in 0..2_000 {
            pending.finished.insert(format!("instance-{i}"));
        }
        let text = payload("me", pending);
        assert_eq!(text, "me F");
    }

    fn futures_now(future: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        std::future::Future::poll(future, &mut cx).is_ready()
    }
}
