//! File names, hashes, and the files a deployer keeps beside the deployed ones.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::msg::FileMeta;

/// Checks a file name from a peer or a directory: one plain path component of 1 to 200
/// bytes, not hidden (names starting with `.` are the deployer's own), no separators, no NUL,
/// no control characters.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    // Partial files add about 40 bytes to the name: 200 keeps them under the usual 255.
    if name.is_empty() || name.len() > 200 {
        return Err("a file name is 1 to 200 bytes");
    }
    if name.starts_with('.') {
        return Err("a file name may not start with `.` (no `..`, no hidden files)");
    }
    if name.contains(['/', '\\']) {
        return Err("a file name may not contain a path separator");
    }
    if name.chars().any(char::is_control) {
        return Err("a file name may not contain control characters");
    }
    Ok(())
}

/// SHA-256 and size of a file, read in 1 MiB pieces.
pub fn hash_file(path: &Path) -> std::io::Result<([u8; 32], u64)> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((h.finalize().into(), size))
}

/// Hex of a hash.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The partial file of a transfer, and its list of verified chunks.
pub fn part_paths(temp: &Path, meta: &FileMeta) -> (PathBuf, PathBuf) {
    let stem = format!(
        ".{}.{:016x}{}",
        meta.name,
        meta.version.hlc,
        hex(&meta.version.node[..4])
    );
    (
        temp.join(format!("{stem}.part")),
        temp.join(format!("{stem}.done")),
    )
}

/// Chunks already verified of a transfer (from its `.done` file); empty when there is none.
pub fn load_done(path: &Path, chunks: u32) -> Vec<u32> {
    let Ok(bytes) = fs::read(path) else {
        return Vec::new();
    };
    bytes
        .chunks_exact(4)
        .filter_map(|c| c.try_into().ok().map(u32::from_le_bytes))
        .filter(|i| *i < chunks)
        .collect()
}

/// Records one more verified chunk.
pub fn append_done(path: &Path, index: u32) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(&index.to_le_bytes())
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_leave_the_deploy_directory_are_refused() {
        for bad in [
            "",
            "..",
            ".",
            "../etc/passwd",
            "a/b",
            "/abs",
            "a\\b",
            ".hidden",
            "a\0b",
            "a\nb",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name(&"x".repeat(201)).is_err());
        for good in ["app.war", "a", "x-1.2.3.tar.gz", "données.txt"] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
    }
}
