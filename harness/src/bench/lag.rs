//! The consumer group's lag during a run, and the pipeline's timeline.

use std::time::Duration;

use crate::measure::consumer_lag;
use crate::report::PipelineSecond;

/// The consumer group's lag, read once a second on a thread of its own
/// until stopped: `(second since start, lag)`, `None` where the broker did
/// not answer.
pub(super) struct LagSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    samples: tokio::task::JoinHandle<Vec<(usize, Option<i64>)>>,
}

impl LagSampler {
    pub(super) fn start(brokers: &str, group: &str, topic: &str) -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (brokers, group, topic) = (brokers.to_owned(), group.to_owned(), topic.to_owned());
        let stopped = stop.clone();
        let samples = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let mut samples = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                let second = started.elapsed().as_secs() as usize;
                samples.push((second, consumer_lag(&brokers, &group, &topic).ok()));
                let next = Duration::from_secs(second as u64 + 1);
                std::thread::sleep(next.saturating_sub(started.elapsed()));
            }
            samples
        });
        Self { stop, samples }
    }

    pub(super) async fn stop(mut self) -> Vec<(usize, Option<i64>)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (&mut self.samples).await.unwrap_or_default()
    }
}

impl Drop for LagSampler {
    /// A run that fails before `stop` must not leave the sampling thread
    /// running: the runtime would wait for it forever at exit.
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Outcomes decided per second since `start_ms`, beside the lag samples.
pub(super) fn pipeline_timeline(
    settled_at_ms: &[u64],
    start_ms: u64,
    lag: &[(usize, Option<i64>)],
) -> Vec<PipelineSecond> {
    let mut applied: Vec<usize> = Vec::new();
    for at in settled_at_ms.iter().filter(|at| **at >= start_ms) {
        let second = ((at - start_ms) / 1000) as usize;
        if applied.len() <= second {
            applied.resize(second + 1, 0);
        }
        applied[second] += 1;
    }
    let seconds = applied
        .len()
        .max(lag.last().map_or(0, |(second, _)| second + 1));
    (0..seconds)
        .map(|second| PipelineSecond {
            second,
            applied: applied.get(second).copied().unwrap_or(0),
            consumer_lag: lag
                .iter()
                .find(|(s, _)| *s == second)
                .and_then(|(_, lag)| *lag),
        })
        .collect()
}
