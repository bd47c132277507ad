//! The shared harness of the integration tests: masters on temp-dir sled journals, pods with
//! instrumented handlers, and waiting on conditions with deadlines (never bare sleeps).

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mawex::{
    Bytes, GroupName, GrpcPodConnector, HandlerError, HandlerRegistry, InProcess, Journal, Master,
    MasterConfig, MasterProxy, MasterStats, Pod, PodConfig, PodConnector, PodId, RemoteMasterProxy,
    RunningServer, SledJournal, TaskId, TaskInput,
};

mod tools;

#[allow(unused_imports)] // Not every test binary calls each.
pub use tools::{missing_tool, skipped, DEADLINE};

/// How clients and pods reach the master in a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// In-process handles.
    Local,
    /// gRPC over loopback.
    Grpc,
}

/// Generates one test per transport for each `async fn name(t: Transport)` listed.
#[macro_export]
macro_rules! on_both_transports {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Transport::Local).await
                }
            )*
        }
        mod grpc {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Transport::Grpc).await
                }
            )*
        }
    };
}

/// Waits until `check` returns `Some`, polling every few milliseconds, or panics with `what`.
pub async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The message of a `PermissionDenied` refusal; panics with what came instead.
pub fn denied<T>(result: Result<T, mawex::ApiError>) -> String {
    match result {
        Err(mawex::ApiError::PermissionDenied(m)) => m,
        other => panic!(
            "expected PermissionDenied, got {:?}",
            other.map(|_| "a success")
        ),
    }
}

/// The next assignments a pod session receives, within [`DEADLINE`]; panics if the
/// session closes first.
pub async fn next_assignments(
    inbox: &mut tokio::sync::mpsc::Receiver<mawex::pod::MasterMessage>,
) -> Vec<mawex::pod::Assignment> {
    let next = async {
        loop {
            match inbox.recv().await {
                Some(mawex::pod::MasterMessage::Assign { assignments, .. }) => break assignments,
                Some(_) => continue,
                None => panic!("the pod's session closed"),
            }
        }
    };
    tokio::time::timeout(DEADLINE, next)
        .await
        .expect("assignments within the deadline")
}

pub fn group(name: &str) -> GroupName {
    GroupName::new(name).expect("valid group name")
}

pub fn pod_id(name: &str) -> PodId {
    PodId::new(name).expect("valid pod id")
}

/// Short leases so that expiry tests finish quickly.
pub fn fast_config() -> MasterConfig {
    let mut c = MasterConfig::default();
    c.lease_timeout = Duration::from_millis(900);
    c.heartbeat_interval = Duration::from_millis(150);
    c
}

/// Whether the harness's masters run as the one node of a Raft cluster, the embedded
/// default, or (`MAWEX_TEST_LOG=sled`) on a plain sled journal: the whole suite runs on
/// either.
pub fn on_raft() -> bool {
    !std::env::var("MAWEX_TEST_LOG").is_ok_and(|log| log == "sled")
}

/// The master of a test, on a journal of its own or leading a one-node Raft cluster.
enum Running {
    Plain(Master),
    Replicated(mawex_raft::ReplicatedMaster),
}

impl Running {
    fn master(&self) -> &Master {
        match self {
            Running::Plain(master) => master,
            Running::Replicated(node) => node.master(),
        }
    }

    async fn shutdown(self) {
        match self {
            Running::Plain(master) => master.shutdown().await.expect("clean shutdown"),
            Running::Replicated(node) => node.shutdown().await.expect("clean shutdown"),
        }
    }

    async fn halt(self) {
        match self {
            Running::Plain(master) => master.halt().await.expect("halt"),
            Running::Replicated(node) => node.halt().await.expect("halt"),
        }
    }
}

/// A master leading a one-node Raft cluster in its own temp dir (or on a sled journal
/// there, see [`on_raft`]). Dropping it without `shutdown` or `halt` panics: every test ends its
/// master on purpose.
pub struct TestMaster {
    master: Option<Running>,
    dir: Arc<tempfile::TempDir>,
    pub config: MasterConfig,
    transport: Transport,
    server: Option<RunningServer>,
    proxy: Option<Arc<dyn MasterProxy>>,
}

impl TestMaster {
    pub async fn start() -> TestMaster {
        Self::start_with(fast_config()).await
    }

    pub async fn start_on(transport: Transport) -> TestMaster {
        Self::start_on_with(transport, fast_config()).await
    }

