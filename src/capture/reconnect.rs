//! How the notify and durable sources open a new session after losing
//! one: the same backoff, the same patience with a session that dies as it
//! starts, the same warning while PostgreSQL stays away.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::backoff::Schedule;
use crate::observe::stats::Link;

/// The first wait before reconnecting: it doubles up to the source's
/// `reconnect_max_backoff_ms`.
pub const RECONNECT_FIRST_WAIT: Duration = Duration::from_millis(100);

/// A session lost sooner than this after it opened counts as a failed
/// attempt: the next reconnect waits first, as after a refused connect.
pub const STABLE_SESSION: Duration = Duration::from_secs(10);

/// Opens a session with `open`, backing off between attempts, until it
/// opens or `shutdown`. `quick_losses` counts the sessions in a row that
/// were lost soon after they opened, so a session that dies as it starts
/// is not opened again at once; `what` names the connection in the log,
/// `link` keeps each refusal for the status page.
pub async fn reconnect<S, E, F>(
    shutdown: &CancellationToken,
    quick_losses: u32,
    max_backoff: Duration,
    what: &str,
    link: &Link,
    mut open: impl FnMut() -> F,
) -> Option<S>
where
    E: Display,
    F: Future<Output = Result<S, E>>,
{
    let waits = Schedule::exponential(RECONNECT_FIRST_WAIT, max_backoff);
    if quick_losses > 0 {
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(waits.delay(quick_losses - 1)) => {}
        }
    }
    for attempt in 1u64.. {
        let delay = waits.delay_u64(attempt);
        let opened = tokio::select! {
            () = shutdown.cancelled() => return None,
            opened = open() => opened,
        };
        match opened {
            Ok(session) => return Some(session),
            Err(e) => {
                warn!(attempt, retry_in_ms = delay.as_millis() as u64, error = %e,
                      "cannot reconnect to {what} yet");
                link.failed(format_args!("cannot reconnect yet: {e}"));
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(delay) => {}
        }
    }
    None
}
