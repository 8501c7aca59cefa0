use crate::activity::ActivityContext;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sluice_history::{Failure, codes};
use sluice_replay::{Orchestration, OrchestrationContext};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// The future an activity returns.
pub type BoxedActivityFuture = Pin<Box<dyn Future<Output = Result<String, Failure>> + Send>>;

/// An activity: ordinary async code that may do anything (I/O, clocks, randomness).
pub trait Activity: Send + Sync + 'static {
    /// Runs one attempt.
    fn run(&self, ctx: ActivityContext, input: String) -> BoxedActivityFuture;
}

impl<F, Fut> Activity for F
where
    F: Fn(ActivityContext, String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, Failure>> + Send + 'static,
{
    fn run(&self, ctx: ActivityContext, input: String) -> BoxedActivityFuture {
        Box::pin(self(ctx, input))
    }
}

/// Orchestrations and activities by name.
#[derive(Clone, Default)]
pub struct Registry {
    pub(crate) orchestrations: HashMap<String, Arc<dyn Orchestration>>,
    pub(crate) activities: HashMap<String, Arc<dyn Activity>>,
}

fn serde_failure(what: &str, error: serde_json::Error) -> Failure {
    Failure::new(codes::SERDE, format!("{what}: {error}"))
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers an orchestration taking and returning text.
    pub fn orchestration(mut self, name: impl Into<String>, code: impl Orchestration) -> Self {
        self.orchestrations.insert(name.into(), Arc::new(code));
        self
    }

    /// Registers an orchestration with serde-typed (JSON) input and output.
    pub fn orchestration_typed<I, O, F, Fut>(self, name: impl Into<String>, code: F) -> Self
    where
        I: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        F: Fn(OrchestrationContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, Failure>> + Send + 'static,
    {
        let code = Arc::new(code);
        self.orchestration(name, move |ctx: OrchestrationContext, input: String| {
            let code = code.clone();
            async move {
                let input: I = serde_json::from_str(&input)
                    .map_err(|e| serde_failure("orchestration input", e))?;
                let output = code(ctx, input).await?;
                serde_json::to_string(&output).map_err(|e| serde_failure("orchestration output", e))
            }
        })
    }

    /// Registers an activity taking and returning text.
    pub fn activity(mut self, name: impl Into<String>, code: impl Activity) -> Self {
        self.activities.insert(name.into(), Arc::new(code));
        self
    }

    /// Registers an activity with serde-typed (JSON) input and output.
    pub fn activity_typed<I, O, F, Fut>(self, name: impl Into<String>, code: F) -> Self
    where
        I: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        F: Fn(ActivityContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, Failure>> + Send + 'static,
    {
        let code = Arc::new(code);
        self.activity(name, move |ctx: ActivityContext, input: String| {
            let code = code.clone();
            async move {
                let input: I =
                    serde_json::from_str(&input).map_err(|e| serde_failure("activity input", e))?;
                let output = code(ctx, input).await?;
                serde_json::to_string(&output).map_err(|e| serde_failure("activity output", e))
            }
        })
    }
}
