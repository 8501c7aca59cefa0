use crate::error::ClientError;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sluice_history::{Event, InstanceStatus, Message};
use sluice_replay::queue_event_name;
use sluice_store::bulk::{BulkOutcome, BulkRequest};
use sluice_store::{ChildPolicy, InstanceInfo, NewInstance, OperatorRequest, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Whether a start created the instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartOutcome {
    /// A new instance was created.
    Created,
    /// An instance with this id existed already; nothing changed.
    AlreadyExists,
}

/// Starts, signals, cancels, waits for and inspects instances. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    store: Arc<dyn Store>,
    poll_interval: Duration,
}

fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<String, ClientError> {
    serde_json::to_string(value).map_err(|error| ClientError::Serde(error.to_string()))
}

impl Client {
    /// A client on `store`. `poll_interval` bounds how late a wait notices an instance finished
    /// by another process (same-process finishes wake it at once).
    pub fn new(store: Arc<dyn Store>, poll_interval: Duration) -> Self {
        Self {
            store,
            poll_interval,
        }
    }

    /// Starts `name` as `instance_id` with `input`. Idempotent: starting an existing id changes
    /// nothing and reports [`StartOutcome::AlreadyExists`].
    pub async fn start(
        &self,
        name: &str,
        instance_id: &str,
        input: impl Into<String>,
    ) -> Result<StartOutcome, ClientError> {
        self.create(name, instance_id, input.into(), None).await
    }

    /// [`Client::start`] on version `version` of the orchestration's code (see
    /// `Registry::orchestration_version`); without it, a start takes the newest version
    /// registered in the process that runs its first turn.
    pub async fn start_version(
        &self,
        name: &str,
        version: u32,
        instance_id: &str,
        input: impl Into<String>,
    ) -> Result<StartOutcome, ClientError> {
        self.create(name, instance_id, input.into(), Some(version))
            .await
    }

    async fn create(
        &self,
        name: &str,
        instance_id: &str,
        input: String,
        version: Option<u32>,
    ) -> Result<StartOutcome, ClientError> {
        let created = self
            .store
            .create_instance(NewInstance {
                instance_id: instance_id.to_string(),
                name: name.to_string(),
                input,
                parent: None,
                version,
            })
            .await?;
        Ok(if created {
            StartOutcome::Created
        } else {
            StartOutcome::AlreadyExists
        })
    }

    /// [`Client::start`] with a serde-typed input.
    pub async fn start_typed<I: Serialize + ?Sized>(
        &self,
        name: &str,
        instance_id: &str,
        input: &I,
    ) -> Result<StartOutcome, ClientError> {
        self.start(name, instance_id, to_json(input)?).await
    }

    /// Raises the event `event_name` on a running instance. The event is kept until the code
    /// waits for it. Errors if the instance does not exist or has finished.
    pub async fn raise_event(
        &self,
        instance_id: &str,
        event_name: &str,
        data: impl Into<String>,
    ) -> Result<(), ClientError> {
        let message = Message::Event {
            name: event_name.to_string(),
            data: data.into(),
        };
        self.store
            .enqueue_message(instance_id, message, None)
            .await
            .map_err(not_found)
    }

    /// [`Client::raise_event`] with a serde-typed payload (JSON), for `ctx.event::<T>(name)`.
    pub async fn raise_event_typed<T: Serialize + ?Sized>(
        &self,
        instance_id: &str,
        event_name: &str,
        data: &T,
    ) -> Result<(), ClientError> {
        self.raise_event(instance_id, event_name, to_json(data)?)
            .await
    }

    /// [`Client::enqueue_event`] with a serde-typed message (JSON), for `ctx.dequeue::<T>`.
    pub async fn enqueue_event_typed<T: Serialize + ?Sized>(
        &self,
        instance_id: &str,
        queue: &str,
        data: &T,
    ) -> Result<(), ClientError> {
        self.enqueue_event(instance_id, queue, to_json(data)?).await
    }

    /// Appends a message to the instance's durable FIFO queue `queue` (read with
    /// `dequeue_event`).
    pub async fn enqueue_event(
        &self,
        instance_id: &str,
        queue: &str,
        data: impl Into<String>,
    ) -> Result<(), ClientError> {
        self.raise_event(instance_id, &queue_event_name(queue), data)
            .await
    }

