//! `Group::kill_all` kills processes that left the instance's process group and session, and
//! orphans. A test binary of its own: it makes the test process a child subreaper, so that it can
//! reap the orphans it creates.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use tug_sys::cgroup::{Limits, Support, detect};
use tug_sys::procfs;

#[test]
fn kill_all_reaches_escaped_and_orphaned_processes() {
    let support = detect();
    if let Support::Unavailable { reason } = &support {
        assert!(!reason.trim().is_empty());
        eprintln!("skipping: cgroups are unavailable here: {reason}");
        return;
    }
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only changes an attribute of this process.
    assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }, 0);

    let scope = format!("test-{}-tree", std::process::id());
    let group = Arc::new(support.create(&scope, "tree", &Limits::default()).expect("create"));
    let mut cmd = Command::new("sh");
    // An orphan (its parent subshell exits at once), one sleep in a session of its own, one plain.
    cmd.args(["-c", "(sleep 31 &); setsid sleep 32 & sleep 33 & wait"]).stdin(Stdio::null());
    let joiner = Arc::clone(&group);
    // SAFETY: setpgid and join_in_child (write(2) on pre-opened descriptors) are async-signal-safe
    // and nothing here allocates or locks.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setpgid(0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            joiner.join_in_child()
        })
    };
    let mut sh = cmd.spawn().unwrap();
    drop(cmd);
    let sh_pid = sh.id() as i32;
    let sleeping = |pids: &[i32]| {
        pids.iter().filter(|&&p| procfs::stat(p).is_ok_and(|s| s.comm == "sleep" && !s.is_zombie())).count()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while sleeping(&group.pids()) < 3 && Instant::now() < deadline {
        sleep(Duration::from_millis(20));
    }
    let pids = group.pids();
    assert!(pids.contains(&sh_pid));
    assert_eq!(sleeping(&pids), 3, "{pids:?}");
    // The process group alone misses the setsid'd sleep; the cgroup has it.
    let members = procfs::group_members(sh_pid);
    assert!(pids.iter().any(|p| !members.contains(p)), "group {members:?}, cgroup {pids:?}");

    group.kill_all();
    assert!(sh.wait().unwrap().code().is_none(), "sh was killed");
    for &pid in pids.iter().filter(|&&p| p != sh_pid) {
        // Orphans are ours to reap (subreaper); the rest sh reaped before it died (ECHILD).
        let mut status = 0;
        // SAFETY: waitpid writes only to `status`; `pid` is a process of this test's tree.
        unsafe { libc::waitpid(pid, &mut status, 0) };
    }
    assert!(group.pids().is_empty());
    let group = Arc::try_unwrap(group).expect("no other owner left");
    let dirs: Vec<_> = group.paths().iter().map(|p| p.to_path_buf()).collect();
    group.remove().expect("remove");
    assert!(dirs.iter().all(|d| !d.exists() && !d.parent().unwrap().exists()));
}
