//! Secrets as files, so `*_FILE` conventions work: each run of an instance that lists secrets
//! gets a folder of its own on a memory-backed file system (never the disk), with one file per
//! secret, mode 0400, owned by the user the instance runs as. A process finds it in
//! `$TUG_SECRETS_DIR`; a container has it mounted read-only at `/run/secrets`. The folder is
//! removed when the run ends, and what a killed daemon left is removed by the keeper and by the
//! next daemon.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use zeroize::Zeroize;

/// One run's folder of secret files; removed when dropped.
pub(crate) struct SecretDir {
    path: PathBuf,
}

impl SecretDir {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `files` (name, value) for `instance` of the stack whose state folder is
    /// `state_dir`, owned by `owner` (uid, gid) when given.
    pub fn create(
        state_dir: &Path,
        instance: &str,
        files: &[(String, String)],
        owner: Option<(u32, u32)>,
    ) -> Result<SecretDir, String> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let base = base_dir()?;
        let unique = format!(
            "{}{instance}-{}-{}",
            stack_prefix(state_dir),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = base.join(unique);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| format!("cannot create the secrets folder {}: {e}", path.display()))?;
        let dir = SecretDir { path };
        for (name, value) in files {
            let file = dir.path.join(name);
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o400)
                .open(&file)
                .map_err(|e| format!("cannot write the secret file {}: {e}", file.display()))?;
            out.write_all(value.as_bytes()).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(&file, Some(uid), Some(gid))
                    .map_err(|e| format!("cannot give {} to uid {uid}: {e}", file.display()))?;
            }
        }
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir.path, Some(uid), Some(gid))
                .map_err(|e| format!("cannot give {} to uid {uid}: {e}", dir.path.display()))?;
        }
        // Read-only from now on, for its owner too.
        let _ = std::fs::set_permissions(&dir.path, std::fs::Permissions::from_mode(0o500));
        Ok(dir)
    }
}

impl Drop for SecretDir {
    fn drop(&mut self) {
        remove(&self.path);
    }
}

fn remove(path: &Path) {
    // The folder is 0500: make it writable again to empty it (root needs no such thing,
    // another user does).
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700));
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            // Overwrite before unlinking: tmpfs pages are freed, but not necessarily cleared.
            if let Ok(len) = entry.metadata().map(|m| m.len())
                && let Ok(mut file) = std::fs::OpenOptions::new().write(true).open(entry.path())
            {
                let mut zeros = vec![0u8; len as usize];
                let _ = file.write_all(&zeros);
                zeros.zeroize();
            }
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let _ = std::fs::remove_dir(path);
}

/// Removes every secrets folder of the stack whose state folder is `state_dir` (what a killed
/// daemon left). Returns how many.
pub fn remove_stale(state_dir: &Path) -> usize {
    let Ok(base) = base_dir() else { return 0 };
    let prefix = stack_prefix(state_dir);
    let mut removed = 0;
    for entry in std::fs::read_dir(&base).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            remove(&entry.path());
            removed += 1;
        }
    }
    removed
}

fn stack_prefix(state_dir: &Path) -> String {
    format!("{:08x}-", crate::container::fnv(state_dir.as_os_str().as_encoded_bytes()) as u32)
}

/// `$XDG_RUNTIME_DIR/tug`, else `/dev/shm/tug-<uid>`: memory, never the disk. Made 0700, and
/// refused when someone else owns it (a shared `/dev/shm` is writable by everyone).
fn base_dir() -> Result<PathBuf, String> {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let base = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() && Path::new(&dir).is_absolute() => PathBuf::from(dir).join("tug"),
        _ => PathBuf::from(format!("/dev/shm/tug-{uid}")),
    };
    match std::fs::DirBuilder::new().mode(0o700).create(&base) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {} for secret files: {e}", base.display())),
    }
    let meta = std::fs::symlink_metadata(&base).map_err(|e| format!("cannot read {}: {e}", base.display()))?;
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
        return Err(format!(
            "{} is not a private folder of uid {uid} (mode 0700): refusing to keep secret files there",
            base.display()
        ));
    }
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_private_and_removed_with_the_folder() {
        let state = std::env::temp_dir().join(format!("tug-secret-files-{}", std::process::id()));
        let files = vec![("DB_PASSWORD".to_string(), "hunter2hunter2".to_string())];
        let dir = SecretDir::create(&state, "api-1", &files, None).expect("a secrets folder");
        let file = dir.path().join("DB_PASSWORD");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "hunter2hunter2");
        assert_eq!(std::fs::metadata(&file).unwrap().mode() & 0o777, 0o400);
        assert_eq!(std::fs::metadata(dir.path()).unwrap().mode() & 0o777, 0o500);
        let path = dir.path().to_path_buf();
        drop(dir);
        assert!(!path.exists());
        let left = SecretDir::create(&state, "api-2", &files, None).expect("a secrets folder");
        let path = left.path().to_path_buf();
        std::mem::forget(left);
        assert_eq!(remove_stale(&state), 1);
        assert!(!path.exists());
    }
}
