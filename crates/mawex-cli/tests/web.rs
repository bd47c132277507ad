//! The dashboard's HTTP side in the binary: `mawex standalone` with `web.listen` serves the
//! REST API and `/metrics` (recording its master's metrics), `mawex web` serves them over a
//! remote master, and a web address beyond loopback is refused (there is no login yet).

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{line_with, mawex, run, start, DEADLINE};

/// One HTTP/1.1 request: the status and the body.
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    http_with(addr, method, path, body, None)
}

/// One HTTP/1.1 request with a bearer token.
fn http_with(
    addr: &str,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         {auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn the_rest_api_and_metrics_are_served_beside_a_master_and_on_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mawex.toml");
    std::fs::write(
        &config,
        format!(
            "[master]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n[web]\nlisten = \"127.0.0.1:0\"\n\
             [worker]\ngroups = [\"sh\"]\nshutdown_grace = \"1s\"\n\
             [worker.handlers.upper]\nargv = [\"tr\", \"a-z\", \"A-Z\"]\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let mut command = mawex();
    command.arg("--config").arg(&config).arg("standalone");
    let (_standalone, lines) = start(command);
    let endpoint = line_with(&lines, "mawex master listening on ")
        .trim_start_matches("mawex master listening on ")
        .to_owned();
    let web = line_with(&lines, "mawex web listening on http://")
        .trim_start_matches("mawex web listening on http://")
        .to_owned();

    // A task through the REST API, run by the standalone's worker.
    let (status, submitted) = http(
        &web,
        "POST",
        "/api/v1/tasks",
        r#"{"group": "sh", "handler": "upper", "payload": "from the web"}"#,
    );
    assert_eq!(status, 200, "{submitted}");
    let id = json(&submitted)["id"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let task = loop {
        let (_, task) = http(&web, "GET", &format!("/api/v1/tasks/{id}"), "");
        let task = json(&task);
        if task["state"] == "succeeded" {
            break task;
        }
        assert!(started.elapsed() < DEADLINE, "never succeeded: {task}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(task["output"], "FROM THE WEB");
    let (status, metrics) = http(&web, "GET", "/metrics", "");
    assert_eq!(status, 200);
    assert!(
        metrics.contains(r#"mawex_task_transitions_total{group="sh",to="succeeded"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("mawex_pods 1"), "{metrics}");
    // The overview says what the masters are and how much their journal takes on disk.
    let (status, overview) = http(&web, "GET", "/fragments/overview", "");
    assert_eq!(status, 200);
    assert!(
        overview.contains(r#"<dd data-status="masters">a cluster of one, Raft log</dd>"#),
        "{overview}"
    );
    let journal = overview
        .split(r#"<dd data-status="journal on disk">"#)
        .nth(1)
        .and_then(|rest| rest.split("</dd>").next())
        .unwrap_or_else(|| panic!("no journal size: {overview}"));
    assert!(
        journal.ends_with('B') && !journal.starts_with("0 "),
        "{journal}"
    );

    // `mawex web` over that master, from another process, checking its callers' tokens.
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        format!(
            "[[token]]\nid = \"dashboard\"\nrole = \"viewer\"\nsha256 = \"{}\"\n\
             [[token]]\nid = \"ops\"\nrole = \"admin\"\nsha256 = \"{}\"\n",
            mawex::auth::hash_secret("viewer-secret"),
            mawex::auth::hash_secret("admin-secret"),
        ),
    )
    .unwrap();
    let remote = dir.path().join("remote.toml");
    std::fs::write(
        &remote,
        format!(
            "[client]\nmasters = [\"{endpoint}\"]\n[master]\ntokens = \"{}\"\n",
            tokens.display()
        ),
    )
    .unwrap();
    let mut command = mawex();
    command
        .arg("--config")
        .arg(&remote)
        .args(["web", "--listen", "127.0.0.1:0"]);
    let (_web, lines) = start(command);
    let other = line_with(&lines, "mawex web listening on http://")
        .trim_start_matches("mawex web listening on http://")
        .to_owned();
    let (status, _) = http(&other, "GET", "/api/v1/groups", "");
    assert_eq!(status, 401, "no token");
    let submit = r#"{"group": "sh", "handler": "upper"}"#;
    let (status, refused) = http_with(
        &other,
        "POST",
        "/api/v1/tasks",
        submit,
        Some("viewer-secret"),
    );
    assert_eq!(status, 403, "a viewer changes nothing: {refused}");
    let (status, _) = http_with(
        &other,
        "POST",
        "/api/v1/tasks",
        submit,
        Some("admin-secret"),
    );
    assert_eq!(status, 200);
    let (status, groups) = http_with(&other, "GET", "/api/v1/groups", "", Some("viewer-secret"));
    assert_eq!(status, 200, "{groups}");
    assert_eq!(json(&groups)[0]["group"], "sh");
    assert!(json(&groups)[0]["succeeded"].as_u64().unwrap() >= 1);
    // Over the network, the overview asks the masters who they are.
    let (status, overview) = http_with(
        &other,
        "GET",
        "/fragments/overview",
        "",
        Some("viewer-secret"),
    );
    assert_eq!(status, 200, "{overview}");
    assert!(
        overview.contains(r#"<dd data-status="leader">node 1"#)
            || overview.contains(&format!(
                r#"<dd data-status="masters">one, at {endpoint}</dd>"#
            )),
        "{overview}"
    );

    // No login yet: beyond loopback it is refused.
    let mut command = mawex();
    command
        .arg("--config")
        .arg(&remote)
        .args(["web", "--listen", "0.0.0.0:0"]);
    let refused = run(command);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("web.listen"));
}

#[test]
fn with_a_certificate_the_dashboard_serves_https() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = (dir.path().join("web.pem"), dir.path().join("web.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let config = dir.path().join("mawex.toml");
    std::fs::write(
        &config,
        format!(
            "[master]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n\
             [web]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            dir.path().join("data").display(),
            cert_path.display(),
            key_path.display(),
        ),
    )
    .unwrap();
    let mut command = mawex();
    command.arg("--config").arg(&config).arg("master");
    let (_master, lines) = start(command);
    let web = line_with(&lines, "mawex web listening on https://")
        .trim_start_matches("mawex web listening on https://")
        .to_owned();

    // A TLS client that trusts that certificate alone.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let connection = rustls::ClientConnection::new(std::sync::Arc::new(client), name).unwrap();
    let socket = TcpStream::connect(&web).unwrap();
    socket.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut stream = rustls::StreamOwned::new(connection, socket);
    write!(
        stream,
        "GET /api/openapi.json HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    // The server may close without a TLS close_notify: what was read before counts.
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"openapi\""), "{answer}");

    // Plain HTTP on that port is no dashboard.
    let (plain, _) = {
        let mut stream = TcpStream::connect(&web).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        write!(stream, "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        (String::from_utf8_lossy(&answer).into_owned(), ())
    };
    assert!(!plain.contains("mawex"), "{plain}");
}
