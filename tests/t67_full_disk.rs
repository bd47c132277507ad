//! A real full disk: the journal lives on a small tmpfs mounted in this process's own mount
//! namespace (so nothing leaks to the machine and the mount goes away with the process).
//! Submits run until the disk is full; the master stops and says why; after space is freed
//! a restart recovers every acknowledged task. The same for a snapshot that finds the disk
//! full, and for a full disk met inside the storage itself (no reserve), where the master
//! runs in a child process that exits as a real one would. Enters the namespace before any
//! thread exists, so it has its own `main`.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

#[path = "common/own_main.rs"]
mod own_main;

use own_main::runtime;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mawex::{
    ApiError, Bytes, GroupName, Master, MasterConfig, MasterProxy, SledJournal, TaskId, TaskSpec,
    TaskState,
};

/// Size of each small disk.
const DISK_BYTES: u64 = 24 << 20;
/// ... and after space is freed: room for the snapshot a clean shutdown then writes.
const GROWN_DISK_BYTES: u64 = 4 * DISK_BYTES;
/// Kept on the disk from the start and deleted when space is freed.
const BALLAST_BYTES: usize = 4 << 20;
/// The journal keeps this much free on the small disks (the default is sized for real ones).
const RESERVE_BYTES: u64 = 2 << 20;
/// Each task's payload: large enough to fill the disk in a few thousand submits.
const PAYLOAD_BYTES: usize = 16 << 10;
/// More submits than can fit: the loop must meet a full disk before it ends.
const MAX_SUBMITS: usize = 20_000;
/// How long a stopped master, or the child running one, may take.
const DEADLINE: Duration = Duration::from_secs(60);
/// Set in the child that fills a disk without a reserve: where its journal is.
const CHILD_JOURNAL: &str = "MAWEX_FULL_DISK_JOURNAL";
/// ... and the file it writes the acknowledged task ids to.
const CHILD_ACKNOWLEDGED: &str = "MAWEX_FULL_DISK_ACKNOWLEDGED";

/// Why this process cannot mount here, if it cannot (set once, in `main`).
static UNMOUNTABLE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

fn main() {
    if let (Some(journal), Some(acknowledged)) = (
        std::env::var_os(CHILD_JOURNAL),
        std::env::var_os(CHILD_ACKNOWLEDGED),
    ) {
        child_fills_without_a_reserve(Path::new(&journal), Path::new(&acknowledged));
        return;
    }
    if !std::env::args().any(|a| a == "--list") {
        UNMOUNTABLE.get_or_init(|| private_mount_namespace().err());
    }
    own_main::run_tests(&[
        (
            "a_full_disk_stops_the_master_and_loses_nothing_acknowledged",
            &full_disk_on_append,
        ),
        (
            "a_snapshot_that_finds_the_disk_full_stops_the_master_and_loses_nothing",
            &full_disk_on_snapshot,
        ),
        (
            "a_full_disk_met_inside_the_storage_stops_the_process_and_loses_nothing",
            &full_disk_without_a_reserve,
        ),
        (
            "a_full_disk_stops_a_replicated_master_and_loses_nothing_acknowledged",
            &full_disk_under_the_raft_log,
        ),
    ]);
}

/// Moves this (still single-threaded) process into a mount namespace of its own, with
/// nothing propagating back to the machine's.
fn private_mount_namespace() -> Result<(), String> {
    use nix::mount::{mount, MsFlags};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| format!("unshare(CLONE_NEWNS): {e} (needs root or CAP_SYS_ADMIN)"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("making / private: {e}"))
}

/// A tmpfs of [`DISK_BYTES`] on a fresh directory, holding the ballast file.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// `None` (reported as skipped, or a failure in CI) where this process cannot mount.
    fn mount(test: &str) -> Option<SmallDisk> {
        if let Some(Some(why)) = UNMOUNTABLE.get() {
            assert!(
                std::env::var_os("CI").is_none(),
                "{test} needs to mount a tmpfs; .ci/run runs as root: {why}"
            );
            let _ = writeln!(
                std::io::stderr(),
                "mawex-test-skipped: {test}: cannot mount a tmpfs here: {why}"
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={DISK_BYTES}").as_str()),
        )
        .unwrap();
        std::fs::write(dir.path().join("ballast"), vec![0xa5u8; BALLAST_BYTES]).unwrap();
        Some(SmallDisk { dir })
    }

    fn journal(&self) -> PathBuf {
        self.dir.path().join("journal")
    }

    /// Frees space as an operator would: deletes the ballast and grows the disk.
    fn free_space(&self) {
        std::fs::remove_file(self.dir.path().join("ballast")).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            self.dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::MS_REMOUNT,
            Some(format!("size={GROWN_DISK_BYTES}").as_str()),
        )
        .unwrap();
    }

    /// Writes filler until the disk is full, then frees `keep` bytes of it again.
    fn fill_leaving(&self, keep: u64) {
        let path = self.dir.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0x5au8; 64 << 10];
        let mut written: u64 = 0;
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        file.set_len(written.saturating_sub(keep)).unwrap();
        file.sync_all().unwrap();
    }

    fn remove_filler(&self) {
        std::fs::remove_file(self.dir.path().join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = nix::mount::umount(self.dir.path());
    }
}

