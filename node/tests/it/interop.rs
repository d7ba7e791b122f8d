//! Herald as a client that is not its own sees it: `interop/python/check.py`
//! generates Python stubs from `client/proto/herald.proto` with grpcio-tools
//! and drives the automatic login, a refusal's standard `ErrorInfo` reason,
//! a registered account, the first access request and a watched handoff on a
//! real 3-node cluster over TLS, through a follower.
//!
//! Needs python3 with grpcio, grpcio-tools and grpcio-status: the test runs
//! `.ci/install-python-grpc` (pip) when they are missing, and fails if that
//! cannot install them.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{ROOT, TestCluster};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

fn python_grpc_present() -> bool {
    Command::new("python3")
        .args(["-c", "import grpc, grpc_tools, grpc_status"])
        .status()
        .is_ok_and(|s| s.success())
}

fn ensure_python_grpc() {
    if python_grpc_present() {
        return;
    }
    let script = repo().join(".ci/install-python-grpc");
    eprintln!("python grpc not found: running {}", script.display());
    let _ = Command::new("bash").arg(&script).status();
    assert!(
        python_grpc_present(),
        "python3 with grpcio, grpcio-tools and grpcio-status not found, and \
         .ci/install-python-grpc could not install them (it needs python3 and pip, and PyPI)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_stubs_generated_from_the_proto_drive_the_flows() {
    ensure_python_grpc();
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let follower = c.alive().into_iter().find(|id| *id != leader).unwrap();
    let (cert, key) = c.certs.client(ROOT);
    let out = tokio::process::Command::new("python3")
        .arg(repo().join("interop/python/check.py"))
        .arg("--endpoint")
        .arg(c.client_addr(follower))
        .arg("--ca")
        .arg(c.certs.ca())
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "check.py failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("every check held"), "{stdout}");
}
