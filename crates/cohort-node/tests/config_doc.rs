//! docs/CONFIGURATION.md and the parser agree: the reference file parses to the defaults,
//! every key it documents parses, every key the node accepts is documented, every error names
//! its table and key, and every interceptor option is documented in its section.

use std::collections::BTreeSet;

use cohort_node::config::NodeConfig;

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/CONFIGURATION.md");
    std::fs::read_to_string(path).expect("docs/CONFIGURATION.md")
}

/// The TOML block after the reference marker.
fn reference(doc: &str) -> String {
    let at = doc
        .find("<!-- reference: every key with its default -->")
        .expect("reference marker");
    let block = &doc[at..];
    let start = block.find("```toml\n").expect("toml block") + "```toml\n".len();
    let end = block[start..].find("```").expect("block end");
    block[start..start + end].to_owned()
}

/// `# key = value` lines become `key = value`.
fn uncommented(text: &str) -> String {
    text.lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest) if rest.contains(" = ") => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every dotted path of a table: its keys and, recursively, the keys of its sub-tables.
fn paths(prefix: &str, table: &toml::Table, out: &mut BTreeSet<String>) {
    for (k, v) in table {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if let toml::Value::Table(t) = v {
            paths(&path, t, out);
        }
        out.insert(path);
    }
}

/// The keys serde expects in `[table]`, from the error an unknown key gets.
fn accepted_in(table: &str) -> Vec<String> {
    let text = format!("[{table}]\nzz_not_a_key = 1\n");
    let err = NodeConfig::from_toml(&text)
        .err()
        .expect("an unknown key is refused")
        .to_string();
    expected_names(&err)
}

/// The backticked names after "expected one of" (or "expected") in a serde error.
fn expected_names(err: &str) -> Vec<String> {
    let at = err
        .find("expected")
        .unwrap_or_else(|| panic!("no expected list: {err}"));
    err[at..]
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_reference_file_parses_to_the_defaults() {
    let text = reference(&doc());
    let parsed = NodeConfig::from_toml(&text).unwrap_or_else(|e| panic!("{e}"));
    let defaults = NodeConfig::defaults();
    assert_eq!(parsed.transport, defaults.transport);
    assert_eq!(parsed.channel, defaults.channel);
    assert_eq!(parsed.admin, defaults.admin);
    assert_eq!(parsed.services, defaults.services);
    assert_eq!(parsed.membership.multicast, defaults.membership.multicast);
    assert_eq!(
        format!("{:?}", parsed.membership.config),
        format!("{:?}", defaults.membership.config)
    );
    assert_eq!(parsed.membership.static_members, None);
    assert_eq!(
        (
            parsed.print_messages,
            parsed.traffic_rate,
            parsed.runtime_threads
        ),
        (
            defaults.print_messages,
            defaults.traffic_rate,
            defaults.runtime_threads
        )
    );
    assert_eq!(parsed.interceptors, defaults.interceptors);
}

#[test]
fn every_documented_key_parses_and_every_accepted_key_is_documented() {
    let text = uncommented(&reference(&doc()));
    let config = NodeConfig::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(config.keys.is_some() && config.membership.static_members.is_some());
    let table: toml::Table = toml::from_str(&text).unwrap();
    let mut documented = BTreeSet::new();
    paths("", &table, &mut documented);

    let mut accepted = BTreeSet::new();
    let tables = [
        "node",
        "membership",
        "membership.limits",
        "membership.multicast",
        "membership.multicast.recovery",
        "membership.dns",
        "transport",
        "transport.limits",
        "channel",
        "admin",
        "deployer",
    ];
    for t in tables {
        accepted.insert(t.to_owned());
        for key in accepted_in(t) {
            accepted.insert(format!("{t}.{key}"));
        }
    }
    // Keys the node takes out of a library table before handing it over.
    for k in [
        "membership.multicast",
        "membership.static_bind",
        "membership.static_members",
        "membership.dns",
        "channel.services",
        "deployer.enabled",
        "deployer.command",
    ] {
        accepted.insert(k.to_owned());
    }
    let undocumented: Vec<_> = accepted.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&accepted).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "accepted but not in the reference: {undocumented:?}; in the reference but refused: {unknown:?}"
    );
}

