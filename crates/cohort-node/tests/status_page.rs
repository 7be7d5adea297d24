//! The status page in a real browser: three nodes, the page of one of them opened in headless
//! Chromium; the rendered page lists the three members, exactly one lead, and the local marker
//! on the row of the node that serves it. A screenshot is saved under `target/tmp/` for people
//! to look at.
//!
//! Chromium is Debian's (`.ci/run` installs it; `COHORT_CHROMIUM` names another binary). Without
//! it the test says so and passes, unless `COHORT_REQUIRE_BROWSER` is set (CI sets it).

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cohort_test_support::KillOnDrop;
use common::*;

fn chromium() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("COHORT_CHROMIUM").map(PathBuf::from),
        Some(PathBuf::from("/usr/bin/chromium")),
        Some(PathBuf::from("/usr/bin/chromium-browser")),
    ];
    candidates.into_iter().flatten().find(|p| p.exists())
}

/// Runs the browser with `args` on `url`; its stdout. Killed by PID after 60 s.
fn browse(browser: &PathBuf, profile: &std::path::Path, args: &[&str], url: &str) -> String {
    let child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let mut child = KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while matches!(child.0.try_wait(), Ok(None)) {
        assert!(Instant::now() < deadline, "chromium did not finish in 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.0.stdout.take().unwrap(), &mut out).unwrap();
    out
}

fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let at = tag.find(&format!("{name}=\""))? + name.len() + 2;
    tag[at..].split('"').next()
}

#[test]
fn the_status_page_renders_three_members_one_lead_and_the_local_marker() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("COHORT_REQUIRE_BROWSER").is_none(),
            "COHORT_REQUIRE_BROWSER is set but no chromium was found"
        );
        #[allow(clippy::print_stderr)]
        {
            eprintln!("skipped: no chromium (apt-get install chromium)");
        }
        return;
    };
    let ports = [free_udp_port(), free_udp_port(), free_udp_port()];
    let names = ["p0", "p1", "p2"];
    let mut procs = Vec::new();
    let mut readies = Vec::new();
    for (i, me) in ports.iter().enumerate() {
        let peers: Vec<u16> = ports.iter().copied().filter(|p| p != me).collect();
        let p = Proc::start(&config_with(*me, &peers, 3000, ""), names[i]);
        readies.push(p.wait_for("ready", |v| v["event"] == "ready"));
        procs.push(p);
    }
    // The page of the second node: it is neither the first row nor the lead.
    let page_of = 1;
    for added in 0..2 {
        procs[page_of].wait_for("members", |v| v["event"] == "member_added");
        let _ = added;
    }
    let admin = readies[page_of]["admin"].as_str().unwrap().to_owned();
    let url = format!("http://{admin}/");
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let profile = tmp.join(format!("chromium-profile-{}", std::process::id()));

    let dom = browse(&browser, &profile, &["--dump-dom"], &url);
    let rows: Vec<&str> = dom
        .split("<tr ")
        .skip(1)
        .map(|r| &r[..r.find('>').unwrap_or(r.len())])
        .filter(|tag| attr(tag, "class") == Some("member"))
        .collect();
    assert_eq!(
        rows.len(),
        3,
        "three member rows in the rendered page:\n{dom}"
    );
    let leads = rows
        .iter()
        .filter(|t| attr(t, "data-lead") == Some("true"))
        .count();
    assert_eq!(leads, 1, "exactly one lead:\n{dom}");
    let local: Vec<_> = rows
        .iter()
        .filter(|t| attr(t, "data-local") == Some("true"))
        .collect();
    assert_eq!(local.len(), 1, "one local row:\n{dom}");
    assert_eq!(
        attr(local[0], "data-id"),
        readies[page_of]["id"].as_str(),
        "the local marker is on the row of the node serving the page"
    );
    for name in names {
        assert!(
            dom.contains(&format!("<td>{name}</td>")),
            "{name} listed:\n{dom}"
        );
    }
    assert!(dom.contains("this node") && dom.contains("established"));

    let shot = tmp.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    browse(
        &browser,
        &profile,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1400,700",
        ],
        &url,
    );
    let png = std::fs::read(&shot).expect("a screenshot was written");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let _ = std::fs::remove_dir_all(&profile);
    #[allow(clippy::print_stderr)]
    {
        eprintln!("screenshot: {}", shot.display());
    }
}
