//! Operator actions on instances (terminate, suspend, resume), each one transaction.
//!
//! Each locks the instance row, appends the event that records the action at the history's
//! end, and, where it takes the instance away from whoever runs its turn, fences that holder:
//! the lock token moves on to a fresh one from the sequence and the lease ends, so the
//! holder's renewal and commit, which must name the token that holds the lease, are refused
//! (`StoreError::LeaseLost`) whichever process it runs in.

use crate::store::{Sql, insert_if_live};
use deadpool_postgres::Transaction;
use sluice_history::{Event, Failure, InstanceStatus, Message, codes};
use sluice_store::stored::{encode, parse_status};
use sluice_store::{ChildPolicy, OperatorRequest, StoreError, StoreResult};

type Db<'a> = dyn Fn(tokio_postgres::Error) -> StoreError + Send + Sync + 'a;

/// What an action changed, for the wake-ups sent after it.
#[derive(Default)]
pub(crate) struct Acted {
    /// Instances that finished.
    pub(crate) finished: Vec<String>,
    /// Whether messages became due (a resume, cancels to children).
    pub(crate) inbox_changed: bool,
}

struct Row {
    status: InstanceStatus,
    execution_id: i64,
    history_len: i64,
    started: bool,
}

async fn lock_row(
    tx: &Transaction<'_>,
    s: &str,
    instance_id: &str,
    db: &Db<'_>,
) -> StoreResult<Option<Row>> {
    let row = tx
        .query_opt(
            &format!(
                "SELECT status, execution_id, history_len, started_at_ms IS NOT NULL
                 FROM {s}.instances WHERE instance_id = $1 FOR UPDATE"
            ),
            &[&instance_id],
        )
        .await
        .map_err(db)?;
    row.map(|row| {
        let status: String = row.get(0);
        Ok(Row {
            status: parse_status(&status)?,
            execution_id: row.get(1),
            history_len: row.get(2),
            started: row.get(3),
        })
    })
    .transpose()
}

/// Appends `event` at the history's end and sets the row: `status`, `failure` when given,
/// the history length, and with `fence` a fresh token and no lease.
#[allow(clippy::too_many_arguments)]
async fn record(
    tx: &Transaction<'_>,
    s: &str,
    now: Option<i64>,
    instance_id: &str,
    row: &Row,
    event: &Event,
    status: InstanceStatus,
    failure: Option<&Failure>,
    db: &Db<'_>,
) -> StoreResult<()> {
    tx.execute(
        &format!(
            "INSERT INTO {s}.history (instance_id, execution_id, position, event)
             VALUES ($1, $2, $3, $4)"
        ),
        &[
            &instance_id,
            &row.execution_id,
            &row.history_len,
            &encode(event),
        ],
    )
    .await
    .map_err(db)?;
    // Suspended, quarantined and terminated instances are due for nothing; a resumed one when its first
    // message is visible (those that arrived meanwhile, timers that fell due).
    tx.execute(
        &format!(
            "UPDATE {s}.instances SET status = $2,
                 failure = CASE WHEN $2 IN ('running', 'pending') THEN NULL
                     ELSE COALESCE($3, failure) END,
                 history_len = history_len + 1, updated_at_ms = {s}.now_ms($4),
                 finished_at_ms = CASE WHEN $2 IN ('terminated', 'failed') THEN {s}.now_ms($4) END,
                 lock_token = CASE WHEN $2 IN ('terminated', 'suspended', 'failed', 'quarantined')
                     THEN nextval('{s}.lock_tokens') ELSE lock_token END,
                 locked_until_ms = CASE WHEN $2 IN ('terminated', 'suspended', 'failed', 'quarantined')
                     THEN NULL ELSE locked_until_ms END,
                 deliveries = 0,
                 due_at_ms = CASE WHEN $2 IN ('terminated', 'suspended', 'failed', 'quarantined') THEN NULL
                     ELSE (SELECT min(m.visible_at_ms) FROM {s}.inbox m
                           WHERE m.instance_id = $1) END
             WHERE instance_id = $1"
        ),
        &[&instance_id, &status.as_str(), &failure.map(encode), &now],
    )
    .await
    .map_err(db)?;
    Ok(())
}

