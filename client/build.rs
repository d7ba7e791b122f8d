//! Compiles `proto/herald.proto` with protox (pure Rust), so building Herald
//! needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/herald.proto");
    let fds = protox::compile(["proto/herald.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
