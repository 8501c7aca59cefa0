//! An in-memory reference backend, for tests of the engine and of code built on it.
//!
//! Tables live in a map guarded by one mutex (this backend is for tests, not throughput). It
//! follows the [`TableWriter`] contract like a database would: it checks a whole batch before
//! applying any of it, refuses an insert whose key exists (as a unique index would), and it
//! can inject faults: transient failures on chosen calls and row errors for chosen rows.

use crate::backend::{
    BackendError, Batch, BatchOutcome, CheckpointSpec, CheckpointWriter, Committed, Cut,
    DeadLetter, DescribedColumn, LaneProgress, PrepareReport, PrepareRequest, Prepared, Recovered,
    SinkBackend, TableWriter,
};
use crate::checkpoint::Resume;
use crate::config::{CreateTable, Delivery, Evolve};
use crate::ident::Ident;
use crate::schema::{Column, Op, Row};
use crate::value::Value;
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

type RowPredicate = dyn Fn(&Row) -> bool + Send + Sync;

/// An in-memory database. Clones share the same tables.
#[derive(Clone, Default)]
pub struct MemoryBackend {
    state: Arc<Mutex<State>>,
    faults: Arc<Faults>,
}

#[derive(Default)]
struct State {
    tables: HashMap<String, Table>,
    dead_letters: HashMap<String, Vec<DeadLetter>>,
    /// Exactly-once progress rows: (sink, writer, lane) -> that lane's last cut.
    progress: HashMap<(String, u32, usize), LaneProgress>,
    /// The next marker `pre_commit` commits this many lanes, then fails as a crash would
    /// ([`MemoryBackend::crash_next_marker_commit_after`]).
    marker_crash_after: Option<usize>,
    /// Prepared transactions by global id; they survive the writer (a "crash").
    prepared: BTreeMap<String, Transaction>,
}

/// An open or prepared exactly-once transaction of one lane.
#[derive(Default)]
struct Transaction {
    table: String,
    changes: Vec<(Op, Vec<Value>)>,
    dead_letter_table: Option<String>,
    letters: Vec<DeadLetter>,
    progress: Option<((String, u32, usize), LaneProgress)>,
}

struct Table {
    columns: Vec<Column>,
    /// Positions of the primary key columns; empty for a heap table.
    key: Vec<usize>,
    /// Keyed tables: rows by key. Heap tables: by insertion number.
    rows: BTreeMap<Vec<KeyPart>, Vec<Value>>,
    inserted: u64,
}

#[derive(Default)]
struct Faults {
    transient_calls: Mutex<BTreeSet<u64>>,
    calls: AtomicU64,
    refuse: Mutex<Option<Arc<RowPredicate>>>,
}

impl MemoryBackend {
    /// An empty database.
    pub fn new() -> MemoryBackend {
        MemoryBackend::default()
    }

    /// Makes the given `write_batch` calls (counted from 1 across all tables) fail with a
    /// transient error before touching anything.
    pub fn fail_transiently_on_calls(&self, calls: impl IntoIterator<Item = u64>) {
        lock(&self.faults.transient_calls).extend(calls);
    }

    /// Makes every batch containing a row matching `refuse` fail with a row error (as a CHECK
    /// constraint would).
    pub fn refuse_rows(&self, refuse: impl Fn(&Row) -> bool + Send + Sync + 'static) {
        *lock(&self.faults.refuse) = Some(Arc::new(refuse));
    }

    /// `write_batch` calls so far.
    pub fn write_calls(&self) -> u64 {
        self.faults.calls.load(Ordering::SeqCst)
    }

    /// A table's rows in the table's column order: by key for keyed tables, in insertion order
    /// otherwise. `None` when the table does not exist.
    pub fn rows(&self, table: &str) -> Option<Vec<Vec<Value>>> {
        let state = lock(&self.state);
        state
            .tables
            .get(table)
            .map(|table| table.rows.values().cloned().collect())
    }

