//! openraft's own storage test suite against the sled log store and the master's state
//! machine: every test builds both afresh in a temporary directory.

use mawex_raft::{MasterRaft, MasterStateMachine, SledLogStore};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;

struct InTempDir;

impl StoreBuilder<MasterRaft, SledLogStore, MasterStateMachine, tempfile::TempDir> for InTempDir {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, SledLogStore, MasterStateMachine), StorageError<MasterRaft>>
    {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = SledLogStore::open(dir.path().join("log")).expect("the store opens");
        let machine =
            MasterStateMachine::open(dir.path().join("machine")).expect("the machine opens");
        Ok((dir, store, machine))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_passes_openraft_s_storage_suite() {
    Suite::test_all(InTempDir).await.expect("the suite passes");
}
