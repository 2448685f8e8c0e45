//! Where the client commands go, and from where `sub` starts: the `--url` of the server's
//! WebSocket endpoint, checked once, with the HTTP API's address derived from it
//! (`ws://h:p/ws` → `http://h:p/api/...`, `wss` → `https`; a path before `/ws`, as behind
//! a proxy, is kept), the `--since OFFSET:EPOCH` position, and channel names. All are
//! parsed by clap, so bad input is a usage error (exit 2) before anything connects.

use std::fmt;
use std::str::FromStr;

use tokio_tungstenite::tungstenite::http::Uri;

use crate::channel::ChannelName;

/// The default `--url`: a node on this machine with the default `server.bind`.
pub const DEFAULT_URL: &str = "ws://127.0.0.1:8080/ws";

/// A server's WebSocket URL, and the base of its HTTP API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    ws: String,
    api_base: String,
}

impl Endpoint {
    /// The WebSocket URL, as given.
    pub fn ws_url(&self) -> &str {
        &self.ws
    }

    /// The URL the client connects to: the one given, asking for batched frames
    /// (`batch=true`, several frames per message) unless it already says.
    pub fn connect_url(&self) -> String {
        let query = self.ws.split_once('?').map_or("", |(_, q)| q);
        if query.split('&').any(|p| p.starts_with("batch=")) {
            return self.ws.clone();
        }
        let sep = if self.ws.contains('?') { '&' } else { '?' };
        format!("{}{sep}batch=true", self.ws)
    }

    /// The HTTP API's URL for `path` (e.g. `/api/publish`).
    pub fn api_url(&self, path: &str) -> String {
        format!("{}{path}", self.api_base)
    }
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(url: &str) -> Result<Endpoint, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL ({e}); expected ws://HOST:PORT/ws"))?;
        let http = match uri.scheme_str() {
            Some("ws") => "http",
            Some("wss") => "https",
            _ => return Err(format!("{url:?} must start with ws:// or wss://")),
        };
        let Some(authority) = uri.authority().filter(|a| !a.host().is_empty()) else {
            return Err(format!("{url:?} has no host"));
        };
        // The API lives beside the WebSocket endpoint: drop the path's last segment.
        let path = uri.path();
        let prefix = path.rsplit_once('/').map_or("", |(before, _)| before);
        Ok(Endpoint {
            ws: url.to_string(),
            api_base: format!("{http}://{authority}{prefix}"),
        })
    }
}

/// A channel name given on the command line, checked as the server would
/// ([`ChannelName::parse`]) so that a typo is a usage error, not a refused subscribe.
pub fn channel_name(name: &str) -> Result<String, String> {
    ChannelName::parse(name)
        .map(|c| c.as_str().to_string())
        .map_err(|e| format!("{name:?}: {e}"))
}

/// A token given on the command line: it travels in an HTTP header, so visible ASCII only
/// (a JWT is base64url and dots).
pub fn token_value(token: &str) -> Result<String, String> {
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("a token is visible ASCII characters with no spaces (a JWT)".into());
    }
    Ok(token.to_string())
}

/// A channel position: the last `offset` seen in `epoch`; `--since OFFSET:EPOCH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The offset of the last publication seen (0: none yet).
    pub offset: u64,
    /// The epoch the offset counts in.
    pub epoch: String,
}

impl FromStr for Position {
    type Err = String;

    fn from_str(s: &str) -> Result<Position, String> {
        let bad = || {
            format!(
                "{s:?} is not OFFSET:EPOCH (the offset of the last message seen and its \
                 epoch, as `sub` reports them, e.g. 42:0d1f6c3a)"
            )
        };
        let (offset, epoch) = s.split_once(':').ok_or_else(bad)?;
        let offset = offset.parse().map_err(|_| bad())?;
        if epoch.is_empty() {
            return Err(bad());
        }
        Ok(Position {
            offset,
            epoch: epoch.to_string(),
        })
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.offset, self.epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_address_follows_the_websocket_url() {
        let e: Endpoint = "ws://127.0.0.1:8080/ws".parse().unwrap();
        assert_eq!(
            e.api_url("/api/publish"),
            "http://127.0.0.1:8080/api/publish"
        );
        let e: Endpoint = "wss://example.com/realtime/ws?batch=true".parse().unwrap();
        assert_eq!(e.ws_url(), "wss://example.com/realtime/ws?batch=true");
        assert_eq!(e.connect_url(), e.ws_url());
        assert_eq!(
            e.api_url("/api/publish"),
            "https://example.com/realtime/api/publish"
        );
        let e: Endpoint = "ws://h:1/ws?x=1&batch=false".parse().unwrap();
        assert_eq!(e.connect_url(), "ws://h:1/ws?x=1&batch=false");
        let e: Endpoint = "ws://h:1/ws".parse().unwrap();
        assert_eq!(e.connect_url(), "ws://h:1/ws?batch=true");
        let e: Endpoint = "ws://h:1/ws?x=1".parse().unwrap();
        assert_eq!(e.connect_url(), "ws://h:1/ws?x=1&batch=true");
        let e: Endpoint = "ws://h:1".parse().unwrap();
        assert_eq!(e.api_url("/api/publish"), "http://h:1/api/publish");
        for bad in ["http://h/ws", "h:8080/ws", "ws:///ws", "", "ws://h h/ws"] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
    }

    #[test]
    fn since_is_offset_colon_epoch() {
        let p: Position = "42:ab:c".parse().unwrap();
        assert_eq!((p.offset, p.epoch.as_str()), (42, "ab:c"));
        assert_eq!(p.to_string(), "42:ab:c");
        for bad in ["42", "42:", ":e", "-1:e", "x:e", ""] {
            let e = bad.parse::<Position>().unwrap_err();
            assert!(e.contains("OFFSET:EPOCH"), "{e}");
        }
    }
}
