//! The dashboard in a real browser: headless Chromium over WebDriver (Debian's `chromium` and
//! `chromium-driver`; `.ci/run` installs them, and in CI a missing one fails the test). Logged
//! in as a viewer, the overview's counters change without a reload as tasks run; the viewer
//! cannot submit from the page's own origin; every page is saved as a screenshot under
//! `target/screenshots/`.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

#[path = "../../../tests/common/tools.rs"]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mawex::{
    HandlerError, HandlerRegistry, InProcess, Master, MasterProxy, MemoryJournal, Pod, PodConfig,
    PodId, TaskInput,
};
use mawex_web::{WebRole, WebUser};
use thirtyfour::prelude::*;

const CHROMEDRIVER: &str = "chromedriver";

/// chromedriver on a free port, killed with the test.
struct Driver(Child, u16);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_driver() -> Option<Driver> {
    let found = Command::new("sh")
        .args(["-c", "command -v chromedriver && command -v chromium"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !found {
        common::missing_tool(
            "the dashboard in a browser",
            "chromium and chromedriver (apt-get install chromium chromium-driver)",
        );
        return None;
    }
    let port = free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < common::DEADLINE,
            "chromedriver did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Driver(child, port))
}

/// One HTTP/1.1 request with `token`: the status and the body.
fn http(addr: &str, method: &str, path: &str, body: &str, token: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(common::DEADLINE)).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Authorization: Bearer {token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Waits until the overview's counter `what` reads `n`, without reloading the page.
async fn until_count(driver: &WebDriver, what: &str, n: u64) {
    let started = Instant::now();
    loop {
        let shown = match driver.find(By::Css(format!("[data-count='{what}']"))).await {
            Ok(element) => element.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if shown == n.to_string() {
            return;
        }
        assert!(
            started.elapsed() < common::DEADLINE,
            "{what} shows {shown:?}, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Logs in on the login page shown with `token`.
async fn log_in(driver: &WebDriver, token: &str) {
    let field = driver.query(By::Id("token")).first().await.unwrap();
    field.send_keys(token).await.unwrap();
    let submit = driver.find(By::Css("button[type=submit]")).await.unwrap();
    submit.click().await.unwrap();
}

/// The question of the confirmation the page asks (waited for), accepted.
async fn confirmation(driver: &WebDriver) -> String {
    let started = Instant::now();
    loop {
        if let Ok(text) = driver.get_alert_text().await {
            driver.accept_alert().await.unwrap();
            return text;
        }
        assert!(
            started.elapsed() < common::DEADLINE,
            "no confirmation asked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every failed task of group `web` is on attempt `attempt` (there are five).
async fn until_failed_on_attempt(web: &str, attempt: u64) {
    let started = Instant::now();
    loop {
        let (_, page) = http(
            web,
            "GET",
            "/api/v1/tasks?group=web&state=failed",
            "",
            "admin-secret",
        );
        let failed: serde_json::Value = serde_json::from_str(&page).unwrap();
        let attempts: Vec<u64> = failed["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["attempt"].as_u64().unwrap())
            .collect();
        if attempts == [attempt; 5] {
            return;
        }
        assert!(
            started.elapsed() < common::DEADLINE,
            "not retried: {attempts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Accepts the confirmation the page asks for (waiting for it, within the deadline).
async fn accept_confirmation(driver: &WebDriver) {
    let started = Instant::now();
    while driver.accept_alert().await.is_err() {
        assert!(
            started.elapsed() < common::DEADLINE,
            "no confirmation asked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Clicks the first element `css` finds, finding it again if a live update replaced it
/// between the find and the click.
async fn click(driver: &WebDriver, css: &str) {
    let started = Instant::now();
    loop {
        let clicked = match driver.query(By::Css(css)).first().await {
            Ok(element) => element.click().await,
            Err(e) => Err(e),
        };
        match clicked {
            Ok(()) => return,
            Err(e) => assert!(
                started.elapsed() < common::DEADLINE,
                "cannot click {css}: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the element at `css` has a text containing `needle`; returns it.
async fn wait_text(driver: &WebDriver, css: &str, needle: &str) -> String {
    let started = Instant::now();
    loop {
        if let Ok(element) = driver.find(By::Css(css)).await {
            let text = element.text().await.unwrap_or_default();
            if text.contains(needle) {
                return text;
            }
        }
        assert!(
            started.elapsed() < common::DEADLINE,
            "{css} never said {needle:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_stays_live_in_a_browser_and_a_viewer_changes_nothing() {
    let Some(chromedriver) = start_driver() else {
        return;
    };
    let master = Master::builder().start(MemoryJournal::new()).await.unwrap();
    let mut handlers = HandlerRegistry::new();
    handlers
        .register("echo", |t: TaskInput| async move { Ok(t.payload) })
        .unwrap()
        .register("fail", |_t: TaskInput| async move {
            Err(HandlerError::permanent("it broke"))
        })
        .unwrap();
    let pod = Pod::start(
        PodConfig::new(
            PodId::new("pod-1").unwrap(),
            vec![mawex::GroupName::new("web").unwrap()],
        )
        .with_slots(4),
        Arc::new(InProcess::new(handlers)),
        Arc::new(master.pod_connector()),
    )
    .unwrap();
    let recorded = master.metrics().await.unwrap();
    let config = mawex_web::WebConfig::default()
        .with_metrics(move |r| recorded.register(r))
        .with_auth(|secret| {
            let role = match secret {
                "viewer-secret" => WebRole::Viewer,
                "admin-secret" => WebRole::Admin,
                _ => return None,
            };
            Some(WebUser::new(secret.trim_end_matches("-secret"), role))
        });
    let proxy: Arc<dyn MasterProxy> = Arc::new(master.proxy());
    let app = mawex_web::router(proxy, config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let web = listener.local_addr().unwrap().to_string();
    let serving = tokio::spawn(async move { axum::serve(listener, app).await });

    let mut caps = DesiredCapabilities::chrome();
    for arg in [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
    ] {
        caps.add_arg(arg).unwrap();
    }
    caps.set_binary("/usr/bin/chromium").unwrap();
    let driver = WebDriver::new(format!("http://127.0.0.1:{}", chromedriver.1), caps)
        .await
        .unwrap();
    let base = format!("http://{web}");

    // The overview needs a session: the login page exchanges a token for one.
    driver.goto(format!("{base}/")).await.unwrap();
    assert!(driver
        .current_url()
        .await
        .unwrap()
        .as_str()
        .ends_with("/login"));
    log_in(&driver, "viewer-secret").await;
    until_count(&driver, "succeeded", 0).await;
    driver
        .execute("window.notReloaded = true;", Vec::new())
        .await
        .unwrap();

    // 50 tasks through the API: the counter follows, without a reload.
    let batch: Vec<String> = (0..50)
        .map(|i| format!(r#"{{"group": "web", "handler": "echo", "payload": "{i}"}}"#))
        .collect();
    let (status, _) = http(
        &web,
        "POST",
        "/api/v1/tasks/batch",
        &format!("[{}]", batch.join(",")),
        "admin-secret",
    );
    assert_eq!(status, 200);
    until_count(&driver, "succeeded", 50).await;
    let fails: Vec<&str> = (0..5)
        .map(|_| r#"{"group": "web", "handler": "fail", "max_attempts": 1}"#)
        .collect();
    http(
        &web,
        "POST",
        "/api/v1/tasks/batch",
        &format!("[{}]", fails.join(",")),
        "admin-secret",
    );
    until_count(&driver, "failed", 5).await;
    // The charts of the last hour and day, drawn on the server, with the failures in them.
    let charts = driver.find_all(By::Css("figure.chart svg")).await.unwrap();
    assert_eq!(charts.len(), 3);
    assert_eq!(
        driver
            .find_all(By::Css("svg polyline.failed"))
            .await
            .unwrap()
            .len(),
        2
    );
    let still = driver
        .execute("return window.notReloaded === true;", Vec::new())
        .await
        .unwrap();
    assert_eq!(
        still.json(),
        &serde_json::json!(true),
        "the page was reloaded"
    );

    // The viewer's session, from the dashboard's own origin, changes nothing.
    let refused = driver
        .execute_async(
            "const done = arguments[0];
             fetch('/api/v1/tasks', {method: 'POST', headers: {'content-type': 'application/json'},
                                     body: '{\"group\": \"web\", \"handler\": \"echo\"}'})
               .then(r => r.json().then(b => done([r.status, b.error.message])));",
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(refused.json()[0], serde_json::json!(403));
    let why = refused.json()[1].as_str().unwrap_or_default();
    assert!(why.contains("has the viewer role"), "{why}");

    // The failed queue's bulk retry, from the page: refused for the viewer, with why.
    driver.goto(format!("{base}/failed")).await.unwrap();
    let retry = "tr[data-failed='web/handler'] button[name=Retry]";
    click(&driver, retry).await;
    let said = wait_text(&driver, "[data-result]", "viewer").await;
    assert!(said.contains("has the viewer role"), "{said}");

    // An admin retries the whole line: the count is asked first, then confirmed.
    driver
        .find(By::Css("header form button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    log_in(&driver, "admin-secret").await;
    // Logged in: the overview, before going on (a navigation must not race the login's).
    until_count(&driver, "failed", 5).await;
    driver.goto(format!("{base}/failed")).await.unwrap();
    click(&driver, retry).await;
    let asked = confirmation(&driver).await;
    assert!(asked.starts_with("5 match."), "{asked}");
    let said = wait_text(&driver, "[data-result]", "done").await;
    assert_eq!(said, "5 done.");
    // Run again, they failed again: each is on its second attempt.
    until_failed_on_attempt(&web, 2).await;

    // The tasks page: a search by error text, then a retry of everything it matches (not
    // only the page shown), counted first.
    driver
        .goto(format!("{base}/tasks?error=broke&order=newest"))
        .await
        .unwrap();
    assert_eq!(
        driver
            .find_all(By::Css("table.tasks tbody input[name='ids[]']"))
            .await
            .unwrap()
            .len(),
        5
    );
    click(&driver, "#bulk option[value=retry]").await;
    click(&driver, "#bulk button[value=filter]").await;
    let asked = confirmation(&driver).await;
    assert!(asked.starts_with("5 match."), "{asked}");
    assert_eq!(wait_text(&driver, "[data-result]", "done").await, "5 done.");
    until_failed_on_attempt(&web, 3).await;
    // Two ticked boxes, purged: the count asked is theirs.
    let boxes = driver
        .find_all(By::Css("table.tasks tbody input[name='ids[]']"))
        .await
        .unwrap();
    let ticked = [
        boxes[0].attr("value").await.unwrap().unwrap(),
        boxes[1].attr("value").await.unwrap().unwrap(),
    ];
    for ticked in &ticked {
        click(&driver, &format!("input[value='{ticked}']")).await;
    }
    click(&driver, "#bulk option[value=purge]").await;
    click(&driver, "#bulk button[value=selected]").await;
    let asked = confirmation(&driver).await;
    assert!(asked.starts_with("2 match."), "{asked}");
    // (The answer of the retry before is still shown until this one's comes.)
    assert_eq!(
        wait_text(&driver, "[data-result]", "2 done").await,
        "2 done."
    );
    for purged in &ticked {
        let (status, _) = http(
            &web,
            "GET",
            &format!("/api/v1/tasks/{purged}"),
            "",
            "admin-secret",
        );
        assert_eq!(status, 404, "{purged} was purged");
    }

    // A broadcast and a schedule; the schedule is paused from its page.
    let (status, _) = http(
        &web,
        "POST",
        "/api/v1/broadcasts",
        r#"{"app": "site", "group": "web", "handler": "echo", "payload": "v1"}"#,
        "admin-secret",
    );
    assert_eq!(status, 200);
    let (status, _) = http(
        &web,
        "POST",
        "/api/v1/schedules",
        r#"{"name": "nightly", "cron": "0 3 * * *", "task": {"group": "web", "handler": "echo"}}"#,
        "admin-secret",
    );
    assert_eq!(status, 204);
    driver.goto(format!("{base}/schedules")).await.unwrap();
    click(&driver, "tr[data-schedule=nightly] button[name=Pause]").await;
    accept_confirmation(&driver).await;
    assert_eq!(wait_text(&driver, "[data-result]", "Done").await, "Done.");
    let (_, schedules) = http(&web, "GET", "/api/v1/schedules", "", "admin-secret");
    assert!(schedules.contains(r#""paused":true"#), "{schedules}");

    // A group is paused from its page, and resumed.
    driver.goto(format!("{base}/groups")).await.unwrap();
    for (button, paused) in [("Pause", true), ("Resume", false)] {
        click(&driver, &format!("button[name={button}]")).await;
        accept_confirmation(&driver).await;
        let started = Instant::now();
        loop {
            let (_, web_group) = http(&web, "GET", "/api/v1/groups/web", "", "admin-secret");
            if web_group.contains(&format!(r#""paused":{paused}"#)) {
                break;
            }
            assert!(
                started.elapsed() < common::DEADLINE,
                "{button}: {web_group}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Its ceiling and rate are set from the page; the rest of its settings stay.
    let ceiling = driver
        .find(By::Css("tr[data-group=web] input[name=max_concurrency]"))
        .await
        .unwrap();
    ceiling.send_keys("3").await.unwrap();
    let rate = driver
        .find(By::Css("tr[data-group=web] input[name=rate_per_second]"))
        .await
        .unwrap();
    rate.send_keys("250").await.unwrap();
    click(&driver, "tr[data-group=web] button[name=Save]").await;
    assert_eq!(wait_text(&driver, "[data-result]", "Saved").await, "Saved.");
    let (_, web_group) = http(&web, "GET", "/api/v1/groups/web", "", "admin-secret");
    let web_group: serde_json::Value = serde_json::from_str(&web_group).unwrap();
    assert_eq!(web_group["settings"]["max_concurrency"], 3, "{web_group}");
    assert_eq!(web_group["settings"]["rate_per_second"], 250, "{web_group}");
    assert_eq!(web_group["settings"]["paused"], false, "{web_group}");
    // Its wait and run times, from the tasks it ran.
    assert!(web_group["run_p95_ms"].is_u64(), "{web_group}");
    let times = driver
        .find(By::Css("tr[data-group=web] td:nth-child(8)"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(times.contains(" / ") && !times.contains('–'), "{times}");

    // An admin drains the pod from its page.
    driver.goto(format!("{base}/pods")).await.unwrap();
    click(&driver, "button[name=Drain]").await;
    accept_confirmation(&driver).await;
    assert_eq!(wait_text(&driver, "[data-result]", "Done").await, "Done.");
    let (_, pods) = http(&web, "GET", "/api/v1/pods", "", "admin-secret");
    assert!(pods.contains(r#""draining":true"#), "{pods}");
    // Its CPU and memory over time, sampled once the page was shown: a live update brings
    // the first sample.
    let started = Instant::now();
    loop {
        let points = match driver.find(By::Css("svg.spark polyline.memory")).await {
            Ok(line) => line.attr("points").await.unwrap().unwrap_or_default(),
            Err(_) => String::new(),
        };
        if !points.trim().is_empty() {
            break;
        }
        assert!(
            started.elapsed() < common::DEADLINE,
            "no memory sample drawn"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every page, as a screenshot.
    let dir = screenshots();
    let (_, page) = http(&web, "GET", "/api/v1/tasks?limit=1", "", "admin-secret");
    let first: serde_json::Value = serde_json::from_str(&page).unwrap();
    let task = first["tasks"][0]["id"].as_str().unwrap().to_owned();
    for (name, path) in [
        ("overview", "/".to_owned()),
        ("groups", "/groups".to_owned()),
        ("tasks", "/tasks?group=web".to_owned()),
        ("task", format!("/tasks/{task}")),
        ("pods", "/pods".to_owned()),
        ("failed", "/failed".to_owned()),
        (
            "failed-messages",
            "/failed/messages?group=web&kind=handler".to_owned(),
        ),
        ("search", "/tasks?error=broke&order=newest".to_owned()),
        ("schedules", "/schedules".to_owned()),
        ("broadcasts", "/broadcasts".to_owned()),
    ] {
        driver.goto(format!("{base}{path}")).await.unwrap();
        driver.find(By::Css("main h1")).await.unwrap();
        driver
            .screenshot(&dir.join(format!("{name}.png")))
            .await
            .unwrap();
    }
    driver.quit().await.unwrap();
    serving.abort();
    pod.shutdown().await.unwrap();
    master.shutdown().await.unwrap();
}
