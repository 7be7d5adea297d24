//! Tidy checks, run by plain `cargo test` (this crate is a default member): the project's
//! rules that a compiler cannot see (docs/ARCHITECTURE.md lists them as invariants).

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn crate_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root().join("crates"))
        .expect("crates/ exists")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("Cargo.toml").exists())
        .collect();
    dirs.sort();
    dirs
}

/// True for files of a sans-IO core: a `core.rs`, or anything under a `core/` directory.
fn is_core_module(path: &Path) -> bool {
    path.file_stem().is_some_and(|s| s == "core")
        || path.components().any(|c| c.as_os_str() == "core")
}

/// What a core module may not name: async runtimes and clocks.
fn core_violations(source: &str) -> Vec<(usize, &'static str)> {
    const FORBIDDEN: [&str; 5] = [
        "tokio",
        "Instant::now",
        "SystemTime::now",
        "std::thread::spawn",
        "thread_rng",
    ];
    let mut found = Vec::new();
    for (no, line) in source.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        for word in FORBIDDEN {
            if code.contains(word) {
                found.push((no + 1, word));
            }
        }
    }
    found
}

#[test]
fn core_modules_do_no_io_and_read_no_clock() {
    let mut files = Vec::new();
    for dir in crate_dirs() {
        rust_files(&dir.join("src"), &mut files);
    }
    let mut problems = Vec::new();
    // A core's own tests may take `Instant::now()` as an arbitrary origin for virtual time.
    // (`tests.rs`, or any file of a `tests/` module).
    let is_test = |f: &Path| {
        f.file_name().is_some_and(|n| n == "tests.rs")
            || f.components().any(|c| c.as_os_str() == "tests")
    };
    for file in files.iter().filter(|f| is_core_module(f) && !is_test(f)) {
        let source = std::fs::read_to_string(file).unwrap();
        for (line, word) in core_violations(&source) {
            problems.push(format!(
                "{}:{line}: `{word}` in a core module",
                file.display()
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_core_checker_catches_what_it_should() {
    let bad = "use tokio::net::UdpSocket;\nlet t = std::time::Instant::now();\n";
    assert_eq!(core_violations(bad).len(), 2);
    assert!(core_violations("// tokio is mentioned in a comment only\n").is_empty());
    assert!(is_core_module(Path::new("crates/x/src/core.rs")));
    assert!(is_core_module(Path::new("crates/x/src/core/table.rs")));
    assert!(!is_core_module(Path::new("crates/x/src/driver.rs")));
}

#[test]
fn crates_take_versions_and_lints_from_the_workspace() {
    let mut problems = Vec::new();
    let mut manifests: Vec<PathBuf> = crate_dirs().iter().map(|d| d.join("Cargo.toml")).collect();
    manifests.push(root().join("xtask/Cargo.toml"));
    for manifest in manifests {
        let text = std::fs::read_to_string(&manifest).unwrap();
        if !text.contains("[lints]\nworkspace = true") {
            problems.push(format!(
                "{}: missing `[lints] workspace = true`",
                manifest.display()
            ));
        }
        let mut in_deps = false;
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                in_deps = line.ends_with("dependencies]");
                continue;
            }
            if in_deps && !line.is_empty() && !line.starts_with('#') && !line.contains("workspace")
            {
                problems.push(format!(
                    "{}: `{line}`: declare the version once in [workspace.dependencies]",
                    manifest.display()
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn libraries_have_crate_docs_and_never_print() {
    let mut problems = Vec::new();
    for dir in crate_dirs() {
        let lib = dir.join("src/lib.rs");
        if !lib.exists() {
            continue;
        }
        let text = std::fs::read_to_string(&lib).unwrap();
        if !text.trim_start().starts_with("//!") {
            problems.push(format!("{}: no crate-level doc", lib.display()));
        }
        if !text.contains("```") {
            problems.push(format!(
                "{}: crate doc has no compiled example",
                lib.display()
            ));
        }
        let mut files = Vec::new();
        rust_files(&dir.join("src"), &mut files);
        for file in files {
            let name = file.to_string_lossy();
            if name.ends_with("tests.rs")
                || name.contains("/tests/")
                || name.contains("/bin/")
                || name.ends_with("main.rs")
            {
                continue;
            }
            let source = std::fs::read_to_string(&file).unwrap();
            for (no, line) in source.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                if code.contains("println!") || code.contains("eprintln!") {
                    problems.push(format!(
                        "{}:{}: libraries never print",
                        file.display(),
                        no + 1
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_documents_the_design_requires_exist() {
    for doc in [
        "README.md",
        "docs/ARCHITECTURE.md",
        "docs/PROTOCOL.md",
        "docs/CONFIGURATION.md",
        ".ci/run",
    ] {
        assert!(root().join(doc).exists(), "{doc} is missing");
    }
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let ci = std::fs::read_to_string(root().join(".ci/run")).unwrap();
    assert!(
        readme.contains("cargo xtask ci") && ci.contains("cargo xtask ci"),
        "the README's test command and .ci/run must agree (`cargo xtask ci`)"
    );
}

#[test]
fn only_the_simulation_crate_depends_on_turmoil() {
    for dir in crate_dirs() {
        if dir.ends_with("cohort-sim") {
            continue;
        }
        let text = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        assert!(
            !text.contains("turmoil"),
            "{}: only cohort-sim may depend on turmoil (simulated sockets must not leak into real builds)",
            dir.display()
        );
    }
}

/// Rustdoc and the repository's documents cite only what is in the repository: no
/// `../shared/...`, no design or reference notes that a reader of the crate does not have.
#[test]
fn docs_cite_nothing_outside_the_repository() {
    let outside = [
        "../shared",
        "reference/tribes.md",
        "reference/peers.md",
        "DESIGN.md §",
    ];
    let mut problems = Vec::new();
    let mut files = Vec::new();
    for dir in crate_dirs() {
        rust_files(&dir.join("src"), &mut files);
    }
    for file in files {
        let source = std::fs::read_to_string(&file).unwrap();
        for (no, line) in source.lines().enumerate() {
            let doc = line.trim_start();
            if !(doc.starts_with("//!") || doc.starts_with("///")) {
                continue;
            }
            for o in outside {
                if doc.contains(o) {
                    problems.push(format!("{}:{}: cites {o}", file.display(), no + 1));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
