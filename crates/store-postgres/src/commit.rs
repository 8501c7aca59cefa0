//! Group commit of turns: the turns this process has ready are committed together, in one
//! transaction with one round trip for all their statements (pipelined), so that at saturation
//! many turns share one `COMMIT` (and one WAL flush).
//!
//! Every write of a turn is guarded in SQL by its lease (`lock_token`, `locked_until_ms`
//! against the database clock) and by the history position it appends at, so a turn whose
//! lease was lost, or that breaks the contract, writes nothing without any error that would
//! abort the shared transaction; its first statement reads what decides the answer. If a
//! statement fails nevertheless (a constraint, a deadlock, the connection), the whole group is
//! rolled back and each turn is committed alone, so one bad turn answers for itself only.

use crate::store::prepared;
use deadpool_postgres::{GenericClient, Object};
use sluice_history::{Failure, InstanceStatus, Message, codes};
use sluice_store::stored::encode;
use sluice_store::{ActivityWorkItem, NewActivity, NewInstance, Outbound, StoreError, TurnCommit};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement};

/// Turns committed in one transaction at most.
pub(crate) const GROUP_TURNS_MAX: usize = 64;
/// Turns waiting for the committer at most (senders wait beyond: back-pressure).
pub(crate) const QUEUE_TURNS_MAX: usize = 1_024;

/// What a commit changed, for the wake-ups sent after it.
pub(crate) struct CommitEffects {
    pub(crate) inbox_changed: bool,
    pub(crate) activities_added: bool,
    pub(crate) finished: bool,
    pub(crate) claimed: Vec<ActivityWorkItem>,
}

pub(crate) type Reply = oneshot::Sender<Result<CommitEffects, StoreError>>;

/// The guarded statements of a turn commit. `{s}` is the schema; `$1` is the forced time
/// (`NULL`: the database's clock), then instance id, token, execution and history position.
pub(crate) struct TurnSql {
    check: String,
    history: String,
    consumed: String,
    activities: String,
    completed: String,
    timers: String,
    child: String,
    message: String,
    restart: String,
    unheld: String,
    future: String,
    update: String,
    visible: String,
}

