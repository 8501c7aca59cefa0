//! Group commit: the turn commits and instance starts this process has ready are committed
//! together in one transaction of two round trips, with a fixed number of statements whatever
//! the group's size, so that at saturation many turns share one `COMMIT` (one WAL flush) and
//! the server parses, plans and starts a handful of statements per group, not per turn.
//!
//! 1. `BEGIN` and one `SELECT ... FOR UPDATE` of every instance in the group (in id order, so
//!    two processes never lock in opposite orders). The rows stay locked until the end, so what
//!    the check read decides each turn: a turn whose lease was lost (`lock_token`, and
//!    `locked_until_ms` against the database clock) or that breaks the contract (execution,
//!    history position) answers with its error and writes nothing.
//! 2. The writes of the valid turns, each kind one statement over arrays (`unnest`): history,
//!    consumed messages, new and completed activities, timers, messages, restarts, the
//!    instance rows last; then `COMMIT`, pipelined with them.
//!
//! If a statement fails nevertheless (a constraint, a deadlock, the connection), the whole group
//! is rolled back and each request is committed alone, so one bad turn answers for itself only.

use crate::store::prepared;
use deadpool_postgres::{GenericClient, Object};
use sluice_history::{Failure, InstanceStatus, Message, codes};
use sluice_store::stored::encode;
use sluice_store::{ActivityWorkItem, NewActivity, NewInstance, Outbound, StoreError, TurnCommit};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement};

/// Requests committed in one transaction at most.
pub(crate) const GROUP_REQUESTS_MAX: usize = 256;
/// Requests waiting for the committer at most (senders wait beyond: back-pressure).
pub(crate) const QUEUE_REQUESTS_MAX: usize = 1_024;

/// What a commit changed, for the wake-ups sent after it.
pub(crate) struct CommitEffects {
    pub(crate) inbox_changed: bool,
    pub(crate) activities_added: bool,
    pub(crate) finished: bool,
    pub(crate) claimed: Vec<ActivityWorkItem>,
}

/// What the committer does: a turn's commit or an instance's start. `now` is the forced time
/// (a test clock) or `None` for the database's clock.
pub(crate) enum Request {
    Turn {
        commit: Box<TurnCommit>,
        now: Option<i64>,
        reply: oneshot::Sender<Result<CommitEffects, StoreError>>,
    },
    Create {
        start: NewInstance,
        now: Option<i64>,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
}

impl Request {
    fn now(&self) -> Option<i64> {
        match self {
            Request::Turn { now, .. } | Request::Create { now, .. } => *now,
        }
    }

