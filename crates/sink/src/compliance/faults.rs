//! Fail points around any backend's exactly-once calls, for the compliance suite.
//!
//! [`FaultyBackend`] wraps a real backend; an armed [`FailPoint`] makes the chosen call fail
//! with a transient error either before the real call (nothing happened) or after it (it
//! happened, but the answer is lost: the case a crash right after the call produces).

use crate::backend::{
    BackendError, Batch, BatchOutcome, CheckpointWriter, Cut, DeadLetter, DescribedColumn,
    PrepareRequest, Prepared, Recovered, SinkBackend,
};
use crate::checkpoint::Resume;
use crate::ident::Ident;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A phase boundary where a failure can be injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailPoint {
    /// Before a batch is written into the checkpoint's transaction.
    BeforeWrite,
    /// Before `pre_commit` reaches the database.
    BeforePreCommit,
    /// After `pre_commit` succeeded in the database, its answer lost.
    AfterPreCommit,
    /// Before `commit` reaches the database.
    BeforeCommit,
    /// After `commit` succeeded in the database, its answer lost.
    AfterCommit,
    /// Before `recover` reaches the database.
    BeforeRecover,
}

impl FailPoint {
    /// Every fail point.
    pub const ALL: [FailPoint; 6] = [
        FailPoint::BeforeWrite,
        FailPoint::BeforePreCommit,
        FailPoint::AfterPreCommit,
        FailPoint::BeforeCommit,
        FailPoint::AfterCommit,
        FailPoint::BeforeRecover,
    ];
}

/// Armed fail points, shared by a [`FaultyBackend`] and the test.
#[derive(Default)]
pub struct FailPoints {
    /// Point -> calls to let through before failing one.
    armed: Mutex<HashMap<FailPoint, u64>>,
    fired: Mutex<Vec<FailPoint>>,
}

impl FailPoints {
    /// Makes the call at `point` fail after letting `skip` such calls through (once).
    pub fn arm(&self, point: FailPoint, skip: u64) {
        lock(&self.armed).insert(point, skip);
    }

    /// Disarms every point.
    pub fn clear(&self) {
        lock(&self.armed).clear();
    }

    /// The points that fired, in order.
    pub fn fired(&self) -> Vec<FailPoint> {
        lock(&self.fired).clone()
    }

    fn check(&self, point: FailPoint) -> Result<(), BackendError> {
        let mut armed = lock(&self.armed);
        match armed.get_mut(&point) {
            Some(0) => {
                armed.remove(&point);
                lock(&self.fired).push(point);
                Err(BackendError::Transient {
                    code: "compliance.injected",
                    message: format!("injected failure at {point:?}"),
                })
            }
            Some(skip) => {
                *skip -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A backend whose checkpoint writer fails at armed points.
pub struct FaultyBackend<'a> {
    inner: &'a dyn SinkBackend,
    points: Arc<FailPoints>,
}

impl<'a> FaultyBackend<'a> {
    /// Wraps `inner`; arm points through [`FaultyBackend::points`].
    pub fn new(inner: &'a dyn SinkBackend) -> FaultyBackend<'a> {
        FaultyBackend {
            inner,
            points: Arc::new(FailPoints::default()),
        }
    }

    /// The fail points.
    pub fn points(&self) -> &Arc<FailPoints> {
        &self.points
    }
}

#[async_trait]
impl SinkBackend for FaultyBackend<'_> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn describe_table(
        &self,
        table: &Ident,
    ) -> Result<Option<Vec<DescribedColumn>>, BackendError> {
        self.inner.describe_table(table).await
    }

    fn create_table_sql(&self, schema: &crate::Schema) -> Option<String> {
        self.inner.create_table_sql(schema)
    }

    async fn prepare(&self, request: &PrepareRequest) -> Result<Prepared, BackendError> {
        let mut prepared = self.inner.prepare(request).await?;
        prepared.checkpoints = prepared.checkpoints.map(|inner| {
            Arc::new(FaultyCheckpoints {
                inner,
                points: self.points.clone(),
            }) as Arc<dyn CheckpointWriter>
        });
        Ok(prepared)
    }
}

struct FaultyCheckpoints {
    inner: Arc<dyn CheckpointWriter>,
    points: Arc<FailPoints>,
}

#[async_trait]
impl CheckpointWriter for FaultyCheckpoints {
    async fn write_batch(&self, lane: usize, batch: &Batch) -> Result<BatchOutcome, BackendError> {
        self.points.check(FailPoint::BeforeWrite)?;
        self.inner.write_batch(lane, batch).await
    }

    async fn write_dead_letters(
        &self,
        lane: usize,
        letters: &[DeadLetter],
    ) -> Result<(), BackendError> {
        self.inner.write_dead_letters(lane, letters).await
    }

    async fn pre_commit(&self, cut: &Cut<'_>) -> Result<(), BackendError> {
        self.points.check(FailPoint::BeforePreCommit)?;
        self.inner.pre_commit(cut).await?;
        self.points.check(FailPoint::AfterPreCommit)
    }

    async fn commit(&self, checkpoint_id: u64) -> Result<(), BackendError> {
        self.points.check(FailPoint::BeforeCommit)?;
        self.inner.commit(checkpoint_id).await?;
        self.points.check(FailPoint::AfterCommit)
    }

    async fn abort(&self, checkpoint_id: u64) -> Result<(), BackendError> {
        self.inner.abort(checkpoint_id).await
    }

    async fn recover(
        &self,
        restored: Option<u64>,
        resume: Resume,
    ) -> Result<Recovered, BackendError> {
        self.points.check(FailPoint::BeforeRecover)?;
        self.inner.recover(restored, resume).await
    }
}