fn finished(instance_id: &str, status: InstanceStatus) -> StoreError {
    StoreError::InstanceFinished {
        instance_id: instance_id.to_string(),
        status: status.as_str(),
    }
}

/// Drops a finished instance's messages, timers and the work items nobody holds.
async fn clear_work(
    tx: &Transaction<'_>,
    s: &str,
    now: Option<i64>,
    id: &str,
    db: &Db<'_>,
) -> StoreResult<()> {
    tx.execute(
        &format!("DELETE FROM {s}.inbox WHERE instance_id = $1"),
        &[&id],
    )
    .await
    .map_err(db)?;
    // Work items someone holds are left to the holder, whose completion then finds the
    // instance finished and deletes them.
    tx.execute(
        &format!(
            "DELETE FROM {s}.activities WHERE instance_id = $1
             AND (lock_token IS NULL OR visible_at_ms <= {s}.now_ms($2))"
        ),
        &[&id, &now],
    )
    .await
    .map_err(db)?;
    Ok(())
}

/// Terminates `request.instance_id` and, by `children`, its unfinished descendants (depth
/// first, parents before their children; rows are locked as they are reached).
pub(crate) async fn terminate(
    tx: &Transaction<'_>,
    sql: &Sql,
    now: Option<i64>,
    request: &OperatorRequest,
    children: ChildPolicy,
    db: &Db<'_>,
) -> StoreResult<Acted> {
    let s = sql.schema.as_str();
    let mut acted = Acted::default();
    let mut stack = vec![request.clone()];
    while let Some(request) = stack.pop() {
        let id = request.instance_id.as_str();
        let root = acted.finished.is_empty();
        let row = match lock_row(tx, s, id, db).await? {
            Some(row) => row,
            None if root => return Err(StoreError::InstanceNotFound(id.to_string())),
            None => continue,
        };
        if row.status.is_terminal() {
            if root {
                return Err(finished(id, row.status));
            }
            continue;
        }
        let event = Event::Terminated {
            reason: request.reason.clone(),
            requested_by: request.requested_by.clone(),
        };
        let failure = Failure::new(codes::TERMINATED, request.reason.clone());
        record(
            tx,
            s,
            now,
            id,
            &row,
            &event,
            InstanceStatus::Terminated,
            Some(&failure),
            db,
        )
        .await?;
        clear_work(tx, s, now, id, db).await?;
        acted.finished.push(id.to_string());
        if children == ChildPolicy::Abandon {
            continue;
        }
        let live = tx
            .query(
                &format!(
                    "SELECT instance_id FROM {s}.instances WHERE parent_id = $1
                     AND status IN ('pending', 'running', 'quarantined', 'suspended')
                     ORDER BY instance_id DESC"
                ),
                &[&id],
            )
            .await
            .map_err(db)?;
        let reason = format!("its parent '{id}' was terminated: {}", request.reason);
        for child in live {
            let child: String = child.get(0);
            match children {
                ChildPolicy::Terminate => stack.push(OperatorRequest {
                    instance_id: child,
                    reason: reason.clone(),
                    requested_by: request.requested_by.clone(),
                }),
                ChildPolicy::Cancel => {
                    let cancel = Message::Cancel {
                        reason: reason.clone(),
                        requested_by: Some(request.requested_by.clone()),
                    };
                    acted.inbox_changed |= insert_if_live(tx, sql, now, &child, &cancel)
                        .await
                        .map_err(db)?;
                }
                ChildPolicy::Abandon => {}
            }
        }
    }
    Ok(acted)
}

