//! `--scenario web`: the dashboard over a master that retains `--tasks` finished tasks (one
//! in ten failed, with a few error messages; a hundred with a rare one). Times the tasks
//! page, filtered by group and state, newest first, at page 50, and a search by the rare
//! error text (which examines every task); then the `grpc` throughput alone and while a
//! dashboard keeps every page open (each page's fragment fetched once a second, as the live
//! pages do), alternating the two.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mawex::{
    Bytes, GroupName, GrpcPodConnector, HandlerError, HandlerRegistry, InProcess, Master,
    MasterConfig, MasterProxy, Pod, PodConfig, PodId, RemoteMasterProxy, Server, SledJournal,
    TaskInput, TaskSpec,
};

/// Groups the retained tasks are spread over.
const GROUPS: usize = 10;
/// One task in this many fails with the rare error the search looks for.
const RARE_EVERY: usize = 10_000;
/// Requests timed, per kind.
const SAMPLES: usize = 30;
/// Tasks a list page shows (the dashboard's page size).
const PAGE: usize = 50;
/// Rounds of the grpc comparison, each with and without the dashboard.
const ROUNDS: usize = 4;

/// The dashboard's pages (their live fragments), as a browser with each open asks for them.
const PAGES: &[&str] = &[
    "/fragments/overview",
    "/fragments/groups",
    "/fragments/tasks?group=g3&state=failed&order=newest",
    "/fragments/failed",
    "/fragments/pods",
    "/fragments/schedules",
    "/fragments/broadcasts",
];

fn handlers() -> anyhow::Result<HandlerRegistry> {
    let mut handlers = HandlerRegistry::new();
    handlers.register("noop", |_: TaskInput| async { Ok(Bytes::new()) })?;
    handlers.register("work", |t: TaskInput| async move {
        let n: usize = std::str::from_utf8(&t.payload)
            .ok()
            .and_then(|p| p.strip_prefix("order-"))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if n.is_multiple_of(RARE_EVERY) {
            Err(HandlerError::permanent("disk full on node-7"))
        } else if n.is_multiple_of(10) {
            Err(HandlerError::permanent(format!(
                "upstream timeout (shard {})",
                n % 50
            )))
        } else {
            Ok(Bytes::from(format!("done {n}")))
        }
    })?;
    Ok(handlers)
}

/// One HTTP/1.1 GET on a fresh connection: the status and the time to the whole answer.
fn get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<(u16, Duration, String)> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let took = started.elapsed();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, took, answer))
}

/// The p50 and p99 in ms of `samples` GETs of `path`, each answered 200.
fn timed(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<(f64, f64)> {
    let mut times = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let (status, took, answer) = get(addr, path)?;
        anyhow::ensure!(status == 200, "{path}: {status}: {answer}");
        times.push(took);
    }
    times.sort();
    // `percentile` answers milliseconds; three decimals kept.
    let ms = |p: f64| (super::percentile(&times, p) * 1e3).round() / 1e3;
    Ok((ms(0.50), ms(0.99)))
}

