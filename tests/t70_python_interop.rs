//! A client generated from the `.proto` files by another gRPC stack (Python grpcio-tools)
//! submits a task and reads its result.
//!
//! Needs `python3` with `grpcio` and `grpcio-tools` (`.ci/run` installs them). Outside CI a
//! machine without them skips this test with a notice; under `CI=true` it fails instead.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use mawex::PodConfig;

fn python_has_grpc_tools() -> bool {
    Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_generated_from_the_protos_works() {
    if !python_has_grpc_tools() {
        common::missing_tool(
            "a_python_client_generated_from_the_protos_works",
            "python3 with grpcio and grpcio-tools (pip install grpcio grpcio-tools)",
        );
        return;
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

    let m = TestMaster::start_on(Transport::Grpc).await;
    let (handlers, _, _) = instrumented();
    let pod = m.pod(PodConfig::new(pod_id("p-py"), vec![group("py")]), handlers);
    let endpoint = m.endpoint().trim_start_matches("http://").to_owned();
    let script = root.join("tests/python/interop.py");
    let generated_dir = generated.path().to_owned();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .arg(generated_dir)
            .arg(endpoint)
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
    pod.shutdown().await.unwrap();
    m.shutdown().await;
}
