//! Compose's `ports` entries: `[HOST_IP:][PUBLISHED:]TARGET[/PROTOCOL]`, or the long form.

#[derive(Clone, Debug, PartialEq)]
pub struct PortSpec {
    /// The port the container listens on.
    pub target: u16,
    /// The host port, when one is fixed.
    pub published: Option<u16>,
    pub host_ip: Option<String>,
    pub udp: bool,
}

pub fn short(text: &str) -> Result<PortSpec, String> {
    let (rest, protocol) = match text.rsplit_once('/') {
        Some((rest, protocol)) => (rest, Some(protocol)),
        None => (text, None),
    };
    // `[::1]:8080:80`: the host address in brackets.
    let (host_ip, rest) = match rest.strip_prefix('[') {
        Some(after) => {
            let (ip, rest) = after.split_once("]:").ok_or_else(|| format!("`{text}`: `[` without `]:`"))?;
            (Some(ip.to_string()), rest)
        }
        None => (None, rest),
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let (host_ip, published, target) = match (host_ip, parts.as_slice()) {
        (None, [target]) => (None, None, *target),
        (None, [published, target]) => (None, Some(*published), *target),
        (None, [ip, published, target]) => (Some(ip.to_string()), Some(*published), *target),
        (Some(ip), [published, target]) => (Some(ip), Some(*published), *target),
        (Some(ip), [target]) => (Some(ip), None, *target),
        _ => return Err(format!("`{text}` is not [HOST_IP:][PUBLISHED:]TARGET[/PROTOCOL]")),
    };
    let published = published.filter(|p| !p.is_empty());
    build(text, target, published, host_ip, protocol)
}

pub fn long(
    target: Option<&str>,
    published: Option<&str>,
    host_ip: Option<&str>,
    protocol: Option<&str>,
) -> Result<PortSpec, String> {
    let target = target.ok_or("a port needs a `target`")?;
    build(target, target, published, host_ip.map(str::to_string), protocol)
}

fn build(
    text: &str,
    target: &str,
    published: Option<&str>,
    host_ip: Option<String>,
    protocol: Option<&str>,
) -> Result<PortSpec, String> {
    let udp = match protocol.map(str::to_ascii_lowercase).as_deref() {
        None | Some("tcp") => false,
        Some("udp") => true,
        Some(other) => return Err(format!("`{text}`: `{other}` is not a protocol (tcp or udp)")),
    };
    let target = number(text, target)?;
    let published = published.map(|p| number(text, p)).transpose()?;
    Ok(PortSpec { target, published, host_ip, udp })
}

/// A port, or the first of a range (`8000-8005`), which Compose allows and tug does not.
fn number(text: &str, port: &str) -> Result<u16, String> {
    if port.contains('-') {
        return Err(format!("`{text}`: port ranges are not carried over; tug gives a service one port"));
    }
    match port.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("`{text}`: `{port}` is not a port (1-65535)")),
        Ok(n) => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(target: u16, published: Option<u16>, ip: Option<&str>) -> PortSpec {
        PortSpec { target, published, host_ip: ip.map(str::to_string), udp: false }
    }

    #[test]
    fn short_forms() {
        assert_eq!(short("80").unwrap(), spec(80, None, None));
        assert_eq!(short("8080:80").unwrap(), spec(80, Some(8080), None));
        assert_eq!(short("127.0.0.1:8080:80").unwrap(), spec(80, Some(8080), Some("127.0.0.1")));
        assert_eq!(short("127.0.0.1::80").unwrap(), spec(80, None, Some("127.0.0.1")));
        assert_eq!(short("[::1]:6001:6001").unwrap(), spec(6001, Some(6001), Some("::1")));
        assert_eq!(short("8080:80/tcp").unwrap(), spec(80, Some(8080), None));
        assert!(short("53:53/udp").unwrap().udp);
        assert!(short("8000-8005:8000-8005").unwrap_err().contains("ranges"));
        assert!(short("http").unwrap_err().contains("not a port"));
        assert!(short("1:2:3:4").is_err());
        assert!(short("80/sctp").unwrap_err().contains("protocol"));
    }

    #[test]
    fn long_form() {
        assert_eq!(
            long(Some("80"), Some("8080"), Some("127.0.0.1"), None).unwrap(),
            spec(80, Some(8080), Some("127.0.0.1"))
        );
        assert!(long(None, Some("1"), None, None).is_err());
    }
}
