//! openraft's storage test suite against Herald's sled log store and state
//! store: every test gets a fresh sled database in a temporary directory.

use herald_node::raft::TypeConfig;
use herald_node::raft::log_store::LogStore;
use herald_node::raft::state_store::StateStore;
use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateStore, tempfile::TempDir> for SledBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateStore), StorageError<TypeConfig>> {
        let dir =
            tempfile::tempdir().map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        let db = sled::Config::new()
            .path(dir.path())
            .cache_capacity(4 << 20)
            .open()
            .map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        let log = LogStore::open(&db, dir.path())
            .map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        let sm = StateStore::open(&db, dir.path())
            .map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_stores_pass_openraft_suite() {
    Suite::test_all(SledBuilder).await.expect("storage suite");
}
