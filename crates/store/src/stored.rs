//! The stored text form of history types, shared by every store: JSON for events, messages,
//! retry policies and failures, and the status names of [`InstanceStatus::as_str`].

use crate::{StoreError, StoreResult};
use sluice_history::InstanceStatus;

/// A history value as stored.
pub fn encode<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("history types always serialise")
}

/// Decodes a stored value; `row` names it in the error. The stored text itself is left out of
/// the error (it may hold user data, and errors reach logs).
pub fn decode<T: serde::de::DeserializeOwned>(
    text: &str,
    row: impl FnOnce() -> String,
) -> StoreResult<T> {
    serde_json::from_str(text)
        .map_err(|error| StoreError::Corrupt(format!("{} cannot be decoded: {error}", row())))
}

/// A stored status.
pub fn parse_status(text: &str) -> StoreResult<InstanceStatus> {
    InstanceStatus::parse(text).ok_or_else(|| StoreError::Corrupt(format!("status {text}")))
}
