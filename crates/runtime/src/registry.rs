use crate::activity::ActivityContext;
use crate::error::StartError;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sluice_history::{Failure, codes};
use sluice_replay::{Orchestration, OrchestrationContext};
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
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
    /// Code by name, then by version.
    pub(crate) orchestrations: HashMap<String, BTreeMap<u32, Arc<dyn Orchestration>>>,
    pub(crate) activities: HashMap<String, Arc<dyn Activity>>,
    /// Names registered more than once: (kind, name), in the order of the calls.
    duplicates: Vec<(&'static str, String)>,
    /// Registrations that cannot work, described.
    invalid: Vec<String>,
}

/// Wraps typed code as an [`Orchestration`] over JSON text.
fn typed_orchestration<I, O, F, Fut>(code: F) -> impl Orchestration
where
    I: DeserializeOwned + Send + 'static,
    O: Serialize + Send + 'static,
    F: Fn(OrchestrationContext, I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, Failure>> + Send + 'static,
{
    let code = Arc::new(code);
    move |ctx: OrchestrationContext, input: String| {
        let code = code.clone();
        async move {
            let input: I = serde_json::from_str(&input)
                .map_err(|e| serde_failure("orchestration input", e))?;
            let output = code(ctx, input).await?;
            serde_json::to_string(&output).map_err(|e| serde_failure("orchestration output", e))
        }
    }
}

fn serde_failure(what: &str, error: serde_json::Error) -> Failure {
    Failure::new(codes::SERDE, format!("{what}: {error}"))
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers an orchestration taking and returning text, as version 1 of its name.
    pub fn orchestration(self, name: impl Into<String>, code: impl Orchestration) -> Self {
        self.orchestration_version(name, 1, code)
    }

    /// Registers version `version` (1 or more) of an orchestration, beside its other versions.
    ///
    /// An instance runs the version it started with to its end (a start names one, or takes the
    /// newest registered in the process that starts it); continue-as-new and restarts take the
    /// newest. So code that running instances depend on can change shape without breaking
    /// them: register the new code as a new version and keep the old one until its instances
    /// are done (`sluice instances list --status running --name NAME` shows them). Smaller
    /// changes inside one version use patches (`OrchestrationContext::is_patched`).
    pub fn orchestration_version(
        mut self,
        name: impl Into<String>,
        version: u32,
        code: impl Orchestration,
    ) -> Self {
        let name = name.into();
        if version == 0 {
            self.invalid.push(format!(
                "orchestration '{name}' registered as version 0 (versions start at 1)"
            ));
            return self;
        }
        let versions = self.orchestrations.entry(name.clone()).or_default();
        match versions.entry(version) {
            std::collections::btree_map::Entry::Occupied(_) => {
                let shown = if version == 1 {
                    name
                } else {
                    format!("{name} v{version}")
                };
                self.duplicates.push(("orchestration", shown));
            }
            std::collections::btree_map::Entry::Vacant(free) => {
                free.insert(Arc::new(code));
            }
        }
        self
    }

    /// [`Registry::orchestration_typed`] as version `version` (see
    /// [`Registry::orchestration_version`]).
    pub fn orchestration_typed_version<I, O, F, Fut>(
        self,
        name: impl Into<String>,
        version: u32,
        code: F,
    ) -> Self
    where
        I: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        F: Fn(OrchestrationContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, Failure>> + Send + 'static,
    {
        self.orchestration_version(name, version, typed_orchestration(code))
    }

    /// The newest version of `name` registered here.
    pub fn newest_version(&self, name: &str) -> Option<u32> {
        self.orchestrations
            .get(name)
            .and_then(|versions| versions.keys().next_back().copied())
    }

    /// The code of `name` at `version`.
    pub(crate) fn code(&self, name: &str, version: u32) -> Option<&Arc<dyn Orchestration>> {
        self.orchestrations.get(name)?.get(&version)
    }

    /// Registers an orchestration with serde-typed (JSON) input and output.
    pub fn orchestration_typed<I, O, F, Fut>(self, name: impl Into<String>, code: F) -> Self
    where
        I: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        F: Fn(OrchestrationContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, Failure>> + Send + 'static,
    {
        self.orchestration(name, typed_orchestration(code))
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
        if let Some(why) = self.invalid.first() {
            return Err(StartError::InvalidRegistration(why.clone()));
        }
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