/// Suspends the instance; `false` when it was suspended already.
pub(crate) async fn suspend(
    tx: &Transaction<'_>,
    sql: &Sql,
    now: Option<i64>,
    request: &OperatorRequest,
    db: &Db<'_>,
) -> StoreResult<bool> {
    let s = sql.schema.as_str();
    let id = request.instance_id.as_str();
    let Some(row) = lock_row(tx, s, id, db).await? else {
        return Err(StoreError::InstanceNotFound(id.to_string()));
    };
    match row.status {
        InstanceStatus::Suspended => return Ok(false),
        InstanceStatus::Quarantined => {
            return Err(StoreError::NotAllowed {
                instance_id: id.to_string(),
                status: row.status.as_str(),
                why: "it runs no turn already; terminate it, or retry it once retries exist",
            });
        }
        status if status.is_terminal() => return Err(finished(id, status)),
        _ => {}
    }
    let event = Event::Suspended {
        reason: request.reason.clone(),
        requested_by: request.requested_by.clone(),
    };
    record(
        tx,
        s,
        now,
        id,
        &row,
        &event,
        InstanceStatus::Suspended,
        None,
        db,
    )
    .await?;
    Ok(true)
}

/// Resumes the instance; `false` when it was not suspended.
pub(crate) async fn resume(
    tx: &Transaction<'_>,
    sql: &Sql,
    now: Option<i64>,
    request: &OperatorRequest,
    db: &Db<'_>,
) -> StoreResult<bool> {
    let s = sql.schema.as_str();
    let id = request.instance_id.as_str();
    let Some(row) = lock_row(tx, s, id, db).await? else {
        return Err(StoreError::InstanceNotFound(id.to_string()));
    };
    if row.status != InstanceStatus::Suspended {
        return Ok(false);
    }
    let event = Event::Resumed {
        reason: request.reason.clone(),
        requested_by: request.requested_by.clone(),
    };
    let back = if row.started {
        InstanceStatus::Running
    } else {
        InstanceStatus::Pending
    };
    record(tx, s, now, id, &row, &event, back, None, db).await?;
    Ok(true)
}

/// Takes a live instance out of service with `reason` (the runtime's poison limits): records
/// [`Event::Quarantined`], sets the status and fences whoever runs its turn. With `holder`,
/// only while that token holds the turn's lease ([`StoreError::LeaseLost`] otherwise). An
/// instance already quarantined keeps its first reason and a finished one is left as it is.
pub(crate) async fn quarantine(
    tx: &Transaction<'_>,
    s: &str,
    now: Option<i64>,
    id: &str,
    holder: Option<i64>,
    reason: &Failure,
    db: &Db<'_>,
) -> StoreResult<()> {
    let row = lock_row(tx, s, id, db).await?;
    if let Some(token) = holder {
        let held = tx
            .query_opt(
                &format!(
                    "SELECT 1 FROM {s}.instances WHERE instance_id = $1 AND lock_token = $2
                       AND locked_until_ms > {s}.now_ms($3)"
                ),
                &[&id, &token, &now],
            )
            .await
            .map_err(db)?;
        if held.is_none() {
            return Err(StoreError::LeaseLost("instance"));
        }
    }
    let Some(row) = row else {
        return Ok(());
    };
    if row.status.is_terminal() || row.status == InstanceStatus::Quarantined {
        return Ok(());
    }
    let event = Event::Quarantined {
        reason: reason.clone(),
    };
    let status = InstanceStatus::Quarantined;
    record(tx, s, now, id, &row, &event, status, Some(reason), db).await
}

/// Puts a quarantined instance back in service; `false` when it was not quarantined.
pub(crate) async fn retry(
    tx: &Transaction<'_>,
    sql: &Sql,
    now: Option<i64>,
    request: &OperatorRequest,
    db: &Db<'_>,
) -> StoreResult<bool> {
    let s = sql.schema.as_str();
    let id = request.instance_id.as_str();
    let Some(row) = lock_row(tx, s, id, db).await? else {
        return Err(StoreError::InstanceNotFound(id.to_string()));
    };
    if row.status != InstanceStatus::Quarantined {
        return Ok(false);
    }
    let event = Event::Retried {
        reason: request.reason.clone(),
        requested_by: request.requested_by.clone(),
    };
    let back = if row.started {
        InstanceStatus::Running
    } else {
        InstanceStatus::Pending
    };
    // The delivery count is the row's (`deliveries`), which `record` starts afresh; an
    // activity that kept crashing its process starts its count afresh too.
    record(tx, s, now, id, &row, &event, back, None, db).await?;
    tx.execute(
        &format!("UPDATE {s}.activities SET attempt = 0 WHERE instance_id = $1"),
        &[&id],
    )
    .await
    .map_err(db)?;
    Ok(true)
}

