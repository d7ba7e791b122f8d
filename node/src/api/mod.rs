//! Herald's APIs over one [`crate::node::Herald`] handle: the client gRPC
//! service ([`client`], and `batch` for its `Batch` call), the admin service ([`admin`]), the auth
//! service ([`auth`]: users, roles, tokens), the peer service
//! ([`peer`]) and the HTTP JSON endpoints ([`http`]). [`status`] maps every
//! error to a gRPC status in one place; [`convert`] maps proto to state types;
//! [`layer`] observes every request of every listener (metrics, request id, span);
//! [`page`] bounds list and batch-read answers.

pub mod admin;
pub mod auth;
mod batch;
pub mod client;
pub mod convert;
pub mod http;
pub mod layer;
pub mod page;
pub mod peer;
pub mod status;