    /// The dead letters recorded in `table`.
    pub fn dead_letters(&self, table: &str) -> Vec<DeadLetter> {
        lock(&self.state)
            .dead_letters
            .get(table)
            .cloned()
            .unwrap_or_default()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One key value in an order like a database's: numbers by value, text and bytes by bytes.
type KeyPart = (u8, i128, Vec<u8>);

fn key_of(values: &[Value], key: &[usize]) -> Vec<KeyPart> {
    key.iter()
        .map(|&index| match &values[index] {
            Value::Null => (0, 0, Vec::new()),
            Value::Bool(value) => (1, i128::from(*value), Vec::new()),
            Value::I64(value) => (2, i128::from(*value), Vec::new()),
            Value::Date(value) => (3, i128::from(value.0), Vec::new()),
            Value::Timestamp(value) => (4, i128::from(value.0), Vec::new()),
            Value::TimestampTz(value) => (5, i128::from(value.0), Vec::new()),
            Value::Text(value) => (6, 0, value.as_bytes().to_vec()),
            Value::Bytes(value) => (7, 0, value.clone()),
            Value::Uuid(value) => (8, 0, value.0.to_vec()),
            // Not key types (see `ColumnType::can_be_key`); ordered by their text.
            other => (9, 0, format!("{other:?}").into_bytes()),
        })
        .collect()
}

#[async_trait]
impl SinkBackend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn describe_table(
        &self,
        table: &Ident,
    ) -> Result<Option<Vec<DescribedColumn>>, BackendError> {
        let state = lock(&self.state);
        Ok(state.tables.get(table.as_str()).map(|table| {
            table
                .columns
                .iter()
                .map(|column| DescribedColumn {
                    name: column.name.as_str().to_string(),
                    column_type: Some(column.column_type),
                    type_name: column.column_type.name().to_string(),
                    nullable: column.nullable,
                    filled_by_table: false,
                    read_only: false,
                })
                .collect()
        }))
    }

    async fn prepare(&self, request: &PrepareRequest) -> Result<Prepared, BackendError> {
        let schema = &request.schema;
        let table_name = schema.table().to_string();
        let mut state = lock(&self.state);
        let mut report = PrepareReport::default();
        let mut problems = Vec::new();
        if !state.tables.contains_key(&table_name) {
            if request.create_table == CreateTable::Never {
                return Err(BackendError::SchemaMismatch {
                    table: table_name,
                    problems: vec!["the table does not exist (create_table = \"never\")".into()],
                });
            }
            state.tables.insert(
                table_name.clone(),
                Table {
                    columns: schema.columns().to_vec(),
                    key: schema.key().to_vec(),
                    rows: BTreeMap::new(),
                    inserted: 0,
                },
            );
            report.created_table = true;
        }
        let table = state.tables.get_mut(&table_name).expect("present");
        let mut mapping = Vec::with_capacity(schema.columns().len());
        let mut to_add = Vec::new();
        for column in schema.columns() {
            match table.columns.iter().position(|found| {
                found
                    .name
                    .as_str()
                    .eq_ignore_ascii_case(column.name.as_str())
            }) {
                Some(position) => {
                    let found = &table.columns[position];
                    if found.column_type != column.column_type {
                        problems.push(format!(
                            "column {} has type {} in the table but {} in the schema",
                            column.name, found.column_type, column.column_type
                        ));
                    }
                    if column.nullable && !found.nullable {
                        problems.push(format!(
                            "column {} is NOT NULL in the table but nullable in the schema",
                            column.name
                        ));
                    }
                    mapping.push(position);
                }
                None if request.evolve == Evolve::AddColumns && column.nullable => {
                    to_add.push(column.clone());
                    mapping.push(table.columns.len() + to_add.len() - 1);
                }
                None => {
                    problems.push(format!("column {} is missing from the table", column.name));
                    mapping.push(usize::MAX);
                }
            }
        }
        for (position, found) in table.columns.iter().enumerate() {
            if !found.nullable && !mapping.contains(&position) {
                problems.push(format!(
                    "table column {} is NOT NULL and not in the schema",
                    found.name
                ));
            }
        }
        if request.mode.is_keyed() {
            let wanted: BTreeSet<usize> =
                schema.key().iter().map(|&index| mapping[index]).collect();
            let primary: BTreeSet<usize> = table.key.iter().copied().collect();
            if wanted != primary {
                problems.push("the key is not the table's primary key".into());
            }
        }
        if !problems.is_empty() {
            return Err(BackendError::SchemaMismatch {
                table: table_name,
                problems,
            });
        }
        for column in to_add {
            report.added_columns.push(column.name.clone());
            table.columns.push(column);
            for row in table.rows.values_mut() {
                row.push(Value::Null);
            }
        }
        if let Some(dead_letter_table) = &request.dead_letter_table {
            state
                .dead_letters
                .entry(dead_letter_table.to_string())
                .or_default();
        }
        let writer = Arc::new(MemoryWriter {
            backend: self.clone(),
            table: table_name,
            mapping,
            dead_letter_table: request.dead_letter_table.as_ref().map(ToString::to_string),
        });
        let checkpoints = request.checkpoints.clone().map(|spec| {
            Arc::new(MemoryCheckpoints {
                writer: writer.clone(),
                lanes: (0..request.flush_concurrency)
                    .map(|_| Mutex::new(None))
                    .collect(),
                spec,
            }) as Arc<dyn CheckpointWriter>
        });
        Ok(Prepared {
            writer,
            report,
            checkpoints,
        })
    }
}

struct MemoryWriter {
    backend: MemoryBackend,
    table: String,
    /// Schema column position -> table column position.
    mapping: Vec<usize>,
    dead_letter_table: Option<String>,
}

impl MemoryWriter {
    /// Checks a batch against the table (and the keys `pending` inserts) and returns its
    /// changes in table column order, or the error that refuses the whole batch.
    fn check(
        &self,
        state: &State,
        batch: &Batch,
        pending: &[(Op, Vec<Value>)],
    ) -> Result<Vec<(Op, Vec<Value>)>, BackendError> {
        let faults = &self.backend.faults;
        let call = faults.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if lock(&faults.transient_calls).remove(&call) {
            return Err(BackendError::Transient {
                code: "memory.injected",
                message: format!("injected transient failure on call {call}"),
            });
        }
        let refuse = lock(&faults.refuse).clone();
        let table = state
            .tables
            .get(&self.table)
            .ok_or_else(|| BackendError::Fatal {
                code: "memory.no_table",
                message: format!("table {} was dropped", self.table),
            })?;
        let mut table_rows = Vec::with_capacity(batch.len());
        let mut seen: BTreeSet<Vec<KeyPart>> = pending
            .iter()
            .filter(|(op, _)| *op == Op::Insert && !table.key.is_empty())
            .map(|(_, values)| key_of(values, &table.key))
            .collect();
        for row in batch.rows() {
            if refuse.as_ref().is_some_and(|refuse| refuse(row)) {
                return Err(BackendError::Row {
                    code: "memory.refused",
                    message: "row refused by the injected check".into(),
                });
            }
            let mut values = vec![Value::Null; table.columns.len()];
            for (from, &to) in self.mapping.iter().enumerate() {
                values[to] = row.values[from].clone();
            }
            if row.op == Op::Insert && !table.key.is_empty() {
                let key = key_of(&values, &table.key);
                if table.rows.contains_key(&key) || !seen.insert(key) {
                    return Err(BackendError::Row {
                        code: "memory.unique_violation",
                        message: "duplicate key".into(),
                    });
                }
            }
            table_rows.push((row.op, values));
        }
        Ok(table_rows)
    }
}

/// Applies checked changes to a table.
fn apply(state: &mut State, table: &str, changes: Vec<(Op, Vec<Value>)>) {
    let Some(table) = state.tables.get_mut(table) else {
        return;
    };
    for (op, values) in changes {
        let key = if table.key.is_empty() {
            table.inserted += 1;
            vec![(0, i128::from(table.inserted), Vec::new())]
        } else {
            key_of(&values, &table.key)
        };
        match op {
            Op::Delete => {
                table.rows.remove(&key);
            }
            Op::Insert | Op::Upsert => {
                table.rows.insert(key, values);
            }
        }
    }
}

fn apply_transaction(state: &mut State, transaction: Transaction) {
    apply(state, &transaction.table, transaction.changes);
    if let Some(table) = transaction.dead_letter_table {
        state
            .dead_letters
            .entry(table)
            .or_default()
            .extend(transaction.letters);
    }
    if let Some((key, committed)) = transaction.progress {
        state.progress.insert(key, committed);
    }
}

#[async_trait]
impl TableWriter for MemoryWriter {
    async fn write_batch(&self, batch: &Batch) -> Result<BatchOutcome, BackendError> {
        let mut state = lock(&self.backend.state);
        // Check everything first: all or nothing.
        let changes = self.check(&state, batch, &[])?;
        apply(&mut state, &self.table, changes);
        Ok(BatchOutcome {
            applied: batch.len(),
            rejected: Vec::new(),
        })
    }