fn task(i: usize) -> TaskSpec {
    let mut payload = vec![b'p'; PAYLOAD_BYTES];
    payload[..8].copy_from_slice(&(i as u64).to_be_bytes());
    TaskSpec::new(
        GroupName::new("disk").unwrap(),
        "store",
        Bytes::from(payload),
    )
}

async fn start(path: &Path, config: MasterConfig, reserve: u64) -> Master {
    let journal = SledJournal::open(path)
        .expect("open the journal")
        .with_free_space_reserve(reserve);
    Master::builder()
        .config(config)
        .start(journal)
        .await
        .expect("start the master")
}

/// A stopped master's reason: the disk is full (the journal's refusal, or the kernel's
/// `ENOSPC` when the reserve is off).
fn says_disk_full(message: &str) -> bool {
    message.to_lowercase().contains("no space left")
}

/// The master stopped because the disk is full: its `stopped` future says so, every later
/// call fails at once with the same reason, and it still halts.
async fn stops_for_a_full_disk(master: Master) {
    stopped_for_a_full_disk(&master).await;
    let halted = tokio::time::timeout(DEADLINE, master.halt()).await;
    assert!(halted.is_ok(), "a master whose disk filled up still halts");
}

/// The master stopped because the disk is full: its `stopped` future says so and every later
/// call fails at once with the same reason.
async fn stopped_for_a_full_disk(master: &Master) {
    let reason = tokio::time::timeout(DEADLINE, master.stopped())
        .await
        .expect("the master stops");
    assert!(
        says_disk_full(&reason),
        "the reason names the disk: {reason}"
    );
    let started = std::time::Instant::now();
    match master.proxy().submit(task(usize::MAX)).await {
        Err(ApiError::Internal(m)) => {
            assert!(
                m.contains("the master stopped") && says_disk_full(&m),
                "{m}"
            )
        }
        other => panic!("a submit to a stopped master: {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a stopped master answers at once"
    );
}

/// Submits until one is refused; returns the acknowledged ids and checks the stop.
async fn submit_until_full(journal: &Path, reserve: u64) -> Vec<TaskId> {
    let mut config = MasterConfig::default();
    config.snapshot_every = 0;
    let master = start(journal, config, reserve).await;
    let acknowledged = submit_until_refused(&master.proxy()).await;
    stops_for_a_full_disk(master).await;
    acknowledged
}

/// Submits until one is refused for a full disk; returns the acknowledged ids.
async fn submit_until_refused(proxy: &impl MasterProxy) -> Vec<TaskId> {
    let mut acknowledged = Vec::new();
    let refused = loop {
        assert!(
            acknowledged.len() < MAX_SUBMITS,
            "{MAX_SUBMITS} submits of {PAYLOAD_BYTES} bytes fit on a {DISK_BYTES}-byte disk"
        );
        match proxy.submit(task(acknowledged.len())).await {
            Ok(ack) => acknowledged.push(ack.id),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(&refused, ApiError::Internal(m) if says_disk_full(m)),
        "the submit that found the disk full says so: {refused:?}"
    );
    assert!(
        acknowledged.len() > 100,
        "the disk filled up, not failed at once"
    );
    acknowledged
}

/// After space is freed, a new master on the journal has every acknowledged task, pending,
/// accepts work again and shuts down cleanly (a snapshot of everything).
async fn recovers_every_acknowledged_task(disk: &SmallDisk, acknowledged: &[TaskId]) {
    disk.free_space();
    let master = start(&disk.journal(), MasterConfig::default(), RESERVE_BYTES).await;
    holds_every_acknowledged_task(&master, acknowledged).await;
    master.shutdown().await.expect("a clean shutdown");
}

/// A restarted master has every acknowledged task, pending, and accepts work again.
async fn holds_every_acknowledged_task(master: &Master, acknowledged: &[TaskId]) {
    let proxy = master.proxy();
    for id in acknowledged {
        let view = proxy.get(*id).await.expect("an acknowledged task survives");
        assert_eq!(view.state, TaskState::Pending);
    }
    // At most the one submit in flight when the disk filled (never acknowledged) is extra.
    let pending = usize::try_from(master.stats().borrow().counts.pending).unwrap();
    assert!(
        pending == acknowledged.len() || pending == acknowledged.len() + 1,
        "{pending} pending after the restart, {} acknowledged",
        acknowledged.len()
    );
    proxy
        .submit(task(0))
        .await
        .expect("a submit after space was freed");
}

fn full_disk_on_append() {
    let Some(disk) =
        SmallDisk::mount("a_full_disk_stops_the_master_and_loses_nothing_acknowledged")
    else {
        return;
    };
    runtime().block_on(async {
        let acknowledged = submit_until_full(&disk.journal(), RESERVE_BYTES).await;
        recovers_every_acknowledged_task(&disk, &acknowledged).await;
    });
}

fn full_disk_on_snapshot() {
    let Some(disk) =
        SmallDisk::mount("a_snapshot_that_finds_the_disk_full_stops_the_master_and_loses_nothing")
    else {
        return;
    };
    const TASKS: usize = 400;
    runtime().block_on(async {
        // A snapshot after the last of these submits: about TASKS × PAYLOAD_BYTES (6 MiB),
        // which needs more than the disk has left once it is filled.
        let mut config = MasterConfig::default();
        config.snapshot_every = TASKS as u64;
        let master = start(&disk.journal(), config, RESERVE_BYTES).await;
        let proxy = master.proxy();
        let mut acknowledged = Vec::new();
        for i in 0..TASKS - 1 {
            acknowledged.push(proxy.submit(task(i)).await.expect("submit").id);
        }
        // Room for the last submit's record, not for the snapshot it triggers.
        disk.fill_leaving(RESERVE_BYTES + (1 << 20));
        let last = proxy
            .submit(task(TASKS))
            .await
            .expect("the last submit fits");
        acknowledged.push(last.id);
        stops_for_a_full_disk(master).await;
        disk.remove_filler();
        recovers_every_acknowledged_task(&disk, &acknowledged).await;
    });
}

/// With the reserve off, the full disk is met by the storage itself (sled gets `ENOSPC`),
/// which may then never close: the master runs in a child process that stops, reports and
/// exits, as a real master process does; this process then frees space and restarts.
fn full_disk_without_a_reserve() {
    let Some(disk) =
        SmallDisk::mount("a_full_disk_met_inside_the_storage_stops_the_process_and_loses_nothing")
    else {
        return;
    };
    let ids = tempfile::NamedTempFile::new().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .env(CHILD_JOURNAL, disk.journal())
        .env(CHILD_ACKNOWLEDGED, ids.path())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + DEADLINE * 2;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the child master did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "the child's checks failed: {status}");
    let acknowledged: Vec<TaskId> = std::fs::read_to_string(ids.path())
        .unwrap()
        .lines()
        .map(|line| line.parse().unwrap())
        .collect();
    assert!(!acknowledged.is_empty());
    runtime().block_on(recovers_every_acknowledged_task(&disk, &acknowledged));
}

/// The child of [`full_disk_without_a_reserve`]: fills the disk, checks the stop, writes the
/// acknowledged ids, and exits without waiting for the storage to close.
fn child_fills_without_a_reserve(journal: &Path, acknowledged: &Path) {
    let outcome = std::panic::catch_unwind(|| {
        let ids = runtime().block_on(submit_until_full(journal, 0));
        let lines: String = ids.iter().map(|id| format!("{id}\n")).collect();
        std::fs::write(acknowledged, lines).unwrap();
    });
    std::process::exit(if outcome.is_ok() { 0 } else { 1 });
}

/// The one node of a cluster (the embedded default) keeps its reserve too: the Raft log
/// refuses the append that would eat into it, the node stops, the master says why, and a
/// restart after space is freed has every acknowledged task.
fn full_disk_under_the_raft_log() {
    let Some(disk) =
        SmallDisk::mount("a_full_disk_stops_a_replicated_master_and_loses_nothing_acknowledged")
    else {
        return;
    };
    let journal = disk.journal();
    let start_node = |reserve: u64| {
        let journal = journal.clone();
        async move {
            let mut node = mawex::cluster::NodeConfig::single();
            node.free_space_reserve = reserve;
            let mut config = MasterConfig::default();
            config.snapshot_every = 0;
            mawex::ReplicatedMaster::start_single_with(
                journal,
                node,
                Master::builder().config(config),
            )
            .await
            .expect("start the node")
        }
    };
    runtime().block_on(async {
        let node = start_node(RESERVE_BYTES).await;
        let acknowledged = submit_until_refused(&node.proxy()).await;
        stopped_for_a_full_disk(node.master()).await;
        let halted = tokio::time::timeout(DEADLINE, node.halt()).await;
        assert!(halted.is_ok(), "a node whose disk filled up still halts");

        disk.free_space();
        let node = start_node(RESERVE_BYTES).await;
        holds_every_acknowledged_task(node.master(), &acknowledged).await;
        node.shutdown().await.expect("a clean shutdown");
    });
}
