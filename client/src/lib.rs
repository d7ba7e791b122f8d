//! Herald's client library: the generated protobuf types and gRPC stubs
//! (`proto`), and a typed client with endpoint fail-over and retries.

/// Generated protobuf messages and gRPC clients/servers for `herald.v1`.
pub mod proto {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("herald.v1");
}
