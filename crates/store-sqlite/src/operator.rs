//! Operator actions on instances (terminate, suspend, resume), each one transaction on the
//! writer: the event that records it, the status, and the fence.
//!
//! The fence: this store's leases live in its memory, so an action of the owning store drops
//! the instance's lease there, and a commit of the turn then held is refused as a lost lease.
//! An action of a client-only store (another process) cannot reach that memory; the owner's
//! commit reads the status instead and refuses a turn of an instance that is now suspended or
//! terminated the same way (see `commit_turn_in`).

use crate::store::{
    Leases, db_error, history_len_of, insert_message_if_live, is_free, lock_leases,
};
use rusqlite::{Connection, OptionalExtension, params};
use sluice_history::{Event, Failure, InstanceStatus, Message, TimestampMs, codes};
use sluice_store::stored::{encode, parse_status};
use sluice_store::{ChildPolicy, OperatorRequest, StoreError, StoreResult};
use std::sync::Mutex;

/// What an action changed, for the wake-ups sent after it.
#[derive(Default)]
pub(crate) struct Acted {
    /// Instances that finished.
    pub(crate) finished: Vec<String>,
    /// Whether messages became visible (a resume, cancels to children).
    pub(crate) inbox_changed: bool,
}

fn row_of(
    connection: &Connection,
    instance_id: &str,
) -> StoreResult<Option<(InstanceStatus, i64, bool)>> {
    let row: Option<(String, i64, bool)> = connection
        .prepare_cached(
            "SELECT status, execution_id, started_at_ms IS NOT NULL FROM instances
             WHERE instance_id = ?1",
        )
        .and_then(|mut statement| {
            statement
                .query_row(params![instance_id], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })
                .optional()
        })
        .map_err(db_error)?;
    row.map(|(status, execution, started)| Ok((parse_status(&status)?, execution, started)))
        .transpose()
}

fn append(
    connection: &Connection,
    instance_id: &str,
    execution_id: i64,
    event: &Event,
) -> StoreResult<()> {
    let position = history_len_of(connection, instance_id, execution_id)?;
    connection
        .prepare_cached(
            "INSERT INTO history (instance_id, execution_id, position, event) VALUES (?1, ?2, ?3, ?4)",
        )
        .and_then(|mut statement| {
            statement.execute(params![instance_id, execution_id, position, encode(event)])
        })
        .map_err(db_error)?;
    Ok(())
}

fn set_status(
    connection: &Connection,
    instance_id: &str,
    status: InstanceStatus,
    failure: Option<&Failure>,
    now: TimestampMs,
) -> StoreResult<()> {
    connection
        .prepare_cached(
            "UPDATE instances SET status = ?2, failure = COALESCE(?3, failure), updated_at_ms = ?4,
                 finished_at_ms = CASE WHEN ?2 IN ('terminated', 'failed') THEN ?4 END
             WHERE instance_id = ?1",
        )
        .and_then(|mut statement| {
            statement.execute(params![
                instance_id,
                status.as_str(),
                failure.map(encode),
                now
            ])
        })
        .map_err(db_error)?;
    Ok(())
}

fn finished(instance_id: &str, status: InstanceStatus) -> StoreError {
    StoreError::InstanceFinished {
        instance_id: instance_id.to_string(),
        status: status.as_str(),
    }
}

/// Drops a finished instance's messages, timers and the work items nobody holds, and its lease.
fn clear_work(
    connection: &Connection,
    leases: &Mutex<Leases>,
    now: TimestampMs,
    id: &str,
) -> StoreResult<()> {
    connection
        .prepare_cached("DELETE FROM inbox WHERE instance_id = ?1")
        .and_then(|mut statement| statement.execute(params![id]))
        .map_err(db_error)?;
    let items: Vec<i64> = connection
        .prepare_cached("SELECT item_id FROM activities WHERE instance_id = ?1")
        .and_then(|mut statement| {
            statement
                .query_map(params![id], |row| row.get(0))?
                .collect()
        })
        .map_err(db_error)?;
    let mut held = lock_leases(leases);
    let mut delete = connection
        .prepare_cached("DELETE FROM activities WHERE item_id = ?1")
        .map_err(db_error)?;
    // Work items someone holds are left to the holder, whose completion then finds the
    // instance finished and deletes them.
    for item in items
        .into_iter()
        .filter(|item| is_free(&held.activities, item, now))
    {
        delete.execute(params![item]).map_err(db_error)?;
    }
    held.instances.remove(id);
    Ok(())
}