impl TurnSql {
    pub(crate) fn new(s: &str) -> Self {
        let guard = "EXISTS (SELECT 1 FROM {s}.instances g WHERE g.instance_id = $2
            AND g.lock_token = $3 AND g.locked_until_ms > {s}.now_ms($1)
            AND g.execution_id = $4 AND g.history_len = $5)";
        let sql = |text: &str| text.replace("{guard}", guard).replace("{s}", s);
        TurnSql {
            check: sql("SELECT execution_id, history_len,
                        COALESCE(lock_token = $3 AND locked_until_ms > {s}.now_ms($1), false)
                 FROM {s}.instances WHERE instance_id = $2 FOR UPDATE"),
            history: sql("INSERT INTO {s}.history (instance_id, execution_id, position, event)
                 SELECT $2, $4, $5 + e.ordinality - 1, e.event
                 FROM unnest($6::text[]) WITH ORDINALITY AS e(event, ordinality) WHERE {guard}"),
            consumed: sql("DELETE FROM {s}.inbox WHERE instance_id = $2 AND message_id = ANY($6) AND {guard}"),
            activities: sql("INSERT INTO {s}.activities (instance_id, execution_id, activity_id, name, input, retry, visible_at_ms, attempt, lock_token)
                 SELECT $2, $4, a.activity_id, a.name, a.input, a.retry,
                        CASE WHEN a.ordinality <= $10 THEN {s}.now_ms($1) + $11 ELSE {s}.now_ms($1) END,
                        CASE WHEN a.ordinality <= $10 THEN 1 ELSE 0 END,
                        CASE WHEN a.ordinality <= $10 THEN $3::bigint END
                 FROM unnest($6::bigint[], $7::text[], $8::text[], $9::text[]) WITH ORDINALITY
                      AS a(activity_id, name, input, retry, ordinality)
                 WHERE {guard}
                 RETURNING item_id, activity_id, lock_token IS NOT NULL"),
            // By primary key (`= ANY`), each item with its own token.
            completed: sql("DELETE FROM {s}.activities a
                 WHERE a.item_id = ANY($6::bigint[])
                   AND a.lock_token = ($7::bigint[])[array_position($6::bigint[], a.item_id)]
                   AND a.visible_at_ms > {s}.now_ms($1) AND {guard}"),
            timers: sql("INSERT INTO {s}.inbox (instance_id, visible_at_ms, message)
                 SELECT $2, t.at, t.message FROM unnest($6::bigint[], $7::text[]) AS t(at, message)
                 WHERE {guard}"),
            // A child's start: created with its start message, or, when the id is taken and the
            // start has a parent, a failure for the parent (if it is alive).
            child: sql("WITH created AS (
                    INSERT INTO {s}.instances (instance_id, name, status, execution_id, input, created_at_ms, updated_at_ms)
                    SELECT $6, $7, 'pending', 1, $8, {s}.now_ms($1), {s}.now_ms($1) WHERE {guard}
                    ON CONFLICT (instance_id) DO NOTHING RETURNING instance_id),
                 started AS (
                    INSERT INTO {s}.inbox (instance_id, visible_at_ms, message)
                    SELECT instance_id, {s}.now_ms($1), $9 FROM created RETURNING instance_id),
                 refused AS (
                    INSERT INTO {s}.inbox (instance_id, visible_at_ms, message)
                    SELECT $10::text, {s}.now_ms($1), $11::text
                    WHERE $10::text IS NOT NULL AND {guard} AND NOT EXISTS (SELECT 1 FROM created)
                      AND EXISTS (SELECT 1 FROM {s}.instances
                                  WHERE instance_id = $10::text AND status IN ('pending', 'running', 'quarantined'))
                    RETURNING instance_id)
                 SELECT instance_id FROM started UNION ALL SELECT instance_id FROM refused"),
            message: sql("INSERT INTO {s}.inbox (instance_id, visible_at_ms, message)
                 SELECT $6, {s}.now_ms($1), $7 FROM {s}.instances
                 WHERE instance_id = $6 AND status IN ('pending', 'running', 'quarantined') AND {guard}
                 RETURNING instance_id"),
            restart: sql("INSERT INTO {s}.inbox (instance_id, visible_at_ms, message)
                 SELECT $2, {s}.now_ms($1), $6 WHERE {guard}"),
            unheld: sql("DELETE FROM {s}.activities WHERE instance_id = $2
                 AND (lock_token IS NULL OR visible_at_ms <= {s}.now_ms($1)) AND {guard}"),
            future: sql("DELETE FROM {s}.inbox WHERE instance_id = $2
                 AND visible_at_ms > {s}.now_ms($1) AND {guard}"),
            // Last of the guarded statements: it moves the history position and ends the lease.
            update: sql("UPDATE {s}.instances SET
                    status = COALESCE($6, status),
                    output = COALESCE($7, output),
                    failure = COALESCE($8, failure),
                    custom_status = COALESCE($9, custom_status),
                    execution_id = $10,
                    input = COALESCE($11, input),
                    history_len = $12,
                    locked_until_ms = NULL,
                    updated_at_ms = CASE WHEN status IS DISTINCT FROM COALESCE($6, status)
                        OR $7 IS NOT NULL OR $8 IS NOT NULL
                        OR custom_status IS DISTINCT FROM COALESCE($9, custom_status)
                        OR execution_id <> $10 THEN {s}.now_ms($1) ELSE updated_at_ms END
                 WHERE instance_id = $2 AND lock_token = $3 AND locked_until_ms > {s}.now_ms($1)
                   AND execution_id = $4 AND history_len = $5"),
            visible: sql("SELECT EXISTS (SELECT 1 FROM {s}.inbox
                 WHERE instance_id = $2 AND visible_at_ms <= {s}.now_ms($1))"),
        }
    }
}

/// The statements, prepared on one connection.
struct Prepared {
    check: Statement,
    history: Statement,
    consumed: Statement,
    activities: Statement,
    completed: Statement,
    timers: Statement,
    child: Statement,
    message: Statement,
    restart: Statement,
    unheld: Statement,
    future: Statement,
    update: Statement,
    visible: Statement,
}

async fn prepare(
    client: &impl GenericClient,
    sql: &TurnSql,
) -> Result<Prepared, tokio_postgres::Error> {
    Ok(Prepared {
        check: prepared(client, &sql.check).await?,
        history: prepared(client, &sql.history).await?,
        consumed: prepared(client, &sql.consumed).await?,
        activities: prepared(client, &sql.activities).await?,
        completed: prepared(client, &sql.completed).await?,
        timers: prepared(client, &sql.timers).await?,
        child: prepared(client, &sql.child).await?,
        message: prepared(client, &sql.message).await?,
        restart: prepared(client, &sql.restart).await?,
        unheld: prepared(client, &sql.unheld).await?,
        future: prepared(client, &sql.future).await?,
        update: prepared(client, &sql.update).await?,
        visible: prepared(client, &sql.visible).await?,
    })
}

/// A child start: the child, its start message, and the parent's refusal message if any.
struct Start<'c> {
    start: &'c NewInstance,
    message: String,
    parent: Option<&'c str>,
    refused: Option<String>,
}

/// Everything one turn's statements bind, owned so that pipelined futures can borrow it.
struct Parts<'c> {
    commit: &'c TurnCommit,
    now: Option<i64>,
    token: i64,
    execution: i64,
    from: i64,
    events: Vec<String>,
    consumed: Vec<i64>,
    claim_max: i64,
    claim_lease_ms: i64,
    activity_ids: Vec<i64>,
    names: Vec<&'c str>,
    inputs: Vec<&'c str>,
    retries: Vec<Option<String>>,
    completed_items: Vec<i64>,
    completed_tokens: Vec<i64>,
    timer_ats: Vec<i64>,
    timer_messages: Vec<String>,
    starts: Vec<Start<'c>>,
    messages: Vec<(&'c str, String)>,
    restart: Option<String>,
    new_execution: i64,
    new_input: Option<&'c str>,
    new_history_len: i64,
    status: Option<&'static str>,
    failure: Option<String>,
    finished: bool,
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl<'c> Parts<'c> {
    fn new(commit: &'c TurnCommit, now: Option<i64>) -> Self {
        let from = to_i64(commit.history_from);
        let execution = to_i64(commit.execution_id);
        let (claim_max, claim_lease) = commit.claim_activities.unwrap_or_default();
        let mut starts = Vec::new();
        let mut messages = Vec::new();
        for outbound in &commit.outbound {
            match outbound {
                Outbound::Start(start) => {
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
                    starts.push(Start {
                        start,
                        message: encode(&start.start_message()),
                        parent: refusal.as_ref().map(|(parent, _)| *parent),
                        refused: refusal.map(|(_, message)| message),
                    });
                }
                Outbound::Message {
                    instance_id,
                    message,
                } => messages.push((instance_id.as_str(), encode(message))),
            }
        }
        let appended = i64::try_from(commit.append.len()).unwrap_or(i64::MAX);
        let (new_execution, new_history_len, new_input) = match &commit.continue_as_new {
            Some(Message::Start { input, .. }) => (execution + 1, 0, Some(input.as_str())),
            Some(_) => (execution + 1, 0, None),
            None => (execution, from.saturating_add(appended), None),
        };
        Parts {
            commit,
            now,
            token: to_i64(commit.lock_token),
            execution,
            from,
            events: commit.append.iter().map(encode).collect(),
            consumed: commit.consumed.iter().map(|id| to_i64(*id)).collect(),
            claim_max: i64::try_from(claim_max).unwrap_or(i64::MAX),
            claim_lease_ms: i64::try_from(claim_lease.as_millis()).unwrap_or(i64::MAX),
            activity_ids: commit
                .activities
                .iter()
                .map(|a| to_i64(a.activity_id))
                .collect(),
            names: commit.activities.iter().map(|a| a.name.as_str()).collect(),
            inputs: commit.activities.iter().map(|a| a.input.as_str()).collect(),
            retries: commit
                .activities
                .iter()
                .map(|a| a.retry.as_ref().map(encode))
                .collect(),
            completed_items: commit
                .completed_activities
                .iter()
                .map(|(item, _)| to_i64(*item))
                .collect(),
            completed_tokens: commit
                .completed_activities
                .iter()
                .map(|(_, token)| to_i64(*token))
                .collect(),
            timer_ats: commit.timers.iter().map(|(at, _)| *at).collect(),
            timer_messages: commit.timers.iter().map(|(_, m)| encode(m)).collect(),
            starts,
            messages,
            restart: commit.continue_as_new.as_ref().map(encode),
            new_execution,
            new_input,
            new_history_len,
            status: commit.status.map(InstanceStatus::as_str),
            failure: commit.failure.as_ref().map(encode),
            finished: commit.status.is_some_and(InstanceStatus::is_terminal),
        }
    }
}

/// Where a turn's answers are among the pipeline's results.
struct Slots {
    check: usize,
    activities: Option<usize>,
    outbound: std::ops::Range<usize>,
    visible: usize,
}

type Rows = Result<Vec<Row>, tokio_postgres::Error>;
type Pending<'a> = Pin<Box<dyn Future<Output = Rows> + Send + 'a>>;

/// Appends one turn's statements to the pipeline.
fn push<'a>(
    pipeline: &mut Vec<Pending<'a>>,
    tx: &'a deadpool_postgres::Transaction<'a>,
    statements: &'a Prepared,
    p: &'a Parts<'a>,
) -> Slots {
    macro_rules! add {
        ($statement:ident $(, $param:expr)*) => {{
            let params: Vec<&'a (dyn ToSql + Sync)> =
                vec![&p.now, &p.commit.instance_id, &p.token, &p.execution, &p.from $(, $param)*];
            let statement = &statements.$statement;
            pipeline.push(Box::pin(async move { tx.query(statement, &params).await }));
        }};
    }
    let check = {
        let params: Vec<&'a (dyn ToSql + Sync)> = vec![&p.now, &p.commit.instance_id, &p.token];
        let statement = &statements.check;
        pipeline.push(Box::pin(async move { tx.query(statement, &params).await }));
        pipeline.len() - 1
    };
    if !p.events.is_empty() {
        add!(history, &p.events);
    }
    if !p.consumed.is_empty() {
        add!(consumed, &p.consumed);
    }
    let activities = if p.activity_ids.is_empty() {
        None
    } else {
        let index = pipeline.len();
        add!(
            activities,
            &p.activity_ids,
            &p.names,
            &p.inputs,
            &p.retries,
            &p.claim_max,
            &p.claim_lease_ms
        );
        Some(index)
    };
    if !p.completed_items.is_empty() {
        add!(completed, &p.completed_items, &p.completed_tokens);
    }
    if !p.timer_ats.is_empty() {
        add!(timers, &p.timer_ats, &p.timer_messages);
    }
    let outbound_from = pipeline.len();
    for start in &p.starts {
        add!(
            child,
            &start.start.instance_id,
            &start.start.name,
            &start.start.input,
            &start.message,
            &start.parent,
            &start.refused
        );
    }
    for (target, message) in &p.messages {
        add!(message, target, message);
    }
    let outbound = outbound_from..pipeline.len();
    if let Some(restart) = &p.restart {
        add!(restart, restart);
    }
    if p.finished && p.commit.outstanding_activities {
        // Work that can no longer matter, unless someone holds it: its holder's completion
        // then finds the instance finished.
        add!(unheld);
    }
    if p.finished {
        add!(future);
    }
    add!(
        update,
        &p.status,
        &p.commit.output,
        &p.failure,
        &p.commit.custom_status,
        &p.new_execution,
        &p.new_input,
        &p.new_history_len
    );
    let visible = {
        let params: Vec<&'a (dyn ToSql + Sync)> = vec![&p.now, &p.commit.instance_id];
        let statement = &statements.visible;
        pipeline.push(Box::pin(async move { tx.query(statement, &params).await }));
        pipeline.len() - 1
    };
    Slots {
        check,
        activities,
        outbound,
        visible,
    }
}

/// One turn's answer from its results (all statements succeeded).
fn answer(results: &[Rows], slots: &Slots, p: &Parts<'_>) -> Result<CommitEffects, StoreError> {
    let rows = |index: usize| results[index].as_ref().map(Vec::as_slice).unwrap_or(&[]);
    let commit = p.commit;
    let Some(check) = rows(slots.check).first() else {
        return Err(StoreError::InstanceNotFound(commit.instance_id.clone()));
    };
    let (stored_execution, stored_len, held): (i64, i64, bool) =
        (check.get(0), check.get(1), check.get(2));
    if !held {
        return Err(StoreError::LeaseLost("instance"));
    }
    if stored_execution != p.execution {
        return Err(StoreError::Contract(format!(
            "commit for execution {} but the instance is at execution {stored_execution}",
            commit.execution_id
        )));
    }
    if stored_len != p.from {
        return Err(StoreError::Contract(format!(
            "history append at position {} but the history has {stored_len} events",
            commit.history_from
        )));
    }
    let mut claimed = Vec::new();
    if let Some(index) = slots.activities {
        let by_id: HashMap<u64, &NewActivity> = commit
            .activities
            .iter()
            .map(|a| (a.activity_id, a))
            .collect();
        for row in rows(index) {
            let (item_id, activity_id, is_claimed): (i64, i64, bool) =
                (row.get(0), row.get(1), row.get(2));
            if is_claimed
                && let Some(activity) = by_id.get(&u64::try_from(activity_id).unwrap_or(0))
            {
                claimed.push(ActivityWorkItem {
                    item_id: u64::try_from(item_id).unwrap_or(0),
                    lock_token: commit.lock_token,
                    attempt: 1,
                    activity: (*activity).clone(),
                    unreadable: None,
                });
            }
        }
        claimed.sort_by_key(|item| item.item_id);
    }
    let delivered = slots.outbound.clone().any(|index| !rows(index).is_empty());
    let pending = rows(slots.visible)
        .first()
        .is_some_and(|row| row.get::<_, bool>(0));
    Ok(CommitEffects {
        inbox_changed: !commit.timers.is_empty() || delivered || p.restart.is_some() || pending,
        activities_added: commit.activities.len() > claimed.len(),
        finished: p.finished,
        claimed,
    })
}

/// Commits `commits` in one transaction. `Err` when the group as a whole failed (nothing of it
/// was committed, or its `COMMIT`'s outcome is unknown); otherwise one answer per turn.
async fn commit_group(
    client: &mut Object,
    sql: &TurnSql,
    commits: &[&TurnCommit],
    now: Option<i64>,
    describe: &Describe,
) -> Result<Vec<Result<CommitEffects, StoreError>>, StoreError> {
    let transaction = client.transaction().await.map_err(|e| describe(&e))?;
    let statements = prepare(&transaction, sql).await.map_err(|e| describe(&e))?;
    let parts: Vec<Parts<'_>> = commits.iter().map(|c| Parts::new(c, now)).collect();
    let mut pipeline = Vec::new();
    let slots: Vec<Slots> = parts
        .iter()
        .map(|p| push(&mut pipeline, &transaction, &statements, p))
        .collect();
    let results = futures_util::future::join_all(pipeline).await;
    if let Some(Err(error)) = results.iter().find(|result| result.is_err()) {
        // Dropping the transaction rolls it back.
        return Err(describe(error));
    }
    let answers: Vec<_> = slots
        .iter()
        .zip(&parts)
        .map(|(slots, p)| answer(&results, slots, p))
        .collect();
    drop(results);
    transaction.commit().await.map_err(|e| describe(&e))?;
    Ok(answers)
}

/// Turns a database error into the store's (redacted) error.
pub(crate) type Describe = dyn Fn(&tokio_postgres::Error) -> StoreError + Send + Sync;

/// A committer task: takes the turns waiting, commits them as one group, answers each.
pub(crate) async fn committer(
    pool: deadpool_postgres::Pool,
    sql: std::sync::Arc<TurnSql>,
    mut queue: mpsc::Receiver<(TurnCommit, Option<i64>, Reply)>,
    describe: Box<Describe>,
    pool_error: Box<dyn Fn(deadpool_postgres::PoolError) -> StoreError + Send + Sync>,
) {
    while let Some(first) = queue.recv().await {
        let mut group = vec![first];
        while group.len() < GROUP_TURNS_MAX {
            match queue.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let mut client = match pool.get().await {
            Ok(client) => client,
            Err(error) => {
                let error = pool_error(error).to_string();
                for (_, _, reply) in group {
                    let _ = reply.send(Err(StoreError::Database(error.clone())));
                }
                continue;
            }
        };
        // One clock for the group when a test clock is in use (`None` otherwise).
        let now = group.iter().map(|(_, now, _)| *now).max().flatten();
        let commits: Vec<&TurnCommit> = group.iter().map(|(commit, _, _)| commit).collect();
        match commit_group(&mut client, &sql, &commits, now, &*describe).await {
            Ok(answers) => {
                for ((_, _, reply), answer) in group.into_iter().zip(answers) {
                    let _ = reply.send(answer);
                }
            }
            Err(group_error) if group.len() == 1 => {
                let (_, _, reply) = group.pop().expect("one");
                let _ = reply.send(Err(group_error));
            }
            Err(_) => {
                // Each alone, so that the failing one answers for itself.
                for (commit, now, reply) in group {
                    let answer =
                        match commit_group(&mut client, &sql, &[&commit], now, &*describe).await {
                            Ok(mut answers) => answers.pop().expect("one answer per turn"),
                            Err(error) => Err(error),
                        };
                    let _ = reply.send(answer);
                }
            }
        }
    }
}