    pub async fn start_on_with(transport: Transport, config: MasterConfig) -> TestMaster {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        Self::open_on(dir, config, transport).await
    }

    /// A master on a sled journal whatever [`on_raft`] says: for tests of the sled journal.
    pub async fn start_on_sled(config: MasterConfig) -> TestMaster {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        Self::restart_on_sled(dir, config).await
    }

    pub async fn start_with(config: MasterConfig) -> TestMaster {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        Self::open(dir, config).await
    }

    async fn open(dir: Arc<tempfile::TempDir>, config: MasterConfig) -> TestMaster {
        Self::open_on(dir, config, Transport::Local).await
    }

    /// A master on `journal` instead of sled (a journal that fails or stalls on purpose).
    pub async fn start_on_journal(
        transport: Transport,
        config: MasterConfig,
        journal: impl Journal,
    ) -> TestMaster {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        Self::open_on_journal(dir, config, transport, journal).await
    }

    async fn open_on(
        dir: Arc<tempfile::TempDir>,
        config: MasterConfig,
        transport: Transport,
    ) -> TestMaster {
        if on_raft() {
            let builder = Master::builder().config(config.clone());
            let node = mawex_raft::ReplicatedMaster::start_single(raft_path(dir.path()), builder)
                .await
                .expect("start a replicated master");
            return Self::serve(dir, config, transport, Running::Replicated(node)).await;
        }
        let journal = SledJournal::open(journal_path(dir.path())).expect("open journal");
        Self::open_on_journal(dir, config, transport, journal).await
    }

    async fn open_on_journal(
        dir: Arc<tempfile::TempDir>,
        config: MasterConfig,
        transport: Transport,
        journal: impl Journal,
    ) -> TestMaster {
        let master = Master::builder()
            .config(config.clone())
            .start(journal)
            .await
            .expect("start master");
        Self::serve(dir, config, transport, Running::Plain(master)).await
    }

    async fn serve(
        dir: Arc<tempfile::TempDir>,
        config: MasterConfig,
        transport: Transport,
        running: Running,
    ) -> TestMaster {
        let master = running.master();
        let (server, proxy): (Option<RunningServer>, Arc<dyn MasterProxy>) = match transport {
            Transport::Local => (None, Arc::new(master.proxy())),
            Transport::Grpc => {
                let server = mawex::Server::new(master)
                    .start("127.0.0.1:0".parse().expect("address"))
                    .await
                    .expect("serve gRPC");
                // Short retries: tests that stop the master expect errors soon.
                let mut remote = mawex::RemoteConfig::default();
                remote.retry_for = Duration::from_secs(2);
                let proxy =
                    RemoteMasterProxy::with_config([server.endpoint()], remote).expect("client");
                (Some(server), Arc::new(proxy))
            }
        };
        TestMaster {
            master: Some(running),
            dir,
            config,
            transport,
            server,
            proxy: Some(proxy),
        }
    }

    /// How pods of this test reach the master.
    pub fn connector(&self) -> Arc<dyn PodConnector> {
        match &self.server {
            None => Arc::new(self.master().pod_connector()),
            Some(server) => {
                Arc::new(GrpcPodConnector::new(&server.endpoint()).expect("pod connector"))
            }
        }
    }

    /// The gRPC endpoint (gRPC transport only).
    pub fn endpoint(&self) -> String {
        self.server.as_ref().expect("a gRPC master").endpoint()
    }

    pub fn transport(&self) -> Transport {
        self.transport
    }

    async fn stop_server(&mut self) {
        self.proxy = None;
        if let Some(server) = self.server.take() {
            server.shutdown().await.expect("gRPC server stops");
        }
    }

    pub fn master(&self) -> &Master {
        self.master.as_ref().expect("master running").master()
    }

    /// The client of this test's transport.
    pub fn proxy(&self) -> Arc<dyn MasterProxy> {
        self.proxy.clone().expect("master running")
    }

    pub fn journal_dir(&self) -> PathBuf {
        journal_path(self.dir.path())
    }

    /// Starts an in-process pod on this master.
    pub fn pod(&self, config: PodConfig, handlers: HandlerRegistry) -> Pod {
        Pod::start(config, Arc::new(InProcess::new(handlers)), self.connector()).expect("start pod")
    }

