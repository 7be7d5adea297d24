//! `cargo xtask api [--bless]`: the public API of each library crate, listed from rustdoc's
//! JSON output, against the snapshot committed in `api/<crate>.txt`. `cargo xtask ci` runs the
//! check: a change to a public item (removed, renamed, a parameter added) fails it until the
//! snapshot is updated with `--bless` in the same commit, so every API change is a visible
//! diff in review.
//!
//! The list holds every public item (kind and path), every public method and struct field,
//! every trait implemented, and function parameters by name (not types: a coarse but stable
//! view). rustdoc's JSON is unstable; it is built with `RUSTC_BOOTSTRAP=1`, and a snapshot
//! made with another JSON format version is reported and skipped rather than failed.

// A command-line tool: the differences are its output.
#![allow(clippy::print_stdout)]

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// The library crates whose API is checked.
const CRATES: &[&str] = &[
    "cohort-wire",
    "cohort-net",
    "cohort-membership",
    "cohort-transport",
    "cohort-channel",
    "cohort-interceptors",
    "cohort-maps",
    "cohort-session",
    "cohort-deployer",
    "cohort",
];

fn params(item: &Value) -> String {
    item["inner"]["function"]["sig"]["inputs"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p[0].as_str())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn type_name(t: &Value) -> Option<String> {
    let p = &t["resolved_path"];
    // The path is written as the impl block spells it (`super::X` in a
    // submodule): a path into this crate keeps its last segment, so moving an
    // impl between modules is not an API change; foreign paths stay whole.
    let path = p["path"].as_str().or(p["name"].as_str())?;
    let local = ["crate::", "super::", "self::"]
        .iter()
        .any(|prefix| path.starts_with(prefix));
    Some(match path.rsplit_once("::") {
        Some((_, last)) if local => last.to_owned(),
        _ => path.to_owned(),
    })
}

/// The public surface of one crate's rustdoc JSON, one line per item.
fn surface(doc: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let index = doc["index"].as_object().cloned().unwrap_or_default();
    let public = |id: &str| index.get(id).is_some_and(|i| i["visibility"] == "public");
    if let Some(paths) = doc["paths"].as_object() {
        for (id, p) in paths {
            if p["crate_id"] != 0 || !public(id) {
                continue;
            }
            let path = p["path"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join("::")
                })
                .unwrap_or_default();
            let kind = p["kind"].as_str().unwrap_or("?");
            let item = &index[id];
            match kind {
                "function" => {
                    out.insert(format!("fn {path}({})", params(item)));
                }
                "struct" => {
                    out.insert(format!("struct {path}"));
                    let fields = item["inner"]["struct"]["kind"]["plain"]["fields"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    for f in fields {
                        let fid = match &f {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        if let Some(fi) = index.get(&fid) {
                            if fi["visibility"] == "public" {
                                let name = fi["name"].as_str().unwrap_or("?");
                                out.insert(format!("field {path}.{name}"));
                            }
                        }
                    }
                }
                other => {
                    out.insert(format!("{other} {path}"));
                }
            }
        }
    }
    for item in index.values() {
        if item["crate_id"] != 0 {
            continue;
        }
        if let Some(u) = item["inner"].get("use") {
            if item["visibility"] == "public" {
                out.insert(format!("use {}", u["source"].as_str().unwrap_or("?")));
            }
            continue;
        }
        let Some(imp) = item["inner"].get("impl") else {
            continue;
        };
        if imp["is_synthetic"] == true || !imp["blanket_impl"].is_null() {
            continue;
        }
        let Some(ty) = type_name(&imp["for"]) else {
            continue;
        };
        match imp["trait"]["path"].as_str() {
            Some(tr) => {
                out.insert(format!("impl {tr} for {ty}"));
            }
            None => {
                for id in imp["items"].as_array().cloned().unwrap_or_default() {
                    let key = match &id {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    if let Some(m) = index.get(&key) {
                        if m["visibility"] == "public" {
                            let name = m["name"].as_str().unwrap_or("?");
                            if m["inner"].get("function").is_some() {
                                out.insert(format!("fn {ty}::{name}({})", params(m)));
                            } else {
                                out.insert(format!("item {ty}::{name}"));
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

fn snapshot_path(krate: &str) -> PathBuf {
    crate::project_root()
        .join("api")
        .join(format!("{krate}.txt"))
}

/// Entry point: `args` follow `api`.
pub(crate) fn run(args: &[String]) -> Result<()> {
    let bless = match args.first().map(String::as_str) {
        None => false,
        Some("--bless") => true,
        Some(other) => bail!("usage: cargo xtask api [--bless] (unknown `{other}`)"),
    };
    let mut changed = Vec::new();
    for krate in CRATES {
        crate::run_cmd(
            crate::cargo()
                .args([
                    "rustdoc",
                    "-q",
                    "--locked",
                    "-p",
                    krate,
                    "--lib",
                    "--all-features",
                    "--",
                ])
                .args(["-Z", "unstable-options", "--output-format", "json"])
                .env("RUSTC_BOOTSTRAP", "1"),
        )?;
        let json = crate::harness::target_dir()
            .join("doc")
            .join(format!("{}.json", krate.replace('-', "_")));
        let doc: Value = serde_json::from_slice(
            &std::fs::read(&json).with_context(|| json.display().to_string())?,
        )?;
        let version = doc["format_version"].as_u64().unwrap_or(0);
        let lines = surface(&doc);
        let text = format!(
            "# public API of {krate} (cargo xtask api --bless); rustdoc JSON format {version}\n{}\n",
            lines.iter().cloned().collect::<Vec<_>>().join("\n")
        );
        let path = snapshot_path(krate);
        if bless {
            std::fs::create_dir_all(path.parent().context("api dir")?)?;
            std::fs::write(&path, &text)?;
            continue;
        }
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        let old_version = old
            .lines()
            .next()
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok());
        if old_version != Some(version) {
            println!(
                "api: {krate}: snapshot made with rustdoc JSON format {old_version:?}, this toolchain writes {version}: not compared (run --bless with this toolchain)"
            );
            continue;
        }
        let before: BTreeSet<String> = old
            .lines()
            .skip(1)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        if before != lines {
            for l in before.difference(&lines) {
                println!("api: {krate}: - {l}");
            }
            for l in lines.difference(&before) {
                println!("api: {krate}: + {l}");
            }
            changed.push(*krate);
        }
    }
    if !changed.is_empty() {
        bail!(
            "the public API of {} changed: if meant, run `cargo xtask api --bless` and commit api/",
            changed.join(", ")
        );
    }
    if bless {
        eprintln!("api: snapshots written to api/");
    } else {
        eprintln!("api: every crate's public API matches its snapshot");
    }
    Ok(())
}
