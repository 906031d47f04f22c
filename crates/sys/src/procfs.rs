//! Reading `/proc`: process status, process groups, trees, environment, listening sockets.
//!
//! Every function tolerates processes that exit while it runs: a process that vanishes mid-scan
//! (`ENOENT`, `ESRCH`) or that cannot be read (`EACCES`) is skipped. Scans over groups and trees
//! ([`group_members`], [`children`], [`descendants`], [`group_usage`]) leave out zombies (state
//! `Z` or `X`): they have already exited and only wait to be reaped.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::Path;

/// The fields of `/proc/<pid>/stat` the supervisor uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcStat {
    /// Process id (field 1).
    pub pid: i32,
    /// Parent process id (field 4).
    pub ppid: i32,
    /// Process group id (field 5).
    pub pgid: i32,
    /// Session id (field 6).
    pub sid: i32,
    /// State letter (field 3): `R`, `S`, `D`, `Z`, `T`, ...
    pub state: char,
    /// The command name (field 2, without parentheses; at most 15 bytes, lossily decoded).
    pub comm: String,
    /// Start time in clock ticks after boot (field 22); with the pid, identifies a process across pid reuse.
    pub start_time: u64,
    /// User-mode CPU time in clock ticks (field 14).
    pub utime: u64,
    /// Kernel-mode CPU time in clock ticks (field 15).
    pub stime: u64,
    /// Resident set size in pages (field 24).
    pub rss_pages: i64,
}

impl ProcStat {
    /// Whether the process has exited and waits to be reaped (state `Z` or `X`).
    pub fn is_zombie(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// CPU time and memory summed over processes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// User plus system CPU time, in clock ticks (see [`clock_ticks_per_second`]).
    pub cpu_ticks: u64,
    /// Resident memory in bytes.
    pub rss_bytes: u64,
    /// How many live processes were counted.
    pub processes: usize,
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("malformed /proc stat line: {what}"))
}

/// Parses the content of a `/proc/<pid>/stat` file.
///
/// The command name may contain spaces and `)`, so it is taken as everything between the first
/// `(` and the last `)`.
pub fn parse_stat(line: &str) -> io::Result<ProcStat> {
    let open = line.find('(').ok_or_else(|| invalid("no '('"))?;
    let close = line.rfind(')').ok_or_else(|| invalid("no ')'"))?;
    if close < open {
        return Err(invalid("')' before '('"));
    }
    let pid = line[..open].trim().parse().map_err(|_| invalid("bad pid"))?;
    let comm = line[open + 1..close].to_string();
    // Fields from 3 on; index i holds field i + 3.
    let rest: Vec<&str> = line[close + 1..].split_ascii_whitespace().collect();
    let field = |n: usize| rest.get(n - 3).copied().ok_or_else(|| invalid("too few fields"));
    let num = |n: usize| -> io::Result<i64> { field(n)?.parse().map_err(|_| invalid("bad number")) };
    let unsigned = |n: usize| -> io::Result<u64> { field(n)?.parse().map_err(|_| invalid("bad number")) };
    let int = |n: usize| -> io::Result<i32> { field(n)?.parse().map_err(|_| invalid("bad number")) };
    let mut state_chars = field(3)?.chars();
    let state = match (state_chars.next(), state_chars.next()) {
        (Some(c), None) => c,
        _ => return Err(invalid("bad state")),
    };
    Ok(ProcStat {
        pid,
        ppid: int(4)?,
        pgid: int(5)?,
        sid: int(6)?,
        state,
        comm,
        start_time: unsigned(22)?,
        utime: unsigned(14)?,
        stime: unsigned(15)?,
        rss_pages: num(24)?,
    })
}

/// Reads `/proc/<pid>/stat`. Fails with `NotFound` (or `ESRCH`) when the process is gone.
pub fn stat(pid: i32) -> io::Result<ProcStat> {
    if pid <= 0 {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    let bytes = fs::read(format!("/proc/{pid}/stat"))?;
    parse_stat(&String::from_utf8_lossy(&bytes))
}

/// The ids of all processes: the numeric entries of `/proc`, in ascending order.
pub fn pids() -> io::Result<Vec<i32>> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        if let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()).filter(|&p| p > 0) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    Ok(pids)
}

/// The status of every live (non-zombie) process that can be read.
fn live_processes() -> Vec<ProcStat> {
    pids().unwrap_or_default().into_iter().filter_map(|pid| stat(pid).ok()).filter(|s| !s.is_zombie()).collect()
}

