//! Ports: private ones for instances from a range, and telling who holds a taken one.

use std::collections::HashSet;
use std::net::{TcpListener, ToSocketAddrs};

use socket2::{Domain, Socket, Type};

/// Whether `port` can be bound on `host` now by tug's own listeners (which, as Rust's and most
/// servers' do, set SO_REUSEADDR: connections in TIME_WAIT on the port do not stand in the way).
pub fn is_free(host: &str, port: u16) -> bool {
    TcpListener::bind((host, port)).is_ok()
}

/// Whether any program can bind `port` on `host` now, one that binds without SO_REUSEADDR too:
/// for ports handed to instances, whose programs tug does not know. A port that the previous
/// process's closed connections still hold in TIME_WAIT (up to a minute) binds with the option
/// and fails without it ("address already in use", a crash loop for such a program).
pub fn is_free_for_any_program(host: &str, port: u16) -> bool {
    let Some(addr) = (host, port).to_socket_addrs().ok().and_then(|mut addrs| addrs.next()) else { return false };
    let Ok(socket) = Socket::new(Domain::for_address(addr), Type::STREAM, None) else { return false };
    socket.bind(&addr.into()).is_ok() && socket.listen(1).is_ok()
}

/// The first port of `range` that no instance holds and that any program can bind now.
pub fn allocate(used: &mut HashSet<u16>, host: &str, range: (u16, u16)) -> Option<u16> {
    let port = (range.0..=range.1).find(|p| !used.contains(p) && is_free_for_any_program(host, *p))?;
    used.insert(port);
    Some(port)
}

/// "port 8080 (service web) is already in use by pid 1234 (nginx)".
pub fn describe_taken(service: &str, port: u16) -> String {
    match tug_sys::procfs::port_listener(port) {
        Some((pid, program)) => {
            format!("port {port} of `{service}` is already in use by another program: pid {pid} ({program})")
        }
        None if tug_sys::procfs::time_wait_on(port) > 0 => format!(
            "port {port} of `{service}` is held by closed connections in TIME_WAIT that used it as their \
             local end (ports from 32768 up are also handed to outgoing connections); nothing listens on it \
             and the kernel frees it within a minute: run the command again then, or give `{service}` a \
             port below 32768"
        ),
        None => format!("port {port} of `{service}` is already in use by another program"),
    }
}

/// Parses `TUG_PORT_RANGE` (`20000-29999`).
pub fn parse_range(text: &str) -> Result<(u16, u16), String> {
    let (low, high) = text.split_once('-').ok_or_else(|| format!("`{text}` is not a port range like 20000-29999"))?;
    let low: u16 = low.trim().parse().map_err(|_| format!("`{low}` is not a port number (1-65535)"))?;
    let high: u16 = high.trim().parse().map_err(|_| format!("`{high}` is not a port number (1-65535)"))?;
    if low == 0 || low > high {
        return Err(format!("`{text}`: the range must go from a low port (at least 1) up to a higher one"));
    }
    Ok((low, high))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_refuse_nonsense() {
        assert_eq!(parse_range("20000-29999"), Ok((20000, 29999)));
        assert!(parse_range("3000").is_err());
        assert!(parse_range("0-10").is_err());
        assert!(parse_range("10-5").is_err());
        assert!(parse_range("1-70000").is_err());
    }

    /// A port whose last connection the server side closed (TIME_WAIT on it) binds with
    /// SO_REUSEADDR but not without: it is not handed to an instance until it binds both ways.
    #[test]
    fn a_port_held_in_time_wait_is_not_handed_out() {
        use std::io::Read;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        drop(accepted);
        let _ = client.read(&mut [0u8; 1]);
        drop(client);
        drop(listener);
        assert!(is_free("127.0.0.1", port), "with SO_REUSEADDR, as tug's routers bind");
        assert!(!is_free_for_any_program("127.0.0.1", port), "TIME_WAIT blocks a plain bind");
        let mut used = HashSet::new();
        assert_eq!(allocate(&mut used, "127.0.0.1", (port, port)), None);
    }

    #[test]
    fn allocation_skips_used_and_bound_ports() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let mut used = HashSet::new();
        assert_eq!(allocate(&mut used, "127.0.0.1", (port, port)), None);
        drop(held);
        assert_eq!(allocate(&mut used, "127.0.0.1", (port, port)), Some(port));
        assert_eq!(allocate(&mut used, "127.0.0.1", (port, port)), None, "already handed out");
    }
}
