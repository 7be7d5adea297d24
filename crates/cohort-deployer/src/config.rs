//! The deployer's settings (the node's `[deployer]` table).

use std::path::PathBuf;
use std::time::Duration;

/// Where files come from and go, and the limits of a transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct DeployerConfig {
    /// Files put here are deployed to every member (when `watch_enabled`). Default
    /// `deploy/watch`.
    pub watch_dir: PathBuf,
    /// Where every member keeps the deployed files. Default `deploy/live`.
    pub deploy_dir: PathBuf,
    /// Partial transfers and the manifest; must be on the deploy directory's file system (files
    /// are renamed from here into it). Default `deploy/tmp`.
    pub temp_dir: PathBuf,
    /// Whether this member watches `watch_dir` (Tomcat's `watchEnabled`). Default false.
    pub watch_enabled: bool,
    /// How often the watch directory is scanned and manifests are compared; a file must keep
    /// its size and modification time over one period before it is sent, so a file still being
    /// written never leaves half-way (Tomcat's `processDeployFrequency`). Default 2 s.
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "cohort_wire::serde_ms::duration")
    )]
    pub process_deploy_frequency: Duration,
    /// Largest file, in bytes. Default 1 GiB.
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "cohort_wire::serde_ms::size")
    )]
    pub max_file_size: u64,
    /// Bytes per chunk. Default 1 MiB.
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "cohort_wire::serde_ms::size")
    )]
    pub chunk_size: u32,
    /// Files received at once; more wait. Default 4.
    pub max_concurrent_transfers: usize,
    /// Chunk requests in flight per transfer. Default 8.
    pub chunks_in_flight: usize,
    /// Space that must stay free on the temp directory's file system; a file that would leave
    /// less is refused (`deploy_failed`). Default 64 MiB.
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "cohort_wire::serde_ms::size")
    )]
    pub min_free_space: u64,
    /// Deadline of one request (a chunk, a manifest). Default 10 s.
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "cohort_wire::serde_ms::duration")
    )]
    pub request_timeout: Duration,
    /// Most files a manifest may list. Default 10,000.
    pub max_files: usize,
}

impl Default for DeployerConfig {
    fn default() -> Self {
        Self {
            watch_dir: PathBuf::from("deploy/watch"),
            deploy_dir: PathBuf::from("deploy/live"),
            temp_dir: PathBuf::from("deploy/tmp"),
            watch_enabled: false,
            process_deploy_frequency: Duration::from_secs(2),
            max_file_size: 1 << 30,
            chunk_size: 1 << 20,
            max_concurrent_transfers: 4,
            chunks_in_flight: 8,
            min_free_space: 64 << 20,
            request_timeout: Duration::from_secs(10),
            max_files: 10_000,
        }
    }
}

/// A setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("deployer config `{key}`: {reason}")]
pub struct ConfigError {
    /// The setting.
    pub key: &'static str,
    /// Why.
    pub reason: String,
}

impl DeployerConfig {
    /// Checks every setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |key, reason: &str| {
            Err(ConfigError {
                key,
                reason: reason.into(),
            })
        };
        if !(4096..=(16 << 20)).contains(&self.chunk_size) {
            return err("chunk_size", "4 KiB to 16 MiB");
        }
        for (key, v) in [
            ("max_concurrent_transfers", self.max_concurrent_transfers),
            ("chunks_in_flight", self.chunks_in_flight),
            ("max_files", self.max_files),
        ] {
            if v == 0 {
                return err(key, "must be at least 1");
            }
        }
        if self.process_deploy_frequency.is_zero() || self.request_timeout.is_zero() {
            return err("process_deploy_frequency", "durations must be above zero");
        }
        if self.deploy_dir == self.temp_dir || self.deploy_dir == self.watch_dir {
            return err("deploy_dir", "must differ from watch_dir and temp_dir");
        }
        Ok(())
    }
}