    async fn write_dead_letters(&self, letters: &[DeadLetter]) -> Result<(), BackendError> {
        let table = self
            .dead_letter_table
            .as_ref()
            .ok_or_else(|| BackendError::Fatal {
                code: "memory.no_dead_letter_table",
                message: "no dead-letter table was prepared".into(),
            })?;
        lock(&self.backend.state)
            .dead_letters
            .entry(table.clone())
            .or_default()
            .extend_from_slice(letters);
        Ok(())
    }
}

/// Exactly-once in memory: each lane's open transaction is a list of changes, lost with the
/// writer (as a crash loses them); prepared ones live in the shared state.
struct MemoryCheckpoints {
    writer: Arc<MemoryWriter>,
    lanes: Vec<Mutex<Option<Transaction>>>,
    spec: CheckpointSpec,
}

impl MemoryCheckpoints {
    fn gid_prefix(&self) -> String {
        format!("sluice:{}:{}:", self.spec.sink_id, self.spec.writer_id)
    }

    fn lane(&self, lane: usize) -> Result<&Mutex<Option<Transaction>>, BackendError> {
        self.lanes.get(lane).ok_or_else(|| BackendError::Fatal {
            code: "memory.no_lane",
            message: format!("lane {lane} is beyond flush_concurrency"),
        })
    }

