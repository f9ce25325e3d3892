//! The loop around a claiming role (workers, tickers): claim again at once while there was
//! work; when idle, sleep until a wake-up, the pause the role asks for, or the stop; after
//! a database error, back off (doubling) without waiting for wake-ups. The wake-up is armed
//! before each claim, so one that arrives during an empty claim is not lost.

use std::future::Future;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What one step of the loop found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// It claimed something: go again at once.
    Worked,
    /// Nothing to do: sleep until a wake-up or this long.
    Idle(Duration),
}

/// The pause after consecutive database errors: `first`, doubling per error, at most `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The pause after the `errors`-th consecutive error (1-based).
    pub fn pause(&self, errors: u32) -> Duration {
        self.first
            .saturating_mul(1 << errors.saturating_sub(1).min(20))
            .min(self.max)
    }
}

/// Runs `step` until `stop`; `role` names the role in the error log.
pub async fn run<F, Fut>(
    role: &str,
    wake: &Notify,
    stop: &CancellationToken,
    backoff: Backoff,
    mut step: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = sqlx::Result<Step>>,
{
    let mut errors = 0u32;
    loop {
        if stop.is_cancelled() {
            return;
        }
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match step().await {
            Ok(Step::Worked) => errors = 0,
            Ok(Step::Idle(pause)) => {
                errors = 0;
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.cancelled() => return,
                }
            }
            Err(e) => {
                errors += 1;
                let pause = backoff.pause(errors);
                tracing::warn!(error = %e, ?pause, "{role} failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}

/// Runs `step` every `period` (the first time at once) until `stop`: the loop of the
/// periodic samplers (the queue and clock gauges). A late round is not caught up.
pub async fn every<F, Fut>(period: Duration, stop: &CancellationToken, mut step: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        step().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_from_first_up_to_max() {
        let b = Backoff {
            first: Duration::from_millis(50),
            max: Duration::from_millis(3200),
        };
        let ms: Vec<u128> = (1..=9).map(|e| b.pause(e).as_millis()).collect();
        assert_eq!(ms, [50, 100, 200, 400, 800, 1600, 3200, 3200, 3200]);
    }
}
