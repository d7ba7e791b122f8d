//! One module per noun, one enum variant per verb, like etcdctl.

pub mod auth;
pub mod cert;
pub mod cluster;
pub mod link;
pub mod playground;
pub mod pool;
pub mod presence;
pub mod session;
pub mod share;
pub mod snapshot;

use herald_client::Client;
use herald_client::proto::Consistency;

use crate::output::Format;

/// What every command gets: the client and the output format.
pub struct Ctx {
    pub client: Client,
    pub format: Format,
}

/// `--serializable` → a local read on the answering node.
pub fn consistency(serializable: bool) -> Consistency {
    if serializable {
        Consistency::Serializable
    } else {
        Consistency::Linearizable
    }
}
