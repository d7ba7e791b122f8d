//! Compiles `proto/peer.proto` (the node-to-node API) with protox (pure
//! Rust), so building a node needs no system `protoc`. The public API's
//! proto is compiled by the client crate.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/peer.proto");
    let fds = protox::compile(["proto/peer.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