    /// Waits until the published stats satisfy `pred`.
    pub async fn wait_stats(&self, what: &str, pred: impl Fn(&MasterStats) -> bool) -> MasterStats {
        let mut rx = self.master().stats();
        let waited = tokio::time::timeout(DEADLINE, async {
            rx.wait_for(|s| pred(s)).await.map(|s| s.clone())
        })
        .await;
        match waited {
            Ok(Ok(stats)) => stats,
            Ok(Err(_)) => panic!("master stopped while waiting for {what}"),
            Err(_) => panic!(
                "timed out waiting for {what}; last stats: {:?}",
                self.stats()
            ),
        }
    }

    pub fn stats(&self) -> MasterStats {
        self.master().stats().borrow().clone()
    }

    /// Stops cleanly; the returned handle keeps the directory for a restart.
    pub async fn shutdown(mut self) -> Arc<tempfile::TempDir> {
        self.stop_server().await;
        let master = self.master.take().expect("master running");
        master.shutdown().await;
        self.dir.clone()
    }

    /// Waits until every snapshot the master asked for is stored. A replicated master's are
    /// built on openraft's task after the ask; a sled journal's are stored by then.
    pub async fn snapshots_stored(&self) {
        let Some(Running::Replicated(node)) = &self.master else {
            return;
        };
        let Some(offered) = node.machine().last_offer() else {
            return;
        };
        node.raft()
            .wait(Some(Duration::from_secs(30)))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= offered.index),
                "the last snapshot asked for stored",
            )
            .await
            .expect("the snapshot is stored");
    }

    /// Crashes the master (nothing uncommitted survives, no snapshot) and keeps the directory.
    pub async fn halt(mut self) -> Arc<tempfile::TempDir> {
        self.stop_server().await;
        let master = self.master.take().expect("master running");
        master.halt().await;
        self.dir.clone()
    }

    /// Starts a new master on the sled journal in a directory a previous one used, whatever
    /// [`on_raft`] says.
    pub async fn restart_on_sled(dir: Arc<tempfile::TempDir>, config: MasterConfig) -> TestMaster {
        let journal = SledJournal::open(journal_path(dir.path())).expect("open journal");
        Self::open_on_journal(dir, config, Transport::Local, journal).await
    }

    /// Starts a new master on a directory a previous one used.
    pub async fn restart(dir: Arc<tempfile::TempDir>, config: MasterConfig) -> TestMaster {
        Self::open(dir, config).await
    }
}

impl Drop for TestMaster {
    fn drop(&mut self) {
        if self.master.is_some() && !std::thread::panicking() {
            panic!("a TestMaster was dropped without shutdown() or halt()");
        }
    }
}

pub fn journal_path(dir: &Path) -> PathBuf {
    dir.join("journal")
}

/// The events the master that used `dir` left in its log after its latest snapshot, in
/// order: the sled journal's tail, or the batches left in the Raft log (see [`on_raft`]).
pub async fn logged_events(dir: &Path) -> Vec<mawex::testing::Event> {
    if !on_raft() {
        let mut journal = SledJournal::open(journal_path(dir)).expect("open journal");
        return journal
            .read_events()
            .expect("read the journal")
            .into_iter()
            .map(|(_, event)| event)
            .collect();
    }
    use openraft::storage::{RaftLogReader, RaftLogStorage};
    let mut log = mawex_raft::ReplicatedMaster::open_log(raft_path(dir)).expect("open the log");
    let mut reader = log.get_log_reader().await;
    let entries = reader
        .try_get_log_entries(0..u64::MAX)
        .await
        .expect("read the log");
    entries
        .into_iter()
        .filter_map(|entry| match entry.payload {
            openraft::EntryPayload::Normal(batch) => {
                Some(std::sync::Arc::unwrap_or_clone(batch.events))
            }
            _ => None,
        })
        .flatten()
        .collect()
}

/// Where a replicated master of the harness keeps its Raft log and snapshots.
pub fn raft_path(dir: &Path) -> PathBuf {
    dir.join("raft")
}

/// Counts attempts running at once and remembers the highest count.
#[derive(Default, Debug)]
pub struct Overlap {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Overlap {
    pub fn enter(&self) -> OverlapGuard<'_> {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
        OverlapGuard(self)
    }

    pub fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
}

pub struct OverlapGuard<'a>(&'a Overlap);

impl Drop for OverlapGuard<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Records which task ran how many times.
#[derive(Default, Debug)]
pub struct Runs(Mutex<HashMap<TaskId, usize>>);

