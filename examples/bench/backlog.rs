//! `--scenario backlog`: a master with a deep backlog and no pod to run it. Memory and
//! journal per pending task, the longest snapshot pause of the core thread, a `list` page,
//! and the time from a `kill -9` to the first answer after the restart.
//!
//! The master runs in a child process (this binary again), so that it can be killed for
//! real; the parent measures the journal and restarts the master on it.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Instant;

use mawex::{
    GroupName, ListQuery, Master, MasterConfig, MasterProxy, SledJournal, TaskSpec, TaskState,
};

/// Set in the child: the directory of its journal.
const CHILD_DIR: &str = "MAWEX_BENCH_BACKLOG_DIR";
/// Set in the child: how many tasks to submit.
const CHILD_TASKS: &str = "MAWEX_BENCH_BACKLOG_TASKS";
/// Tasks of a group with few tasks, submitted last: listing them scans past the backlog
/// unless `list` is indexed.
const RARE_TASKS: usize = 100;
/// `list` calls timed, per kind.
const LIST_SAMPLES: usize = 50;

/// In the child process, runs the master side and never returns; else does nothing.
pub(crate) fn run_if_child() -> anyhow::Result<()> {
    let (Ok(dir), Ok(tasks)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_TASKS)) else {
        return Ok(());
    };
    let tasks: usize = tasks.parse()?;
    tokio::runtime::Runtime::new()?.block_on(child(dir.into(), tasks))?;
    std::process::exit(0);
}

/// The resident memory of this process, in bytes.
fn rss_bytes() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/self/status"))?;
    Ok(kib * 1024)
}

async fn child(dir: std::path::PathBuf, tasks: usize) -> anyhow::Result<()> {
    let master = Master::builder()
        .config(MasterConfig::default())
        .start(SledJournal::open(dir.join("journal"))?)
        .await?;
    let proxy = master.proxy();
    let backlog = GroupName::new("backlog")?;
    let rare = GroupName::new("rare")?;
    let before = rss_bytes()?;
    let mut first = None;
    let started = Instant::now();
    for chunk in (0..tasks).collect::<Vec<_>>().chunks(1_000) {
        let specs: Vec<TaskSpec> = chunk
            .iter()
            .map(|_| TaskSpec::new(backlog.clone(), "noop", &b"16-byte payload!"[..]))
            .collect();
        first.get_or_insert(specs[0].id);
        proxy.submit_many(specs).await?;
    }
    let submit_s = started.elapsed().as_secs_f64();
    let specs: Vec<TaskSpec> = (0..RARE_TASKS)
        .map(|_| TaskSpec::new(rare.clone(), "noop", &b"16-byte payload!"[..]))
        .collect();
    proxy.submit_many(specs).await?;
    let after = rss_bytes()?;

    let list = |group: GroupName| {
        let proxy = proxy.clone();
        async move {
            let mut samples = Vec::with_capacity(LIST_SAMPLES);
            for _ in 0..LIST_SAMPLES {
                let mut query = ListQuery::default();
                query.group = Some(group.clone());
                query.state = Some(TaskState::Pending);
                let t = Instant::now();
                let page = proxy.list(query).await?;
                samples.push(t.elapsed());
                anyhow::ensure!(!page.tasks.is_empty(), "an empty page");
            }
            samples.sort();
            anyhow::Ok(super::percentile(&samples, 0.5))
        }
    };
    let list_common = list(backlog.clone()).await?;
    let list_rare = list(rare.clone()).await?;
    let stats = master.stats().borrow().clone();
    let line = serde_json::json!({
        "first": first.map(|id| id.to_string()),
        "submit_tasks_per_s": (tasks as f64 / submit_s).round(),
        "bytes_per_pending_task": (after.saturating_sub(before) as f64 / tasks as f64).round(),
        "list_page_ms_p50": list_rare,
        "list_page_ms_p50_first_match": list_common,
        "snapshots": stats.snapshots,
        "snapshot_core_pause_ms_max": stats.longest_snapshot.as_secs_f64() * 1000.0,
        "snapshot_write_ms_max": stats.longest_snapshot_write.as_secs_f64() * 1000.0,
    });
    println!("{line}");
    // Wait to be killed; should the parent go first, its end of stdin closes.
    tokio::task::spawn_blocking(|| {
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new())
    })
    .await??;
    Ok(())
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &std::path::Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// The parent: runs the child, kills it, restarts the master on its journal.
pub(crate) async fn backlog(tasks: usize) -> anyhow::Result<serde_json::Value> {
    let dir = tempfile::tempdir()?;
    let mut child = super::KillOnDrop(
        Command::new(std::env::current_exe()?)
            .env(CHILD_DIR, dir.path())
            .env(CHILD_TASKS, tasks.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?,
    );
    let stdout = child
        .0
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let mut report: serde_json::Value = match serde_json::from_str(&line) {
        Ok(report) => report,
        Err(e) => {
            let status = child.0.wait()?;
            anyhow::bail!("the master's process ({status}) said {line:?}: {e}")
        }
    };
    let journal = dir.path().join("journal");
    let journal_bytes = dir_bytes(&journal)?;
    // kill -9: no final snapshot, no clean close.
    child.0.kill()?;
    child.0.wait()?;

    let first: mawex::TaskId = report["first"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no first task id"))?
        .parse()?;
    let started = Instant::now();
    // No snapshot after the restart (it would start once the first answer is out, and
    // change the journal the pieces below are measured on).
    let mut config = MasterConfig::default();
    config.snapshot_every = 0;
    let killed = SledJournal::open(&journal)?;
    let first_open_ms = started.elapsed().as_secs_f64() * 1000.0;
    let master = Master::builder().config(config).start(killed).await?;
    let view = master.proxy().get(first).await?;
    let restart_ms = started.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(
        view.state == TaskState::Pending,
        "the first task is {:?}",
        view.state
    );
    // Stopped as a crash would: no final snapshot, so the journal is still as the kill left
    // it, for measuring where the restart's time went piece by piece.
    master.halt().await?;
    let t = Instant::now();
    let mut opened = SledJournal::open(&journal)?;
    let open_ms = t.elapsed().as_secs_f64() * 1000.0;
    let t = Instant::now();
    let recovered = mawex::Journal::recover(&mut opened)?;
    let read_ms = t.elapsed().as_secs_f64() * 1000.0;
    let tail = recovered.events.len();
    let t = Instant::now();
    let (_, state) = recovered.into_state();
    let rebuild_ms = t.elapsed().as_secs_f64() * 1000.0;
    drop((state, opened));

    let object = report
        .as_object_mut()
        .ok_or_else(|| anyhow::anyhow!("the child's report is not an object"))?;
    object.remove("first");
    object.insert("scenario".into(), "backlog".into());
    object.insert("tasks".into(), tasks.into());
    object.insert(
        "journal_bytes_per_task".into(),
        ((journal_bytes as f64 / tasks as f64).round()).into(),
    );
    object.insert("restart_to_first_answer_ms".into(), restart_ms.into());
    object.insert("restart_first_open_ms".into(), first_open_ms.into());
    object.insert("restart_open_ms".into(), open_ms.into());
    object.insert("restart_read_and_decode_ms".into(), read_ms.into());
    object.insert("restart_indexes_and_tail_ms".into(), rebuild_ms.into());
    object.insert("restart_tail_events".into(), tail.into());
    Ok(report)
}
