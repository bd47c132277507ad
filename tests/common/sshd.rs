//! A real OpenSSH server on 127.0.0.1 for the ssh sandbox: its own host key, user key and
//! configuration in a temp dir, and a client config under which every host name (`h1`,
//! `h2`, ...) reaches it.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// Where Debian's `openssh-server` puts the daemon.
const SSHD: &str = "/usr/sbin/sshd";

pub struct LocalSshd {
    dir: tempfile::TempDir,
    _daemon: tokio::process::Child,
    /// The client configuration (`ssh -F <this>`).
    pub client_config: PathBuf,
    pub port: u16,
}

fn run(program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl LocalSshd {
    /// Starts a daemon, or returns `None` (with a note) where `sshd` is not installed outside
    /// CI; in CI (`.ci/run` installs it) a missing daemon fails the test.
    pub async fn start() -> Option<LocalSshd> {
        if !Path::new(SSHD).exists() {
            crate::common::missing_tool(
                "an ssh test",
                &format!("{SSHD} (apt-get install openssh-server rsync)"),
            );
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let path = |name: &str| dir.path().join(name);
        let text = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
        for key in ["host_key", "user_key"] {
            run(
                "ssh-keygen",
                &["-q", "-t", "ed25519", "-N", "", "-f", &text(&path(key))],
            );
        }
        std::fs::copy(path("user_key.pub"), path("authorized_keys")).expect("authorized_keys");
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            probe.local_addr().expect("addr").port()
        };
        std::fs::write(
            path("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
                 PidFile {}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
                 PermitRootLogin prohibit-password\nLogLevel ERROR\n",
                text(&path("host_key")),
                text(&path("authorized_keys")),
                text(&path("sshd.pid")),
            ),
        )
        .expect("sshd_config");
        // As root, sshd insists on its privilege separation directory.
        if run("id", &["-u"]) == "0" {
            std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
        }
        let daemon = tokio::process::Command::new(SSHD)
            .args(["-D", "-e", "-f", &text(&path("sshd_config"))])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start sshd");
        let user = run("id", &["-un"]);
        std::fs::write(
            path("ssh_config"),
            format!(
                "Host *\n  HostName 127.0.0.1\n  Port {port}\n  User {user}\n  IdentityFile {}\n\
                 \x20 IdentitiesOnly yes\n  StrictHostKeyChecking no\n\
                 \x20 UserKnownHostsFile /dev/null\n  LogLevel ERROR\n  BatchMode yes\n",
                text(&path("user_key")),
            ),
        )
        .expect("ssh_config");
        let deadline = tokio::time::Instant::now() + crate::common::DEADLINE;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "sshd did not listen on {port}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Some(LocalSshd {
            client_config: path("ssh_config"),
            port,
            _daemon: daemon,
            dir,
        })
    }

    /// A scratch directory that lives as long as the daemon.
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }
}

/// Every file under `dir`, relative, with its contents, sorted.
pub fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)
            .expect("a readable directory")
            .flatten()
        {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(dir)
                    .expect("under the directory")
                    .to_string_lossy()
                    .into_owned();
                files.push((rel, std::fs::read(&path).expect("a readable file")));
            }
        }
    }
    files.sort();
    files
}