/// Live (non-zombie) processes whose process group id is `pgid`, in ascending pid order.
pub fn group_members(pgid: i32) -> Vec<i32> {
    if pgid <= 0 {
        return Vec::new();
    }
    live_processes().into_iter().filter(|s| s.pgid == pgid).map(|s| s.pid).collect()
}

/// Live (non-zombie) processes whose parent is `pid`, in ascending pid order.
pub fn children(pid: i32) -> Vec<i32> {
    if pid <= 0 {
        return Vec::new();
    }
    live_processes().into_iter().filter(|s| s.ppid == pid).map(|s| s.pid).collect()
}

/// Live (non-zombie) children, grandchildren, ... of `pid` (not `pid` itself), parents before children.
pub fn descendants(pid: i32) -> Vec<i32> {
    if pid <= 0 {
        return Vec::new();
    }
    let mut by_parent: HashMap<i32, Vec<i32>> = HashMap::new();
    for s in live_processes() {
        by_parent.entry(s.ppid).or_default().push(s.pid);
    }
    let mut seen = HashSet::from([pid]);
    let mut out = Vec::new();
    let mut next = 0;
    let mut queue = vec![pid];
    while let Some(&parent) = queue.get(next) {
        next += 1;
        for &child in by_parent.get(&parent).map(Vec::as_slice).unwrap_or_default() {
            if seen.insert(child) {
                out.push(child);
                queue.push(child);
            }
        }
    }
    out
}

/// Whether `/proc/<pid>/environ` holds exactly the entry `name=value`. False when it cannot be read.
pub fn environ_contains(pid: i32, name: &str, value: &str) -> bool {
    if pid <= 0 {
        return false;
    }
    let Ok(env) = fs::read(format!("/proc/{pid}/environ")) else { return false };
    let wanted = format!("{name}={value}");
    env.split(|&b| b == 0).any(|entry| entry == wanted.as_bytes())
}

/// The process's arguments joined with spaces (lossily decoded), for messages.
/// None when the process is gone, unreadable, or has no arguments (kernel threads, zombies).
pub fn cmdline(pid: i32) -> Option<String> {
    if pid <= 0 {
        return None;
    }
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<_> = raw.split(|&b| b == 0).filter(|a| !a.is_empty()).map(String::from_utf8_lossy).collect();
    if args.is_empty() { None } else { Some(args.join(" ")) }
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), the unit of [`ProcStat`]'s times.
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a configuration value; it has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// The memory page size in bytes (`sysconf(_SC_PAGESIZE)`), the unit of [`ProcStat::rss_pages`].
pub fn page_size() -> u64 {
    // SAFETY: sysconf only reads a configuration value; it has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}

/// The TCP sockets whose local port is `port`, as (state, inode), from the content of
/// `/proc/net/tcp` or `/proc/net/tcp6`. The state is the kernel's number: 0x0A listening,
/// 0x06 TIME_WAIT, and so on.
fn sockets_on(table: &str, port: u16) -> impl Iterator<Item = (u8, u64)> + '_ {
    table.lines().skip(1).filter_map(move |line| {
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
        let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
        let (_, local_port) = local.rsplit_once(':')?;
        if u16::from_str_radix(local_port, 16).ok()? != port {
            return None;
        }
        Some((u8::from_str_radix(state, 16).ok()?, inode.parse::<u64>().ok()?))
    })
}

/// The kernel's number for a listening TCP socket, in `/proc/net/tcp`.
const LISTEN: u8 = 0x0A;
/// And for a closed connection waiting out TIME_WAIT (no process holds it).
const TIME_WAIT: u8 = 0x06;

/// Socket inodes of the TCP sockets listening on `port`, from the content of `/proc/net/tcp` or
/// `/proc/net/tcp6`.
pub fn parse_listening_inodes(table: &str, port: u16) -> Vec<u64> {
    sockets_on(table, port).filter(|&(state, inode)| state == LISTEN && inode != 0).map(|(_, inode)| inode).collect()
}

/// How many closed connections in TIME_WAIT have `port` as their local port, from the content of
/// `/proc/net/tcp` or `/proc/net/tcp6`.
pub fn parse_time_wait(table: &str, port: u16) -> usize {
    sockets_on(table, port).filter(|&(state, _)| state == TIME_WAIT).count()
}

