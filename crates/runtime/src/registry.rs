use crate::activity::ActivityContext;
use crate::error::StartError;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sluice_history::{Failure, codes};
use sluice_replay::{Orchestration, OrchestrationContext};
use std::collections::HashMap;
use std::collections::hash_map::Entry;
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

/// Orchestrations and activities by name. A name registered twice (of the same kind) keeps the
/// first code and makes [`Registry::validate`] and [`Runtime::start`](crate::Runtime::start)
/// refuse the registry: the second registration is almost always a copy-paste slip, and which
/// code ran would otherwise depend on the order of the calls.
#[derive(Clone, Default)]
pub struct Registry {
    pub(crate) orchestrations: HashMap<String, Arc<dyn Orchestration>>,
    pub(crate) activities: HashMap<String, Arc<dyn Activity>>,
    /// Names registered more than once: (kind, name), in the order of the calls.
    duplicates: Vec<(&'static str, String)>,
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
        let name = name.into();
        match self.orchestrations.entry(name) {
            Entry::Occupied(taken) => self.duplicates.push(("orchestration", taken.key().clone())),
            Entry::Vacant(free) => {
                free.insert(Arc::new(code));
            }
        }
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
        let name = name.into();
        match self.activities.entry(name) {
            Entry::Occupied(taken) => self.duplicates.push(("activity", taken.key().clone())),
            Entry::Vacant(free) => {
                free.insert(Arc::new(code));
            }
        }
        self
    }

    /// Whether the registry can be started: [`StartError::DuplicateName`] for the first name
    /// registered twice.
    pub fn validate(&self) -> Result<(), StartError> {
        match self.duplicates.first() {
            Some((kind, name)) => Err(StartError::DuplicateName {
                kind,
                name: name.clone(),
            }),
            None => Ok(()),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn first(_ctx: ActivityContext, _input: String) -> Result<String, Failure> {
        Ok("first".into())
    }

    async fn second(_ctx: ActivityContext, _input: String) -> Result<String, Failure> {
        Ok("second".into())
    }

    #[test]
    fn a_name_registered_twice_is_refused() {
        let registry = Registry::new().activity("a", first).activity("b", second);
        assert_eq!(registry.validate(), Ok(()));
        let registry = registry.activity("a", second);
        let error = registry.validate().unwrap_err();
        assert_eq!(
            error,
            StartError::DuplicateName {
                kind: "activity",
                name: "a".into()
            }
        );
        assert_eq!(error.code(), "runtime.duplicate_name");
        assert_eq!(error.to_string(), "activity 'a' is registered twice");
        // The same name as an orchestration and as an activity is two different things.
        let both = Registry::new().activity("a", first).orchestration(
            "a",
            |_ctx: OrchestrationContext, input: String| async move { Ok(input) },
        );
        assert_eq!(both.validate(), Ok(()));
    }
}
