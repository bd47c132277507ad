//! Live output as the master keeps it: the last lines of each task's latest attempt, bounded
//! per attempt and in all, the tasks written longest ago dropped first. Volatile by design
//! (never journaled: it decides nothing, and would multiply the journal's traffic); a
//! restart or fail-over starts empty, and running attempts' next lines fill it again.

use std::collections::{BTreeMap, HashMap, VecDeque};

use mawex_api::{Attempt, OutputLine, TaskId, TaskOutput};

/// The most tasks whose output is kept at once.
const MAX_TASKS: usize = 100_000;

/// One task's latest attempt's lines.
struct Kept {
    attempt: Attempt,
    lines: VecDeque<OutputLine>,
    bytes: usize,
    /// The highest line number seen: the lines are numbered by the pod, which may drop some.
    last_seq: u64,
    /// When it was last written, in [`OutputStore::clock`] ticks.
    written: u64,
}

/// The kept output of every task.
pub(crate) struct OutputStore {
    tail_bytes: usize,
    total_bytes: usize,
    tasks: HashMap<TaskId, Kept>,
    /// Tasks by when they were last written, oldest first: what goes when the total is over.
    by_written: BTreeMap<u64, TaskId>,
    bytes: usize,
    clock: u64,
}

impl OutputStore {
    /// A store keeping `tail_bytes` per attempt and `total_bytes` in all.
    pub(crate) fn new(tail_bytes: usize, total_bytes: usize) -> Self {
        OutputStore {
            tail_bytes,
            total_bytes,
            tasks: HashMap::new(),
            by_written: BTreeMap::new(),
            bytes: 0,
            clock: 0,
        }
    }

    /// Adds lines of `attempt` of `task` (whose lease the sender holds). Lines of an older
    /// attempt than the one kept are dropped; a newer attempt replaces it.
    pub(crate) fn append(&mut self, task: TaskId, attempt: Attempt, lines: Vec<OutputLine>) {
        self.clock += 1;
        let clock = self.clock;
        let kept = match self.tasks.get_mut(&task) {
            Some(kept) if kept.attempt > attempt => return,
            Some(kept) => {
                self.by_written.remove(&kept.written);
                if kept.attempt < attempt {
                    self.bytes -= kept.bytes;
                    *kept = Kept::new(attempt, clock);
                }
                kept.written = clock;
                kept
            }
            None => self.tasks.entry(task).or_insert(Kept::new(attempt, clock)),
        };
        self.by_written.insert(clock, task);
        for line in lines {
            // Out of order or repeated (a pod re-sending): kept once, in order.
            if line.seq <= kept.last_seq {
                continue;
            }
            kept.last_seq = line.seq;
            kept.bytes += line.size();
            self.bytes += line.size();
            kept.lines.push_back(line);
        }
        while kept.bytes > self.tail_bytes && kept.lines.len() > 1 {
            if let Some(old) = kept.lines.pop_front() {
                kept.bytes -= old.size();
                self.bytes -= old.size();
            }
        }
        self.evict();
    }

    /// Drops the tasks written longest ago until the bounds hold.
    fn evict(&mut self) {
        while self.bytes > self.total_bytes || self.tasks.len() > MAX_TASKS {
            let Some((_, task)) = self.by_written.pop_first() else {
                break;
            };
            if let Some(kept) = self.tasks.remove(&task) {
                self.bytes -= kept.bytes;
            }
        }
    }

    /// Task `task`'s kept lines after line `after`; `None` if nothing is kept.
    pub(crate) fn read(&self, task: TaskId, after: u64) -> Option<TaskOutput> {
        let kept = self.tasks.get(&task)?;
        let mut output = TaskOutput::new(task, kept.attempt);
        output.lines = kept
            .lines
            .iter()
            .filter(|l| l.seq > after)
            .cloned()
            .collect();
        let first = output
            .lines
            .first()
            .map_or(kept.last_seq.saturating_add(1), |l| l.seq);
        output.dropped = first.saturating_sub(after).saturating_sub(1);
        Some(output)
    }

    /// Bytes kept in all (for tests).
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Kept {
    fn new(attempt: Attempt, written: u64) -> Self {
        Kept {
            attempt,
            lines: VecDeque::new(),
            bytes: 0,
            last_seq: 0,
            written,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mawex_api::OutputStream;

    fn lines(seqs: std::ops::RangeInclusive<u64>) -> Vec<OutputLine> {
        seqs.map(|s| OutputLine::new(s, OutputStream::Stdout, format!("line {s}")))
            .collect()
    }

    #[test]
    fn a_task_keeps_its_last_lines_and_a_reader_learns_what_it_missed() {
        let mut store = OutputStore::new(1000, 1 << 20);
        let task = TaskId::new();
        store.append(task, Attempt(1), lines(1..=10_000));
        let read = store.read(task, 0).expect("kept");
        assert!(read.lines.len() < 100, "{} lines", read.lines.len());
        assert_eq!(read.lines.last().map(|l| l.seq), Some(10_000));
        assert_eq!(read.dropped + read.lines.len() as u64, 10_000);
        let after = store.read(task, 9_999).expect("kept");
        assert_eq!((after.dropped, after.lines.len()), (0, 1));
        let none = store.read(task, 10_000).expect("kept");
        assert_eq!((none.dropped, none.lines.len()), (0, 0));
        // A newer attempt replaces it; an older one's late lines are dropped.
        store.append(task, Attempt(2), lines(1..=2));
        store.append(task, Attempt(1), lines(10_001..=10_002));
        let read = store.read(task, 0).expect("kept");
        assert_eq!((read.attempt, read.lines.len()), (Attempt(2), 2));
    }

    #[test]
    fn the_total_drops_the_tasks_written_longest_ago() {
        let mut store = OutputStore::new(10_000, 3_000);
        let tasks: Vec<TaskId> = (0..5).map(|_| TaskId::new()).collect();
        for task in &tasks {
            store.append(*task, Attempt(1), lines(1..=40));
        }
        assert!(store.bytes() <= 3_000);
        assert!(store.read(tasks[0], 0).is_none(), "the oldest went");
        assert!(store.read(tasks[4], 0).is_some(), "the newest stays");
    }
}