/// Closed connections in TIME_WAIT whose local end is `port` (IPv4 and IPv6): such a port cannot
/// be bound by a socket that conflicts with them for up to a minute, though nothing listens.
pub fn time_wait_on(port: u16) -> usize {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| fs::read(Path::new(table)).ok())
        .map(|content| parse_time_wait(&String::from_utf8_lossy(&content), port))
        .sum()
}

/// Whether one of `pid`'s open file descriptors is one of the sockets `targets` (as `socket:[inode]`).
fn holds_socket(pid: i32, targets: &[String]) -> bool {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.filter_map(Result::ok)
        .filter_map(|fd| fs::read_link(fd.path()).ok())
        .any(|link| link.to_str().is_some_and(|l| targets.iter().any(|t| t == l)))
}

/// Who listens on a TCP port (IPv4 or IPv6, any address): the lowest pid holding a listening socket
/// on `port`, with its command line (or its command name when the command line is empty).
/// None when no listener is found or its owner cannot be seen (other users' processes without
/// privileges, other network namespaces).
pub fn port_listener(port: u16) -> Option<(i32, String)> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(content) = fs::read(Path::new(table)) {
            inodes.extend(parse_listening_inodes(&String::from_utf8_lossy(&content), port));
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let targets: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let pid = pids().ok()?.into_iter().find(|&pid| holds_socket(pid, &targets))?;
    let name = cmdline(pid).or_else(|| stat(pid).ok().map(|s| s.comm)).unwrap_or_else(|| format!("pid {pid}"));
    Some((pid, name))
}

/// CPU time and resident memory summed over the live members of process group `pgid`.
pub fn group_usage(pgid: i32) -> Usage {
    if pgid <= 0 {
        return Usage::default();
    }
    let page = page_size();
    live_processes().into_iter().filter(|s| s.pgid == pgid).fold(Usage::default(), |u, s| Usage {
        cpu_ticks: u.cpu_ticks.saturating_add(s.utime).saturating_add(s.stime),
        rss_bytes: u.rss_bytes.saturating_add(u64::try_from(s.rss_pages).unwrap_or(0).saturating_mul(page)),
        processes: u.processes + 1,
    })
}

/// [`group_usage`] for many groups at once, with one scan of `/proc`.
pub fn groups_usage(pgids: &[i32]) -> std::collections::HashMap<i32, Usage> {
    groups_usage_except(pgids, None)
}

