//! Each pod's CPU and memory over the last hour, as its heartbeats reported them: sampled
//! from `list_pods` every ten seconds by one task, started when the pods are first shown
//! (a dashboard nobody looks at samples nothing) and ended when the dashboard is dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use mawex_api::{MasterProxy, PodView};

/// How often the pods are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Samples kept a pod: an hour.
const SAMPLES: usize = 360;
/// Pods kept: past them, the pods gone longest are forgotten first.
const MAX_PODS: usize = 10_000;

/// One sample of a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sample {
    /// CPU use in thousandths of a core.
    pub(crate) cpu_permille: u32,
    /// Resident memory.
    pub(crate) memory_bytes: u64,
}

/// The pods' samples, and whether the sampling task runs.
#[derive(Debug, Default)]
pub(crate) struct PodUsage {
    pods: Mutex<Pods>,
    sampling: AtomicBool,
}

#[derive(Debug, Default)]
struct Pods {
    /// Samples by pod, oldest first, each with when it was taken.
    samples: HashMap<String, VecDeque<(Instant, Sample)>>,
}

/// How far back the samples go.
const KEPT_FOR: Duration = Duration::from_secs(3600);

impl PodUsage {
    /// Starts the sampling task, once (it ends when `usage` is dropped).
    pub(crate) fn start(usage: &Arc<PodUsage>, proxy: &Arc<dyn MasterProxy>) {
        if usage.sampling.swap(true, Ordering::AcqRel) {
            return;
        }
        let (usage, proxy): (Weak<PodUsage>, _) = (Arc::downgrade(usage), proxy.clone());
        tokio::spawn(async move {
            loop {
                let pods = proxy.list_pods().await;
                let Some(usage) = usage.upgrade() else {
                    return;
                };
                match pods {
                    Ok(pods) => usage.sample(&pods, Instant::now()),
                    Err(e) => tracing::debug!(error = %e, "pod usage not sampled"),
                }
                drop(usage);
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
        });
    }

    /// Records one sample of each pod in `pods`, taken at `now`; forgets what is older
    /// than an hour, and, past [`MAX_PODS`], the pods seen longest ago.
    pub(crate) fn sample(&self, pods: &[PodView], now: Instant) {
        let mut kept = self.pods.lock().unwrap_or_else(PoisonError::into_inner);
        let old = |at: &Instant| now.saturating_duration_since(*at) > KEPT_FOR;
        for pod in pods {
            let samples = kept.samples.entry(pod.id.to_string()).or_default();
            samples.push_back((
                now,
                Sample {
                    cpu_permille: pod.cpu_permille,
                    memory_bytes: pod.memory_bytes,
                },
            ));
            while samples.len() > SAMPLES || samples.front().is_some_and(|(at, _)| old(at)) {
                samples.pop_front();
            }
        }
        kept.samples
            .retain(|_, samples| samples.back().is_some_and(|(at, _)| !old(at)));
        let excess = kept.samples.len().saturating_sub(MAX_PODS);
        if excess > 0 {
            let mut by_last_seen: Vec<(Instant, String)> = kept
                .samples
                .iter()
                .filter_map(|(id, samples)| samples.back().map(|(at, _)| (*at, id.clone())))
                .collect();
            by_last_seen.sort();
            for (_, id) in by_last_seen.into_iter().take(excess) {
                kept.samples.remove(&id);
            }
        }
    }

    /// The samples of `pod` over the last hour, oldest first, averaged down to at most
    /// `points` (a drawing needs no more).
    pub(crate) fn of(&self, pod: &str, points: usize) -> Vec<Sample> {
        let kept = self.pods.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(samples) = kept.samples.get(pod) else {
            return Vec::new();
        };
        let per_point = samples.len().div_ceil(points.max(1)).max(1);
        let all: Vec<Sample> = samples.iter().map(|(_, s)| *s).collect();
        all.chunks(per_point)
            .map(|chunk| {
                let n = chunk.len() as u64;
                Sample {
                    cpu_permille: u32::try_from(
                        chunk.iter().map(|s| u64::from(s.cpu_permille)).sum::<u64>() / n,
                    )
                    .unwrap_or(u32::MAX),
                    memory_bytes: chunk.iter().map(|s| s.memory_bytes / n).sum(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use mawex_api::{GroupName, PodId};

    use super::*;

    fn pod(id: &str, cpu: u32) -> PodView {
        let mut view = PodView::new(
            PodId::new(id).expect("valid"),
            vec![GroupName::new("g").expect("valid")],
            1,
        );
        view.cpu_permille = cpu;
        view
    }

    #[test]
    fn samples_are_kept_an_hour_a_pod_and_the_pods_gone_longest_go_first() {
        let usage = PodUsage::default();
        let start = Instant::now();
        let at = |n: u64| start + SAMPLE_EVERY * u32::try_from(n).expect("small");
        let rounds = SAMPLES as u64 + 5;
        for n in 0..rounds {
            usage.sample(&[pod("a", u32::try_from(n).expect("small"))], at(n));
        }
        let a = usage.of("a", SAMPLES);
        assert_eq!(a.len(), SAMPLES);
        assert_eq!(a.first().map(|s| s.cpu_permille), Some(5));
        assert_eq!(a.last().map(|s| s.cpu_permille), Some(SAMPLES as u32 + 4));
        // Drawn with fewer points: each the mean of its samples.
        let drawn = usage.of("a", 60);
        assert_eq!(drawn.len(), 60);
        assert_eq!(drawn[0].cpu_permille, (5 + 10) / 2, "the mean of 5..=10");
        assert!(usage.of("nobody", 60).is_empty());
        // A pod gone for more than an hour is forgotten.
        usage.sample(&[pod("b", 1)], at(rounds + 361));
        assert!(usage.of("a", 60).is_empty());
        // Past the bound, the pods seen longest ago go first: never one of this round.
        let many: Vec<PodView> = (0..MAX_PODS).map(|n| pod(&format!("p{n}"), 1)).collect();
        usage.sample(&many, at(rounds + 362));
        assert!(usage.of("b", 60).is_empty());
        assert_eq!(usage.of("p0", 60).len(), 1);
    }
}