    /// (checkpoint, lane) of this writer's prepared transactions.
    fn prepared(&self, state: &State) -> Vec<(u64, String)> {
        let prefix = self.gid_prefix();
        state
            .prepared
            .keys()
            .filter_map(|gid| {
                let rest = gid.strip_prefix(&prefix)?;
                let (checkpoint, _lane) = rest.split_once(':')?;
                Some((checkpoint.parse().ok()?, gid.clone()))
            })
            .collect()
    }
}

#[async_trait]
impl CheckpointWriter for MemoryCheckpoints {
    async fn write_batch(&self, lane: usize, batch: &Batch) -> Result<BatchOutcome, BackendError> {
        let mut slot = lock(self.lane(lane)?);
        let transaction = slot.get_or_insert_with(|| Transaction {
            table: self.writer.table.clone(),
            dead_letter_table: self.writer.dead_letter_table.clone(),
            ..Transaction::default()
        });
        let state = lock(&self.writer.backend.state);
        let changes = self.writer.check(&state, batch, &transaction.changes)?;
        transaction.changes.extend(changes);
        Ok(BatchOutcome {
            applied: batch.len(),
            rejected: Vec::new(),
        })
    }

    async fn write_dead_letters(
        &self,
        lane: usize,
        letters: &[DeadLetter],
    ) -> Result<(), BackendError> {
        if self.writer.dead_letter_table.is_none() {
            return Err(BackendError::Fatal {
                code: "memory.no_dead_letter_table",
                message: "no dead-letter table was prepared".into(),
            });
        }
        let mut slot = lock(self.lane(lane)?);
        let transaction = slot.get_or_insert_with(|| Transaction {
            table: self.writer.table.clone(),
            dead_letter_table: self.writer.dead_letter_table.clone(),
            ..Transaction::default()
        });
        transaction.letters.extend_from_slice(letters);
        Ok(())
    }

    async fn pre_commit(&self, cut: &Cut<'_>) -> Result<(), BackendError> {
        let sink = self.spec.sink_id.to_string();
        let writer = self.spec.writer_id;
        let checkpoint_id = cut.checkpoint_id;
        let mut state = lock(&self.writer.backend.state);
        match self.spec.delivery {
            Delivery::TwoPhase => {
                for (lane, slot) in self.lanes.iter().enumerate() {
                    if let Some(mut transaction) = lock(slot).take() {
                        transaction.progress =
                            Some(((sink.clone(), writer, lane), LaneProgress::new(lane, cut)));
                        let gid = format!("{}{checkpoint_id}:{lane}", self.gid_prefix());
                        state.prepared.insert(gid, transaction);
                    }
                }
            }
            _ => {
                // Lane by lane, as the PostgreSQL marker does: each lane's transaction holds
                // its rows and its progress row.
                let crash_after = state.marker_crash_after.take();
                for (lane, slot) in self.lanes.iter().enumerate() {
                    if crash_after == Some(lane) {
                        for slot in &self.lanes[lane..] {
                            lock(slot).take();
                        }
                        return Err(BackendError::Fatal {
                            code: "memory.crashed",
                            message: format!(
                                "the process \"died\" after {lane} lanes committed checkpoint {checkpoint_id}"
                            ),
                        });
                    }
                    let mut transaction = lock(slot).take().unwrap_or_else(|| Transaction {
                        table: self.writer.table.clone(),
                        ..Transaction::default()
                    });
                    transaction.progress =
                        Some(((sink.clone(), writer, lane), LaneProgress::new(lane, cut)));
                    apply_transaction(&mut state, transaction);
                }
            }
        }
        Ok(())
    }