impl Runs {
    pub fn record(&self, id: TaskId) {
        *self.0.lock().expect("lock").entry(id).or_default() += 1;
    }

    pub fn count(&self, id: &TaskId) -> usize {
        self.0.lock().expect("lock").get(id).copied().unwrap_or(0)
    }

    pub fn total(&self) -> usize {
        self.0.lock().expect("lock").values().sum()
    }
}

/// Handlers every test can use:
/// - `echo`: returns its payload;
/// - `fail`: returns a handler error;
/// - `panic`: panics;
/// - `sleep`: sleeps for the payload's number of milliseconds, then returns it;
/// - `track`: like `sleep`, counted by `overlap` while it runs.
///
/// Every run is recorded in `runs`.
pub fn handlers(runs: Arc<Runs>, overlap: Arc<Overlap>) -> HandlerRegistry {
    let mut r = HandlerRegistry::new();
    let rn = runs.clone();
    r.register("echo", move |t: TaskInput| {
        rn.record(t.task);
        async move { Ok(t.payload) }
    })
    .expect("register");
    let rn = runs.clone();
    r.register("fail", move |t: TaskInput| {
        rn.record(t.task);
        async move { Err(HandlerError::new("this handler always fails")) }
    })
    .expect("register");
    let rn = runs.clone();
    r.register("flaky", move |t: TaskInput| {
        rn.record(t.task);
        async move {
            if t.attempt.0 == 1 {
                Err(HandlerError::new("first attempts always fail"))
            } else {
                Ok(t.payload)
            }
        }
    })
    .expect("register");
    let rn = runs.clone();
    r.register("panic", move |t: TaskInput| {
        rn.record(t.task);
        async move { panic!("this handler always panics") }
    })
    .expect("register");
    let rn = runs.clone();
    r.register("sleep", move |t: TaskInput| {
        rn.record(t.task);
        async move {
            tokio::time::sleep(millis(&t.payload)).await;
            Ok(t.payload)
        }
    })
    .expect("register");
    r.register("track", move |t: TaskInput| {
        runs.record(t.task);
        let overlap = overlap.clone();
        async move {
            let _guard = overlap.enter();
            tokio::time::sleep(millis(&t.payload)).await;
            Ok(Bytes::new())
        }
    })
    .expect("register");
    r
}

fn millis(payload: &[u8]) -> Duration {
    let ms = std::str::from_utf8(payload)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Duration::from_millis(ms)
}

/// Default instrumented handlers with fresh counters.
pub fn instrumented() -> (HandlerRegistry, Arc<Runs>, Arc<Overlap>) {
    let runs = Arc::new(Runs::default());
    let overlap = Arc::new(Overlap::default());
    (handlers(runs.clone(), overlap.clone()), runs, overlap)
}

/// A pod connector the test controls, as a network would be: it can cut the current session,
/// refuse new ones for a while, and be pointed at another master.
pub struct Network {
    target: Mutex<mawex::LocalPodConnector>,
    refuse: std::sync::atomic::AtomicBool,
    /// While set, what the pod sends is accepted and lost, as bytes in a dying connection.
    swallow: Arc<std::sync::atomic::AtomicBool>,
    current: Mutex<Option<tokio_util::sync::CancellationToken>>,
    pub connects: AtomicUsize,
    /// The terms the next sessions are welcomed in, as successive leaders would welcome them.
    terms: Mutex<std::collections::VecDeque<u64>>,
    /// Messages the pod sent on each session, in the order they were opened.
    pub sent: Mutex<Vec<Arc<AtomicUsize>>>,
}

impl Network {
    pub fn new(target: mawex::LocalPodConnector) -> Arc<Network> {
        Arc::new(Network {
            target: Mutex::new(target),
            refuse: Default::default(),
            swallow: Default::default(),
            current: Mutex::new(None),
            connects: AtomicUsize::new(0),
            terms: Mutex::new(Default::default()),
            sent: Mutex::new(Vec::new()),
        })
    }

    /// The next sessions are welcomed in these terms, one each, in order.
    pub fn welcome_terms(&self, terms: impl IntoIterator<Item = u64>) {
        self.terms.lock().expect("lock").extend(terms);
    }

