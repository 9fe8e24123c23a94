//! `mqtt://` and `mqtts://` URLs: the broker's address, whether to use TLS,
//! and the credentials they may carry.

/// What an MQTT URL says.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// Host name or address, without brackets for IPv6.
    pub host: String,
    pub port: u16,
    /// `mqtts://`.
    pub tls: bool,
    /// From `user@` or `user:password@`, percent-decoded.
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Parses `mqtt[s]://[user[:password]@]host[:port][/]`; the reason it
/// gives for a refusal never quotes the password.
pub(crate) fn parse(url: &str) -> Result<Endpoint, String> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtt://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("mqtts://") {
        (true, rest)
    } else {
        return Err("expected mqtt://host[:port] or mqtts://host[:port]".into());
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if !(path.is_empty() || path == "/") {
        return Err(format!(
            "MQTT has no path or virtual host, but the url has {path:?}: set the topic instead"
        ));
    }
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(info) => match info.split_once(':') {
            Some((user, password)) => (
                Some(decode(user).map_err(|e| format!("user name: {e}"))?),
                // Not quoted: it is the password.
                Some(decode(password).map_err(|_| "password: bad %-escape".to_string())?),
            ),
            None => (
                Some(decode(info).map_err(|e| format!("user name: {e}"))?),
                None,
            ),
        },
    };
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or("an IPv6 address needs its closing `]`")?;
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or("expected `:port` after `]`")?,
            ),
        };
        (host, port)
    } else {
        match hostport.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    let port = match port {
        None => default_port,
        Some(port) => match port.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => return Err(format!("port {port:?} is not a number from 1 to 65535")),
        },
    };
    Ok(Endpoint {
        host: host.to_string(),
        port,
        tls,
        username,
        password,
    })
}

/// Decodes `%XX` escapes, as URLs write `@`, `:` and `/` in credentials.
fn decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad %-escape in {text:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{text:?} is not UTF-8 once decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_tls_and_credentials() {
        let plain = parse("mqtt://broker").unwrap();
        assert_eq!(
            (plain.host.as_str(), plain.port, plain.tls),
            ("broker", 1883, false)
        );
        assert_eq!(plain.username, None);
        let tls = parse("mqtts://skor:p%40ss%3Aw@broker.example:8884/").unwrap();
        assert_eq!(
            (tls.host.as_str(), tls.port, tls.tls),
            ("broker.example", 8884, true)
        );
        assert_eq!(tls.username.as_deref(), Some("skor"));
        assert_eq!(tls.password.as_deref(), Some("p@ss:w"));
        assert!(!format!("{tls:?}").contains("p@ss"));
        let v6 = parse("mqtt://[::1]:1884").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 1884));
        assert_eq!(parse("mqtts://[::1]").unwrap().port, 8883);
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        assert_eq!(
            parse("tcp://broker:1883").unwrap_err(),
            "expected mqtt://host[:port] or mqtts://host[:port]"
        );
        assert_eq!(
            parse("mqtt://broker:http").unwrap_err(),
            "port \"http\" is not a number from 1 to 65535"
        );
        assert!(parse("mqtt://broker/skor").unwrap_err().contains("no path"));
        assert_eq!(parse("mqtt://u:p@").unwrap_err(), "no host");
        let refused = parse("mqtt://u:s3cret%zz@h").unwrap_err();
        assert!(!refused.contains("s3cret"), "{refused}");
    }
}
