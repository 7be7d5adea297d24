//! The `cohort` node: configuration, the node runtime, the HTTP admin endpoint behind
//! `cohort status` (status page, JSON, Prometheus metrics, health checks), and lead-only jobs.
//! The binary (`src/main.rs`) is a thin command line (clap) over this library.
//!
//! The TOML file has one table per component (`[node]`, `[membership]`,
//! `[membership.multicast]`, `[transport]`, `[channel]`, `[admin]`, `[[interceptor]]`,
//! `[[job]]`); every key is optional and defaults to Tribes' value; durations and sizes take
//! units (`"500ms"`, `"64KiB"`); unknown keys and invalid values are errors naming the key.
//!
//! ```
//! use cohort_node::config::NodeConfig;
//!
//! let cfg = NodeConfig::from_toml(r#"
//!     [membership]
//!     cluster = "shop"
//!     drop_time = 5000
//!     [transport]
//!     port = 4100
//! "#).unwrap();
//! assert_eq!(cfg.transport.port, 4100);
//! assert_eq!(cfg.membership.config.cluster, "shop");
//!
//! let err = NodeConfig::from_toml("[transport]\nprot = 1\n").err().unwrap();
//! assert!(err.to_string().contains("prot"), "{err}");
//! let err = NodeConfig::from_toml("[transport]\nmax_in_flight = 0\n").err().unwrap();
//! assert!(err.to_string().contains("transport.max_in_flight"), "{err}");
//! ```

pub mod admin;
pub mod bench;
pub mod config;
pub mod jobs;
pub mod metrics;
pub mod node;
pub mod traffic;
