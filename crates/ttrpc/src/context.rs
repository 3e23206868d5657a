//! Per-call context on the server side: metadata and deadline.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::proto::KeyValue;

/// Call metadata: lower-cased keys, each with one or more values, as in Go's ttrpc `MD`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    map: HashMap<String, Vec<String>>,
}

impl Metadata {
    /// Empty metadata.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a value under `key` (keys are compared case-insensitively).
    pub fn append(&mut self, key: &str, value: impl Into<String>) {
        self.map
            .entry(key.to_ascii_lowercase())
            .or_default()
            .push(value.into());
    }

    /// Replaces the values under `key`.
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        self.map
            .insert(key.to_ascii_lowercase(), vec![value.into()]);
    }

    /// The first value under `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.map
            .get(&key.to_ascii_lowercase())
            .and_then(|v| v.first())
            .map(String::as_str)
    }

    /// All values under `key`.
    pub fn get_all(&self, key: &str) -> &[String] {
        self.map
            .get(&key.to_ascii_lowercase())
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// True when there is no entry.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub(crate) fn from_pairs(pairs: Vec<KeyValue>) -> Self {
        let mut md = Metadata::new();
        for kv in pairs {
            md.append(&kv.key, kv.value);
        }
        md
    }

    pub(crate) fn to_pairs(&self) -> Vec<KeyValue> {
        let mut out = Vec::new();
        for (k, vs) in &self.map {
            for v in vs {
                out.push(KeyValue {
                    key: k.clone(),
                    value: v.clone(),
                });
            }
        }
        out
    }
}

/// What a server handler knows about its call.
#[derive(Debug, Clone)]
pub struct Context {
    /// Metadata sent with the request.
    pub metadata: Metadata,
    /// When the caller stops waiting, from the request's `timeout_nano`.
    pub deadline: Option<Instant>,
    /// Full method path, `/<service>/<method>`.
    pub method: String,
}

impl Context {
    pub(crate) fn new(method: String, metadata: Metadata, timeout_nano: i64) -> Self {
        let deadline = if timeout_nano > 0 {
            Some(Instant::now() + Duration::from_nanos(timeout_nano as u64))
        } else {
            None
        };
        Context {
            metadata,
            deadline,
            method,
        }
    }

    /// Time left before the deadline, if there is one.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }
}
