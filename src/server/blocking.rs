//! Running blocking store calls from async handlers.

use std::time::Duration;

use crate::error::Error;

/// Runs `f` on tokio's blocking pool, waiting at most `limit`.
///
/// A panic inside `f` is re-raised in the caller (and turned into a 500 by
/// the router's panic layer) rather than lost. A call that outlives `limit`
/// answers [`Error::PoolTimeout`]-like unavailability; the database call itself
/// finishes in the background.
pub async fn run<T, F>(limit: Duration, f: F) -> Result<T, Error>
where
    F: FnOnce() -> Result<T, Error> + Send + 'static,
    T: Send + 'static,
{
    let started = std::time::Instant::now();
    let outcome = tokio::time::timeout(limit, tokio::task::spawn_blocking(f)).await;
    super::timing::db(started.elapsed());
    match outcome {
        Ok(Ok(result)) => result,
        Ok(Err(join)) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        Ok(Err(join)) => Err(Error::Connect {
            url: String::from("(blocking task)"),
            reason: join.to_string(),
        }),
        Err(_) => Err(Error::PoolTimeout {
            waited: limit,
            url: String::from("(request)"),
            last_error: Some("the database did not answer in time".into()),
        }),
    }
}
