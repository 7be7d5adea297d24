//! Lead-only jobs (`[[job]]`): commands that must run on at most one member, such as scheduled
//! reports or mail, run on the current lead.
//!
//! Every member computes the same ticks from the wall clock: with `every`, tick `k` falls at
//! `k × every` since the Unix epoch; with `cron`, at each occurrence of the expression (UTC).
//! At each tick a member runs the job only if it is the lead of its view then, and has been
//! running for `settle` (its view has had time to fill: a member that just started and has not
//! heard of the others would otherwise see itself as the lead). When the lead changes, the new
//! lead runs the next tick. A tick whose previous run of the same job is still going is
//! skipped. Runs are reported as `job_started` / `job_finished` (or `job_skipped`) event lines
//! and counted in `/metrics`.
//!
//! What is not promised: in a partition each side has a lead, so both sides run the tick
//! (a split brain); clocks more than one period apart shift ticks between members.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cohort_channel::ChannelHandle;
use serde::Deserialize;
use serde_json::json;
use tokio::io::AsyncReadExt;

use crate::config::ConfigError;
use crate::metrics::NodeMetrics;
use crate::node::Events;

/// Most `[[job]]` entries.
pub const MAX_JOBS: usize = 64;
/// Shortest `every`.
pub const MIN_EVERY: Duration = Duration::from_millis(100);
/// Bytes of a run's output (stdout and stderr together) kept for its `job_finished` line.
pub const MAX_OUTPUT: usize = 4096;

/// One `[[job]]` table.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// Name, unique among the jobs (in event lines and metrics).
    pub name: String,
    /// Run with `sh -c`.
    pub command: String,
    /// Period (`"10s"`, or milliseconds); this or `cron`.
    #[serde(default, deserialize_with = "cohort_wire::serde_ms::option_duration")]
    pub every: Option<Duration>,
    /// A cron expression (UTC; five fields, or six with seconds first); this or `every`.
    #[serde(default)]
    pub cron: Option<String>,
    /// A run still going after this is killed (by its PID). Default: the period (`every`), or
    /// one hour for `cron`.
    #[serde(default, deserialize_with = "cohort_wire::serde_ms::option_duration")]
    pub timeout: Option<Duration>,
}

/// When a job's ticks fall.
#[derive(Clone, Debug)]
enum Schedule {
    Every(Duration),
    Cron(Box<croner::Cron>),
}

impl Schedule {
    /// The first tick strictly after `now_ms`: (tick id, its wall-clock time in ms).
    fn next_after(&self, now_ms: u64) -> Option<(u64, u64)> {
        match self {
            Self::Every(every) => {
                let p = u64::try_from(every.as_millis()).ok()?.max(1);
                let k = now_ms / p + 1;
                Some((k, k.checked_mul(p)?))
            }
            Self::Cron(cron) => {
                let now = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(
                    i64::try_from(now_ms).ok()?,
                )?;
                let next = cron.find_next_occurrence(&now, false).ok()?;
                let at = u64::try_from(next.timestamp_millis()).ok()?;
                Some((at / 1000, at))
            }
        }
    }
}

/// A validated job.
#[derive(Clone, Debug)]
pub struct Job {
    config: JobConfig,
    schedule: Schedule,
    timeout: Duration,
}

impl Job {
    /// The job's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }
}

fn invalid(i: usize, key: &str, reason: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        key: format!("job[{i}].{key}"),
        reason: reason.to_string(),
    }
}

/// Checks the `[[job]]` entries.
pub fn validate(jobs: Vec<JobConfig>) -> Result<Vec<Job>, ConfigError> {
    if jobs.len() > MAX_JOBS {
        return Err(ConfigError::Invalid {
            key: "job".into(),
            reason: format!("{} entries, at most {MAX_JOBS}", jobs.len()),
        });
    }
    let mut out: Vec<Job> = Vec::new();
    for (i, config) in jobs.into_iter().enumerate() {
        if config.name.is_empty() || config.name.len() > 64 {
            return Err(invalid(i, "name", "1 to 64 characters"));
        }
        if out.iter().any(|j| j.config.name == config.name) {
            return Err(invalid(
                i,
                "name",
                format!("{:?} is used twice", config.name),
            ));
        }
        if config.command.trim().is_empty() {
            return Err(invalid(i, "command", "empty"));
        }
        let schedule = match (&config.every, &config.cron) {
            (Some(every), None) => {
                if *every < MIN_EVERY || *every > Duration::from_secs(86_400 * 366) {
                    return Err(invalid(i, "every", "between 100 ms and a year"));
                }
                Schedule::Every(*every)
            }
            (None, Some(expr)) => {
                let cron = croner::Cron::new(expr)
                    .with_seconds_optional()
                    .parse()
                    .map_err(|e| invalid(i, "cron", format!("{expr:?}: {e}")))?;
                Schedule::Cron(Box::new(cron))
            }
            _ => {
                return Err(invalid(
                    i,
                    "every",
                    "give exactly one of `every` and `cron`",
                ));
            }
        };
        let timeout = config.timeout.unwrap_or(match schedule {
            Schedule::Every(every) => every,
            Schedule::Cron(_) => Duration::from_secs(3600),
        });
        if timeout.is_zero() || timeout > Duration::from_secs(86_400) {
            return Err(invalid(i, "timeout", "between 1 ms and a day"));
        }
        out.push(Job {
            config,
            schedule,
            timeout,
        });
    }
    Ok(out)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What the runners need.
pub struct Runner {
    /// The channel whose view names the lead.
    pub channel: ChannelHandle,
    /// Where event lines go.
    pub events: Events,
    /// The node's name.
    pub node: String,
    /// Run counters.
    pub metrics: Arc<NodeMetrics>,
    /// A member runs jobs only once it has been up this long.
    pub settle: Duration,
}

/// Starts one task per job; they end when the returned set is dropped or shut down.
pub fn start(jobs: Vec<Job>, runner: Runner) -> tokio::task::JoinSet<()> {
    let runner = Arc::new(runner);
    let started = tokio::time::Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for job in jobs {
        set.spawn(schedule(job, runner.clone(), started));
    }
    set
}

async fn schedule(job: Job, r: Arc<Runner>, started: tokio::time::Instant) {
    let mut running: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let now = now_ms();
        let Some((tick, at)) = job.schedule.next_after(now) else {
            tracing::warn!(job = %job.name(), "no next tick; job stopped");
            return;
        };
        tokio::time::sleep(Duration::from_millis(at.saturating_sub(now))).await;
        if started.elapsed() < r.settle || !r.channel.is_lead() {
            continue;
        }
        if running.as_ref().is_some_and(|h| !h.is_finished()) {
            r.events.emit(json!({
                "event": "job_skipped", "node": r.node, "job": job.name(), "tick": tick,
                "reason": "the previous run is still going",
            }));
            continue;
        }
        running = Some(tokio::spawn(run(job.clone(), r.clone(), tick, at)));
    }
}

