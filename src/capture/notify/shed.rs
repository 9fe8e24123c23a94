//! Load shedding in notify mode: a full sink queue makes the listener wait,
//! and PostgreSQL's notification queue holds the backlog, until that queue
//! passes `source.shed_notify_queue_usage`; then events that find their
//! sink's queue full are dropped, so the queue never fills (a full queue
//! fails every NOTIFYing commit in the cluster).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::delivery::shedding::Shedding;
use crate::postgres::Postgres;
use crate::postgres::{describe, PgError};

/// How often the watch reads `pg_notification_queue_usage()`.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// What the watch does after reading the usage.
#[derive(Debug, PartialEq)]
enum Turn {
    Start,
    Stop,
    Stay,
}

/// Starts past `threshold`; stops once the queue is back under half of it
/// and no event was shed since the last check, i.e. the sinks keep up
/// again. Stopping sooner would only let the queue refill at once.
fn turn(shedding: bool, usage: f64, threshold: f64, shed_since_last_check: u64) -> Turn {
    match shedding {
        false if usage >= threshold => Turn::Start,
        true if usage < threshold / 2.0 && shed_since_last_check == 0 => Turn::Stop,
        _ => Turn::Stay,
    }
}

/// Reads `pg_notification_queue_usage()` every second on a connection of
/// its own and turns `shedding` on and off, until `stop`.
pub async fn watch(
    pg: Postgres,
    shedding: Arc<Shedding>,
    threshold: f64,
    timeout: Duration,
    stop: CancellationToken,
) {
    let mut client: Option<Client> = None;
    let mut failing = false;
    let mut shed_before = shedding.shed();
    let mut started_at = Instant::now();
    let mut shed_at_start = 0;
    let mut ticks = tokio::time::interval(CHECK_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let read = tokio::time::timeout(timeout, read_usage(&pg, &mut client))
            .await
            .unwrap_or(Err(PgError::Timeout(timeout)));
        let usage = match read {
            Ok(usage) => usage,
            Err(error) => {
                fail(&mut client, &mut failing, error);
                continue;
            }
        };
        if failing {
            failing = false;
            info!(usage, "reading the notification queue's usage again");
        }
        let shed = shedding.shed();
        match turn(shedding.is_on(), usage, threshold, shed - shed_before) {
            Turn::Start => {
                shedding.set(true);
                started_at = Instant::now();
                shed_at_start = shed;
                warn!(
                    usage,
                    threshold,
                    "PostgreSQL's notification queue is past shed_notify_queue_usage: \
                     shedding load, events that find their sink's queue full are dropped \
                     so that NOTIFYing commits keep succeeding"
                );
            }
            Turn::Stop => {
                shedding.set(false);
                warn!(
                    usage,
                    threshold,
                    dropped = shed - shed_at_start,
                    shed_for_ms = started_at.elapsed().as_millis() as u64,
                    "stopped shedding load: the sinks keep up and the notification queue \
                     has room again; full queues wait for room again"
                );
            }
            Turn::Stay => {}
        }
        shed_before = shed;
    }
}

/// Forgets the connection after an error and says so on the first one of
/// a run; shedding stays as it is meanwhile.
fn fail(client: &mut Option<Client>, failing: &mut bool, error: PgError) {
    *client = None;
    if !std::mem::replace(failing, true) {
        warn!(%error, "cannot read the notification queue's usage: shedding stays as it is");
    } else {
        debug!(%error, "cannot read the notification queue's usage");
    }
}

async fn read_usage(pg: &Postgres, client: &mut Option<Client>) -> Result<f64, PgError> {
    if client.as_ref().is_none_or(Client::is_closed) {
        let (new, connection) = pg.connect().await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(error = %describe(&e), "usage watch connection closed");
            }
        });
        *client = Some(new);
    }
    let client = client.as_ref().expect("connected above");
    let row = client
        .query_one("SELECT pg_notification_queue_usage()", &[])
        .await?;
    Ok(row.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheds_past_the_threshold_until_the_sinks_keep_up_again() {
        assert_eq!(turn(false, 0.49, 0.5, 0), Turn::Stay);
        assert_eq!(turn(false, 0.5, 0.5, 0), Turn::Start);
        assert_eq!(turn(true, 0.3, 0.5, 0), Turn::Stay, "not under half yet");
        assert_eq!(turn(true, 0.1, 0.5, 7), Turn::Stay, "still shedding events");
        assert_eq!(turn(true, 0.1, 0.5, 0), Turn::Stop);
    }
}
