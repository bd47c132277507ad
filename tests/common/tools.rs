//! What every test binary that needs outside tools shares, the binary's own tests too
//! (`crates/mawex-cli/tests` mount this file as their `common`).

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

/// How long any condition may take before a test fails: generous for a loaded 2-core CI.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A test that cannot run here because `tool` is missing: in CI (`CI` set; `.ci/run` installs
/// every tool) that fails the test; elsewhere the test is reported as skipped (see [`skipped`]).
pub fn missing_tool(test: &str, tool: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} needs {tool}; .ci/run installs it"
    );
    skipped(test, &format!("{tool} is not installed"));
}

/// Reports that `test` did not run, on one line written to the process's standard error past
/// the test harness's capture, so it shows in every run and can be counted:
/// `cargo test --workspace 2>&1 | grep -c '^mawex-test-skipped:'`.
pub fn skipped(test: &str, why: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "mawex-test-skipped: {test}: {why}");
}
