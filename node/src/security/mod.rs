//! Security as a layer, not a sprinkle: every listener speaks TLS
//! ([`tls`]), one [`guard::Guard`] decides who each caller is (client
//! certificate, bearer token, or a node certificate on the peer port) and
//! what it may do, and [`policy`] says — as a pure table — what each call
//! needs. Handlers receive an authenticated [`policy::Principal`].
//!
//! What is replicated (users, roles, token digests, whether auth is on)
//! lives in the state machine (`state::auth`); what is per node (the
//! certificate files, the founding administrators, insecure mode, testing
//! mode) lives in the config.

pub mod guard;
pub mod policy;
pub mod tls;

pub use guard::{Gate, Guard, GuardLayer, principal_of, token_digest};
pub use policy::{Permission, Principal, Refusal, Via};
pub use tls::{NodeTls, PeerCert, PeerInfo};