/// Fails a quarantined instance for good.
pub(crate) async fn discard(
    tx: &Transaction<'_>,
    sql: &Sql,
    now: Option<i64>,
    request: &OperatorRequest,
    db: &Db<'_>,
) -> StoreResult<()> {
    let s = sql.schema.as_str();
    let id = request.instance_id.as_str();
    let Some(row) = lock_row(tx, s, id, db).await? else {
        return Err(StoreError::InstanceNotFound(id.to_string()));
    };
    if row.status.is_terminal() {
        return Err(finished(id, row.status));
    }
    if row.status != InstanceStatus::Quarantined {
        return Err(StoreError::NotAllowed {
            instance_id: id.to_string(),
            status: row.status.as_str(),
            why: "only a quarantined instance is discarded; terminate it instead",
        });
    }
    let event = Event::Discarded {
        reason: request.reason.clone(),
        requested_by: request.requested_by.clone(),
    };
    let failure = Failure::new(codes::DISCARDED, request.reason.clone());
    record(
        tx,
        s,
        now,
        id,
        &row,
        &event,
        InstanceStatus::Failed,
        Some(&failure),
        db,
    )
    .await?;
    clear_work(tx, s, now, id, db).await
}

/// Restarts an instance from its input: a new execution under the same id (finished
/// instances only), or a new instance; returns its id and execution.
pub(crate) async fn restart(
    tx: &Transaction<'_>,
    sql: &Sql,
    now: Option<i64>,
    request: &OperatorRequest,
    as_instance: Option<&str>,
    input: Option<&str>,
    db: &Db<'_>,
) -> StoreResult<(String, u64)> {
    let s = sql.schema.as_str();
    let id = request.instance_id.as_str();
    let Some(row) = lock_row(tx, s, id, db).await? else {
        return Err(StoreError::InstanceNotFound(id.to_string()));
    };
    let named = tx
        .query_one(
            &format!("SELECT name, input FROM {s}.instances WHERE instance_id = $1"),
            &[&id],
        )
        .await
        .map_err(db)?;
    let name: String = named.get(0);
    let input = input.map_or_else(|| named.get::<_, String>(1), str::to_string);
    let event = encode(&Event::Restarted {
        reason: request.reason.clone(),
        requested_by: request.requested_by.clone(),
        as_instance: as_instance.map(str::to_string),
    });
    let append = format!(
        "WITH appended AS (INSERT INTO {s}.history (instance_id, execution_id, position, event)
             VALUES ($1, $2, $3, $4))
         UPDATE {s}.instances SET history_len = history_len + 1 WHERE instance_id = $1"
    );
    if let Some(new_id) = as_instance {
        let start = Message::Start {
            name: name.clone(),
            input: input.clone(),
            parent: None,
            carried_events: Vec::new(),
            version: None,
        };
        let created = tx
            .query_opt(
                &sql.create_instance,
                &[&now, &new_id, &name, &input, &encode(&start), &None::<&str>],
            )
            .await
            .map_err(db)?;
        if created.is_none() {
            return Err(StoreError::NotAllowed {
                instance_id: new_id.to_string(),
                status: "taken",
                why: "an instance of this id exists already; restart it under another id",
            });
        }
        tx.execute(&append, &[&id, &row.execution_id, &row.history_len, &event])
            .await
            .map_err(db)?;
        return Ok((new_id.to_string(), 1));
    }
    if !row.status.is_terminal() {
        return Err(StoreError::NotAllowed {
            instance_id: id.to_string(),
            status: row.status.as_str(),
            why: "only a finished instance restarts under its own id; terminate it first, \
                  or restart it as another instance",
        });
    }
    tx.execute(&append, &[&id, &row.execution_id, &row.history_len, &event])
        .await
        .map_err(db)?;
    tx.execute(
        &format!(
            "INSERT INTO {s}.executions (instance_id, execution_id, started_at_ms, finished_at_ms, history_len)
             SELECT instance_id, execution_id, started_at_ms, finished_at_ms, history_len
             FROM {s}.instances WHERE instance_id = $1"
        ),
        &[&id],
    )
    .await
    .map_err(db)?;
    // What a finished instance still had waiting is stale for the new execution.
    tx.execute(
        &format!("DELETE FROM {s}.inbox WHERE instance_id = $1"),
        &[&id],
    )
    .await
    .map_err(db)?;
    let start = Message::Start {
        name,
        input: input.clone(),
        parent: None,
        carried_events: Vec::new(),
        version: None,
    };
    tx.execute(
        &format!(
            "INSERT INTO {s}.inbox (instance_id, visible_at_ms, message)
             VALUES ($1, {s}.now_ms($2), $3)"
        ),
        &[&id, &now, &encode(&start)],
    )
    .await
    .map_err(db)?;
    tx.execute(
        &format!(
            "UPDATE {s}.instances SET status = 'pending', execution_id = execution_id + 1,
                 input = $3, output = NULL, failure = NULL, custom_status = NULL,
                 history_len = 0, deliveries = 0, updated_at_ms = {s}.now_ms($2),
                 started_at_ms = NULL, finished_at_ms = NULL, due_at_ms = {s}.now_ms($2),
                 lock_token = nextval('{s}.lock_tokens'), locked_until_ms = NULL
             WHERE instance_id = $1"
        ),
        &[&id, &now, &input],
    )
    .await
    .map_err(db)?;
    Ok((
        id.to_string(),
        u64::try_from(row.execution_id + 1).unwrap_or(0),
    ))
}

