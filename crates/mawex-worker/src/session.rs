//! The session loop: connect, say hello, serve the master's messages and heartbeat until the
//! session is lost (then reconnect with backoff) or the pod leaves.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use mawex_api::pod::{MasterMessage, PodMessage, PodSession};
use mawex_api::ApiError;
use tokio::task::{AbortHandle, JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::output::OUTPUT_EVERY;
use crate::shared::{Shared, INTERRUPT_DEADLINE};

/// The longest pause between tries while the masters are electing a leader.
const ELECTION_POLL: Duration = Duration::from_millis(100);
/// A session that lasted this long resets the reconnect backoff.
const STABLE_SESSION: Duration = Duration::from_secs(1);
/// After `Leave`, how long the pod waits for the master to close the session (so its last
/// messages are delivered before the process may exit).
const LEAVE_ACK_WAIT: Duration = Duration::from_secs(2);

/// How one session ended.
enum SessionEnd {
    /// The master closed it; connect again.
    Lost,
    /// The pod is stopping and has left.
    Left,
}

fn reconnect_delays(max: Duration) -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(20))
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
}

pub(crate) async fn run(
    shared: Arc<Shared>,
    stop: CancellationToken,
    executors: Vec<JoinHandle<()>>,
) {
    let max_delay = shared.config.reconnect_max_delay;
    let mut delays = reconnect_delays(max_delay);
    let mut executors = Some(executors);
    while !stop.is_cancelled() {
        let connected = tokio::select! {
            () = stop.cancelled() => break,
            r = shared.connector.connect(shared.hello()) => r,
        };
        let session = match connected {
            Ok(session) => session,
            Err(e) => {
                let mut delay = delays.next().unwrap_or(max_delay);
                match e {
                    // The masters answer, and are electing a leader: it is there soon.
                    ApiError::NotLeader { .. } => {
                        delay = delay.min(ELECTION_POLL);
                        debug!(pod = %shared.config.id, error = %e, ?delay, "no master leads yet; retrying")
                    }
                    ApiError::InvalidArgument(_)
                    | ApiError::Unauthenticated(_)
                    | ApiError::PermissionDenied(_) => {
                        warn!(pod = %shared.config.id, error = %e, "master refused the pod")
                    }
                    _ => {
                        debug!(pod = %shared.config.id, error = %e, ?delay, "cannot reach the master; retrying")
                    }
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(delay) => continue,
                }
            }
        };
        // Fencing: a leader of an earlier term than one seen is deposed, whatever it thinks.
        let seen = shared
            .highest_term
            .fetch_max(session.welcome.term, Ordering::SeqCst);
        if session.welcome.term < seen {
            warn!(
                pod = %shared.config.id,
                term = session.welcome.term,
                seen,
                "a master of an earlier term than one seen welcomed the pod; refused (a \
                 deposed leader; or, if its cluster was made again from empty disks, restart \
                 this pod)"
            );
            drop(session);
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(ELECTION_POLL) => continue,
            }
        }
        info!(pod = %shared.config.id, session = session.welcome.session, term = session.welcome.term, "pod connected");
        let opened = tokio::time::Instant::now();
        match serve(&shared, session, &stop, &mut executors).await {
            SessionEnd::Left => return,
            SessionEnd::Lost => {
                shared.detach();
                warn!(pod = %shared.config.id, "session lost; reconnecting");
                // A session that ends at once (the id registered elsewhere, the master
                // refusing us) must not turn into a tight reconnect loop.
                if opened.elapsed() >= STABLE_SESSION {
                    delays = reconnect_delays(max_delay);
                } else {
                    let delay = delays.next().unwrap_or(max_delay);
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
    // Stopped while disconnected: nobody to hand work back to; stop the executors.
    if let Some(executors) = executors {
        shared.stop_executors(executors).await;
    }
}

/// Told to drain: no new work until the pod restarts; what is queued goes back now, what
/// runs finishes.
fn drain(shared: &Shared) {
    if !shared.drained.swap(true, Ordering::SeqCst) {
        info!(pod = %shared.config.id, "told to drain: queued attempts go back, running ones finish");
    }
    shared.send(PodMessage::Drain);
    let queued = shared.take_queued();
    if !queued.is_empty() {
        shared.send(PodMessage::Returned { attempts: queued });
    }
}

async fn serve(
    shared: &Arc<Shared>,
    session: PodSession,
    stop: &CancellationToken,
    executors: &mut Option<Vec<JoinHandle<()>>>,
) -> SessionEnd {
    let PodSession {
        welcome,
        outbox,
        mut inbox,
        ..
    } = session;
    shared
        .takes_output
        .store(welcome.takes_output, Ordering::SeqCst);
    shared.attach(outbox, welcome.acks_reports);
    let mut output_tick = tokio::time::interval(OUTPUT_EVERY);
    output_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A zero interval from a remote master would make `interval` panic.
    let period = welcome.heartbeat_interval.max(Duration::from_millis(1));
    let mut heartbeat = tokio::time::interval(period);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = inbox.recv() => match message {
                Some(MasterMessage::Assign { assignments, .. })
                    if shared.drained.load(Ordering::SeqCst) =>
                {
                    let attempts = assignments.iter().map(|a| a.attempt).collect();
                    shared.send(PodMessage::Returned { attempts });
                }
                Some(MasterMessage::Assign { batch, assignments, more }) => {
                    // A batch counts as received with its last part.
                    shared.accept(if more { batch.saturating_sub(1) } else { batch }, assignments);
                }
                Some(MasterMessage::Cancel(r)) => shared.cancel(r),
                Some(MasterMessage::Ack(attempts)) => shared.acked(&attempts),
                Some(MasterMessage::Drain) => drain(shared),
                Some(other) => debug!(message = ?other, "unsupported master message ignored"),
                None => return SessionEnd::Lost,
            },
            _ = heartbeat.tick() => shared.heartbeat(),
            _ = output_tick.tick() => shared.send_output_tick(),
            () = stop.cancelled() => break,
        }
    }

    // Leaving: no new leases, hand back what has not started.
    shared.send(PodMessage::Drain);
    shared.draining.cancel();
    let queued = shared.take_queued();
    if !queued.is_empty() {
        shared.send(PodMessage::Returned { attempts: queued });
    }

    // Let running attempts finish, keep heartbeating, interrupt after the grace period.
    let executors = executors.take().unwrap_or_default();
    let aborts: Vec<AbortHandle> = executors.iter().map(JoinHandle::abort_handle).collect();
    let all = futures::future::join_all(executors);
    tokio::pin!(all);
    let grace = tokio::time::sleep(shared.config.shutdown_grace);
    tokio::pin!(grace);
    let hard = tokio::time::sleep(
        shared
            .config
            .shutdown_grace
            .saturating_add(INTERRUPT_DEADLINE),
    );
    tokio::pin!(hard);
    let mut interrupted = false;
    let mut inbox_open = true;
    loop {
        tokio::select! {
            _ = &mut all => break,
            _ = heartbeat.tick() => shared.heartbeat(),
            () = &mut grace, if !interrupted => {
                interrupted = true;
                info!(pod = %shared.config.id, "grace period over; interrupting running attempts");
                shared.interrupt_all();
            }
            () = &mut hard => {
                warn!(pod = %shared.config.id, "interrupted attempts did not end in time; aborting them");
                aborts.iter().for_each(AbortHandle::abort);
                break;
            }
            message = inbox.recv(), if inbox_open => match message {
                Some(MasterMessage::Cancel(r)) => shared.cancel(r),
                Some(MasterMessage::Ack(attempts)) => shared.acked(&attempts),
                // Leases that crossed the drain notice go straight back.
                Some(MasterMessage::Assign { assignments, .. }) => {
                    let attempts = assignments.iter().map(|a| a.attempt).collect();
                    shared.send(PodMessage::Returned { attempts });
                }
                Some(_) => {}
                None => inbox_open = false,
            },
        }
    }
    shared.send(PodMessage::Leave);
    shared.detach();
    // The master closes the session once it has processed `Leave`; until then the last
    // results and returns may still be in flight.
    if inbox_open {
        let _ = tokio::time::timeout(LEAVE_ACK_WAIT, async {
            while inbox.recv().await.is_some() {}
        })
        .await;
    }
    info!(pod = %shared.config.id, "pod left");
    SessionEnd::Left
}
