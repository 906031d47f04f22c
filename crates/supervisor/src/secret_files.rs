//! Secrets as files, so `*_FILE` conventions work: each run of an instance that lists secrets
//! gets a folder of its own on a memory-backed file system (never the disk), with one file per
//! secret. A process finds it in `$TUG_SECRETS_DIR`; a container has it mounted read-only at
//! `/run/secrets`. The folder is removed when the run ends, and what a killed daemon left is
//! removed by the keeper and by the next daemon.
//!
//! Who can read them: the base, `/dev/shm/tug-<uid>`, is the daemon's (0711: others may pass
//! through, never list). A process's folder is its user's, 0500, the files 0400. Containers'
//! folders sit one level down, in `containers/` (0700: nobody else on the host gets in; a
//! container reaches its folder through its mount, not the path). Their files are 0400 and the
//! container's user's when tug knows it (a numeric `user:`); when it does not (a user name, the
//! image's own user) they are 0444, readable inside the container by whoever it runs as, and
//! still by nobody else on the host.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroize;

/// Whose the files are.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Owner {
    /// A process running as this uid and gid.
    Process(Option<(u32, u32)>),
    /// A container whose user is this uid and gid, when tug knows it.
    Container(Option<(u32, u32)>),
}

/// One run's folder of secret files; removed when dropped.
pub(crate) struct SecretDir {
    path: PathBuf,
}

impl SecretDir {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `files` (name, value) for `instance` of the stack whose state folder is
    /// `state_dir`, for `owner`.
    pub fn create(
        state_dir: &Path,
        instance: &str,
        files: &[(String, String)],
        owner: Owner,
    ) -> Result<SecretDir, String> {
        let base = match owner {
            Owner::Process(_) => base_dir()?,
            Owner::Container(_) => private_dir(&base_dir()?.join("containers"), 0o700)?,
        };
        // Not guessable: a container's mount source shows in /proc/PID/mountinfo.
        let path = base.join(format!("{}{instance}-{}", stack_prefix(state_dir), random_hex()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| format!("cannot create the secrets folder {}: {e}", path.display()))?;
        let dir = SecretDir { path };
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        let (chown, file_mode, dir_mode) = match owner {
            Owner::Process(user) => (user, 0o400, 0o500),
            // Only root gives files away; tug as another user (in the docker group) cannot.
            Owner::Container(Some(user)) if euid == 0 || user.0 == euid => (Some(user), 0o400, 0o500),
            Owner::Container(_) => (None, 0o444, 0o555),
        };
        for (name, value) in files {
            let file = dir.path.join(name);
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&file)
                .map_err(|e| format!("cannot write the secret file {}: {e}", file.display()))?;
            out.write_all(value.as_bytes()).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
            give(&file, chown, file_mode)?;
        }
        give(&dir.path, chown, dir_mode)?;
        Ok(dir)
    }
}

/// Gives `path` to `owner` with `mode`.
fn give(path: &Path, owner: Option<(u32, u32)>, mode: u32) -> Result<(), String> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| {
            format!(
                "cannot give {} to uid {uid}: {e} (tug must run as root to run an instance as another user)",
                path.display()
            )
        })?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot set the mode of {}: {e}", path.display()))
}

/// 128 bits from the OS's randomness (through std's hasher keys), as hex.
fn random_hex() -> String {
    use std::hash::{BuildHasher, Hasher};
    (0..2)
        .map(|_| {
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u64(std::process::id().into());
            format!("{:016x}", hasher.finish())
        })
        .collect()
}

impl Drop for SecretDir {
    fn drop(&mut self) {
        remove(&self.path);
    }
}

fn remove(path: &Path) {
    // The folder is read-only: make it writable again to empty it (root needs no such thing,
    // another user does).
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700));
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            // Overwrite before unlinking: tmpfs pages are freed, but not necessarily cleared.
            let _ = std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o600));
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
    for folder in [base.join("containers"), base] {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                remove(&entry.path());
                removed += 1;
            }
        }
    }
    removed
}

fn stack_prefix(state_dir: &Path) -> String {
    format!("{:08x}-", crate::container::fnv(state_dir.as_os_str().as_encoded_bytes()) as u32)
}

/// `/dev/shm/tug-<uid>`: memory, never the disk, and never a login session's folder (which
/// logind removes when the session that ran `tug up` ends).
fn base_dir() -> Result<PathBuf, String> {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    private_dir(&PathBuf::from(format!("/dev/shm/tug-{uid}")), 0o711)
}

/// `path`, made with `mode` if missing, refused unless it is a folder of this uid that nobody
/// else can write or list (a shared `/dev/shm` is writable by everyone).
fn private_dir(path: &Path, mode: u32) -> Result<PathBuf, String> {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    match std::fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {} for secret files: {e}", path.display())),
    }
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o066 != 0 {
        return Err(format!(
            "{} is not a private folder of uid {uid} (mode {mode:o}): refusing to keep secret files there",
            path.display()
        ));
    }
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_private_and_removed_with_the_folder() {
        let state = std::env::temp_dir().join(format!("tug-secret-files-{}", std::process::id()));
        let files = vec![("DB_PASSWORD".to_string(), "hunter2hunter2".to_string())];
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        let dir = SecretDir::create(&state, "api-1", &files, Owner::Process(None)).expect("a secrets folder");
        let file = dir.path().join("DB_PASSWORD");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "hunter2hunter2");
        assert_eq!((mode(&file), mode(dir.path())), (0o400, 0o500));
        assert_eq!(mode(dir.path().parent().unwrap()), 0o711, "others pass through, never list");
        let path = dir.path().to_path_buf();
        drop(dir);
        assert!(!path.exists());
        // A container whose user tug does not know: readable inside it, in a folder nobody else
        // on the host can enter.
        let dir = SecretDir::create(&state, "db-1", &files, Owner::Container(None)).expect("a secrets folder");
        assert_eq!((mode(&dir.path().join("DB_PASSWORD")), mode(dir.path())), (0o444, 0o555));
        assert_eq!(mode(dir.path().parent().unwrap()), 0o700);
        std::mem::forget(dir);
        let left = SecretDir::create(&state, "api-2", &files, Owner::Process(None)).expect("a secrets folder");
        let path = left.path().to_path_buf();
        std::mem::forget(left);
        assert_eq!(remove_stale(&state), 2);
        assert!(!path.exists());
    }
}
