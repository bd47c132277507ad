//! `--scenario raft`: batches of the master's events committed through a one-node openraft
//! cluster on `mawex-raft`'s sled log store and state machine (no master on top yet).
//! Concurrent writers, as the core loop's commits would be; prints the batches and events a
//! second, and how many syncs the flush thread ran a batch (group commit: fewer than one;
//! the syncs of votes and purges, which sync on their own, are not counted).

use std::sync::Arc;
use std::time::Instant;

use mawex::testing::Event;
use mawex::{GroupName, TaskSpec, Timestamp};
use mawex_raft::{Batch, MasterRaft, MasterStateMachine, SingleNode, SledLogStore};
use openraft::{BasicNode, Config, Raft, ServerState};

/// Writers at once.
const WRITERS: usize = 32;
/// Events a batch.
const EVENTS_PER_BATCH: usize = 100;

pub(crate) async fn raft(tasks: usize) -> anyhow::Result<serde_json::Value> {
    let dir = tempfile::tempdir()?;
    let config = Arc::new(Config::default().validate()?);
    let store = SledLogStore::open(dir.path().join("log"))?;
    let machine = MasterStateMachine::open(dir.path().join("machine"))?;
    let raft: Raft<MasterRaft, MasterStateMachine> =
        Raft::new(1, config, SingleNode, store.clone(), machine.clone()).await?;
    raft.initialize(std::collections::BTreeMap::from([(
        1,
        BasicNode::new("127.0.0.1:0"),
    )]))
    .await?;
    raft.wait(Some(std::time::Duration::from_secs(30)))
        .state(ServerState::Leader, "the one node leads")
        .await?;
    let group = GroupName::new("bench")?;
    anyhow::ensure!(tasks > 0, "--tasks must be at least 1");
    let batches = tasks.div_ceil(EVENTS_PER_BATCH);
    let syncs_before = store.syncs_for_appends();
    let started = Instant::now();
    let mut writers = Vec::with_capacity(WRITERS);
    for writer in 0..WRITERS {
        let (raft, group) = (raft.clone(), group.clone());
        writers.push(tokio::spawn(async move {
            for _ in (writer..batches).step_by(WRITERS) {
                let events = (0..EVENTS_PER_BATCH)
                    .map(|_| Event::TaskAccepted {
                        spec: TaskSpec::new(group.clone(), "noop", &b"16-byte payload!"[..]).into(),
                        at: Timestamp(1),
                    })
                    .collect();
                raft.client_write(Batch::new(events)).await?;
            }
            anyhow::Ok(())
        }));
    }
    for writer in writers {
        writer.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let syncs = store.syncs_for_appends() - syncs_before;
    anyhow::ensure!(
        machine.read(|state| state.len()) == Some(batches * EVENTS_PER_BATCH),
        "not every event was applied"
    );
    raft.shutdown().await?;
    Ok(serde_json::json!({
        "scenario": "raft",
        "nodes": 1,
        "writers": WRITERS,
        "events_per_batch": EVENTS_PER_BATCH,
        "batches": batches,
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "batches_per_s": (batches as f64 / seconds).round(),
        "events_per_s": ((batches * EVENTS_PER_BATCH) as f64 / seconds).round(),
        "flush_syncs_per_batch": (syncs as f64 / batches as f64 * 1000.0).round() / 1000.0,
    }))
}
