//! The driver's file work: the manifest, staging a local deploy, scanning the watch
//! directory, and checking a received file before it is installed.

use super::*;

pub(super) fn load_manifest(cfg: &DeployerConfig) -> Vec<FileMeta> {
    let Ok(bytes) = fs::read(cfg.temp_dir.join(MANIFEST)) else {
        return Vec::new();
    };
    let files: Vec<FileMeta> = postcard::from_bytes(&bytes).unwrap_or_default();
    files
        .into_iter()
        .filter(|f| fsio::check_name(&f.name).is_ok())
        .filter(|f| {
            // A live file that is not there as recorded (size and SHA-256) is fetched again.
            let path = cfg.deploy_dir.join(&f.name);
            f.removed
                || (fs::symlink_metadata(&path).is_ok_and(|m| m.is_file() && m.len() == f.size)
                    && fsio::hash_file(&path).is_ok_and(|(sha, _)| sha == f.sha256))
        })
        .collect()
}

/// Temp files of local deploys are unique: two deploys of one name never share one.
static LOCAL_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Copies `src` (or writes `bytes`) into a fresh file of the temp directory, hashing on the
/// way, and fsyncs it; the owner renames it into place (in order with the versions it
/// assigns).
pub(super) fn stage_local(
    cfg: &DeployerConfig,
    name: &str,
    src: Result<&Path, &[u8]>,
) -> Result<(PathBuf, u64, [u8; 32]), String> {
    let seq = LOCAL_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = cfg.temp_dir.join(format!(".{name}.{seq}.local"));
    let mut h = sha2::Sha256::new();
    let size;
    {
        let mut out =
            fs::File::create(&tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
        match src {
            Ok(path) => {
                let mut input =
                    fs::File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
                let mut buf = vec![0u8; 1 << 20];
                let mut n_total = 0u64;
                loop {
                    let n = std::io::Read::read(&mut input, &mut buf).map_err(|e| e.to_string())?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                    out.write_all(&buf[..n]).map_err(|e| e.to_string())?;
                    n_total += n as u64;
                    if n_total > cfg.max_file_size {
                        drop(out);
                        let _ = fs::remove_file(&tmp);
                        return Err(format!("larger than max_file_size ({})", cfg.max_file_size));
                    }
                }
                size = n_total;
            }
            Err(bytes) => {
                h.update(bytes);
                out.write_all(bytes).map_err(|e| e.to_string())?;
                size = bytes.len() as u64;
            }
        }
        out.sync_all().map_err(|e| e.to_string())?;
    }
    Ok((tmp, size, h.finalize().into()))
}

impl Owner {
    /// Looks at the watch directory: a file that kept its size and time over one period is
    /// deployed; a file deployed from it that is gone is undeployed.
    pub(super) fn scan(&mut self) {
        if !self.cfg.watch_enabled {
            return;
        }
        let Ok(dir) = fs::read_dir(&self.cfg.watch_dir) else {
            return;
        };
        let mut present = Vec::new();
        for entry in dir.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            // Symbolic links and directories are not followed.
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            if let Err(reason) = fsio::check_name(&name) {
                if !name.starts_with('.') && !self.seen.contains_key(&name) {
                    let _ = self.events.send(DeployEvent::Failed {
                        name: name.clone(),
                        reason: reason.into(),
                    });
                    self.seen.insert(
                        name.clone(),
                        Seen {
                            size: 0,
                            mtime: UNIX_EPOCH,
                            since: tokio::time::Instant::now(),
                            deployed: false,
                        },
                    );
                }
                continue;
            }
            present.push(name.clone());
            let (size, mtime) = (meta.len(), meta.modified().unwrap_or(UNIX_EPOCH));
            let now = tokio::time::Instant::now();
            let seen = self.seen.get(&name).copied();
            match seen {
                Some(s) if (s.size, s.mtime) == (size, mtime) => {
                    // Unchanged for a whole period: written, not being written.
                    if !s.deployed && now - s.since >= self.cfg.process_deploy_frequency {
                        self.seen.insert(
                            name.clone(),
                            Seen {
                                deployed: true,
                                ..s
                            },
                        );
                        let (cfg, done) = (self.cfg.clone(), self.cmd.clone());
                        let path = entry.path();
                        tokio::task::spawn_blocking(move || {
                            let r = stage_local(&cfg, &name, Ok(&path))
                                .map(|(tmp, size, sha)| (name.clone(), tmp, size, sha))
                                .map_err(|e| (name.clone(), e));
                            if let Some(c) = done.upgrade() {
                                let _ = c.blocking_send(Cmd::LocalDone(r, None));
                            }
                        });
                    }
                }
                // New or still changing: timed from now.
                _ => {
                    self.seen.insert(
                        name,
                        Seen {
                            size,
                            mtime,
                            since: now,
                            deployed: false,
                        },
                    );
                }
            }
        }
        let gone: Vec<String> = self
            .seen
            .keys()
            .filter(|n| !present.contains(n))
            .cloned()
            .collect();
        for name in gone {
            if self.seen.remove(&name).is_some_and(|s| s.deployed) {
                self.core.handle_local_removed(now_ms(), &name);
            }
        }
        self.save_watched();
    }

    /// The names deployed from the watch directory, saved so that a restart neither deploys
    /// them again as new versions nor forgets to undeploy one removed while it was down.
    fn save_watched(&mut self) {
        let mut names: Vec<&String> = self
            .seen
            .iter()
            .filter(|(_, s)| s.deployed)
            .map(|(n, _)| n)
            .collect();
        names.sort();
        let Ok(bytes) = postcard::to_stdvec(&names) else {
            return;
        };
        if self.saved_watched.as_deref() == Some(bytes.as_slice()) {
            return;
        }
        match fsio::write_atomic(&self.cfg.temp_dir.join(WATCHED), &bytes) {
            Ok(()) => self.saved_watched = Some(bytes),
            Err(e) => tracing::warn!(error = %e, "watched names not saved"),
        }
    }

    /// At start: a watched file still there as deployed is not deployed again; one gone while
    /// the node was down is undeployed.
    pub(super) fn restore_watched(&mut self) {
        if !self.cfg.watch_enabled {
            return;
        }
        let Ok(bytes) = fs::read(self.cfg.temp_dir.join(WATCHED)) else {
            return;
        };
        let names: Vec<String> = postcard::from_bytes(&bytes).unwrap_or_default();
        for name in names {
            if fsio::check_name(&name).is_err() {
                continue;
            }
            let path = self.cfg.watch_dir.join(&name);
            let Some(live) = self.core.file(&name).cloned() else {
                continue;
            };
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_file() => {
                    if fsio::hash_file(&path).is_ok_and(|(sha, _)| sha == live.sha256) {
                        self.seen.insert(
                            name,
                            Seen {
                                size: meta.len(),
                                mtime: meta.modified().unwrap_or(UNIX_EPOCH),
                                since: tokio::time::Instant::now(),
                                deployed: true,
                            },
                        );
                    }
                    // Changed while down: deployed again once it is stable.
                }
                _ => {
                    self.core.handle_local_removed(now_ms(), &name);
                }
            }
        }
    }
}

/// Checks a received file's SHA-256 and fsyncs it (the owner renames it into place): no
/// reader ever sees it partial or corrupt.
pub(super) fn install_remote(cfg: &DeployerConfig, file: &FileMeta) -> Result<(), String> {
    let (part, _) = fsio::part_paths(&cfg.temp_dir, file);
    let (sha, size) =
        fsio::hash_file(&part).map_err(|e| format!("reading {}: {e}", part.display()))?;
    if sha != file.sha256 || size != file.size {
        return Err(format!(
            "SHA-256 {} does not match {} (size {size} of {})",
            fsio::hex(&sha),
            fsio::hex(&file.sha256),
            file.size
        ));
    }
    fs::File::open(&part)
        .and_then(|f| f.sync_all())
        .map_err(|e| e.to_string())
}
