//! Live output: what attempts print or log reaches the master while they run, is kept
//! bounded (the last lines), can be followed until the task finishes, and a reader that
//! falls behind loses lines rather than slowing the pod.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use mawex::{
    Bytes, HandlerRegistry, MasterProxy, OutputLine, OutputStream, PodConfig, TaskId, TaskInput,
    TaskOutput, TaskSpec,
};
use tokio::sync::Notify;

fn handlers(release: Arc<Notify>) -> HandlerRegistry {
    let mut r = HandlerRegistry::new();
    r.register("chatty", |t: TaskInput| async move {
        let n: usize = String::from_utf8_lossy(&t.payload).parse().unwrap();
        for i in 1..=n {
            t.log.line(&format!("line {i}"));
        }
        Ok(Bytes::from_static(b"done"))
    })
    .unwrap()
    .register("stepper", move |t: TaskInput| {
        let release = release.clone();
        async move {
            t.log.line("step 1");
            release.notified().await;
            t.log.line("step 2");
            Ok(Bytes::new())
        }
    })
    .unwrap();
    r
}

/// Reads task `id`'s output from the start until it finished, sleeping `pause` between
/// reads; answers every line read and the lines it was told were dropped.
async fn follow(proxy: &dyn MasterProxy, id: TaskId, pause: Duration) -> (Vec<OutputLine>, u64) {
    let (mut lines, mut dropped, mut after) = (Vec::new(), 0, 0);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let read: TaskOutput = proxy.task_output(id, after).await.unwrap();
        dropped += read.dropped;
        after = read.last_seq(after);
        lines.extend(read.lines);
        if read.finished && read.ended {
            return (lines, dropped);
        }
        assert!(tokio::time::Instant::now() < deadline, "the task finishes");
        tokio::time::sleep(pause).await;
    }
}

async fn ten_thousand_lines_keep_only_the_bounded_tail(t: Transport) {
    let m = TestMaster::start_on(t).await;
    let _pod = m.pod(
        PodConfig::new(pod_id("p1"), vec![group("out")]),
        handlers(Arc::new(Notify::new())),
    );
    let proxy = m.proxy();
    let spec = TaskSpec::new(group("out"), "chatty", "10000");
    proxy.submit(spec.clone()).await.unwrap();
    proxy.await_result(spec.id).await.unwrap();
    let kept = proxy.task_output(spec.id, 0).await.unwrap();
    assert!(kept.finished && kept.ended);
    let last = kept.lines.last().unwrap();
    assert_eq!((last.seq, last.text.as_str()), (10_000, "line 10000"));
    assert_eq!(last.stream, OutputStream::Log);
    // 64 KiB of lines of about 26 bytes each: a few thousand, not ten.
    assert!(kept.lines.len() < 5_000, "{} lines kept", kept.lines.len());
    assert_eq!(kept.dropped + kept.lines.len() as u64, 10_000);
    // In order, with no gap inside what is kept.
    assert!(kept.lines.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    assert!(matches!(
        proxy.task_output(TaskId::new(), 0).await,
        Err(mawex::ApiError::NotFound(_))
    ));
    m.shutdown().await;
}

async fn logs_follow_a_running_task_and_end_when_it_finishes(t: Transport) {
    let m = TestMaster::start_on(t).await;
    let release = Arc::new(Notify::new());
    let _pod = m.pod(
        PodConfig::new(pod_id("p1"), vec![group("out")]),
        handlers(release.clone()),
    );
    let proxy = m.proxy();
    let spec = TaskSpec::new(group("out"), "stepper", "");
    proxy.submit(spec.clone()).await.unwrap();
    let running = wait_for("the first line while the task runs", || {
        let proxy = proxy.clone();
        async move {
            let read = proxy.task_output(spec.id, 0).await.ok()?;
            (!read.lines.is_empty()).then_some(read)
        }
    })
    .await;
    assert_eq!(running.lines[0].text, "step 1");
    assert!(!running.ended && !running.finished, "read while it runs");
    let follower = {
        let proxy = proxy.clone();
        tokio::spawn(
            async move { follow(proxy.as_ref(), spec.id, Duration::from_millis(20)).await },
        )
    };
    release.notify_one();
    let (lines, dropped) = tokio::time::timeout(DEADLINE, follower)
        .await
        .expect("the follower ends with the task")
        .unwrap();
    let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
    assert_eq!(texts, ["step 1", "step 2"]);
    assert_eq!(dropped, 0);
    m.shutdown().await;
}

async fn a_slow_reader_never_slows_the_pod(t: Transport) {
    let m = TestMaster::start_on(t).await;
    let _pod = m.pod(
        PodConfig::new(pod_id("p1"), vec![group("out")]),
        handlers(Arc::new(Notify::new())),
    );
    let proxy = m.proxy();
    let spec = TaskSpec::new(group("out"), "chatty", "200000");
    proxy.submit(spec.clone()).await.unwrap();
    // A reader far slower than the handler: the task ends while it is behind, and it is
    // told how many lines it missed instead of holding the handler back.
    let (lines, dropped) = follow(proxy.as_ref(), spec.id, Duration::from_millis(300)).await;
    assert!(dropped > 0, "the reader fell behind and lost lines");
    assert_eq!(
        lines.last().map(|l| l.seq),
        Some(200_000),
        "the last line arrives"
    );
    assert!(lines.len() < 20_000, "{} lines read", lines.len());
    m.shutdown().await;
}

on_both_transports!(
    ten_thousand_lines_keep_only_the_bounded_tail,
    logs_follow_a_running_task_and_end_when_it_finishes,
    a_slow_reader_never_slows_the_pod,
);
