//! The handler time limit, shared by workers and tickers.
//!
//! Game handlers are plain synchronous code: one that loops forever must neither block a
//! runtime thread forever nor hold up the other matches of its batch. [`run_limited`] runs
//! a batch's handler calls on a thread of its own, one after the other, and gives each
//! step at most the limit; on an overrun it returns what finished before and which step
//! overran, and the stuck thread is abandoned (it cannot be killed; a retry that hangs
//! again costs another thread, which the callers bound by giving up on the input or match
//! after a few failures).

use std::time::Duration;

/// Longest run of one handler step (a tick, or one input of a worker batch) by default.
pub const DEFAULT_HANDLER_LIMIT: Duration = Duration::from_secs(1);

/// Which step ran past the limit: the job (index into the jobs given) and the step inside
/// it (0 unless the job reports its steps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overrun {
    pub job: usize,
    pub step: usize,
}

/// What the handler thread reports.
enum Report<R> {
    /// The running job started this step.
    Step(usize),
    Done(R),
}

/// Runs `run` on each job in order, on a thread of its own. A job may report that it starts
/// its step `s` by calling the callback it is given with `s`; every report (the job's
/// start, each step, its end) restarts the clock, so `limit` bounds each step. Returns the
/// results of the jobs that finished, in order, and, if one overran, which step: the jobs
/// after it were not run.
pub async fn run_limited<J, R, F>(
    jobs: Vec<J>,
    limit: Duration,
    run: F,
) -> (Vec<R>, Option<Overrun>)
where
    J: Send + 'static,
    R: Send + 'static,
    F: Fn(J, &dyn Fn(usize)) -> R + Send + 'static,
{
    let mut results = Vec::with_capacity(jobs.len());
    if jobs.is_empty() {
        return (results, None);
    }
    // Unbounded, but each job sends at most one report per step plus two.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for job in jobs {
            if tx.send(Report::Step(0)).is_err() {
                return;
            }
            let step = |s: usize| {
                let _ = tx.send(Report::Step(s));
            };
            let r = run(job, &step);
            if tx.send(Report::Done(r)).is_err() {
                return;
            }
        }
    });
    let mut step = 0;
    loop {
        match tokio::time::timeout(limit, rx.recv()).await {
            Ok(Some(Report::Step(s))) => step = s,
            Ok(Some(Report::Done(r))) => {
                results.push(r);
                step = 0;
            }
            Ok(None) => return (results, None),
            Err(_) => {
                let job = results.len();
                return (results, Some(Overrun { job, step }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_overrunning_step_is_reported_and_the_jobs_before_it_kept() {
        let jobs = vec![0_u64, 0, 3, 0];
        let (done, overrun) = run_limited(jobs, Duration::from_millis(200), |j, step| {
            for s in 0..5 {
                step(s);
                if s == usize::try_from(j).unwrap() && j > 0 {
                    std::thread::sleep(Duration::from_secs(2));
                }
            }
            j
        })
        .await;
        assert_eq!(done, vec![0, 0]);
        assert_eq!(overrun, Some(Overrun { job: 2, step: 3 }));
    }

    #[tokio::test]
    async fn steps_within_the_limit_all_finish() {
        let (done, overrun) =
            run_limited(vec![1, 2, 3], Duration::from_secs(5), |j, _| j * 2).await;
        assert_eq!(done, vec![2, 4, 6]);
        assert_eq!(overrun, None);
    }
}
