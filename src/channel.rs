//! Channel names: the validated [`ChannelName`] newtype, its namespace, and the `channels` /
//! `publish` claim patterns that grant access to it. Used by the session (to check commands),
//! the API (to check bodies) and the engines (which only ever see valid names).

use std::fmt;
use std::sync::Arc;

/// Longest channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 255;

/// True for a byte allowed in a channel name: `[A-Za-z0-9_\-:.@=/]`.
pub fn is_channel_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':' | b'.' | b'@' | b'=' | b'/')
}

/// A channel name that passed validation; cheap to clone (shared string).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

/// Why a channel name was refused (sent to the client as `invalid_channel`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidChannel {
    /// The name is the empty string.
    #[error("channel name is empty")]
    Empty,
    /// The name is longer than [`MAX_CHANNEL_LEN`] bytes.
    #[error("channel name is longer than 255 bytes")]
    TooLong,
    /// The name has a character outside the allowed set.
    #[error("channel name may only contain A-Z a-z 0-9 _ - : . @ = /")]
    BadCharacter,
}

impl ChannelName {
    /// Validates a name.
    pub fn parse(name: &str) -> Result<ChannelName, InvalidChannel> {
        if name.is_empty() {
            return Err(InvalidChannel::Empty);
        }
        if name.len() > MAX_CHANNEL_LEN {
            return Err(InvalidChannel::TooLong);
        }
        if !name.bytes().all(is_channel_byte) {
            return Err(InvalidChannel::BadCharacter);
        }
        Ok(ChannelName(Arc::from(name)))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared string, for frames that carry the name.
    pub fn shared(&self) -> Arc<str> {
        self.0.clone()
    }

    /// The part before the first `:`, or `""` for the default namespace.
    pub fn namespace(&self) -> &str {
        self.0.split_once(':').map_or("", |(ns, _)| ns)
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

/// True when `pattern` (an exact name, or a prefix ending in `*`) grants `channel`.
pub fn pattern_matches(pattern: &str, channel: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => channel.starts_with(prefix),
        None => pattern == channel,
    }
}

/// True when any of `patterns` grants `channel`.
pub fn any_pattern_matches(patterns: &[String], channel: &str) -> bool {
    patterns.iter().any(|p| pattern_matches(p, channel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_names_at_their_edges() {
        assert!(ChannelName::parse(&"a".repeat(255)).is_ok());
        assert_eq!(
            ChannelName::parse(&"a".repeat(256)),
            Err(InvalidChannel::TooLong)
        );
        assert_eq!(ChannelName::parse(""), Err(InvalidChannel::Empty));
        assert_eq!(
            ChannelName::parse("chat lobby"),
            Err(InvalidChannel::BadCharacter)
        );
        assert_eq!(ChannelName::parse("ché"), Err(InvalidChannel::BadCharacter));
        assert!(ChannelName::parse("user@x=1/a.b_c-d:e").is_ok());
    }

    #[test]
    fn namespace_is_the_part_before_the_first_colon() {
        assert_eq!(
            ChannelName::parse("chat:lobby:1").unwrap().namespace(),
            "chat"
        );
        assert_eq!(ChannelName::parse("lobby").unwrap().namespace(), "");
        assert_eq!(ChannelName::parse(":x").unwrap().namespace(), "");
    }

    #[test]
    fn patterns() {
        assert!(pattern_matches("chat:*", "chat:lobby"));
        assert!(pattern_matches("*", "anything"));
        assert!(pattern_matches("news", "news"));
        assert!(!pattern_matches("news", "news2"));
        assert!(!pattern_matches("chat:*", "chatter"));
    }
}
