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

#[test]
fn log_format_json_writes_one_json_object_per_line() {
    let m = cohort_test_support::private_multicast();
    let dir = std::env::temp_dir().join(format!("cohort-cli-json-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("n.toml");
    std::fs::write(
        &config,
        format!(
            "[membership]\ncluster = \"logs-{p}\"\n[membership.multicast]\ngroup = \"{g}\"\nport = {p}\n\
             ttl = 0\n[transport]\nport = 0\n[admin]\nport = 0\n",
            g = m.group,
            p = m.port
        ),
    )
    .unwrap();
    let child = Command::new(BIN)
        .args([
            "node",
            "--log-format",
            "json",
            "--config",
            config.to_str().unwrap(),
        ])
        .env("RUST_LOG", "debug")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut node = cohort_test_support::KillOnDrop(child);
    let mut stdout = std::io::BufReader::new(node.0.stdout.take().unwrap());
    // Other event lines (the lead, multicast's state) may come before `ready`.
    let mut line = String::new();
    for _ in 0..100 {
        line.clear();
        let n = std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        if n == 0 || line.contains("\"ready\"") {
            break;
        }
    }
    assert!(line.contains("\"ready\""), "{line}");
    // SIGTERM by PID: a graceful stop, then stderr is complete.
    let pid = node.pid().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = node.0.wait().unwrap();
    assert!(status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut node.0.stderr.take().unwrap(), &mut err).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let lines: Vec<&str> = err.lines().collect();
    assert!(!lines.is_empty(), "debug logs were written");
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{l}");
    }
}
