//! A client generated from the `.proto` files by another gRPC stack (Python grpcio-tools)
//! submits a task and reads its result, in plain text and over TLS with a token.
//!
//! Needs `python3` with `grpcio` and `grpcio-tools` (`.ci/run` installs them). Outside CI a
//! machine without them skips this test with a notice; under `CI=true` it fails instead.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;
#[path = "common/pki.rs"]
mod pki;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use mawex::auth::{Role, TokenEntry, TokenStore, Tokens};
use mawex::{PodConfig, Server, ServerTls};

fn python_has_grpc_tools() -> bool {
    Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .status()
        .is_ok_and(|s| s.success())
}

/// The Python stubs generated from the protos, in a temp dir; `None` (after saying why)
/// when Python or grpcio-tools is missing outside CI.
fn python_stubs(test: &str) -> Option<tempfile::TempDir> {
    if !python_has_grpc_tools() {
        common::missing_tool(
            test,
            "python3 with grpcio and grpcio-tools (pip install grpcio grpcio-tools)",
        );
        return None;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let generated = tempfile::tempdir().unwrap();
    let status = Command::new("python3")
        .args(["-m", "grpc_tools.protoc"])
        .arg(format!(
            "-I{}",
            root.join("crates/mawex-api/proto").display()
        ))
        .arg(format!("--python_out={}", generated.path().display()))
        .arg(format!("--grpc_python_out={}", generated.path().display()))
        .arg("mawex/v1/mawex.proto")
        .status()
        .unwrap();
    assert!(status.success(), "grpc_tools.protoc failed");
    Some(generated)
}

/// Runs the Python client with `args` and checks it read its task's result.
async fn run_python(stubs: PathBuf, args: Vec<String>) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/interop.py");
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .arg(stubs)
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "python client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("OUTPUT from python ATTEMPT 1"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_generated_from_the_protos_works() {
    let Some(stubs) = python_stubs("a_python_client_generated_from_the_protos_works") else {
        return;
    };
    let m = TestMaster::start_on(Transport::Grpc).await;
    let (handlers, _, _) = instrumented();
    let pod = m.pod(PodConfig::new(pod_id("p-py"), vec![group("py")]), handlers);
    let endpoint = m.endpoint().trim_start_matches("http://").to_owned();
    run_python(stubs.path().to_owned(), vec![endpoint]).await;
    pod.shutdown().await.unwrap();
    m.shutdown().await;
}

/// The same client over TLS (an authority made here) with a token, and refused without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_works_over_tls_with_a_token() {
    let Some(stubs) = python_stubs("a_python_client_works_over_tls_with_a_token") else {
        return;
    };
    let pki = pki::new_pki();
    let m = TestMaster::start().await;
    let secret = "python-client-secret";
    let tokens =
        TokenStore::new(Tokens::new([TokenEntry::new("py", Role::Client, secret)]).unwrap());
    let server = Server::new(m.master())
        .tls(ServerTls::new(pki.server.0.clone(), pki.server.1.clone()))
        .tokens(tokens)
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (handlers, _, _) = instrumented();
    let pod = m.pod(
        PodConfig::new(pod_id("p-py-tls"), vec![group("py")]),
        handlers,
    );
    let ca = stubs.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca).unwrap();
    let endpoint = format!("localhost:{}", server.local_addr().port());
    run_python(
        stubs.path().to_owned(),
        vec![endpoint, ca.display().to_string(), secret.to_owned()],
    )
    .await;
    pod.shutdown().await.unwrap();
    server.shutdown().await.unwrap();
    m.shutdown().await;
}