/// [`groups_usage`], leaving out the processes named `except` (their `comm`): a supervisor's
/// own helper in each group is not the workload it measures.
pub fn groups_usage_except(pgids: &[i32], except: Option<&str>) -> std::collections::HashMap<i32, Usage> {
    let page = page_size();
    let mut usage: std::collections::HashMap<i32, Usage> = std::collections::HashMap::new();
    for s in live_processes() {
        if s.pgid > 0 && pgids.contains(&s.pgid) && except != Some(s.comm.as_str()) {
            let u = usage.entry(s.pgid).or_default();
            u.cpu_ticks = u.cpu_ticks.saturating_add(s.utime).saturating_add(s.stime);
            u.rss_bytes = u.rss_bytes.saturating_add(u64::try_from(s.rss_pages).unwrap_or(0).saturating_mul(page));
            u.processes += 1;
        }
    }
    usage
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command, Stdio};
    use std::thread::sleep;
    use std::time::{Duration, Instant};

    fn my_pid() -> i32 {
        std::process::id() as i32
    }

    /// Spawns `program args` as the leader of a new process group.
    fn spawn_leader(program: &str, args: &[&str]) -> Child {
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        // SAFETY: setpgid is async-signal-safe and the closure neither allocates nor takes locks.
        unsafe {
            cmd.pre_exec(|| if libc::setpgid(0, 0) == 0 { Ok(()) } else { Err(io::Error::last_os_error()) });
        }
        cmd.spawn().expect("spawn")
    }

    /// Polls `f` until it returns true, for up to five seconds.
    fn eventually(mut f: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if f() {
                return true;
            }
            sleep(Duration::from_millis(20));
        }
        f()
    }

    fn kill(pid: i32) {
        // SAFETY: kill has no memory-safety preconditions; the pid is a child this test spawned.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }

    #[test]
    fn parses_plain_stat_line() {
        let line = "1234 (sleep) S 1000 1234 900 34816 1234 4194304 100 0 0 0 7 3 0 0 20 0 1 0 539604 \
                    2265088 132 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        let s = parse_stat(line).unwrap();
        assert_eq!(
            s,
            ProcStat {
                pid: 1234,
                ppid: 1000,
                pgid: 1234,
                sid: 900,
                state: 'S',
                comm: "sleep".into(),
                start_time: 539604,
                utime: 7,
                stime: 3,
                rss_pages: 132,
            }
        );
    }

    #[test]
    fn parses_comm_with_spaces_and_parentheses() {
        let line = "77 (a) b) (c ) d) Z 1 77 77 0 -1 4227084 96 0 1 0 11 22 0 0 20 0 1 0 99 0 -5 18446744073709551615";
        let s = parse_stat(line).unwrap();
        assert_eq!((s.pid, s.comm.as_str(), s.state, s.ppid), (77, "a) b) (c ) d", 'Z', 1));
        assert_eq!((s.utime, s.stime, s.start_time, s.rss_pages), (11, 22, 99, -5));
        assert!(s.is_zombie());
        let s = parse_stat("5 () R 1 5 5 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 1 0 0").unwrap();
        assert_eq!(s.comm, "");
    }

    #[test]
    fn rejects_malformed_stat_lines() {
        for bad in [
            "",
            "1234",
            "1234 (sleep",
            "1234 sleep) S 1",
            ") 1 (x",
            "x (sleep) S 1 2 3",
            "1 (sleep) S 1 2 3 0 -1 0 0 0 0 0 7 3 0 0 20 0 1 0 5 0",
            "1 (sleep) SS 1 2 3 0 -1 0 0 0 0 0 7 3 0 0 20 0 1 0 5 0 0",
            "1 (sleep) S 1 2 3 0 -1 0 0 0 0 0 x 3 0 0 20 0 1 0 5 0 0",
            "1 (\u{fffd}\u{0}) S -",
        ] {
            assert!(parse_stat(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn stat_of_self() {
        let s = stat(my_pid()).unwrap();
        assert_eq!(s.pid, my_pid());
        // SAFETY: getppid/getpgrp/getsid only read ids of the calling process.
        let (ppid, pgid, sid) = unsafe { (libc::getppid(), libc::getpgrp(), libc::getsid(0)) };
        assert_eq!((s.ppid, s.pgid, s.sid), (ppid, pgid, sid));
        assert!(matches!(s.state, 'R' | 'S'), "{}", s.state); // the main thread's state
        assert!(!s.comm.is_empty() && s.comm.len() <= 15, "{:?}", s.comm);
        assert!(s.rss_pages > 0);
        assert!(s.start_time > 0);
        assert_eq!(stat(my_pid()).unwrap().start_time, s.start_time, "start time is stable");
        assert!(pids().unwrap().contains(&my_pid()));
        assert!(cmdline(my_pid()).is_some());
        assert!(stat(0).is_err() && stat(-1).is_err());
    }

    #[test]
    fn missing_process_is_an_error_or_nothing() {
        // Pid numbers above pid_max never exist.
        let gone = i32::MAX;
        assert_eq!(stat(gone).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert!(cmdline(gone).is_none());
        assert!(!environ_contains(gone, "PATH", ""));
        assert!(children(gone).is_empty() && descendants(gone).is_empty() && group_members(gone).is_empty());
        assert_eq!(group_usage(gone), Usage::default());
        assert!(group_members(0).is_empty() && children(-3).is_empty() && cmdline(0).is_none());
    }

    #[test]
    fn sysconf_values() {
        assert!((10..=10_000).contains(&clock_ticks_per_second()));
        assert!(page_size().is_power_of_two() && page_size() >= 4096);
    }

    #[test]
    fn spawned_sleep_in_its_own_group() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30").env("TUG_SYS_TEST_MARK", "group=1 x").stdin(Stdio::null());
        // SAFETY: setpgid is async-signal-safe and the closure neither allocates nor takes locks.
        unsafe {
            cmd.pre_exec(|| if libc::setpgid(0, 0) == 0 { Ok(()) } else { Err(io::Error::last_os_error()) });
        }
        let mut child = cmd.spawn().unwrap();
        let pid = child.id() as i32;
        // The child execs sleep after fork; wait until /proc shows the new image.
        assert!(eventually(|| stat(pid).is_ok_and(|s| s.comm == "sleep")));
        let s = stat(pid).unwrap();
        assert_eq!((s.pid, s.ppid, s.pgid), (pid, my_pid(), pid));
        assert!(s.start_time >= stat(my_pid()).unwrap().start_time);
        sleep(Duration::from_millis(30));
        assert_eq!(stat(pid).unwrap().start_time, s.start_time, "start time is stable");
        assert_eq!(group_members(pid), vec![pid]);
        assert!(children(my_pid()).contains(&pid));
        assert!(descendants(my_pid()).contains(&pid));
        assert_eq!(cmdline(pid).as_deref(), Some("sleep 30"));
        assert!(environ_contains(pid, "TUG_SYS_TEST_MARK", "group=1 x"));
        assert!(!environ_contains(pid, "TUG_SYS_TEST_MARK", "group=1"));
        assert!(!environ_contains(pid, "TUG_SYS_TEST", "MARK=group=1 x"));
        let usage = group_usage(pid);
        assert_eq!(usage.processes, 1);
        assert!(usage.rss_bytes > 0);

        kill(pid);
        child.wait().unwrap();
        assert!(stat(pid).is_err());
        assert!(group_members(pid).is_empty());
        assert_eq!(group_usage(pid).processes, 0);
    }

    #[test]
    fn shell_with_background_children() {
        let mut child = spawn_leader("sh", &["-c", "sleep 30 & sleep 30 & wait"]);
        let sh = child.id() as i32;
        assert!(eventually(|| descendants(sh).len() == 2), "descendants: {:?}", descendants(sh));
        let sleeps = descendants(sh);
        for &p in &sleeps {
            let s = stat(p).unwrap();
            assert_eq!((s.ppid, s.pgid), (sh, sh), "background job stays in the group");
        }
        assert_eq!(children(sh), sleeps);
        let mut members = sleeps.clone();
        members.push(sh);
        members.sort_unstable();
        assert_eq!(group_members(sh), members);
        assert_eq!(group_usage(sh).processes, 3);
        let mine = descendants(my_pid());
        assert!(members.iter().all(|p| mine.contains(p)), "{mine:?} should hold {members:?}");
        let sh_at = mine.iter().position(|&p| p == sh).unwrap();
        assert!(sleeps.iter().all(|s| mine.iter().position(|p| p == s).unwrap() > sh_at), "parents first");

        // Kill the sleeps first: the shell reaps them (nothing is orphaned), then exits.
        for &p in &sleeps {
            kill(p);
        }
        assert!(child.wait().unwrap().success());
        assert!(group_members(sh).is_empty());
    }

    #[test]
    fn listening_socket_table() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0\n\
           1: 0100007F:1F90 0100007F:C000 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0\n\
           2: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1 0\n\
           3: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 0 1 0\n\
           4: garbage\n";
        assert_eq!(parse_listening_inodes(table, 8080), vec![4242]);
        assert_eq!(parse_listening_inodes(table, 80), vec![4444]);
        assert!(parse_listening_inodes(table, 81).is_empty());
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 99 1 0\n";
        assert_eq!(parse_listening_inodes(v6, 8080), vec![99]);
        assert!(parse_listening_inodes("", 8080).is_empty());
        let waiting = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 0100007F:9C40 0100007F:1F90 06 00000000:00000000 03:00000B40 00000000     0        0 0 3 0\n\
           1: 0100007F:9C40 0100007F:1F91 06 00000000:00000000 03:00000B40 00000000     0        0 0 3 0\n\
           2: 0100007F:9C41 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 77 1 0\n";
        assert_eq!(parse_time_wait(waiting, 40000), 2);
        assert_eq!(parse_time_wait(waiting, 40001), 0, "established, not waiting");
        assert!(parse_listening_inodes(waiting, 40000).is_empty());
    }

    #[test]
    fn port_listener_finds_this_process() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (pid, name) = port_listener(port).expect("listener found");
        assert_eq!(pid, my_pid());
        assert!(!name.is_empty());
        drop(listener);
        assert_eq!(port_listener(port), None);

        match TcpListener::bind("[::1]:0") {
            Ok(v6) => {
                let port = v6.local_addr().unwrap().port();
                assert_eq!(port_listener(port).map(|(p, _)| p), Some(my_pid()));
            }
            Err(e) => eprintln!("skipping the IPv6 listener check: cannot bind [::1]: {e}"),
        }
    }
}
