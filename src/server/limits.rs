//! Time and concurrency limits of the HTTP server.

use std::time::Duration;

use crate::store::KeyPolicy;

/// How long the server waits on clients and on itself, and how much it takes on at once.
///
/// ```
/// let limits = interview_store::server::Limits::default();
/// assert_eq!(limits.max_concurrent_requests, 256);
/// ```
#[derive(Debug, Clone)]
pub struct Limits {
    /// `INTERVIEW_HEADER_READ_TIMEOUT_MS` (default 5,000): a connection that has not
    /// sent a whole request head within this is closed (slow-header clients).
    pub header_read_timeout: Duration,
    /// `INTERVIEW_HTTP_TIMEOUT_MS` (default 30,000): longest a whole request may
    /// take, body upload included; then 408.
    pub http_timeout: Duration,
    /// `INTERVIEW_MAX_CONCURRENT_REQUESTS` (default 256): requests handled at
    /// once; more are answered 503 `unavailable` at once rather than queued.
    pub max_concurrent_requests: usize,
    /// `INTERVIEW_SHUTDOWN_TIMEOUT_MS` (default 10,000): after the stop signal,
    /// how long requests in flight may finish before the server returns anyway.
    pub shutdown_timeout: Duration,
    /// `INTERVIEW_IDEMPOTENCY_RETENTION_HOURS` (default 24): how long an
    /// `Idempotency-Key` and its response are kept and replayed.
    pub idempotency_retention: Duration,
    /// `INTERVIEW_SLOW_REQUEST_MS` (default 250): a request that takes at least
    /// this long is logged at warn with its route, backend, total time, time
    /// held by a pause and time in the database; `0` logs none.
    pub slow_request: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(5),
            http_timeout: Duration::from_secs(30),
            max_concurrent_requests: 256,
            shutdown_timeout: Duration::from_secs(10),
            idempotency_retention: Duration::from_secs(24 * 3600),
            slow_request: Duration::from_millis(250),
        }
    }
}

impl Limits {
    /// The key policy: a claim outlives any request (twice the HTTP timeout) before a retry may take it over.
    pub fn key_policy(&self) -> KeyPolicy {
        KeyPolicy {
            lease: self.http_timeout.saturating_mul(2),
            retention: self.idempotency_retention,
        }
    }
}
