//! openraft's storage test suite against Herald's log store (segment files
//! plus the hard state file) and state store: every test gets a fresh
//! temporary directory. The state store is opened with
//! `StateStore::for_openraft_suite`: the suite applies made-up log ids with
//! gaps between them, which a node's store refuses.

use herald_node::raft::TypeConfig;
use herald_node::raft::log_store::LogStore;
use herald_node::raft::state_store::StateStore;
use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateStore, tempfile::TempDir> for Builder {
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
        let log = LogStore::open(&db, &dir.path().join("log"))
            .map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        let sm = StateStore::for_openraft_suite(&db, dir.path())
            .map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_stores_pass_openraft_suite() {
    Suite::test_all(Builder).await.expect("storage suite");
}