async fn run(job: Job, r: Arc<Runner>, tick: u64, tick_ms: u64) {
    let name = job.name().to_owned();
    let begun = tokio::time::Instant::now();
    let spawned = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&job.config.command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            r.metrics.job_run(&name, true);
            r.events.emit(json!({
                "event": "job_finished", "node": r.node, "job": name, "tick": tick,
                "error": format!("cannot start sh: {e}"), "exit_code": null, "duration_ms": 0,
            }));
            return;
        }
    };
    r.events.emit(json!({
        "event": "job_started", "node": r.node, "job": name, "tick": tick,
        "tick_time_ms": tick_ms, "pid": child.id(),
    }));
    // Output is read as it comes (a full pipe would stall the job), and kept up to a bound.
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let collect = async {
        let (mut out, err) = tokio::join!(bounded(stdout), bounded(stderr));
        out.extend_from_slice(&err);
        out
    };
    let waited = tokio::time::timeout(job.timeout, async {
        let (output, status) = tokio::join!(collect, child.wait());
        (output, status)
    })
    .await;
    let duration_ms = u64::try_from(begun.elapsed().as_millis()).unwrap_or(u64::MAX);
    let (exit_code, timed_out, output) = match waited {
        Ok((output, Ok(status))) => (status.code(), false, output),
        Ok((output, Err(_))) => (None, false, output),
        Err(_) => {
            // Killed by its PID (the child handle), then reaped.
            let _ = child.kill().await;
            (None, true, Vec::new())
        }
    };
    let failed = timed_out || exit_code != Some(0);
    r.metrics.job_run(&name, failed);
    r.events.emit(json!({
        "event": "job_finished", "node": r.node, "job": name, "tick": tick,
        "exit_code": exit_code, "timed_out": timed_out, "duration_ms": duration_ms,
        "output": String::from_utf8_lossy(&output),
    }));
}

/// Reads `r` to its end, keeping the first half of [`MAX_OUTPUT`] bytes.
async fn bounded(r: Option<impl tokio::io::AsyncRead + Unpin>) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut r) = r else {
        return kept;
    };
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = (MAX_OUTPUT / 2).saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_member_computes_the_same_ticks() {
        let s = Schedule::Every(Duration::from_secs(10));
        assert_eq!(s.next_after(1_000), Some((1, 10_000)));
        assert_eq!(s.next_after(9_999), Some((1, 10_000)));
        assert_eq!(s.next_after(10_000), Some((2, 20_000)));
        let cron = croner::Cron::new("*/5 * * * * *")
            .with_seconds_optional()
            .parse()
            .unwrap();
        let s = Schedule::Cron(Box::new(cron));
        assert_eq!(s.next_after(1_000), Some((5, 5_000)));
        assert_eq!(s.next_after(5_000), Some((10, 10_000)));
    }

    #[test]
    fn validation_names_the_entry_and_key() {
        let job = |every: Option<u64>, cron: Option<&str>| JobConfig {
            name: "j".into(),
            command: "true".into(),
            every: every.map(Duration::from_millis),
            cron: cron.map(str::to_owned),
            timeout: None,
        };
        let err = |jobs| validate(jobs).err().unwrap().to_string();
        assert!(err(vec![job(None, None)]).contains("job[0].every"));
        assert!(err(vec![job(Some(1000), Some("* * * * *"))]).contains("job[0].every"));
        assert!(err(vec![job(Some(10), None)]).contains("job[0].every"));
        assert!(err(vec![job(None, Some("61 * * * *"))]).contains("job[0].cron"));
        assert!(err(vec![job(Some(1000), None), job(Some(1000), None)]).contains("job[1].name"));
        let ok = validate(vec![job(Some(1000), None)]).unwrap();
        assert_eq!(ok[0].timeout, Duration::from_secs(1));
    }
}