/// Terminates `request.instance_id` and, by `children`, its unfinished descendants.
pub(crate) fn terminate(
    connection: &Connection,
    leases: &Mutex<Leases>,
    now: TimestampMs,
    request: &OperatorRequest,
    children: ChildPolicy,
    acted: &mut Acted,
) -> StoreResult<()> {
    let id = request.instance_id.as_str();
    let Some((status, execution, _)) = row_of(connection, id)? else {
        return Err(StoreError::InstanceNotFound(id.to_string()));
    };
    if status.is_terminal() {
        return Err(finished(id, status));
    }
    append(
        connection,
        id,
        execution,
        &Event::Terminated {
            reason: request.reason.clone(),
            requested_by: request.requested_by.clone(),
        },
    )?;
    let failure = Failure::new(codes::TERMINATED, request.reason.clone());
    set_status(
        connection,
        id,
        InstanceStatus::Terminated,
        Some(&failure),
        now,
    )?;
    clear_work(connection, leases, now, id)?;
    acted.finished.push(id.to_string());
    if children == ChildPolicy::Abandon {
        return Ok(());
    }
    let live: Vec<String> = connection
        .prepare_cached(
            "SELECT instance_id FROM instances WHERE parent_id = ?1
             AND status IN ('pending', 'running', 'quarantined', 'suspended')
             ORDER BY instance_id",
        )
        .and_then(|mut statement| {
            statement
                .query_map(params![id], |row| row.get(0))?
                .collect()
        })
        .map_err(db_error)?;
    let reason = format!("its parent '{id}' was terminated: {}", request.reason);
    for child in live {
        match children {
            ChildPolicy::Terminate => {
                let request = OperatorRequest {
                    instance_id: child,
                    reason: reason.clone(),
                    requested_by: request.requested_by.clone(),
                };
                terminate(connection, leases, now, &request, children, acted)?;
            }
            ChildPolicy::Cancel => {
                let cancel = Message::Cancel {
                    reason: reason.clone(),
                    requested_by: Some(request.requested_by.clone()),
                };
                acted.inbox_changed |= insert_message_if_live(connection, &child, now, &cancel)?;
            }
            ChildPolicy::Abandon => {}
        }
    }
    Ok(())
}

/// Suspends the instance; `false` when it was suspended already.
pub(crate) fn suspend(
    connection: &Connection,
    leases: &Mutex<Leases>,
    now: TimestampMs,
    request: &OperatorRequest,
) -> StoreResult<bool> {
    let id = request.instance_id.as_str();
    let Some((status, execution, _)) = row_of(connection, id)? else {
        return Err(StoreError::InstanceNotFound(id.to_string()));
    };
    match status {
        InstanceStatus::Suspended => return Ok(false),
        InstanceStatus::Quarantined => {
            return Err(StoreError::NotAllowed {
                instance_id: id.to_string(),
                status: status.as_str(),
                why: "it runs no turn already; terminate it, or retry it once retries exist",
            });
        }
        status if status.is_terminal() => return Err(finished(id, status)),
        _ => {}
    }
    append(
        connection,
        id,
        execution,
        &Event::Suspended {
            reason: request.reason.clone(),
            requested_by: request.requested_by.clone(),
        },
    )?;
    set_status(connection, id, InstanceStatus::Suspended, None, now)?;
    lock_leases(leases).instances.remove(id);
    Ok(true)
}

/// Resumes the instance; `false` when it was not suspended.
pub(crate) fn resume(
    connection: &Connection,
    now: TimestampMs,
    request: &OperatorRequest,
) -> StoreResult<bool> {
    let id = request.instance_id.as_str();
    let Some((status, execution, started)) = row_of(connection, id)? else {
        return Err(StoreError::InstanceNotFound(id.to_string()));
    };
    if status != InstanceStatus::Suspended {
        return Ok(false);
    }
    append(
        connection,
        id,
        execution,
        &Event::Resumed {
            reason: request.reason.clone(),
            requested_by: request.requested_by.clone(),
        },
    )?;
    let back = if started {
        InstanceStatus::Running
    } else {
        InstanceStatus::Pending
    };
    set_status(connection, id, back, None, now)?;
    Ok(true)
}

