//! A journal that fails: the master stops instead of acknowledging what it could not record.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use mawex::testing::{Event, MasterState, Recovered};
use mawex::{
    ApiError, CoreError, GroupName, Journal, Master, MasterProxy, MemoryJournal, TaskSpec,
};

/// A memory journal whose appends fail once `broken` is set.
struct Flaky {
    inner: MemoryJournal,
    broken: Arc<AtomicBool>,
}

impl Journal for Flaky {
    fn recover(&mut self) -> Result<Recovered, CoreError> {
        self.inner.recover()
    }

    fn append(&mut self, first_seq: u64, events: &[Event]) -> Result<(), CoreError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("disk on fire").into());
        }
        self.inner.append(first_seq, events)
    }

    fn snapshot(&mut self, last_seq: u64, state: &MasterState) -> Result<(), CoreError> {
        self.inner.snapshot(last_seq, state)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_append_is_never_acknowledged_and_stops_the_master() {
    let storage = MemoryJournal::new();
    let broken = Arc::new(AtomicBool::new(false));
    let journal = Flaky {
        inner: storage.clone(),
        broken: broken.clone(),
    };
    let master = Master::builder().start(journal).await.unwrap();
    let proxy = master.proxy();
    let g = GroupName::new("flaky").unwrap();
    let kept = proxy
        .submit(TaskSpec::new(g.clone(), "h", ""))
        .await
        .unwrap();

    broken.store(true, Ordering::SeqCst);
    let lost = proxy.submit(TaskSpec::new(g.clone(), "h", "")).await;
    assert!(matches!(lost, Err(ApiError::Unavailable(_))), "{lost:?}");
    assert!(matches!(
        proxy.get(kept.id).await,
        Err(ApiError::Unavailable(_))
    ));
    let err = master.shutdown().await.unwrap_err();
    assert!(matches!(err, CoreError::Storage(_)), "{err}");

    // What was acknowledged is in the journal; what was not, is not.
    let restarted = Master::builder().start(storage).await.unwrap();
    assert!(restarted.proxy().get(kept.id).await.is_ok());
    assert_eq!(restarted.stats().borrow().counts.pending, 1);
    restarted.shutdown().await.unwrap();
}