    async fn commit(&self, checkpoint_id: u64) -> Result<(), BackendError> {
        let mut state = lock(&self.writer.backend.state);
        for (checkpoint, gid) in self.prepared(&state) {
            if checkpoint <= checkpoint_id
                && let Some(transaction) = state.prepared.remove(&gid)
            {
                apply_transaction(&mut state, transaction);
            }
        }
        Ok(())
    }

    async fn abort(&self, checkpoint_id: u64) -> Result<(), BackendError> {
        for slot in &self.lanes {
            lock(slot).take();
        }
        let mut state = lock(&self.writer.backend.state);
        for (checkpoint, gid) in self.prepared(&state) {
            if checkpoint >= checkpoint_id {
                state.prepared.remove(&gid);
            }
        }
        Ok(())
    }

    async fn recover(
        &self,
        restored: Option<u64>,
        resume: Resume,
    ) -> Result<Recovered, BackendError> {
        for slot in &self.lanes {
            lock(slot).take();
        }
        let mut state = lock(&self.writer.backend.state);
        if self.spec.delivery != Delivery::TwoPhase {
            return Recovered::from_lanes(&self.rows(&state)).map_err(|problem| {
                BackendError::Fatal {
                    code: "memory.progress_corrupt",
                    message: problem,
                }
            });
        }
        let latest = |state: &State| {
            self.rows(state)
                .into_iter()
                .max_by_key(|row| row.checkpoint_id)
                .map(|row| Committed {
                    checkpoint_id: row.checkpoint_id,
                    state: row.state,
                })
        };
        let completed = match resume {
            Resume::Restored => restored,
            Resume::Committed => restored.max(latest(&state).map(|c| c.checkpoint_id)),
        };
        for (checkpoint, gid) in self.prepared(&state) {
            let transaction = state.prepared.remove(&gid).expect("listed");
            if completed.is_some_and(|completed| checkpoint <= completed) {
                apply_transaction(&mut state, transaction);
            }
        }
        Ok(Recovered::whole(latest(&state)))
    }
}

impl MemoryCheckpoints {
    /// This writer's progress rows.
    fn rows(&self, state: &State) -> Vec<LaneProgress> {
        let sink = self.spec.sink_id.as_str();
        let writer = self.spec.writer_id;
        state
            .progress
            .iter()
            .filter(|((s, w, _), _)| s == sink && *w == writer)
            .map(|(_, row)| row.clone())
            .collect()
    }
}

impl MemoryBackend {
    /// Makes the next `transactional_marker` pre-commit commit only its first `lanes` lanes
    /// and then fail, as a process that died between the lanes' commits would leave the
    /// database (for tests of the partial checkpoint's replay).
    pub fn crash_next_marker_commit_after(&self, lanes: usize) {
        lock(&self.state).marker_crash_after = Some(lanes);
    }

    /// Global ids of prepared (two-phase) transactions left in the database.
    pub fn prepared_transactions(&self) -> Vec<String> {
        lock(&self.state).prepared.keys().cloned().collect()
    }

    /// Commits one prepared transaction by its global id, as `COMMIT PREPARED` would (for
    /// tests of a crash between two lanes' commits). Returns whether it was there.
    pub fn commit_prepared(&self, gid: &str) -> bool {
        let mut state = lock(&self.state);
        match state.prepared.remove(gid) {
            Some(transaction) => {
                apply_transaction(&mut state, transaction);
                true
            }
            None => false,
        }
    }
}