    /// Raises an event, first starting the instance (as `name` with `input`) if it does not
    /// exist, atomically.
    pub async fn signal_with_start(
        &self,
        name: &str,
        instance_id: &str,
        input: impl Into<String>,
        event_name: &str,
        data: impl Into<String>,
    ) -> Result<(), ClientError> {
        let start = NewInstance {
            instance_id: instance_id.to_string(),
            name: name.to_string(),
            input: input.into(),
            parent: None,
            version: None,
        };
        let message = Message::Event {
            name: event_name.to_string(),
            data: data.into(),
        };
        Ok(self
            .store
            .enqueue_message(instance_id, message, Some(start))
            .await?)
    }

    /// Cancels an instance and, through it, its awaited sub-orchestrations.
    pub async fn cancel(&self, instance_id: &str, reason: &str) -> Result<(), ClientError> {
        self.send_cancel(instance_id, reason, None).await
    }

    /// [`Client::cancel`], recording who asks in the instance's history.
    pub async fn cancel_as(
        &self,
        instance_id: &str,
        reason: &str,
        requested_by: &str,
    ) -> Result<(), ClientError> {
        self.send_cancel(instance_id, reason, Some(requested_by.to_string()))
            .await
    }

    async fn send_cancel(
        &self,
        instance_id: &str,
        reason: &str,
        requested_by: Option<String>,
    ) -> Result<(), ClientError> {
        let message = Message::Cancel {
            reason: reason.to_string(),
            requested_by,
        };
        self.store
            .enqueue_message(instance_id, message, None)
            .await
            .map_err(not_found)
    }

    /// Terminates an unfinished instance at once, without running its code (no compensation):
    /// it ends `terminated`, with the reason and who asked in its history; whoever runs its
    /// turn is fenced off. Its unfinished children follow `children`. Returns the ids
    /// terminated, this instance first.
    pub async fn terminate(
        &self,
        instance_id: &str,
        reason: &str,
        requested_by: &str,
        children: ChildPolicy,
    ) -> Result<Vec<String>, ClientError> {
        let request = operator_request(instance_id, reason, requested_by);
        self.store
            .terminate_instance(&request, children)
            .await
            .map_err(not_found)
    }

    /// Suspends a pending or running instance: it keeps receiving events and results, and
    /// its activities run on, but no turn runs until [`Client::resume`]. `Ok(false)` when it
    /// was suspended already.
    pub async fn suspend(
        &self,
        instance_id: &str,
        reason: &str,
        requested_by: &str,
    ) -> Result<bool, ClientError> {
        let request = operator_request(instance_id, reason, requested_by);
        self.store
            .suspend_instance(&request)
            .await
            .map_err(not_found)
    }

    /// Resumes a suspended instance; what arrived meanwhile is its next turn. `Ok(false)` when
    /// it was not suspended.
    pub async fn resume(
        &self,
        instance_id: &str,
        reason: &str,
        requested_by: &str,
    ) -> Result<bool, ClientError> {
        let request = operator_request(instance_id, reason, requested_by);
        self.store
            .resume_instance(&request)
            .await
            .map_err(not_found)
    }

    /// Puts a quarantined instance back in service, its messages delivered again with fresh
    /// delivery counts. `Ok(false)` when it was not quarantined.
    pub async fn retry(
        &self,
        instance_id: &str,
        reason: &str,
        requested_by: &str,
    ) -> Result<bool, ClientError> {
        let request = operator_request(instance_id, reason, requested_by);
        self.store.retry_instance(&request).await.map_err(not_found)
    }

    /// Fails a quarantined instance for good (code `discarded`, the reason as its message).
    pub async fn discard(
        &self,
        instance_id: &str,
        reason: &str,
        requested_by: &str,
    ) -> Result<(), ClientError> {
        let request = operator_request(instance_id, reason, requested_by);
        self.store
            .discard_instance(&request)
            .await
            .map_err(not_found)
    }

    /// Starts a finished instance again from its input (or `input`): under the same id as a
    /// new execution, or as the new instance `as_instance` (then the original may be in any
    /// status). Recorded in the ended execution's history. Returns the id and execution that
    /// run now.
    pub async fn restart(
        &self,
        instance_id: &str,
        reason: &str,
        requested_by: &str,
        as_instance: Option<&str>,
        input: Option<&str>,
    ) -> Result<(String, u64), ClientError> {
        let request = operator_request(instance_id, reason, requested_by);
        let restarted = self
            .store
            .restart_instance(&request, as_instance, input)
            .await
            .map_err(not_found)?;
        self.store.signals().orchestrations.notify_one();
        Ok(restarted)
    }