/// The statement that deletes everything stored for the instances `{picked}` (a query of
/// `instance_id`s) yields, answering how many instance rows went (the count triggers follow
/// them).
pub(crate) fn delete_sql(s: &str, picked: &str) -> String {
    format!(
        "WITH picked AS MATERIALIZED ({picked}),
         h AS (DELETE FROM {s}.history WHERE instance_id IN (SELECT instance_id FROM picked)),
         e AS (DELETE FROM {s}.executions WHERE instance_id IN (SELECT instance_id FROM picked)),
         m AS (DELETE FROM {s}.inbox WHERE instance_id IN (SELECT instance_id FROM picked)),
         a AS (DELETE FROM {s}.activities WHERE instance_id IN (SELECT instance_id FROM picked)),
         i AS (DELETE FROM {s}.instances WHERE instance_id IN (SELECT instance_id FROM picked)
               RETURNING 1)
         SELECT count(*) FROM i"
    )
}

/// Removes a finished instance with its finished descendants; returns the ids removed.
pub(crate) async fn purge_instance(
    tx: &Transaction<'_>,
    sql: &Sql,
    instance_id: &str,
    db: &Db<'_>,
) -> StoreResult<Vec<String>> {
    let s = sql.schema.as_str();
    let Some(row) = lock_row(tx, s, instance_id, db).await? else {
        return Err(StoreError::InstanceNotFound(instance_id.to_string()));
    };
    if !row.status.is_terminal() {
        return Err(StoreError::NotAllowed {
            instance_id: instance_id.to_string(),
            status: row.status.as_str(),
            why: "only a finished instance is purged; terminate it first",
        });
    }
    let mut removed = vec![instance_id.to_string()];
    let mut level = removed.clone();
    while !level.is_empty() {
        let rows = tx
            .query(
                &format!(
                    "SELECT instance_id FROM {s}.instances WHERE parent_id = ANY($1)
                     AND status IN ('completed', 'failed', 'cancelled', 'terminated')
                     ORDER BY instance_id"
                ),
                &[&level],
            )
            .await
            .map_err(db)?;
        level = rows.iter().map(|row| row.get(0)).collect();
        removed.extend(level.iter().cloned());
    }
    tx.query_one(
        &delete_sql(s, "SELECT unnest($1::text[]) AS instance_id"),
        &[&removed],
    )
    .await
    .map_err(db)?;
    Ok(removed)
}