/// Takes a live instance out of service with `reason` (the runtime's poison limits): records
/// [`Event::Quarantined`] and sets the status. An instance already quarantined keeps its first
/// reason and a finished one is left as it is; `false` then.
pub(crate) fn quarantine(
    connection: &Connection,
    now: TimestampMs,
    id: &str,
    reason: &Failure,
) -> StoreResult<bool> {
    let Some((status, execution, _)) = row_of(connection, id)? else {
        return Ok(false);
    };
    if status.is_terminal() || status == InstanceStatus::Quarantined {
        return Ok(false);
    }
    append(
        connection,
        id,
        execution,
        &Event::Quarantined {
            reason: reason.clone(),
        },
    )?;
    set_status(
        connection,
        id,
        InstanceStatus::Quarantined,
        Some(reason),
        now,
    )?;
    Ok(true)
}

/// Puts a quarantined instance back in service; `false` when it was not quarantined.
pub(crate) fn retry(
    connection: &Connection,
    now: TimestampMs,
    request: &OperatorRequest,
) -> StoreResult<bool> {
    let id = request.instance_id.as_str();
    let Some((status, execution, started)) = row_of(connection, id)? else {
        return Err(StoreError::InstanceNotFound(id.to_string()));
    };
    if status != InstanceStatus::Quarantined {
        return Ok(false);
    }
    append(
        connection,
        id,
        execution,
        &Event::Retried {
            reason: request.reason.clone(),
            requested_by: request.requested_by.clone(),
        },
    )?;
    let back = if started {
        InstanceStatus::Running
    } else {
        InstanceStatus::Pending
    };
    connection
        .prepare_cached(
            "UPDATE instances SET status = ?2, failure = NULL, updated_at_ms = ?3
             WHERE instance_id = ?1",
        )
        .and_then(|mut statement| statement.execute(params![id, back.as_str(), now]))
        .map_err(db_error)?;
    connection
        .prepare_cached("UPDATE inbox SET deliveries = 0 WHERE instance_id = ?1")
        .and_then(|mut statement| statement.execute(params![id]))
        .map_err(db_error)?;
    // An activity that kept crashing its process starts its count afresh too.
    connection
        .prepare_cached("UPDATE activities SET attempt = 0 WHERE instance_id = ?1")
        .and_then(|mut statement| statement.execute(params![id]))
        .map_err(db_error)?;
    Ok(true)
}

/// Fails a quarantined instance for good.
pub(crate) fn discard(
    connection: &Connection,
    leases: &Mutex<Leases>,
    now: TimestampMs,
    request: &OperatorRequest,
) -> StoreResult<()> {
    let id = request.instance_id.as_str();
    let Some((status, execution, _)) = row_of(connection, id)? else {
        return Err(StoreError::InstanceNotFound(id.to_string()));
    };
    if status.is_terminal() {
        return Err(finished(id, status));
    }
    if status != InstanceStatus::Quarantined {
        return Err(StoreError::NotAllowed {
            instance_id: id.to_string(),
            status: status.as_str(),
            why: "only a quarantined instance is discarded; terminate it instead",
        });
    }
    append(
        connection,
        id,
        execution,
        &Event::Discarded {
            reason: request.reason.clone(),
            requested_by: request.requested_by.clone(),
        },
    )?;
    let failure = Failure::new(codes::DISCARDED, request.reason.clone());
    set_status(connection, id, InstanceStatus::Failed, Some(&failure), now)?;
    clear_work(connection, leases, now, id)
}