    /// Rewinds a failed instance to before its last failure and runs it on: the failed
    /// activity (or sub-orchestration, rewound too, or the turn whose code failed) runs again
    /// in a new execution that keeps the rest of the history. Returns the new execution and the
    /// ids rewound. See [`sluice_store::repair`].
    pub async fn rewind(
        &self,
        instance_id: &str,
        reason: &str,
        requested_by: &str,
    ) -> Result<(u64, Vec<String>), ClientError> {
        let request = operator_request(instance_id, reason, requested_by);
        let rewound = self
            .store
            .rewind_instance(&request)
            .await
            .map_err(not_found)?;
        self.store.signals().orchestrations.notify_one();
        self.store.signals().activities.notify_one();
        Ok(rewound)
    }

    /// An action on every instance a filter selects. Unconfirmed (the default of
    /// [`BulkRequest::new`]) it is a dry run that answers how many match and a sample, and
    /// changes nothing; confirmed, it acts on each, recording the request in each history.
    /// See [`sluice_store::bulk`].
    pub async fn bulk(&self, request: &BulkRequest) -> Result<BulkOutcome, ClientError> {
        sluice_store::bulk::run_bulk(self.store.as_ref(), request, |_| {})
            .await
            .map_err(not_found)
    }

    /// The instance's status, output or failure, and custom status.
    pub async fn status(&self, instance_id: &str) -> Result<Option<InstanceInfo>, ClientError> {
        Ok(self.store.instance(instance_id).await?)
    }

    /// The history of the instance's current execution.
    pub async fn history(&self, instance_id: &str) -> Result<Vec<Event>, ClientError> {
        let info = self
            .store
            .instance(instance_id)
            .await?
            .ok_or_else(|| ClientError::NotFound(instance_id.to_string()))?;
        Ok(self
            .store
            .read_history(instance_id, info.execution_id, 0)
            .await?)
    }

    /// The history of one execution (1 is the first; continue-as-new adds one).
    pub async fn execution_history(
        &self,
        instance_id: &str,
        execution_id: u64,
    ) -> Result<Vec<Event>, ClientError> {
        Ok(self
            .store
            .read_history(instance_id, execution_id, 0)
            .await?)
    }

    /// Waits until the instance has finished (completed, failed or cancelled), woken by the
    /// commit that finishes it when that happens in this process.
    pub async fn wait_for_completion(
        &self,
        instance_id: &str,
        timeout: Duration,
    ) -> Result<InstanceInfo, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            let notify = self.store.signals().finished_notifier(instance_id);
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let info = self
                .store
                .instance(instance_id)
                .await?
                .ok_or_else(|| ClientError::NotFound(instance_id.to_string()))?;
            if info.status.is_terminal() {
                return Ok(info);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout(instance_id.to_string()));
            }
            let wait = (deadline - now).min(self.poll_interval);
            let _ = tokio::time::timeout(wait, notified).await;
        }
    }

    /// Waits for completion and decodes the output; a failed or cancelled instance is an error.
    pub async fn wait_for_output<O: DeserializeOwned>(
        &self,
        instance_id: &str,
        timeout: Duration,
    ) -> Result<O, ClientError> {
        let info = self.wait_for_completion(instance_id, timeout).await?;
        match info.status {
            InstanceStatus::Completed => {
                serde_json::from_str(info.output.as_deref().unwrap_or("null"))
                    .map_err(|error| ClientError::Serde(error.to_string()))
            }
            _ => Err(ClientError::Failed(info.failure.unwrap_or_else(|| {
                sluice_history::Failure::new(
                    "unknown",
                    format!("instance is {}", info.status.as_str()),
                )
            }))),
        }
    }
}

fn operator_request(instance_id: &str, reason: &str, requested_by: &str) -> OperatorRequest {
    OperatorRequest {
        instance_id: instance_id.to_string(),
        reason: reason.to_string(),
        requested_by: requested_by.to_string(),
    }
}

fn not_found(error: sluice_store::StoreError) -> ClientError {
    match error {
        sluice_store::StoreError::InstanceNotFound(id) => ClientError::NotFound(id),
        other => ClientError::Store(other),
    }
}