    /// How many messages the pod sent on the `n`th session (from 0).
    pub fn sent_on(&self, n: usize) -> Option<usize> {
        let sent = self.sent.lock().expect("lock");
        sent.get(n).map(|count| count.load(Ordering::SeqCst))
    }

    /// Cuts the open session, if any: both directions stop at once.
    pub fn cut(&self) {
        if let Some(token) = self.current.lock().expect("lock").take() {
            token.cancel();
        }
    }

    /// While set, connection attempts fail as if the master were unreachable.
    pub fn refuse(&self, refuse: bool) {
        self.refuse.store(refuse, Ordering::SeqCst);
    }

    /// While set, the pod's messages are accepted and lost on the way.
    pub fn swallow(&self, swallow: bool) {
        self.swallow.store(swallow, Ordering::SeqCst);
    }

    pub fn point_at(&self, target: mawex::LocalPodConnector) {
        *self.target.lock().expect("lock") = target;
    }
}

struct CutOutbox {
    inner: Arc<dyn mawex::pod::PodOutbox>,
    cut: tokio_util::sync::CancellationToken,
    swallow: Arc<std::sync::atomic::AtomicBool>,
    sent: Arc<AtomicUsize>,
}

impl mawex::pod::PodOutbox for CutOutbox {
    fn send(&self, message: mawex::pod::PodMessage) -> Result<(), mawex::ApiError> {
        if self.cut.is_cancelled() {
            return Err(mawex::ApiError::Unavailable("connection cut".into()));
        }
        self.sent.fetch_add(1, Ordering::SeqCst);
        if self.swallow.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.inner.send(message)
    }
}

#[async_trait::async_trait]
impl mawex::PodConnector for Network {
    async fn connect(
        &self,
        hello: mawex::pod::PodHello,
    ) -> Result<mawex::pod::PodSession, mawex::ApiError> {
        if self.refuse.load(Ordering::SeqCst) {
            return Err(mawex::ApiError::Unavailable("unreachable".into()));
        }
        let target = self.target.lock().expect("lock").clone();
        let backlog = mawex::pod::session_backlog(&hello);
        let mut session = target.connect(hello).await?;
        if let Some(term) = self.terms.lock().expect("lock").pop_front() {
            session.welcome.term = term;
        }
        let sent = Arc::new(AtomicUsize::new(0));
        self.sent.lock().expect("lock").push(sent.clone());
        self.connects.fetch_add(1, Ordering::SeqCst);
        let cut = tokio_util::sync::CancellationToken::new();
        *self.current.lock().expect("lock") = Some(cut.clone());
        let (tx, rx) = tokio::sync::mpsc::channel(backlog);
        let mut inbox = session.inbox;
        let forward_cut = cut.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = forward_cut.cancelled() => return,
                    m = inbox.recv() => match m {
                        Some(m) => { let _ = tx.send(m).await; }
                        None => return,
                    },
                }
            }
        });
        let outbox = Arc::new(CutOutbox {
            inner: session.outbox,
            cut,
            swallow: self.swallow.clone(),
            sent,
        });
        Ok(mawex::pod::PodSession::new(session.welcome, outbox, rx))
    }
}

/// A TCP proxy in front of a gRPC master that, when armed, cuts the connection as the next
/// response comes back: the request arrived and was processed, the answer is lost.
pub struct CutProxy {
    pub addr: std::net::SocketAddr,
    armed: Arc<std::sync::atomic::AtomicBool>,
    pub cuts: Arc<AtomicUsize>,
}

/// Server frames this small are HTTP/2 housekeeping (SETTINGS/PING acks, window updates),
/// not a response.
const HOUSEKEEPING_BYTES: usize = 20;

impl CutProxy {
    pub async fn start(target: std::net::SocketAddr) -> CutProxy {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cuts = Arc::new(AtomicUsize::new(0));
        let (armed_c, cuts_c) = (armed.clone(), cuts.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let (mut client_r, mut client_w) = client.into_split();
                let (mut server_r, mut server_w) = server.into_split();
                let upstream = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_r, &mut server_w).await;
                });
                let (armed, cuts) = (armed_c.clone(), cuts_c.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match server_r.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if n > HOUSEKEEPING_BYTES && armed.swap(false, Ordering::SeqCst) {
                            cuts.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        if client_w.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    // Dropping both halves closes both connections.
                    upstream.abort();
                });
            }
        });
        CutProxy { addr, armed, cuts }
    }

    /// Cut the connection at the next response.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }
}