#[test]
fn errors_name_the_table_and_the_key() {
    for (text, key) in [
        (
            "[membership]\nfrequency = \"abc\"\n",
            "membership.frequency",
        ),
        ("[membership]\nfrequncy = 5\n", "frequncy"),
        ("[transport]\nbind = \"nope\"\n", "transport.bind"),
        (
            "[transport]\nconnections_per_peer = 0\n",
            "transport.connections_per_peer",
        ),
        ("[transport]\nidle_timeout = 0\n", "transport.idle_timeout"),
        (
            "[membership.multicast]\nttl = -1\n",
            "membership.multicast.ttl",
        ),
        (
            "[membership.multicast.recovery]\nsleep = \"x\"\n",
            "membership.multicast.recovery.sleep",
        ),
        (
            "[transport.limits]\nmax_frame_payload = 5000000000\n",
            "transport.limits.max_frame_payload",
        ),
        (
            "[channel]\nasync_full_policy = \"bogus\"\n",
            "channel.async_full_policy",
        ),
        ("[channel]\nservices = 99\n", "channel.services"),
        ("[admin]\nbind = \"10.0.0.1\"\n", "admin.bind"),
        (
            "[membership]\nstatic_members = [\"x\"]\n",
            "membership.static_bind",
        ),
        ("[membership]\nmulticast = 3\n", "membership.multicast"),
        ("[node]\nruntime_threads = 0\n", "node.runtime_threads"),
    ] {
        let err = NodeConfig::from_toml(text)
            .err()
            .unwrap_or_else(|| panic!("accepted: {text}"))
            .to_string();
        assert!(err.contains(key), "{text:?}: {err:?} does not name {key}");
    }
}

#[test]
fn every_interceptor_option_is_documented_in_its_section() {
    let doc = doc();
    let err = NodeConfig::from_toml("[[interceptor]]\ntype = \"zz_none\"\n")
        .err()
        .unwrap()
        .to_string();
    let types = expected_names(&err);
    assert!(types.len() >= 13, "{types:?}");
    for t in types {
        let heading = format!("### `{t}`");
        let at = doc
            .find(&heading)
            .unwrap_or_else(|| panic!("no section {heading}"));
        let section = &doc[at + heading.len()..];
        let section = &section[..section.find("\n## ").unwrap_or(section.len())];
        let section = &section[..section.find("\n### ").unwrap_or(section.len())];
        let text = format!("[[interceptor]]\ntype = \"{t}\"\nzz_not_a_key = 1\n");
        let err = NodeConfig::from_toml(&text).err().unwrap().to_string();
        for option in expected_names(&err) {
            assert!(
                section.contains(&format!("`{option}`")),
                "interceptor {t}: option `{option}` is not documented in its section"
            );
        }
    }
}

#[test]
fn durations_and_sizes_take_units() {
    let c = NodeConfig::from_toml(
        "[membership]\nfrequency = \"250ms\"\ndrop_time = \"2s\"\n\
         [transport]\nidle_timeout = \"2m\"\nrx_buf_size = \"32KiB\"\nmax_inbound_bytes = \"1GiB\"\n\
         [transport.limits]\nmax_frame_payload = \"16MiB\"\n\
         [channel]\nasync_queue_bytes = \"10MB\"\ndrain_timeout = 1500\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.membership.config.frequency,
        std::time::Duration::from_millis(250)
    );
    assert_eq!(
        c.membership.config.drop_time,
        std::time::Duration::from_secs(2)
    );
    assert_eq!(
        c.transport.idle_timeout,
        std::time::Duration::from_secs(120)
    );
    assert_eq!(c.transport.rx_buf_size, 32 * 1024);
    assert_eq!(c.transport.max_inbound_bytes, 1 << 30);
    assert_eq!(c.transport.limits.max_frame_payload, 16 << 20);
    assert_eq!(c.channel.async_queue_bytes, 10_000_000);
    assert_eq!(
        c.channel.drain_timeout,
        std::time::Duration::from_millis(1500)
    );
    for (text, key) in [
        (
            "[transport]\nidle_timeout = \"2 fortnights\"\n",
            "transport.idle_timeout",
        ),
        (
            "[transport]\nrx_buf_size = \"64KB\"\nidle_timeout = \"5\"\n",
            "transport.idle_timeout",
        ),
        (
            "[transport.limits]\nmax_frame_payload = \"8GiB\"\n",
            "transport.limits.max_frame_payload",
        ),
    ] {
        let err = NodeConfig::from_toml(text).err().unwrap().to_string();
        assert!(err.contains(key), "{text:?}: {err}");
    }
}

#[test]
fn every_job_option_is_documented() {
    let doc = doc();
    let at = doc.find("## Lead-only jobs").expect("a jobs section");
    let section = &doc[at..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let err = NodeConfig::from_toml("[[job]]\nname = \"x\"\nzz_not_a_key = 1\n")
        .err()
        .unwrap()
        .to_string();
    let options = expected_names(&err);
    assert!(options.len() >= 5, "{options:?}");
    for option in options {
        assert!(
            section.contains(&format!("`{option}`")),
            "job option `{option}` is not documented"
        );
    }
}
