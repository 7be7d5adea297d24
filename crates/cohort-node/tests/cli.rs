//! The `cohort` command line: help and version everywhere, usage errors in clap's style with
//! exit code 2, runtime errors with exit code 1, never a backtrace.

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_cohort");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn help_and_version_on_the_binary_and_every_subcommand() {
    let v = run(&["--version"]);
    assert!(v.status.success());
    assert!(
        text(&v.stdout).starts_with("cohort "),
        "{}",
        text(&v.stdout)
    );
    for sub in ["node", "status", "cluster", "bench"] {
        let h = run(&[sub, "--help"]);
        assert!(h.status.success(), "{sub} --help: {}", text(&h.stderr));
        assert!(
            text(&h.stdout).contains("Usage: cohort"),
            "{sub}: {}",
            text(&h.stdout)
        );
        let v = run(&[sub, "--version"]);
        assert!(v.status.success(), "{sub} --version");
    }
    assert!(text(&run(&["node", "--help"]).stdout).contains("--config <FILE>"));
}

#[test]
fn usage_errors_exit_2_and_runtime_errors_exit_1_without_a_backtrace() {
    for args in [
        &["node", "--bogus"][..],
        &["node", "--port", "seventy"],
        &["bench", "--size", "64XB"],
        &["cluster", "--nodes", "99"],
        &["cluster", "--for", "5 fortnights"],
        &["launch"],
    ] {
        let out = run(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        let err = text(&out.stderr);
        assert!(err.starts_with("error:"), "{args:?}: {err}");
        assert!(!err.contains("backtrace"), "{args:?}: {err}");
    }
    // Nothing listens on this port (it was just free).
    let port = cohort_test_support::free_tcp_port();
    let addr = format!("127.0.0.1:{port}");
    let out = run(&["status", "--admin", &addr]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.starts_with("error:") && err.contains(&addr), "{err}");
    assert!(!err.contains("backtrace"), "{err}");
    // A bad configuration file is a runtime error naming the key.
    let dir = std::env::temp_dir().join(format!("cohort-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[transport]\nidle_timeout = \"soon\"\n").unwrap();
    let out = run(&["node", "--config", file.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("transport.idle_timeout"),
        "{}",
        text(&out.stderr)
    );
}