/// A rewind in progress (boxed: it recurses into failed children): the new execution and the
/// ids rewound.
type Rewinding<'a> =
    std::pin::Pin<Box<dyn Future<Output = StoreResult<(u64, Vec<String>)>> + Send + 'a>>;

/// Rewinds a failed instance into a new execution (see `sluice_store::repair`), and its failed
/// children with it; returns the new execution and the ids rewound.
pub(crate) fn rewind<'a>(
    tx: &'a Transaction<'_>,
    sql: &'a Sql,
    now: Option<i64>,
    request: &'a OperatorRequest,
    db: &'a Db<'_>,
) -> Rewinding<'a> {
    Box::pin(async move {
        let s = sql.schema.as_str();
        let id = request.instance_id.as_str();
        let Some(row) = lock_row(tx, s, id, db).await? else {
            return Err(StoreError::InstanceNotFound(id.to_string()));
        };
        if row.status != InstanceStatus::Failed {
            return Err(StoreError::NotAllowed {
                instance_id: id.to_string(),
                status: row.status.as_str(),
                why: "only a failed instance is rewound (restart a finished one from its input)",
            });
        }
        let now_ms: i64 = tx
            .query_one(&format!("SELECT {s}.now_ms($1)"), &[&now])
            .await
            .map_err(db)?
            .get(0);
        let history: Vec<Event> = tx
            .query(
                &format!(
                    "SELECT event FROM {s}.history WHERE instance_id = $1 AND execution_id = $2
                     ORDER BY position"
                ),
                &[&id, &row.execution_id],
            )
            .await
            .map_err(db)?
            .iter()
            .enumerate()
            .map(|(position, event)| {
                sluice_store::stored::decode(event.get::<_, &str>(0), || {
                    format!("history event {position} of instance '{id}'")
                })
            })
            .collect::<StoreResult<_>>()?;
        let from = u64::try_from(row.execution_id).unwrap_or(0);
        let plan = sluice_store::repair::plan_rewind(
            id,
            from,
            &history,
            now_ms,
            &request.reason,
            &request.requested_by,
        )
        .map_err(|_| StoreError::NotAllowed {
            instance_id: id.to_string(),
            status: row.status.as_str(),
            why: "its history does not end with a failure to run again (a discarded instance \
                  has nothing left to run): restart it from its input instead",
        })?;
        let Some((_, Message::Rewound { carried, .. })) = plan.messages.first() else {
            return Err(StoreError::Contract(
                "a rewind plan starts with its message".into(),
            ));
        };
        let event = Event::Rewound {
            reason: request.reason.clone(),
            requested_by: request.requested_by.clone(),
            from_execution: from,
            carried: carried.clone(),
        };
        let next = row.execution_id + 1;
        let kept = i64::try_from(plan.kept).unwrap_or(i64::MAX);
        tx.execute(
            &format!(
                "INSERT INTO {s}.history (instance_id, execution_id, position, event)
                 VALUES ($1, $2, $3, $4)"
            ),
            &[&id, &row.execution_id, &row.history_len, &encode(&event)],
        )
        .await
        .map_err(db)?;
        tx.execute(
            &format!(
                "INSERT INTO {s}.executions (instance_id, execution_id, started_at_ms, finished_at_ms, history_len)
                 SELECT instance_id, execution_id, started_at_ms, finished_at_ms, history_len + 1
                 FROM {s}.instances WHERE instance_id = $1"
            ),
            &[&id],
        )
        .await
        .map_err(db)?;
        tx.execute(
            &format!(
                "INSERT INTO {s}.history (instance_id, execution_id, position, event)
                 SELECT instance_id, $2, position, event FROM {s}.history
                 WHERE instance_id = $1 AND execution_id = $3 AND position < $4"
            ),
            &[&id, &next, &row.execution_id, &kept],
        )
        .await
        .map_err(db)?;
        tx.execute(
            &format!("DELETE FROM {s}.inbox WHERE instance_id = $1"),
            &[&id],
        )
        .await
        .map_err(db)?;
        let mut messages = plan.messages.clone();
        let mut rewound = vec![id.to_string()];
        let next_u64 = u64::try_from(next).unwrap_or(0);
        for (command, child) in &plan.children {
            let child_row = tx
                .query_opt(
                    &format!(
                        "SELECT status, output, failure FROM {s}.instances WHERE instance_id = $1"
                    ),
                    &[child],
                )
                .await
                .map_err(db)?;
            let Some(child_row) = child_row else {
                messages.push((
                    now_ms,
                    sluice_store::repair::missing_child(next_u64, *command, child),
                ));
                continue;
            };
            let status = parse_status(child_row.get::<_, &str>(0))?;
            let failure = child_row
                .get::<_, Option<&str>>(2)
                .map(|text| {
                    sluice_store::stored::decode(text, || {
                        format!("the failure of instance '{child}'")
                    })
                })
                .transpose()?;
            let result = match status {
                InstanceStatus::Completed => Some(Message::SubOrchestrationCompleted {
                    execution_id: next_u64,
                    id: *command,
                    output: child_row.get::<_, Option<String>>(1).unwrap_or_default(),
                }),
                InstanceStatus::Failed => {
                    let child_request = OperatorRequest {
                        instance_id: child.clone(),
                        reason: format!("its parent '{id}' was rewound: {}", request.reason),
                        requested_by: request.requested_by.clone(),
                    };
                    match rewind(tx, sql, now, &child_request, db).await {
                        Ok((_, ids)) => {
                            rewound.extend(ids);
                            None
                        }
                        Err(StoreError::NotAllowed { .. }) => Some(
                            sluice_store::repair::failed_child(next_u64, *command, failure),
                        ),
                        Err(error) => return Err(error),
                    }
                }
                status if status.is_terminal() => Some(sluice_store::repair::failed_child(
                    next_u64, *command, failure,
                )),
                _ => None,
            };
            if let Some(message) = result {
                messages.push((now_ms, message));
            }
        }
        for (visible_at_ms, message) in &messages {
            tx.execute(
                &format!(
                    "INSERT INTO {s}.inbox (instance_id, visible_at_ms, message) VALUES ($1, $2, $3)"
                ),
                &[&id, visible_at_ms, &encode(message)],
            )
            .await
            .map_err(db)?;
        }
        for activity in &plan.activities {
            tx.execute(
                &format!(
                    "INSERT INTO {s}.activities (instance_id, execution_id, activity_id, name, input, retry, visible_at_ms, attempt, task_queue)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8)"
                ),
                &[
                    &id,
                    &next,
                    &i64::try_from(activity.activity_id).unwrap_or(i64::MAX),
                    &activity.name,
                    &activity.input,
                    &activity.retry.as_ref().map(encode),
                    &now_ms,
                    &activity.task_queue,
                ],
            )
            .await
            .map_err(db)?;
        }
        tx.execute(
            &format!(
                "UPDATE {s}.instances SET status = 'running', execution_id = $2, output = NULL,
                     failure = NULL, history_len = $3, deliveries = 0,
                     updated_at_ms = {s}.now_ms($4), finished_at_ms = NULL,
                     due_at_ms = (SELECT min(m.visible_at_ms) FROM {s}.inbox m
                                  WHERE m.instance_id = $1),
                     lock_token = nextval('{s}.lock_tokens'), locked_until_ms = NULL
                 WHERE instance_id = $1"
            ),
            &[&id, &next, &kept, &now],
        )
        .await
        .map_err(db)?;
        Ok((next_u64, rewound))
    })
}
