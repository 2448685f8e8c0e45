//! A client's WebSocket messages made whole: the fragments of a message (which
//! actix-web-actors hands over one by one) reassembled, a text message's UTF-8 checked, and
//! each RFC 6455 failure the codec reports turned into the close it calls for.
//!
//! Used by the session actor, and by the conformance echo server (examples/echo.rs), which
//! Autobahn|Testsuite drives (docs/conformance.md): what the suite checks there is what
//! `/ws` does. No size check here: the codec refuses the frame whose header would take a
//! message past `limits.max_message_size` (vendor/README.md), before it is read.

use actix_http::ws::{CloseReason, Item, ProtocolError};
use actix_web_actors::ws;
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;

use crate::protocol::CloseCode;

/// What one item of the client's stream comes to.
#[derive(Debug, PartialEq)]
pub enum Received {
    /// A whole text message, valid UTF-8.
    Text(ByteString),
    /// A whole binary message (only from an [`Incoming::new`] that takes binary).
    Binary(Bytes),
    /// A Ping, to answer with a Pong carrying the same bytes.
    Ping(Bytes),
    /// The client's Close, to answer with the same code.
    Close(Option<CloseReason>),
    /// Nothing to act on yet: a fragment of a message still incomplete, a Pong.
    Nothing,
    /// The connection must close (see [`Refusal`]).
    Refused(Refusal),
}

/// Why the connection must close.
#[derive(Debug, PartialEq)]
pub enum Refusal {
    /// With this code: 1003 (binary where only text is taken), 1007 (text that is not
    /// UTF-8), 1009 (past `limits.max_message_size`). `/ws` pushes `disconnect` first.
    Close(CloseCode),
    /// A frame RFC 6455 forbids: 1002, with nothing before it. Why, for the log.
    Protocol(String),
}

/// The client's side of one connection, as whole messages.
#[derive(Debug)]
pub struct Incoming {
    /// Binary messages are taken (the echo server); else they are refused with 1003.
    binary: bool,
    /// The fragmented message being reassembled: whether it is text, and its bytes so far.
    fragment: Option<(bool, BytesMut)>,
}

impl Incoming {
    /// Reads messages; binary ones are taken when `binary`, else refused with 1003 as soon
    /// as their first frame comes.
    pub fn new(binary: bool) -> Incoming {
        Incoming {
            binary,
            fragment: None,
        }
    }

    /// Takes the next item of the client's stream (the connection's codec, through
    /// actix-web-actors).
    pub fn take(&mut self, item: Result<ws::Message, ProtocolError>) -> Received {
        let message = match item {
            Ok(message) => message,
            Err(ProtocolError::Overflow) => {
                return Received::Refused(Refusal::Close(CloseCode::MessageTooBig))
            }
            Err(ProtocolError::Io(e)) if is_invalid_utf8(&e) => {
                return Received::Refused(Refusal::Close(CloseCode::InvalidPayload))
            }
            Err(e) => return Received::Refused(Refusal::Protocol(e.to_string())),
        };
        match message {
            ws::Message::Binary(_) | ws::Message::Continuation(Item::FirstBinary(_))
                if !self.binary =>
            {
                Received::Refused(Refusal::Close(CloseCode::UnsupportedData))
            }
            ws::Message::Text(_) | ws::Message::Binary(_) if self.fragment.is_some() => {
                Received::Refused(Refusal::Protocol(
                    "a new message inside a fragmented one".into(),
                ))
            }
            ws::Message::Text(text) => Received::Text(text),
            ws::Message::Binary(bytes) => Received::Binary(bytes),
            ws::Message::Continuation(item) => self.fragment(item),
            ws::Message::Ping(bytes) => Received::Ping(bytes),
            ws::Message::Pong(_) | ws::Message::Nop => Received::Nothing,
            ws::Message::Close(reason) => Received::Close(reason),
        }
    }

