//! The one LISTEN connection of a process. It routes wake-ups to the roles the process
//! runs: log heads to the gateway hub, control wake-ups to the workers, schedule changes to
//! the tickers. When the connection drops, notifications may have been lost, so every
//! role is told to look at the database again (the hub re-reads heads, workers and tickers
//! claim); sqlx reconnects and re-LISTENs by itself.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::hub::Hub;
use super::notify::{parse_log_payload, TOPIC_CONTROL, TOPIC_LATEST, TOPIC_LOG, TOPIC_TICK};

/// Where notifications go; a role this process does not run is `None`.
#[derive(Clone, Default)]
pub struct Routes {
    pub hub: Option<Arc<Hub>>,
    pub control: Option<Arc<Notify>>,
    pub tick: Option<Arc<Notify>>,
}

impl Routes {
    fn topics(&self) -> Vec<&'static str> {
        let mut t = Vec::new();
        if self.hub.is_some() {
            t.push(TOPIC_LOG);
            t.push(TOPIC_LATEST);
        }
        if self.control.is_some() {
            t.push(TOPIC_CONTROL);
        }
        if self.tick.is_some() {
            t.push(TOPIC_TICK);
        }
        t
    }

    /// Something may have been missed: every role re-checks the database.
    fn resync(&self) {
        if let Some(hub) = &self.hub {
            hub.resync_all();
        }
        if let Some(n) = &self.control {
            n.notify_waiters();
        }
        if let Some(n) = &self.tick {
            n.notify_waiters();
        }
    }

    fn dispatch(&self, topic: &str, payload: &str) {
        match topic {
            TOPIC_LOG => {
                if let Some(hub) = &self.hub {
                    hub.on_heads(parse_log_payload(payload).map(|(h, c)| (c, h)));
                }
            }
            TOPIC_LATEST => {
                if let Some(hub) = &self.hub {
                    hub.on_latest(parse_log_payload(payload).map(|(v, c)| (c, v)));
                }
            }
            TOPIC_CONTROL => {
                // One worker per wake-up: a worker that finds work claims again at once,
                // and the claim hands other matches to whoever is woken next.
                if let Some(n) = &self.control {
                    n.notify_one();
                }
            }
            TOPIC_TICK => {
                if let Some(n) = &self.tick {
                    n.notify_waiters();
                }
            }
            _ => {}
        }
    }
}

/// Listens until `stop`, reconnecting with backoff.
pub async fn run(pool: PgPool, routes: Routes, stop: CancellationToken) {
    let topics = routes.topics();
    if topics.is_empty() {
        return;
    }
    let mut backoff = Duration::from_millis(100);
    loop {
        let listener = async {
            let mut l = PgListener::connect_with(&pool).await?;
            l.listen_all(topics.iter().copied()).await?;
            Ok::<_, sqlx::Error>(l)
        };
        let mut listener = tokio::select! {
            l = listener => match l {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN connection failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        backoff = Duration::from_millis(100);
        routes.resync();
        loop {
            tokio::select! {
                r = listener.try_recv() => match r {
                    Ok(Some(n)) => routes.dispatch(n.channel(), n.payload()),
                    Ok(None) => {
                        tracing::warn!("LISTEN connection lost; reconnecting");
                        routes.resync();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "LISTEN failed; reconnecting");
                        routes.resync();
                        break;
                    }
                },
                _ = stop.cancelled() => return,
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => return,
        }
    }
}
