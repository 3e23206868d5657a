//! One-time tokens for prepared requests, as the kubelet's request cache: a token is random,
//! usable once, and expires after a TTL (one minute by default); at most a fixed number are
//! outstanding.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::StreamError;
use crate::request::Prepared;

#[derive(Debug)]
pub(crate) struct TokenCache {
    ttl: Duration,
    max: usize,
    // std's Mutex: every critical section is a map operation, never held across an await.
    entries: Mutex<HashMap<String, (Prepared, Instant)>>,
}

impl TokenCache {
    pub(crate) fn new(ttl: Duration, max: usize) -> Self {
        Self {
            ttl,
            max,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Stores `req` and returns its token.
    pub(crate) fn insert(&self, req: Prepared) -> Result<String, StreamError> {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap();
        entries.retain(|_, (_, expires)| *expires > now);
        if entries.len() >= self.max {
            return Err(StreamError::TooManyRequests);
        }
        // 122 random bits from the OS's generator, as 32 hex digits: URL-safe and unguessable.
        let token = uuid::Uuid::new_v4().simple().to_string();
        entries.insert(token.clone(), (req, now + self.ttl));
        Ok(token)
    }

    /// Takes the request for `token` if it exists and has not expired.
    pub(crate) fn consume(&self, token: &str) -> Option<Prepared> {
        let (req, expires) = self.entries.lock().unwrap().remove(token)?;
        (expires > Instant::now()).then_some(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::PortForwardRequest;

    fn pf() -> Prepared {
        Prepared::PortForward(PortForwardRequest {
            pod_sandbox_id: "p".into(),
            ports: vec![80],
        })
    }

    #[test]
    fn tokens_are_single_use() {
        let c = TokenCache::new(Duration::from_secs(60), 10);
        let t = c.insert(pf()).unwrap();
        assert_eq!(t.len(), 32);
        assert!(c.consume(&t).is_some());
        assert!(c.consume(&t).is_none());
        assert!(c.consume("nope").is_none());
    }

    #[test]
    fn tokens_expire() {
        let c = TokenCache::new(Duration::from_millis(20), 10);
        let t = c.insert(pf()).unwrap();
        std::thread::sleep(Duration::from_millis(40));
        assert!(c.consume(&t).is_none());
    }

    #[test]
    fn in_flight_requests_are_bounded() {
        let c = TokenCache::new(Duration::from_millis(30), 2);
        c.insert(pf()).unwrap();
        let t = c.insert(pf()).unwrap();
        assert!(matches!(c.insert(pf()), Err(StreamError::TooManyRequests)));
        // Consuming one frees a slot; expiry frees the rest.
        c.consume(&t).unwrap();
        c.insert(pf()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        c.insert(pf()).unwrap();
        c.insert(pf()).unwrap();
    }
}
