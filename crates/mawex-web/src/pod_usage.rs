//! Each pod's CPU and memory over the last hour, as its heartbeats reported them: sampled
//! from `list_pods` every ten seconds by one task, started when the pods are first shown
//! (a dashboard nobody looks at samples nothing) and ended when the dashboard is dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

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
    /// Samples by pod, oldest first.
    samples: HashMap<String, VecDeque<Sample>>,
    /// The round each pod was last seen in, to forget the pods gone longest.
    seen: HashMap<String, u64>,
    round: u64,
}

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
                    Ok(pods) => usage.sample(&pods),
                    Err(e) => tracing::debug!(error = %e, "pod usage not sampled"),
                }
                drop(usage);
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
        });
    }

    /// Records one sample of each pod in `pods`.
    pub(crate) fn sample(&self, pods: &[PodView]) {
        let mut kept = self.pods.lock().unwrap_or_else(PoisonError::into_inner);
        kept.round += 1;
        let round = kept.round;
        for pod in pods {
            let id = pod.id.to_string();
            let samples = kept.samples.entry(id.clone()).or_default();
            if samples.len() == SAMPLES {
                samples.pop_front();
            }
            samples.push_back(Sample {
                cpu_permille: pod.cpu_permille,
                memory_bytes: pod.memory_bytes,
            });
            kept.seen.insert(id, round);
        }
        while kept.samples.len() > MAX_PODS {
            let Some(oldest) = kept
                .seen
                .iter()
                .min_by_key(|(_, round)| **round)
                .map(|(id, _)| id.clone())
            else {
                break;
            };
            kept.seen.remove(&oldest);
            kept.samples.remove(&oldest);
        }
    }

    /// The samples of `pod`, oldest first.
    pub(crate) fn of(&self, pod: &str) -> Vec<Sample> {
        let kept = self.pods.lock().unwrap_or_else(PoisonError::into_inner);
        kept.samples
            .get(pod)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
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
        for cpu in 0..(SAMPLES as u32 + 5) {
            usage.sample(&[pod("a", cpu)]);
        }
        let a = usage.of("a");
        assert_eq!(a.len(), SAMPLES);
        assert_eq!(a.first().map(|s| s.cpu_permille), Some(5));
        assert_eq!(a.last().map(|s| s.cpu_permille), Some(SAMPLES as u32 + 4));
        assert!(usage.of("nobody").is_empty());
        // Past the bound, the pod gone longest is forgotten.
        let many: Vec<PodView> = (0..MAX_PODS).map(|n| pod(&format!("p{n}"), 1)).collect();
        usage.sample(&many);
        assert!(usage.of("a").is_empty());
        assert_eq!(usage.of("p0").len(), 1);
    }
}
