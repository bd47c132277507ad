//! The pod's own CPU and memory use, for its heartbeats (Linux `/proc`; elsewhere none).

use std::time::Instant;

use mawex_api::pod::ResourceUsage;

/// Kernel clock ticks per second of `/proc/self/stat` times (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: u64 = 100;
/// `/proc/self/statm` counts pages of this size on the platforms mawex runs on.
const PAGE_BYTES: u64 = 4096;

/// Measures CPU use between successive calls.
#[derive(Debug)]
pub(crate) struct UsageMeter {
    last: Option<(Instant, u64)>,
}

impl UsageMeter {
    pub(crate) fn new() -> Self {
        UsageMeter { last: None }
    }

    /// Use since the previous call (CPU 0 on the first), or `None` where `/proc` is missing.
    pub(crate) fn sample(&mut self) -> Option<ResourceUsage> {
        let ticks = cpu_ticks()?;
        let memory_bytes = resident_pages()?.saturating_mul(PAGE_BYTES);
        let now = Instant::now();
        let cpu_permille = match self.last {
            Some((then, before)) => {
                let wall_ms = now.duration_since(then).as_millis().max(1) as u64;
                let cpu_ms = ticks.saturating_sub(before) * 1000 / TICKS_PER_SECOND;
                u32::try_from(cpu_ms * 1000 / wall_ms).unwrap_or(u32::MAX)
            }
            None => 0,
        };
        self.last = Some((now, ticks));
        Some(ResourceUsage {
            cpu_permille,
            memory_bytes,
        })
    }
}

/// utime + stime of this process, in ticks.
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces; fields resume after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn resident_pages() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    statm.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn measures_this_process_on_linux() {
        let mut meter = UsageMeter::new();
        let first = meter.sample().expect("a sample");
        assert!(first.memory_bytes > 1024 * 1024, "{first:?}");
        // Burn 200 ms of CPU (however long that takes on a busy machine), so the second
        // sample has something to show.
        let before = cpu_ticks().expect("CPU ticks");
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        let mut x = 0u64;
        while cpu_ticks().expect("CPU ticks") < before + TICKS_PER_SECOND / 5 {
            for _ in 0..100_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
            assert!(Instant::now() < deadline, "no CPU time in 30 s");
        }
        assert_ne!(x, 1);
        let second = meter.sample().expect("a sample");
        assert!(second.cpu_permille > 0, "{second:?}");
    }
}
