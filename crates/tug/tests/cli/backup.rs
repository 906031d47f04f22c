//! `tug backup` as a user meets it when something is wrong, and the daemon's scheduled backups.
//! (Backing up and restoring real PostgreSQL and Redis is in `servers`.)

use std::time::{Duration, Instant};

use crate::endpoint::Receiver;
use crate::harness::Stack;

/// A process service whose data is one file, and one whose dump always fails.
fn stack_yaml(schedule: &str, notify: &str) -> String {
    format!(
        r#"
name: backups
services:
  store:
    command: ["sh", "-c", "touch data.txt; exec sleep 1000"]
    backup:
      command: cat data.txt
      restore: sh -c 'cat > data.txt'
      {schedule}
      keep: 1
  broken:
    command: ["sleep", "1000"]
    backup:
      command: 'echo "dump failed - disk full" >&2; exit 4' 
      {schedule}
  plain:
    command: ["sleep", "1000"]
{notify}
"#
    )
}

#[test]
fn backup_says_what_is_wrong_and_leaves_nothing_behind() {
    let stack = Stack::new("backup-errors", &stack_yaml("", ""));
    // Down: the dumps come from running instances.
    let run = stack.tug(&["backup"]);
    assert_ne!(run.code, 0, "{}", run.all());
    assert!(run.stderr.contains("nothing is running for this stack"), "{}", run.all());
    stack.up();
    for (service, says) in [("plain", "`plain` has no `backup`"), ("nope", "no service named `nope`")] {
        let run = stack.tug(&["backup", service]);
        assert_ne!(run.code, 0, "{}", run.all());
        assert!(run.stderr.contains(says), "{}", run.all());
    }
    // A dump that fails: its exit code and last words, and no file at --out.
    let out = stack.path().join("failed.tug-backup");
    let run = stack.tug(&["backup", "--out", out.to_str().unwrap(), "broken"]);
    assert_ne!(run.code, 0, "{}", run.all());
    assert!(
        run.stderr.contains("`broken`: its backup command exited with 4: dump failed - disk full"),
        "{}",
        run.all()
    );
    assert!(!out.exists(), "a failed backup left {}", out.display());
    let leftovers: Vec<_> = std::fs::read_dir(stack.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(
        !leftovers.iter().any(|n| n.to_string_lossy().contains("partial")),
        "a partial archive was left: {leftovers:?}"
    );
    // The one that works, into the default place.
    std::fs::write(stack.path().join("data.txt"), "the data\n").unwrap();
    let run = stack.tug(&["backup", "store"]);
    assert_eq!(run.code, 0, "{}", run.all());
    let written = std::path::PathBuf::from(run.stdout.trim());
    assert!(written.starts_with(stack.path().join("backups")), "{}", run.all());
    assert!(written.file_name().unwrap().to_string_lossy().starts_with("backups-2"), "{}", written.display());
    // Restore refuses a running stack, and a file that is not an archive.
    let run = stack.tug(&["restore", written.to_str().unwrap()]);
    assert_ne!(run.code, 0, "{}", run.all());
    assert!(run.stderr.contains("the stack is running"), "{}", run.all());
    let not_archive = stack.dir.write("notes.txt", "hello\n");
    let run = stack.tug(&["restore", not_archive.to_str().unwrap()]);
    assert!(run.stderr.contains("it is not a tug backup archive"), "{}", run.all());
    // A restore puts the data back, in a stack that is down.
    assert_eq!(stack.tug(&["down"]).code, 0);
    std::fs::write(stack.path().join("data.txt"), "changed since\n").unwrap();
    let run = stack.tug(&["restore", written.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(std::fs::read_to_string(stack.path().join("data.txt")).unwrap(), "the data\n");
    assert_eq!(stack.tug(&["down"]).code, 0);
}

/// Every minute: the store's archive lands in `backups/` (one kept), and the broken service's
/// failure reaches the webhook as `backup_failed`.
#[test]
fn scheduled_backups_are_written_and_a_failure_is_posted() {
    let receiver = Receiver::start();
    let notify = format!("notify:\n  - url: http://127.0.0.1:{}/hooks\n    events: [backup_failed]", receiver.port);
    let stack = Stack::new("backup-schedule", &stack_yaml(r#"schedule: "* * * * *""#, &notify));
    std::fs::write(stack.path().join("data.txt"), "scheduled\n").unwrap();
    stack.up();
    let backups = stack.path().join("backups");
    let archives = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&backups)
            .map(|d| d.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
            .unwrap_or_default();
        names.sort();
        names
    };
    let deadline = Instant::now() + Duration::from_secs(80);
    loop {
        let delivered = !receiver.got.lock().unwrap().is_empty();
        if delivered && archives().iter().any(|n| n.starts_with("backups-store-")) {
            break;
        }
        assert!(Instant::now() < deadline, "no scheduled backup within 80 s: {:?}; {:?}", archives(), receiver.got);
        std::thread::sleep(Duration::from_millis(250));
    }
    let names = archives();
    assert!(names.iter().all(|n| n.starts_with("backups-store-") && n.ends_with(".tug-backup")), "{names:?}");
    let got = receiver.got.lock().unwrap().clone();
    let (headers, body, _) = &got[0];
    assert!(headers.iter().any(|(k, v)| k == "x-tug-event" && v == "backup_failed"), "{headers:?}");
    assert!(body.contains("\"service\":\"broken\"") && body.contains("exited with 4"), "{body}");
    let log = std::fs::read_to_string(stack.state_dir().join("daemon.log")).unwrap_or_default();
    assert!(log.contains("scheduled backup failed"), "{log}");
    assert_eq!(stack.tug(&["down"]).code, 0);
}