    fn fragment(&mut self, item: Item) -> Received {
        let (bytes, last) = match item {
            Item::FirstText(_) | Item::FirstBinary(_) if self.fragment.is_some() => {
                return Received::Refused(Refusal::Protocol(
                    "a new message inside a fragmented one".into(),
                ))
            }
            Item::FirstText(b) => {
                self.fragment = Some((true, BytesMut::new()));
                (b, false)
            }
            Item::FirstBinary(b) => {
                self.fragment = Some((false, BytesMut::new()));
                (b, false)
            }
            Item::Continue(b) => (b, false),
            Item::Last(b) => (b, true),
        };
        let Some((_, buf)) = self.fragment.as_mut() else {
            return Received::Refused(Refusal::Protocol(
                "continuation without a first frame".into(),
            ));
        };
        buf.extend_from_slice(&bytes);
        if !last {
            return Received::Nothing;
        }
        let Some((text, whole)) = self.fragment.take() else {
            return Received::Nothing;
        };
        if !text {
            return Received::Binary(whole.freeze());
        }
        match ByteString::try_from(whole.freeze()) {
            Ok(text) => Received::Text(text),
            Err(_) => Received::Refused(Refusal::Close(CloseCode::InvalidPayload)),
        }
    }
}

/// True for the error that actix-web-actors gives a text frame that is not UTF-8. It wraps
/// the UTF-8 error into an `io::Error` of kind `Other` that carries only the error's text
/// (no source to downcast), as it does a failed read of the connection; only that text
/// tells the two apart. So it is compared here, in one place, and the test below builds the
/// real error the way actix-web-actors does, so an upstream change fails a test rather than
/// turning 1007 into 1002 unnoticed.
fn is_invalid_utf8(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::Other && e.to_string().contains("utf-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_utf8_is_told_apart_from_a_failed_read() {
        let not_utf8 = bytestring::ByteString::try_from(bytes::Bytes::from_static(b"a\xffb"))
            .expect_err("not UTF-8");
        let as_actix_says = std::io::Error::other(format!("{not_utf8}"));
        assert!(is_invalid_utf8(&as_actix_says));
        let read_failed =
            std::io::Error::other(actix_http::error::PayloadError::Incomplete(None).to_string());
        assert!(!is_invalid_utf8(&read_failed));
    }

    fn part(item: Item) -> Result<ws::Message, ProtocolError> {
        Ok(ws::Message::Continuation(item))
    }

    fn b(s: &'static [u8]) -> Bytes {
        Bytes::from_static(s)
    }

    #[test]
    fn fragments_come_out_whole_and_checked() {
        let mut incoming = Incoming::new(true);
        assert_eq!(
            incoming.take(part(Item::FirstText(b(b"h\xc3")))),
            Received::Nothing
        );
        assert_eq!(
            incoming.take(part(Item::Continue(b(b"\xa9")))),
            Received::Nothing
        );
        assert_eq!(
            incoming.take(part(Item::Last(b(b"!")))),
            Received::Text("hé!".into())
        );
        incoming.take(part(Item::FirstBinary(b(b"\xff"))));
        assert_eq!(
            incoming.take(part(Item::Last(b(b"\x00")))),
            Received::Binary(b(b"\xff\x00"))
        );
        incoming.take(part(Item::FirstText(b(b"\xff"))));
        assert_eq!(
            incoming.take(part(Item::Last(b(b"")))),
            Received::Refused(Refusal::Close(CloseCode::InvalidPayload))
        );
    }

    #[test]
    fn broken_sequences_and_binary_are_refused() {
        let mut incoming = Incoming::new(true);
        assert!(matches!(
            incoming.take(part(Item::Continue(b(b"x")))),
            Received::Refused(Refusal::Protocol(_))
        ));
        incoming.take(part(Item::FirstText(b(b"x"))));
        assert!(matches!(
            incoming.take(Ok(ws::Message::Text("y".into()))),
            Received::Refused(Refusal::Protocol(_))
        ));
        let mut text_only = Incoming::new(false);
        for message in [
            ws::Message::Binary(b(b"x")),
            ws::Message::Continuation(Item::FirstBinary(b(b"x"))),
        ] {
            assert_eq!(
                text_only.take(Ok(message)),
                Received::Refused(Refusal::Close(CloseCode::UnsupportedData))
            );
        }
        assert_eq!(
            text_only.take(Err(ProtocolError::Overflow)),
            Received::Refused(Refusal::Close(CloseCode::MessageTooBig))
        );
    }
}