    fn fail(self, error: StoreError) {
        match self {
            Request::Turn { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            Request::Create { reply, .. } => {
                let _ = reply.send(Err(error));
            }
        }
    }
}

/// The group's statements. `{s}` is the schema; `$1` is the forced time (`NULL`: the
/// database's clock) wherever the time matters.
pub(crate) struct GroupSql {
    check: String,
    create: String,
    history: String,
    consumed: String,
    activities: String,
    completed: String,
    timers: String,
    child: String,
    messages: String,
    ended: String,
    restarts: String,
    unheld: String,
    cancelled: String,
    future: String,
    update: String,
}

impl GroupSql {
    pub(crate) fn new(s: &str) -> Self {
        let sql = |text: &str| {
            text.replace("{due_now}", crate::store::DUE_NOW)
                .replace("{s}", s)
        };
        GroupSql {
            check: sql("SELECT instance_id, execution_id, history_len, lock_token,
                        COALESCE(locked_until_ms > {s}.now_ms($1), false)
                 FROM {s}.instances WHERE instance_id = ANY($2::text[])
                 ORDER BY instance_id FOR UPDATE"),
            // Ids are distinct within a group (the committer answers duplicates itself).
            create: sql("WITH wanted AS (
                    SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
                        AS u(instance_id, name, input, message, parent_id)),
                 created AS (
                    INSERT INTO {s}.instances (instance_id, name, status, execution_id, input, created_at_ms, updated_at_ms, due_at_ms, parent_id)
                    SELECT instance_id, name, 'pending', 1, input, {s}.now_ms($1), {s}.now_ms($1), {s}.now_ms($1), parent_id FROM wanted
                    ON CONFLICT (instance_id) DO NOTHING RETURNING instance_id)
                 INSERT INTO {s}.inbox (instance_id, visible_at_ms, message)
                 SELECT w.instance_id, {s}.now_ms($1), w.message
                 FROM created c JOIN wanted w USING (instance_id) RETURNING instance_id"),
            history: sql("INSERT INTO {s}.history (instance_id, execution_id, position, event)
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[])"),
            consumed: sql("DELETE FROM {s}.inbox WHERE message_id = ANY($1::bigint[])"),
            activities: sql("INSERT INTO {s}.activities (instance_id, execution_id, activity_id, name, input, retry, visible_at_ms, attempt, lock_token, task_queue)
                 SELECT a.instance_id, a.execution_id, a.activity_id, a.name, a.input, a.retry,
                        {s}.now_ms($1) + COALESCE(a.lease_ms, 0),
                        CASE WHEN a.lease_ms IS NULL THEN 0 ELSE 1 END,
                        CASE WHEN a.lease_ms IS NULL THEN NULL ELSE a.lock_token END,
                        a.task_queue
                 FROM unnest($2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::text[],
                             $7::text[], $8::bigint[], $9::bigint[], $10::text[])
                      AS a(instance_id, execution_id, activity_id, name, input, retry, lease_ms, lock_token, task_queue)
                 RETURNING item_id, instance_id, activity_id, lock_token IS NOT NULL"),
            // By primary key, each item with its own token; an item whose lease was lost is
            // left to its new holder.
            completed: sql("DELETE FROM {s}.activities a
                 USING unnest($2::bigint[], $3::bigint[]) AS c(item_id, lock_token)
                 WHERE a.item_id = ANY($2::bigint[]) AND a.item_id = c.item_id
                   AND a.lock_token = c.lock_token AND a.visible_at_ms > {s}.now_ms($1)"),
            timers: sql("INSERT INTO {s}.inbox (instance_id, visible_at_ms, message)
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[])"),
            // A child's start: created with its start message, or, when the id is taken and the
            // start has a parent, a failure for the parent (if it is alive).
            child: sql("WITH created AS (
                    INSERT INTO {s}.instances (instance_id, name, status, execution_id, input, created_at_ms, updated_at_ms, due_at_ms, parent_id)
                    VALUES ($2, $3, 'pending', 1, $4, {s}.now_ms($1), {s}.now_ms($1), {s}.now_ms($1), $6::text)
                    ON CONFLICT (instance_id) DO NOTHING RETURNING instance_id),
                 started AS (
                    INSERT INTO {s}.inbox (instance_id, visible_at_ms, message)
                    SELECT instance_id, {s}.now_ms($1), $5 FROM created RETURNING instance_id),
                 refused AS (
                    INSERT INTO {s}.inbox (instance_id, visible_at_ms, message)
                    SELECT $6::text, {s}.now_ms($1), $7::text
                    WHERE $6::text IS NOT NULL AND NOT EXISTS (SELECT 1 FROM created)
                      AND EXISTS (SELECT 1 FROM {s}.instances
                                  WHERE instance_id = $6::text AND status IN ('pending', 'running', 'quarantined', 'suspended'))
                    RETURNING instance_id),
                 due AS (
                    UPDATE {s}.instances t SET due_at_ms = {due_now}
                    FROM refused WHERE t.instance_id = refused.instance_id AND t.status NOT IN ('quarantined', 'suspended'))
                 SELECT instance_id FROM started UNION ALL SELECT instance_id FROM refused"),
            // The targets' rows were locked by the check (in id order with the group's own).
            messages: sql("WITH sent AS (
                    INSERT INTO {s}.inbox (instance_id, visible_at_ms, message)
                    SELECT m.instance_id, {s}.now_ms($1), m.message
                    FROM unnest($2::text[], $3::text[]) AS m(instance_id, message)
                    WHERE EXISTS (SELECT 1 FROM {s}.instances t WHERE t.instance_id = m.instance_id
                                  AND t.status IN ('pending', 'running', 'quarantined', 'suspended'))
                    RETURNING instance_id),
                 due AS (
                    UPDATE {s}.instances t SET due_at_ms = {due_now}
                    WHERE t.instance_id IN (SELECT instance_id FROM sent) AND t.status NOT IN ('quarantined', 'suspended'))
                 SELECT instance_id FROM sent"),
            // The executions that continue as new keep their times (before the update below).
            ended: sql("INSERT INTO {s}.executions (instance_id, execution_id, started_at_ms, finished_at_ms, history_len)
                 SELECT i.instance_id, i.execution_id, i.started_at_ms, {s}.now_ms($1), e.history_len
                 FROM unnest($2::text[], $3::bigint[]) AS e(instance_id, history_len)
                 JOIN {s}.instances i ON i.instance_id = e.instance_id"),
            restarts: sql("INSERT INTO {s}.inbox (instance_id, visible_at_ms, message)
                 SELECT r.instance_id, {s}.now_ms($1), r.message
                 FROM unnest($2::text[], $3::text[]) AS r(instance_id, message)"),
            unheld: sql("DELETE FROM {s}.activities WHERE instance_id = ANY($2::text[])
                 AND (lock_token IS NULL OR visible_at_ms <= {s}.now_ms($1))"),
            cancelled: sql("DELETE FROM {s}.activities a
                 USING unnest($1::text[], $2::bigint[], $3::bigint[]) AS c(instance_id, execution_id, activity_id)
                 WHERE a.instance_id = ANY($1::text[]) AND a.instance_id = c.instance_id
                   AND a.execution_id = c.execution_id AND a.activity_id = c.activity_id"),
            future: sql("DELETE FROM {s}.inbox WHERE instance_id = ANY($2::text[])
                 AND visible_at_ms > {s}.now_ms($1)"),
            // Last of the writes: it moves the history position, ends the lease, takes the
            // delivery count with the consumed messages, and sets when the instance is next
            // due from what the inbox still holds (this transaction's timers and restarts
            // included); it answers which instances are due at once.
            update: sql("UPDATE {s}.instances i SET
                    status = COALESCE(u.status, i.status),
                    output = COALESCE(u.output, i.output),
                    failure = COALESCE(u.failure, i.failure),
                    custom_status = COALESCE(u.custom_status, i.custom_status),
                    execution_id = u.execution_id,
                    input = COALESCE(u.input, i.input),
                    history_len = u.history_len,
                    locked_until_ms = NULL,
                    deliveries = 0,
                    due_at_ms = CASE WHEN u.finished OR COALESCE(u.status, i.status) IN ('quarantined', 'suspended') THEN NULL
                        ELSE (SELECT min(m.visible_at_ms) FROM {s}.inbox m WHERE m.instance_id = i.instance_id) END,
                    started_at_ms = CASE WHEN i.execution_id <> u.execution_id THEN {s}.now_ms($1)
                        WHEN i.started_at_ms IS NULL AND COALESCE(u.status, i.status) <> 'pending' THEN {s}.now_ms($1)
                        ELSE i.started_at_ms END,
                    finished_at_ms = CASE WHEN COALESCE(u.status, i.status) IN ('completed', 'failed', 'cancelled', 'terminated')
                        THEN COALESCE(i.finished_at_ms, {s}.now_ms($1)) END,
                    updated_at_ms = CASE WHEN i.status IS DISTINCT FROM COALESCE(u.status, i.status)
                        OR u.output IS NOT NULL OR u.failure IS NOT NULL
                        OR i.custom_status IS DISTINCT FROM COALESCE(u.custom_status, i.custom_status)
                        OR i.execution_id <> u.execution_id THEN {s}.now_ms($1) ELSE i.updated_at_ms END
                 FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                             $7::bigint[], $8::text[], $9::bigint[], $10::bool[])
                      AS u(instance_id, status, output, failure, custom_status, execution_id, input, history_len, finished)
                 WHERE i.instance_id = ANY($2::text[]) AND i.instance_id = u.instance_id
                 RETURNING i.instance_id, i.due_at_ms <= {s}.now_ms($1)"),
        }
    }
}

/// The statements, prepared on one connection.
struct Prepared {
    check: Statement,
    create: Statement,
    history: Statement,
    consumed: Statement,
    activities: Statement,
    completed: Statement,
    timers: Statement,
    child: Statement,
    messages: Statement,
    ended: Statement,
    restarts: Statement,
    unheld: Statement,
    cancelled: Statement,
    future: Statement,
    update: Statement,
}

async fn prepare(
    client: &impl GenericClient,
    sql: &GroupSql,
) -> Result<Prepared, tokio_postgres::Error> {
    Ok(Prepared {
        check: prepared(client, &sql.check).await?,
        create: prepared(client, &sql.create).await?,
        history: prepared(client, &sql.history).await?,
        consumed: prepared(client, &sql.consumed).await?,
        activities: prepared(client, &sql.activities).await?,
        completed: prepared(client, &sql.completed).await?,
        timers: prepared(client, &sql.timers).await?,
        child: prepared(client, &sql.child).await?,
        messages: prepared(client, &sql.messages).await?,
        ended: prepared(client, &sql.ended).await?,
        restarts: prepared(client, &sql.restarts).await?,
        unheld: prepared(client, &sql.unheld).await?,
        cancelled: prepared(client, &sql.cancelled).await?,
        future: prepared(client, &sql.future).await?,
        update: prepared(client, &sql.update).await?,
    })
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// What the check read of one instance.
struct Checked {
    execution_id: i64,
    history_len: i64,
    lock_token: Option<i64>,
    lease_running: bool,
}

/// Whether a turn may write, judged on its instance's locked row.
fn judge(commit: &TurnCommit, checked: Option<&Checked>) -> Result<(), StoreError> {
    let Some(checked) = checked else {
        return Err(StoreError::InstanceNotFound(commit.instance_id.clone()));
    };
    if checked.lock_token != Some(to_i64(commit.lock_token)) || !checked.lease_running {
        return Err(StoreError::LeaseLost("instance"));
    }
    if checked.execution_id != to_i64(commit.execution_id) {
        return Err(StoreError::Contract(format!(
            "commit for execution {} but the instance is at execution {}",
            commit.execution_id, checked.execution_id
        )));
    }
    if checked.history_len != to_i64(commit.history_from) {
        return Err(StoreError::Contract(format!(
            "history append at position {} but the history has {} events",
            commit.history_from, checked.history_len
        )));
    }
    Ok(())
}

/// A child start: the child, its start message, and the parent's refusal message if any.
struct Start<'c> {
    start: &'c NewInstance,
    message: String,
    parent: Option<&'c str>,
    refused: Option<String>,
}

impl<'c> Start<'c> {
    fn new(start: &'c NewInstance) -> Self {
        let refusal = start.parent.as_ref().map(|parent| {
            let message = Message::SubOrchestrationFailed {
                execution_id: parent.execution_id,
                id: parent.id,
                failure: Failure::new(
                    codes::INSTANCE_EXISTS,
                    format!("instance '{}' already exists", start.instance_id),
                ),
            };
            (parent.instance_id.as_str(), encode(&message))
        });
        Start {
            start,
            message: encode(&start.start_message()),
            parent: refusal.as_ref().map(|(parent, _)| *parent),
            refused: refusal.map(|(_, message)| message),
        }
    }
}

/// The starts of one group, one array per column of the create statement.
#[derive(Default)]
struct CreateColumns<'c> {
    ids: Vec<&'c str>,
    names: Vec<&'c str>,
    inputs: Vec<&'c str>,
    messages: Vec<String>,
    parents: Vec<Option<&'c str>>,
}

/// Everything the group's write statements bind: one array per column, over the valid turns.
#[derive(Default)]
struct Columns<'c> {
    // history
    history_ids: Vec<&'c str>,
    history_executions: Vec<i64>,
    history_positions: Vec<i64>,
    history_events: Vec<String>,
    consumed: Vec<i64>,
    // new activities
    activity_instances: Vec<&'c str>,
    activity_executions: Vec<i64>,
    activity_ids: Vec<i64>,
    activity_names: Vec<&'c str>,
    activity_inputs: Vec<&'c str>,
    activity_retries: Vec<Option<String>>,
    activity_leases: Vec<Option<i64>>,
    activity_tokens: Vec<i64>,
    activity_queues: Vec<Option<&'c str>>,
    // completed activities
    completed_items: Vec<i64>,
    completed_tokens: Vec<i64>,
    // timers
    timer_ids: Vec<&'c str>,
    timer_ats: Vec<i64>,
    timer_messages: Vec<String>,
    starts: Vec<Start<'c>>,
    message_targets: Vec<&'c str>,
    message_texts: Vec<String>,
    restart_ids: Vec<&'c str>,
    ended_lens: Vec<i64>,
    restart_messages: Vec<String>,
    unheld: Vec<&'c str>,
    cancelled_instances: Vec<&'c str>,
    cancelled_executions: Vec<i64>,
    cancelled_ids: Vec<i64>,
    finished: Vec<&'c str>,
    // instance rows
    ids: Vec<&'c str>,
    statuses: Vec<Option<&'static str>>,
    outputs: Vec<Option<&'c str>>,
    failures: Vec<Option<String>>,
    custom_statuses: Vec<Option<&'c str>>,
    executions: Vec<i64>,
    inputs: Vec<Option<&'c str>>,
    history_lens: Vec<i64>,
    finished_flags: Vec<bool>,
}

impl<'c> Columns<'c> {
    fn add(&mut self, commit: &'c TurnCommit) {
        let id = commit.instance_id.as_str();
        let execution = to_i64(commit.execution_id);
        let from = to_i64(commit.history_from);
        for (offset, event) in (0_i64..).zip(&commit.append) {
            self.history_ids.push(id);
            self.history_executions.push(execution);
            self.history_positions.push(from.saturating_add(offset));
            self.history_events.push(encode(event));
        }
        self.consumed
            .extend(commit.consumed.iter().map(|id| to_i64(*id)));
        let (claim_max, claim_lease) = commit.claim_activities.unwrap_or_default();
        let claim_lease_ms = i64::try_from(claim_lease.as_millis()).unwrap_or(i64::MAX);
        for (index, activity) in commit.activities.iter().enumerate() {
            self.activity_instances.push(id);
            self.activity_executions.push(execution);
            self.activity_ids.push(to_i64(activity.activity_id));
            self.activity_names.push(&activity.name);
            self.activity_inputs.push(&activity.input);
            self.activity_retries
                .push(activity.retry.as_ref().map(encode));
            self.activity_leases
                .push((index < claim_max).then_some(claim_lease_ms));
            self.activity_tokens.push(to_i64(commit.lock_token));
            self.activity_queues.push(activity.task_queue.as_deref());
        }
        for (item, token) in &commit.completed_activities {
            self.completed_items.push(to_i64(*item));
            self.completed_tokens.push(to_i64(*token));
        }
        for activity_id in &commit.cancelled_activities {
            self.cancelled_instances.push(id);
            self.cancelled_executions.push(execution);
            self.cancelled_ids.push(to_i64(*activity_id));
        }
        for (at, message) in &commit.timers {
            self.timer_ids.push(id);
            self.timer_ats.push(*at);
            self.timer_messages.push(encode(message));
        }
        for outbound in &commit.outbound {
            match outbound {
                Outbound::Start(start) => self.starts.push(Start::new(start)),
                Outbound::Message {
                    instance_id,
                    message,
                } => {
                    self.message_targets.push(instance_id);
                    self.message_texts.push(encode(message));
                }
            }
        }
        if let Some(restart) = &commit.continue_as_new {
            self.restart_ids.push(id);
            let appended = i64::try_from(commit.append.len()).unwrap_or(i64::MAX);
            self.ended_lens.push(from.saturating_add(appended));
            self.restart_messages.push(encode(restart));
        }
        let finished = commit.status.is_some_and(InstanceStatus::is_terminal);
        if finished {
            // Work that can no longer matter, unless someone holds it: its holder's completion
            // then finds the instance finished.
            if commit.outstanding_activities {
                self.unheld.push(id);
            }
            self.finished.push(id);
        }
        let appended = i64::try_from(commit.append.len()).unwrap_or(i64::MAX);
        let (new_execution, new_len, new_input) = match &commit.continue_as_new {
            Some(Message::Start { input, .. }) => (execution + 1, 0, Some(input.as_str())),
            Some(_) => (execution + 1, 0, None),
            None => (execution, from.saturating_add(appended), None),
        };
        self.ids.push(id);
        self.statuses
            .push(commit.status.map(InstanceStatus::as_str));
        self.outputs.push(commit.output.as_deref());
        self.failures.push(commit.failure.as_ref().map(encode));
        self.custom_statuses.push(commit.custom_status.as_deref());
        self.executions.push(new_execution);
        self.inputs.push(new_input);
        self.history_lens.push(new_len);
        self.finished_flags.push(finished);
    }
}

type Rows = Result<Vec<Row>, tokio_postgres::Error>;
type Pending<'a> = Pin<Box<dyn Future<Output = Rows> + Send + 'a>>;

/// What the write phase returned, by statement.
#[derive(Default)]
struct Written {
    claimed: HashMap<String, Vec<(i64, i64)>>,
    delivered: bool,
    visible: HashSet<String>,
    created: HashSet<String>,
}

/// Turns a database error into the store's (redacted) error.
pub(crate) type Describe = dyn Fn(&tokio_postgres::Error) -> StoreError + Send + Sync;

/// The answers of one group, in request order.
enum Answer {
    Turn(Result<CommitEffects, StoreError>),
    Create(Result<bool, StoreError>),
}

/// Commits `requests` in one transaction. `Err` when the group as a whole failed (nothing of it
/// was committed, or its `COMMIT`'s outcome is unknown); otherwise one answer per request.
async fn commit_group(
    client: &Object,
    sql: &GroupSql,
    requests: &[Request],
    describe: &Describe,
) -> Result<Vec<Answer>, StoreError> {
    let statements = prepare(client, sql).await.map_err(|e| describe(&e))?;
    // One clock for the group when a test clock is in use (`None` otherwise).
    let now = requests.iter().map(Request::now).max().flatten();
    // Every instance the group's turns write: their own and those they send messages to.
    let mut locked_ids: Vec<&str> = Vec::new();
    for request in requests {
        if let Request::Turn { commit, .. } = request {
            locked_ids.push(&commit.instance_id);
            for outbound in &commit.outbound {
                match outbound {
                    Outbound::Message { instance_id, .. } => locked_ids.push(instance_id),
                    Outbound::Start(start) => {
                        if let Some(parent) = &start.parent {
                            locked_ids.push(&parent.instance_id);
                        }
                    }
                }
            }
        }
    }
    locked_ids.sort_unstable();
    locked_ids.dedup();
    // Phase 1: lock and read every instance the group's turns write, in id order (so two
    // processes never lock in opposite orders).
    let check_params: [&(dyn ToSql + Sync); 2] = [&now, &locked_ids];
    let (begun, checked) = tokio::join!(
        client.batch_execute("BEGIN"),
        client.query(&statements.check, &check_params),
    );
    let checked = match (begun, checked) {
        (Ok(()), Ok(rows)) => rows,
        (Err(error), _) | (_, Err(error)) => {
            let error = describe(&error);
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(error);
        }
    };
    let checked: HashMap<String, Checked> = checked
        .iter()
        .map(|row| {
            (
                row.get(0),
                Checked {
                    execution_id: row.get(1),
                    history_len: row.get(2),
                    lock_token: row.get(3),
                    lease_running: row.get(4),
                },
            )
        })
        .collect();
    // Phase 2: the valid turns' writes and the starts, then COMMIT.
    let mut verdicts = Vec::with_capacity(requests.len());
    let mut columns = Columns::default();
    let mut creates = CreateColumns::default();
    let mut seen_creates = HashSet::new();
    for request in requests {
        match request {
            Request::Turn { commit, .. } => {
                let verdict = judge(commit, checked.get(&commit.instance_id));
                if verdict.is_ok() {
                    columns.add(commit);
                }
                verdicts.push(verdict.map(|()| true));
            }
            Request::Create { start, .. } => {
                // A second start of the same id in one group is refused like a later one.
                let first = seen_creates.insert(start.instance_id.as_str());
                if first {
                    creates.ids.push(&start.instance_id);
                    creates.names.push(&start.name);
                    creates.inputs.push(&start.input);
                    creates.messages.push(encode(&start.start_message()));
                    creates.parents.push(
                        start
                            .parent
                            .as_ref()
                            .map(|parent| parent.instance_id.as_str()),
                    );
                }
                verdicts.push(Ok(first));
            }
        }
    }
    let c = &columns;
    let mut pipeline: Vec<Pending<'_>> = Vec::new();
    let mut slots = Slots::default();
    macro_rules! statement {
        ($slot:ident, $statement:ident, [$($param:expr),*]) => {{
            let params: Vec<&(dyn ToSql + Sync)> = vec![$($param),*];
            let statement = &statements.$statement;
            slots.$slot = Some(pipeline.len());
            pipeline.push(Box::pin(async move { client.query(statement, &params).await }));
        }};
    }
    if !creates.ids.is_empty() {
        statement!(
            create,
            create,
            [
                &now,
                &creates.ids,
                &creates.names,
                &creates.inputs,
                &creates.messages,
                &creates.parents
            ]
        );
    }
    if !c.history_ids.is_empty() {
        statement!(
            other,
            history,
            [
                &c.history_ids,
                &c.history_executions,
                &c.history_positions,
                &c.history_events
            ]
        );
    }
    if !c.consumed.is_empty() {
        statement!(other, consumed, [&c.consumed]);
    }
    if !c.activity_instances.is_empty() {
        statement!(
            activities,
            activities,
            [
                &now,
                &c.activity_instances,
                &c.activity_executions,
                &c.activity_ids,
                &c.activity_names,
                &c.activity_inputs,
                &c.activity_retries,
                &c.activity_leases,
                &c.activity_tokens,
                &c.activity_queues
            ]
        );
    }
    if !c.completed_items.is_empty() {
        statement!(
            other,
            completed,
            [&now, &c.completed_items, &c.completed_tokens]
        );
    }
    if !c.timer_ids.is_empty() {
        statement!(
            other,
            timers,
            [&c.timer_ids, &c.timer_ats, &c.timer_messages]
        );
    }
    let starts_from = pipeline.len();
    for start in &c.starts {
        statement!(
            other,
            child,
            [
                &now,
                &start.start.instance_id,
                &start.start.name,
                &start.start.input,
                &start.message,
                &start.parent,
                &start.refused
            ]
        );
    }
    let starts = starts_from..pipeline.len();
    if !c.message_targets.is_empty() {
        statement!(
            messages,
            messages,
            [&now, &c.message_targets, &c.message_texts]
        );
    }
    if !c.restart_ids.is_empty() {
        statement!(other, ended, [&now, &c.restart_ids, &c.ended_lens]);
        statement!(other, restarts, [&now, &c.restart_ids, &c.restart_messages]);
    }
    if !c.unheld.is_empty() {
        statement!(other, unheld, [&now, &c.unheld]);
    }
    if !c.cancelled_ids.is_empty() {
        statement!(
            other,
            cancelled,
            [
                &c.cancelled_instances,
                &c.cancelled_executions,
                &c.cancelled_ids
            ]
        );
    }
    if !c.finished.is_empty() {
        statement!(other, future, [&now, &c.finished]);
    }
    if !c.ids.is_empty() {
        statement!(
            update,
            update,
            [
                &now,
                &c.ids,
                &c.statuses,
                &c.outputs,
                &c.failures,
                &c.custom_statuses,
                &c.executions,
                &c.inputs,
                &c.history_lens,
                &c.finished_flags
            ]
        );
    }
    let (results, committed) = tokio::join!(
        futures_util::future::join_all(pipeline),
        client.batch_execute("COMMIT"),
    );
    // A failed statement aborts the transaction, and the pipelined COMMIT then rolls it back.
    if let Some(Err(error)) = results.iter().find(|result| result.is_err()) {
        return Err(describe(error));
    }
    committed.map_err(|e| describe(&e))?;
    let rows = |slot: Option<usize>| {
        slot.and_then(|index| results[index].as_ref().ok())
            .map(Vec::as_slice)
            .unwrap_or(&[])
    };
    let mut written = Written::default();
    for row in rows(slots.activities) {
        let (item_id, instance_id, activity_id, is_claimed): (i64, String, i64, bool) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        if is_claimed {
            written
                .claimed
                .entry(instance_id)
                .or_default()
                .push((item_id, activity_id));
        }
    }
    written.delivered = !rows(slots.messages).is_empty()
        || starts
            .clone()
            .any(|index| results[index].as_ref().is_ok_and(|rows| !rows.is_empty()));
    written.visible = rows(slots.update)
        .iter()
        .filter(|row| row.get::<_, Option<bool>>(1) == Some(true))
        .map(|row| row.get(0))
        .collect();
    written.created = rows(slots.create).iter().map(|row| row.get(0)).collect();
    Ok(requests
        .iter()
        .zip(verdicts)
        .map(|(request, verdict)| match request {
            Request::Turn { commit, .. } => {
                Answer::Turn(verdict.map(|_| effects(commit, &mut written)))
            }
            Request::Create { start, .. } => Answer::Create(
                verdict.map(|first| first && written.created.contains(&start.instance_id)),
            ),
        })
        .collect())
}

/// Where each statement's answers are among the pipeline's results.
#[derive(Default)]
struct Slots {
    create: Option<usize>,
    activities: Option<usize>,
    messages: Option<usize>,
    update: Option<usize>,
    /// Statements whose rows nobody reads.
    other: Option<usize>,
}

/// A committed turn's effects.
fn effects(commit: &TurnCommit, written: &mut Written) -> CommitEffects {
    let mut claimed = Vec::new();
    if let Some(items) = written.claimed.remove(&commit.instance_id) {
        let by_id: HashMap<u64, &NewActivity> = commit
            .activities
            .iter()
            .map(|a| (a.activity_id, a))
            .collect();
        for (item_id, activity_id) in items {
            if let Some(activity) = by_id.get(&to_u64(activity_id)) {
                claimed.push(ActivityWorkItem {
                    item_id: to_u64(item_id),
                    lock_token: commit.lock_token,
                    attempt: 1,
                    activity: (*activity).clone(),
                    unreadable: None,
                    orchestration: None,
                });
            }
        }
        claimed.sort_by_key(|item| item.item_id);
    }
    let sent = !commit.outbound.is_empty() && written.delivered;
    CommitEffects {
        inbox_changed: !commit.timers.is_empty()
            || sent
            || commit.continue_as_new.is_some()
            || written.visible.contains(&commit.instance_id),
        activities_added: commit.activities.len() > claimed.len(),
        finished: commit.status.is_some_and(InstanceStatus::is_terminal),
        claimed,
    }
}

fn answer(request: Request, answer: Answer) {
    match (request, answer) {
        (Request::Turn { reply, .. }, Answer::Turn(answer)) => {
            let _ = reply.send(answer);
        }
        (Request::Create { reply, .. }, Answer::Create(answer)) => {
            let _ = reply.send(answer);
        }
        (request, _) => request.fail(StoreError::Database(
            "the committer answered a request of another kind".into(),
        )),
    }
}

/// The committer task: takes the requests waiting, commits them as one group, answers each.
pub(crate) async fn committer(
    pool: deadpool_postgres::Pool,
    sql: std::sync::Arc<GroupSql>,
    mut queue: mpsc::Receiver<Request>,
    describe: Box<Describe>,
    pool_error: Box<dyn Fn(deadpool_postgres::PoolError) -> StoreError + Send + Sync>,
) {
    while let Some(first) = queue.recv().await {
        let mut group = vec![first];
        while group.len() < GROUP_REQUESTS_MAX {
            match queue.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let client = match pool.get().await {
            Ok(client) => client,
            Err(error) => {
                let error = pool_error(error).to_string();
                for request in group {
                    request.fail(StoreError::Database(error.clone()));
                }
                continue;
            }
        };
        match commit_group(&client, &sql, &group, &*describe).await {
            Ok(answers) => {
                for (request, reply) in group.into_iter().zip(answers) {
                    answer(request, reply);
                }
            }
            Err(group_error) if group.len() == 1 => {
                group.pop().expect("one").fail(group_error);
            }
            Err(_) => {
                // Each alone, so that the failing one answers for itself.
                for request in group {
                    let alone = [request];
                    match commit_group(&client, &sql, &alone, &*describe).await {
                        Ok(mut answers) => {
                            let [request] = alone;
                            answer(request, answers.pop().expect("one answer per request"));
                        }
                        Err(error) => {
                            let [request] = alone;
                            request.fail(error);
                        }
                    }
                }
            }
        }
    }
}
