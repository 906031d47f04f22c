//! The record of every service's revisions and rollouts (`.tug/rollouts.json`): what `tug
//! history` shows, what `undo` goes back to, and what a daemon started after a crash reads to
//! resume or roll back a rollout it finds under way.
//!
//! A revision's spec carries secret values (the instances need them), so it is kept sealed
//! under a key derived from the API key ([`SealKey`]); beside it, a copy with sensitive values
//! masked is what `tug history` shows. The file is replaced whole and atomically, with an
//! fsync, at every change of a rollout: they are rare, and a crash must find the last word.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tug_proto::rollout::{HistoryEntry, Phase, RolloutStatus};
use tug_proto::spec::ServiceSpec;

pub const FILE: &str = "rollouts.json";

/// Revisions kept per service: enough to undo through a bad week.
const KEEP: usize = 20;

/// The key revisions' specs are sealed with. Never shown.
#[derive(Clone)]
pub struct SealKey(pub Arc<zeroize::Zeroizing<[u8; 32]>>);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(********)")
    }
}

impl SealKey {
    /// The key for this stack's history, from its API key.
    pub fn from_api_key(api_key: &[u8]) -> SealKey {
        SealKey(Arc::new(tug_secrets::derive_key("rollout history", api_key)))
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Records {
    pub services: BTreeMap<String, ServiceRecord>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// The revision the service runs (the target of a rollout under way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// The latest rollout, under way or ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    /// A rollout under way was turning back when this was written: a restart finishes that.
    #[serde(default)]
    pub rolling_back: bool,
    /// Oldest first.
    #[serde(default)]
    pub revisions: Vec<Revision>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Revision {
    pub entry: HistoryEntry,
    /// The whole spec, sealed; `None` when no key was available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<String>,
}

impl Records {
    pub fn load(state_dir: &Path) -> Result<Records, String> {
        let path = state_dir.join(FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{} is damaged ({e}); rollout history starts again", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Records::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Written through a temporary file, fsynced, renamed, and the folder fsynced.
    pub fn save(&self, state_dir: &Path) -> Result<(), String> {
        use std::io::Write;
        let path = state_dir.join(FILE);
        let json = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&json)?;
            file.sync_all()?;
            drop(file);
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(state_dir)?.sync_all()
        };
        write().map_err(|e| format!("cannot save {}: {e}", path.display()))
    }

    pub fn service(&mut self, name: &str) -> &mut ServiceRecord {
        self.services.entry(name.to_string()).or_default()
    }

    /// `tug history SERVICE`: newest first.
    pub fn history(&self, name: &str) -> Vec<HistoryEntry> {
        let Some(record) = self.services.get(name) else { return Vec::new() };
        let current_at = record
            .revisions
            .iter()
            .rposition(|r| Some(&r.entry.revision) == record.current.as_ref() && r.entry.outcome != Phase::RolledBack);
        record
            .revisions
            .iter()
            .enumerate()
            .rev()
            .map(|(i, r)| HistoryEntry { current: Some(i) == current_at, ..r.entry.clone() })
            .collect()
    }
}

impl ServiceRecord {
    /// Adds a revision's entry (a rollout to it began), keeping the newest [`KEEP`].
    pub fn push(&mut self, spec: &ServiceSpec, mut entry: HistoryEntry, key: Option<&SealKey>) {
        entry.spec = masked_spec(spec);
        let sealed = key.and_then(|k| {
            let json = zeroize::Zeroizing::new(serde_json::to_vec(spec).ok()?);
            tug_secrets::seal(&k.0, &json).ok()
        });
        self.revisions.push(Revision { entry, sealed });
        if self.revisions.len() > KEEP {
            let extra = self.revisions.len() - KEEP;
            self.revisions.drain(..extra);
        }
    }

    /// The latest entry of `revision` (its last rollout).
    pub fn latest_mut(&mut self, revision: &str) -> Option<&mut Revision> {
        self.revisions.iter_mut().rev().find(|r| r.entry.revision == revision)
    }

    /// The spec of `revision`, unsealed.
    pub fn spec(&self, revision: &str, key: Option<&SealKey>) -> Result<ServiceSpec, String> {
        let found = self
            .revisions
            .iter()
            .rev()
            .find(|r| r.entry.revision == revision && r.sealed.is_some())
            .ok_or_else(|| format!("revision {revision} is not in the history"))?;
        let key = key.ok_or("no key to open the recorded revisions")?;
        let plain = tug_secrets::open(&key.0, found.sealed.as_deref().unwrap_or_default())
            .map_err(|e| format!("revision {revision}: {e} (was the API key changed?)"))?;
        let spec: ServiceSpec =
            serde_json::from_slice(&plain).map_err(|e| format!("revision {revision} is damaged: {e}"))?;
        if spec.revision != spec.compute_revision() {
            return Err(format!("revision {revision} does not match its recorded spec"));
        }
        Ok(spec)
    }

    /// The revision `undo` goes back to: the newest that completed before the current one.
    pub fn undo_target(&self) -> Option<String> {
        let current = self.current.as_ref()?;
        let at = self.revisions.iter().rposition(|r| &r.entry.revision == current)?;
        self.revisions[..at]
            .iter()
            .rev()
            .find(|r| r.entry.outcome == Phase::Complete && &r.entry.revision != current)
            .map(|r| r.entry.revision.clone())
    }
}

impl Records {
    /// The source copies (`.tug/revisions/<service>/<digest>`) the history's revisions run from.
    pub fn source_copies(&self) -> std::collections::HashSet<std::path::PathBuf> {
        self.services
            .values()
            .flat_map(|r| &r.revisions)
            .filter_map(|r| r.entry.spec.get("source")?.get("copy")?.as_str().map(std::path::PathBuf::from))
            .collect()
    }
}

/// The folder under the state folder that holds every revision's copy of its source.
pub const REVISIONS: &str = "revisions";
/// A copy younger than this is never pruned: `up` may have made it for a revision it is about
/// to send.
const FRESH: std::time::Duration = std::time::Duration::from_secs(600);

/// Removes the source copies no kept revision (and nothing running, `keep`) refers to: they
/// are pruned with the revisions that ran from them. Returns how many.
pub fn prune_source_copies(state_dir: &Path, keep: &std::collections::HashSet<std::path::PathBuf>) -> usize {
    let mut removed = 0;
    for service in std::fs::read_dir(state_dir.join(REVISIONS)).into_iter().flatten().flatten() {
        for copy in std::fs::read_dir(service.path()).into_iter().flatten().flatten() {
            let path = copy.path();
            let young = copy
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_none_or(|age| age < FRESH);
            if keep.contains(&path) || young {
                continue;
            }
            if remove_tree(&path).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

/// Removes a folder tree whose folders may be read-only (a revision's copy is).
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    let mut folders = vec![path.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let _ = std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o755));
        for entry in std::fs::read_dir(&folder)?.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                folders.push(entry.path());
            }
        }
    }
    std::fs::remove_dir_all(path)
}

/// The spec as JSON with every sensitive value replaced by `********`.
pub fn masked_spec(spec: &ServiceSpec) -> serde_json::Value {
    let mut json = serde_json::to_value(spec).unwrap_or_default();
    mask(&mut json);
    json
}

fn mask(json: &mut serde_json::Value) {
    match json {
        serde_json::Value::Object(map) => {
            if map.get("sensitive") == Some(&serde_json::Value::Bool(true)) && map.contains_key("value") {
                map.insert("value".into(), "********".into());
            }
            for v in map.values_mut() {
                mask(v);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(mask),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_copies_go_with_their_revisions_but_never_fresh_ones() {
        let state = std::env::temp_dir().join(format!("tug-prune-{}", std::process::id()));
        let folder = state.join(REVISIONS).join("web");
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for name in ["kept", "gone", "fresh"] {
            std::fs::create_dir_all(folder.join(name).join("sub")).unwrap();
            std::fs::write(folder.join(name).join("sub/app.py"), "x").unwrap();
            // Read-only, as copies are.
            std::fs::set_permissions(
                folder.join(name).join("sub"),
                std::os::unix::fs::PermissionsExt::from_mode(0o555),
            )
            .unwrap();
            if name != "fresh" {
                std::fs::File::open(folder.join(name)).unwrap().set_modified(old).unwrap();
            }
        }
        let keep = std::collections::HashSet::from([folder.join("kept")]);
        assert_eq!(prune_source_copies(&state, &keep), 1);
        assert!(folder.join("kept").is_dir() && folder.join("fresh").is_dir() && !folder.join("gone").exists());
        remove_tree(&state).unwrap();
        assert!(!state.exists());
    }
    use tug_proto::spec::{Strategy, Value};

    fn spec(secret: &str) -> ServiceSpec {
        let mut s = crate::tests::service("web", 1, 5);
        s.environment = vec![("DB_PASSWORD".into(), Value { value: secret.into(), sensitive: true, template: false })];
        s.revision = s.compute_revision();
        s
    }

    fn entry(revision: &str, outcome: Phase) -> HistoryEntry {
        HistoryEntry {
            revision: revision.into(),
            strategy: Strategy::Rolling,
            outcome,
            reason: None,
            from_revision: None,
            started_at: String::new(),
            finished_at: None,
            current: false,
            spec: serde_json::Value::Null,
        }
    }

    #[test]
    fn specs_are_sealed_and_shown_masked() {
        let key = SealKey::from_api_key(b"0123456789abcdef");
        let mut record = ServiceRecord::default();
        let s = spec("hunter2-secret");
        record.push(&s, entry(&s.revision, Phase::Complete), Some(&key));
        let json = serde_json::to_string(&record).unwrap();
        assert!(!json.contains("hunter2"), "{json}");
        assert!(json.contains("********"));
        assert_eq!(record.spec(&s.revision, Some(&key)).unwrap(), s);
        let other = SealKey::from_api_key(b"another key 0123");
        assert!(record.spec(&s.revision, Some(&other)).unwrap_err().contains("API key"));
        assert!(record.spec("nope", Some(&key)).is_err());
    }

    #[test]
    fn undo_goes_to_the_last_completed_revision_before_the_current_one() {
        let mut record = ServiceRecord::default();
        for (rev, outcome) in [("a", Phase::Complete), ("b", Phase::RolledBack), ("c", Phase::Complete)] {
            record.push(&spec("x"), entry(rev, outcome), None);
        }
        record.current = Some("c".into());
        assert_eq!(record.undo_target().as_deref(), Some("a"));
        record.current = Some("a".into());
        assert_eq!(record.undo_target(), None);
    }

    #[test]
    fn history_is_newest_first_and_marks_the_current_revision() {
        let mut records = Records::default();
        let r = records.service("web");
        for (rev, outcome) in [("a", Phase::Complete), ("b", Phase::Complete), ("a", Phase::Complete)] {
            r.push(&spec("x"), entry(rev, outcome), None);
        }
        r.current = Some("a".into());
        let h = records.history("web");
        let view: Vec<(&str, bool)> = h.iter().map(|e| (e.revision.as_str(), e.current)).collect();
        assert_eq!(view, [("a", true), ("b", false), ("a", false)]);
    }

    #[test]
    fn at_most_keep_revisions_are_kept() {
        let mut record = ServiceRecord::default();
        for i in 0..(KEEP + 5) {
            record.push(&spec("x"), entry(&format!("r{i}"), Phase::Complete), None);
        }
        assert_eq!(record.revisions.len(), KEEP);
        assert_eq!(record.revisions[0].entry.revision, "r5");
    }
}