/// Restarts an instance from its input: a new execution under the same id (finished
/// instances only), or a new instance; returns its id and execution.
pub(crate) fn restart(
    connection: &Connection,
    now: TimestampMs,
    request: &OperatorRequest,
    as_instance: Option<&str>,
    input: Option<&str>,
) -> StoreResult<(String, u64)> {
    let id = request.instance_id.as_str();
    let row: Option<(String, String, i64, String)> = connection
        .prepare_cached(
            "SELECT status, name, execution_id, input FROM instances WHERE instance_id = ?1",
        )
        .and_then(|mut statement| {
            statement
                .query_row(params![id], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                })
                .optional()
        })
        .map_err(db_error)?;
    let Some((status, name, execution, current_input)) = row else {
        return Err(StoreError::InstanceNotFound(id.to_string()));
    };
    let status = parse_status(&status)?;
    let input = input.map_or(current_input, str::to_string);
    let event = Event::Restarted {
        reason: request.reason.clone(),
        requested_by: request.requested_by.clone(),
        as_instance: as_instance.map(str::to_string),
    };
    if let Some(new_id) = as_instance {
        let start = sluice_store::NewInstance {
            instance_id: new_id.to_string(),
            name,
            input,
            parent: None,
            version: None,
        };
        if !crate::store::insert_instance(connection, &start, now)? {
            return Err(StoreError::NotAllowed {
                instance_id: new_id.to_string(),
                status: "taken",
                why: "an instance of this id exists already; restart it under another id",
            });
        }
        append(connection, id, execution, &event)?;
        return Ok((new_id.to_string(), 1));
    }
    if !status.is_terminal() {
        return Err(StoreError::NotAllowed {
            instance_id: id.to_string(),
            status: status.as_str(),
            why: "only a finished instance restarts under its own id; terminate it first, \
                  or restart it as another instance",
        });
    }
    append(connection, id, execution, &event)?;
    let ended_len = history_len_of(connection, id, execution)?;
    connection
        .prepare_cached(
            "INSERT INTO executions (instance_id, execution_id, started_at_ms, finished_at_ms, history_len)
             SELECT instance_id, execution_id, started_at_ms, finished_at_ms, ?2 FROM instances
             WHERE instance_id = ?1",
        )
        .and_then(|mut statement| statement.execute(params![id, ended_len]))
        .map_err(db_error)?;
    // What a finished instance still had waiting is stale for the new execution.
    connection
        .prepare_cached("DELETE FROM inbox WHERE instance_id = ?1")
        .and_then(|mut statement| statement.execute(params![id]))
        .map_err(db_error)?;
    connection
        .prepare_cached(
            "UPDATE instances SET status = 'pending', execution_id = ?2, input = ?3,
                 output = NULL, failure = NULL, custom_status = NULL, updated_at_ms = ?4,
                 started_at_ms = NULL, finished_at_ms = NULL
             WHERE instance_id = ?1",
        )
        .and_then(|mut statement| statement.execute(params![id, execution + 1, input, now]))
        .map_err(db_error)?;
    let start = Message::Start {
        name,
        input,
        parent: None,
        carried_events: Vec::new(),
        version: None,
    };
    connection
        .prepare_cached(
            "INSERT INTO inbox (instance_id, visible_at_ms, message) VALUES (?1, ?2, ?3)",
        )
        .and_then(|mut statement| statement.execute(params![id, now, encode(&start)]))
        .map_err(db_error)?;
    Ok((id.to_string(), u64::try_from(execution + 1).unwrap_or(0)))
}

