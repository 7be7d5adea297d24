//! Cluster-wide file deployment on a Cohort channel (Tomcat's `FarmWarDeployer`, made to
//! converge and never to install a broken file).
//!
//! A member that watches a directory (or is asked through [`DeployerHandle::deploy`]) puts a
//! file into its deploy directory and announces it. Every other member fetches it in chunks
//! (each with a CRC32; the whole file with a SHA-256), writes them into its temp directory,
//! checks, fsyncs and renames the file into its own deploy directory, so that no reader ever
//! sees a partial or corrupt file. Removing the file undeploys it everywhere. Members compare
//! manifests when they meet and periodically, so a member that was down catches up, and a
//! transfer cut by a crash resumes from the chunks already verified. For each name the
//! highest version (a hybrid logical clock and the deploying member's id) wins everywhere.
//!
//! ```no_run
//! # async fn demo(channel: cohort_channel::ChannelHandle) -> Result<(), cohort_deployer::DeployError> {
//! use cohort_deployer::{DeployerConfig, DeployerHandle};
//! let deployer = DeployerHandle::start(&channel, DeployerConfig {
//!     watch_enabled: true,
//!     ..DeployerConfig::default()
//! }).await?;
//! deployer.deploy("app.tar.gz", bytes::Bytes::from_static(b"...")).await?;
//! let status = deployer.status().await?;
//! println!("every member agrees: {}", status.agree);
//! # Ok(()) }
//! ```

pub mod config;
pub mod core;
mod driver;
pub mod fsio;
pub mod fuzz;
pub mod msg;

pub use config::{ConfigError, DeployerConfig};
pub use core::{DeployEvent, DeployStats, Origin};
pub use driver::{DeployError, DeployStatus, DeployerHandle};
pub use msg::FileMeta;