pub(crate) async fn web(tasks: usize, batch: usize) -> anyhow::Result<serde_json::Value> {
    let dir = tempfile::tempdir()?;
    let master = Master::builder()
        .config(MasterConfig::default())
        .start(SledJournal::open(dir.path().join("journal"))?)
        .await?;
    let proxy: Arc<dyn MasterProxy> = Arc::new(master.proxy());
    let groups: Vec<GroupName> = (0..GROUPS)
        .map(|g| GroupName::new(format!("g{g}")))
        .collect::<Result<_, _>>()?;
    // A group of its own for each throughput run: a result stream replays the retained
    // results of its group, which would count an earlier run's.
    let bench: Vec<(GroupName, GroupName)> = (0..ROUNDS)
        .map(|r| {
            anyhow::Ok((
                GroupName::new(format!("bench-{r}-alone"))?,
                GroupName::new(format!("bench-{r}-pages"))?,
            ))
        })
        .collect::<Result<_, _>>()?;
    let pod = Pod::start(
        PodConfig::new(PodId::new("web-pod")?, groups.clone())
            .with_slots(2)
            .with_prefetch(1024),
        Arc::new(InProcess::new(handlers()?)),
        Arc::new(master.pod_connector()),
    )?;

    // The retained tasks: submitted in batches, all run to their end.
    let loading = Instant::now();
    let mut last = None;
    for start in (0..tasks).step_by(batch) {
        let specs: Vec<TaskSpec> = (start..(start + batch).min(tasks))
            .map(|n| {
                TaskSpec::new(groups[n % GROUPS].clone(), "work", format!("order-{n}"))
                    .with_retry(mawex::RetryPolicy::never())
            })
            .collect();
        last = proxy.submit_many(specs).await?.last().map(|a| a.id);
    }
    if let Some(last) = last {
        proxy.await_result(last).await?;
    }
    let idle = Instant::now();
    loop {
        let counts = master.stats().borrow().counts;
        if counts.pending == 0 && counts.running == 0 {
            break;
        }
        anyhow::ensure!(idle.elapsed() < Duration::from_secs(600), "never finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let load_seconds = loading.elapsed().as_secs_f64();

    let app = mawex_web::router(proxy.clone(), mawex_web::WebConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let serving = tokio::spawn(async move { axum::serve(listener, app).await });

    // The tasks page at page 50: the cursor found through the API, then the page timed.
    let filter = "group=g3&state=succeeded&order=newest";
    let mut after = String::new();
    for _ in 1..PAGE {
        let path = format!("/api/v1/tasks?{filter}&limit={PAGE}{after}");
        let (status, _, answer) = tokio::task::block_in_place(|| get(addr, &path))?;
        anyhow::ensure!(status == 200, "{path}: {answer}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        let page: serde_json::Value = serde_json::from_str(body)?;
        let next = page["next"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("fewer than 50 pages"))?;
        after = format!("&after={next}");
    }
    let page_50 = format!("/tasks?{filter}{after}");
    let (list_p50, list_p99) = tokio::task::block_in_place(|| timed(addr, &page_50))?;
    // The rare error, newest first: every retained task is examined for it.
    let search = "/tasks?error=disk%20full&order=newest";
    let (_, _, found) = tokio::task::block_in_place(|| get(addr, search))?;
    let rows = found.matches("name=\"ids[]\"").count();
    anyhow::ensure!(
        rows == PAGE.min(tasks.div_ceil(RARE_EVERY)),
        "the search found {rows} rows"
    );
    let (search_p50, search_p99) = tokio::task::block_in_place(|| timed(addr, search))?;

    // The grpc throughput, alone and with the dashboard's pages open, alternately.
    let server = Server::new(&master).start("127.0.0.1:0".parse()?).await?;
    let remote: Arc<dyn MasterProxy> = Arc::new(RemoteMasterProxy::with_config(
        [server.endpoint()],
        mawex::RemoteConfig::default(),
    )?);
    let bench_pod = Pod::start(
        PodConfig::new(
            PodId::new("bench-pod")?,
            bench
                .iter()
                .flat_map(|(a, b)| [a.clone(), b.clone()])
                .collect(),
        )
        .with_slots(2)
        .with_prefetch(1024),
        Arc::new(InProcess::new(handlers()?)),
        Arc::new(GrpcPodConnector::with_config(
            [server.endpoint()],
            Default::default(),
        )?),
    )?;
    let throughput_tasks = 300_000;
    let (mut alone, mut with_pages) = (Vec::new(), Vec::new());
    let mut page_requests = 0;
    for (round, (alone_group, pages_group)) in bench.iter().enumerate() {
        // Alone first in even rounds, with the pages first in odd ones: whatever the order
        // costs (a snapshot, say) falls on both alike.
        let order = if round % 2 == 0 {
            [(alone_group, false), (pages_group, true)]
        } else {
            [(pages_group, true), (alone_group, false)]
        };
        for (group, with) in order {
            let open = Arc::new(AtomicBool::new(with));
            let fetched = Arc::new(AtomicU64::new(0));
            let browser = with.then(|| {
                let (open, fetched) = (open.clone(), fetched.clone());
                std::thread::spawn(move || -> anyhow::Result<()> {
                    while open.load(Ordering::Relaxed) {
                        let second = Instant::now();
                        for page in PAGES {
                            let (status, _, answer) = get(addr, page)?;
                            anyhow::ensure!(status == 200, "{page}: {answer}");
                            fetched.fetch_add(1, Ordering::Relaxed);
                        }
                        std::thread::sleep(Duration::from_secs(1).saturating_sub(second.elapsed()));
                    }
                    Ok(())
                })
            });
            let seconds = super::throughput(&remote, group, throughput_tasks, batch, false).await?;
            let rate = throughput_tasks as f64 / seconds;
            open.store(false, Ordering::Relaxed);
            if let Some(browser) = browser {
                tokio::task::block_in_place(|| browser.join())
                    .map_err(|_| anyhow::anyhow!("the page loop panicked"))??;
                with_pages.push(rate);
            } else {
                alone.push(rate);
            }
            page_requests += fetched.load(Ordering::Relaxed);
        }
    }
    // The mean of the middle two of four.
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    let (alone, with_pages) = (median(alone), median(with_pages));

    bench_pod.shutdown().await?;
    server.shutdown().await?;
    serving.abort();
    pod.shutdown().await?;
    master.shutdown().await?;
    Ok(serde_json::json!({
        "scenario": "web",
        "retained_tasks": tasks,
        "load_seconds": (load_seconds * 10.0).round() / 10.0,
        "list_page50_ms_p50": list_p50,
        "list_page50_ms_p99": list_p99,
        "search_error_ms_p50": search_p50,
        "search_error_ms_p99": search_p99,
        "grpc_tasks_per_s_alone": alone.round(),
        "grpc_tasks_per_s_with_pages": with_pages.round(),
        "grpc_slowdown_pct": ((1.0 - with_pages / alone) * 1000.0).round() / 10.0,
        "page_requests": page_requests,
    }))
}