/// Rewinds a failed instance into a new execution (see `sluice_store::repair`), and its failed
/// children with it; returns the new execution and the ids rewound.
pub(crate) fn rewind(
    connection: &Connection,
    now: TimestampMs,
    request: &OperatorRequest,
) -> StoreResult<(u64, Vec<String>)> {
    let id = request.instance_id.as_str();
    let Some((status, execution, _)) = row_of(connection, id)? else {
        return Err(StoreError::InstanceNotFound(id.to_string()));
    };
    if status != InstanceStatus::Failed {
        return Err(StoreError::NotAllowed {
            instance_id: id.to_string(),
            status: status.as_str(),
            why: "only a failed instance is rewound (restart a finished one from its input)",
        });
    }
    let history: Vec<Event> = connection
        .prepare_cached(
            "SELECT event FROM history WHERE instance_id = ?1 AND execution_id = ?2
             ORDER BY position",
        )
        .and_then(|mut statement| {
            statement
                .query_map(params![id, execution], |row| row.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(db_error)?
        .iter()
        .enumerate()
        .map(|(position, text)| {
            sluice_store::stored::decode(text, || {
                format!("history event {position} of instance '{id}'")
            })
        })
        .collect::<StoreResult<_>>()?;
    let from = u64::try_from(execution).unwrap_or(0);
    let plan = sluice_store::repair::plan_rewind(
        id,
        from,
        &history,
        now,
        &request.reason,
        &request.requested_by,
    )
    .map_err(|_| StoreError::NotAllowed {
        instance_id: id.to_string(),
        status: status.as_str(),
        why: "its history does not end with a failure to run again (a discarded instance \
              has nothing left to run): restart it from its input instead",
    })?;
    let Some((_, Message::Rewound { carried, .. })) = plan.messages.first() else {
        return Err(StoreError::Contract(
            "a rewind plan starts with its message".into(),
        ));
    };
    append(
        connection,
        id,
        execution,
        &Event::Rewound {
            reason: request.reason.clone(),
            requested_by: request.requested_by.clone(),
            from_execution: from,
            carried: carried.clone(),
        },
    )?;
    let ended_len = history_len_of(connection, id, execution)?;
    let next = execution + 1;
    let kept = i64::try_from(plan.kept).unwrap_or(i64::MAX);
    for statement in [
        "INSERT INTO executions (instance_id, execution_id, started_at_ms, finished_at_ms, history_len)
         SELECT instance_id, execution_id, started_at_ms, finished_at_ms, ?3 FROM instances
         WHERE instance_id = ?1 AND ?2 = ?2 AND ?4 = ?4",
        "INSERT INTO history (instance_id, execution_id, position, event)
         SELECT instance_id, ?2, position, event FROM history
         WHERE instance_id = ?1 AND execution_id = ?2 - 1 AND position < ?4 AND ?3 = ?3",
        "DELETE FROM inbox WHERE instance_id = ?1 AND ?2 = ?2 AND ?3 = ?3 AND ?4 = ?4",
    ] {
        connection
            .prepare_cached(statement)
            .and_then(|mut statement| statement.execute(params![id, next, ended_len, kept]))
            .map_err(db_error)?;
    }
    connection
        .prepare_cached(
            "UPDATE instances SET status = 'running', execution_id = ?2, output = NULL,
                 failure = NULL, updated_at_ms = ?3, finished_at_ms = NULL
             WHERE instance_id = ?1",
        )
        .and_then(|mut statement| statement.execute(params![id, next, now]))
        .map_err(db_error)?;
    let mut insert_message = connection
        .prepare_cached(
            "INSERT INTO inbox (instance_id, visible_at_ms, message) VALUES (?1, ?2, ?3)",
        )
        .map_err(db_error)?;
    for (visible_at_ms, message) in &plan.messages {
        insert_message
            .execute(params![id, visible_at_ms, encode(message)])
            .map_err(db_error)?;
    }
    let mut insert_activity = connection
        .prepare_cached(
            "INSERT INTO activities (instance_id, execution_id, activity_id, name, input, retry, visible_at_ms, attempt, task_queue)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8)",
        )
        .map_err(db_error)?;
    for activity in &plan.activities {
        insert_activity
            .execute(params![
                id,
                next,
                i64::try_from(activity.activity_id).unwrap_or(i64::MAX),
                activity.name,
                activity.input,
                activity.retry.as_ref().map(encode),
                now,
                activity.task_queue
            ])
            .map_err(db_error)?;
    }
    let mut rewound = vec![id.to_string()];
    for (command, child) in &plan.children {
        let row: Option<(String, Option<String>, Option<String>)> = connection
            .prepare_cached("SELECT status, output, failure FROM instances WHERE instance_id = ?1")
            .and_then(|mut statement| {
                statement
                    .query_row(params![child], |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                    })
                    .optional()
            })
            .map_err(db_error)?;
        let result = match row {
            None => Some(sluice_store::repair::missing_child(
                u64::try_from(next).unwrap_or(0),
                *command,
                child,
            )),
            Some((status, output, failure)) => match parse_status(&status)? {
                InstanceStatus::Completed => Some(Message::SubOrchestrationCompleted {
                    execution_id: u64::try_from(next).unwrap_or(0),
                    id: *command,
                    output: output.unwrap_or_default(),
                }),
                InstanceStatus::Failed => {
                    let child_request = OperatorRequest {
                        instance_id: child.clone(),
                        reason: format!("its parent '{id}' was rewound: {}", request.reason),
                        requested_by: request.requested_by.clone(),
                    };
                    match rewind(connection, now, &child_request) {
                        Ok((_, ids)) => {
                            rewound.extend(ids);
                            None
                        }
                        // A child that cannot run again reports its failure again.
                        Err(StoreError::NotAllowed { .. }) => {
                            Some(sluice_store::repair::failed_child(
                                u64::try_from(next).unwrap_or(0),
                                *command,
                                decode_failure(failure.as_deref(), child)?,
                            ))
                        }
                        Err(error) => return Err(error),
                    }
                }
                status if status.is_terminal() => Some(sluice_store::repair::failed_child(
                    u64::try_from(next).unwrap_or(0),
                    *command,
                    decode_failure(failure.as_deref(), child)?,
                )),
                // Still running: it reports when it ends (a carried command).
                _ => None,
            },
        };
        if let Some(message) = result {
            insert_message
                .execute(params![id, now, encode(&message)])
                .map_err(db_error)?;
        }
    }
    Ok((u64::try_from(next).unwrap_or(0), rewound))
}

fn decode_failure(text: Option<&str>, instance_id: &str) -> StoreResult<Option<Failure>> {
    text.map(|text| {
        sluice_store::stored::decode(text, || format!("the failure of instance '{instance_id}'"))
    })
    .transpose()
}
