//! Fuzz target: the WebSocket frame decoder every byte a client sends goes through: the
//! vendored actix-http `ws::Codec` (vendor/actix-http), server side, with `max_size` set as
//! `src/session/handshake.rs` sets it from `limits.max_message_size` (small here, so that
//! the fuzzer reaches the limit's edges), and with permessage-deflate negotiated (RSV1
//! messages inflated by `switchboard::deflate::inflate`, as on a connection that offered
//! it; frames without RSV1 decode exactly as on one that did not). Decodes the way the
//! server does: bytes arrive in reads, and after each read frames are decoded until the
//! codec wants more or fails (the session closes the connection on the first error).
//!
//! Input: the first byte is the size of each read (1 to 255 bytes; 0: the whole stream in
//! one read), the rest is the byte stream of one connection after the handshake.
//!
//! Invariants, past "no panic":
//! - every Text, Binary or Continuation payload is at most `MAX` (inflated, for a
//!   compressed message), and a control frame's at most 125 bytes;
//! - the payloads of one fragmented message add up to at most `MAX`;
//! - when the codec asks for more bytes, it holds at most one header and `MAX` bytes: a
//!   frame whose declared length (or the message's running total) passes the limit is
//!   refused at its header, so memory is bounded from the first byte (issue 11, item 1).

#![no_main]

use actix_http::ws::{Codec, Frame, Item};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

/// The limit the codec is given (`limits.max_message_size`; the server's least is 64).
const MAX: usize = 1024;

/// Longest frame header: 2 bytes, 8 of extended length, 4 of mask.
const MAX_HEADER: usize = 14;

/// Longest control frame payload (RFC 6455 section 5.5).
const MAX_CONTROL: usize = 125;

fuzz_target!(|data: &[u8]| {
    let Some((&read, stream)) = data.split_first() else {
        return;
    };
    let read = match read {
        0 => stream.len().max(1),
        n => usize::from(n),
    };
    let mut codec = Codec::new()
        .max_size(MAX)
        .inflate_with(switchboard::deflate::inflate);
    let mut buf = BytesMut::new();
    // The running total of the fragmented message in progress, if one is.
    let mut fragmented: Option<usize> = None;
    for chunk in stream.chunks(read) {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => check(frame, &mut fragmented),
                Ok(None) => {
                    assert!(
                        buf.len() <= MAX_HEADER + MAX,
                        "the codec waits for more with {} bytes buffered (limit {MAX})",
                        buf.len()
                    );
                    break;
                }
                Err(_) => return,
            }
        }
    }
});

/// Checks one decoded frame against the limits, keeping the fragmented message's total.
fn check(frame: Frame, fragmented: &mut Option<usize>) {
    match frame {
        Frame::Text(b) | Frame::Binary(b) => {
            assert!(b.len() <= MAX, "a {}-byte message passed", b.len());
            assert!(
                fragmented.is_none(),
                "a whole message inside a fragmented one"
            );
        }
        Frame::Ping(b) | Frame::Pong(b) => {
            assert!(b.len() <= MAX_CONTROL, "a {}-byte control frame", b.len());
        }
        Frame::Close(_) => {}
        Frame::Continuation(item) => {
            let (len, first, last) = match &item {
                Item::FirstText(b) | Item::FirstBinary(b) => (b.len(), true, false),
                Item::Continue(b) => (b.len(), false, false),
                Item::Last(b) => (b.len(), false, true),
            };
            assert_eq!(
                first,
                fragmented.is_none(),
                "a fragment out of order: {item:?}"
            );
            let total = fragmented.unwrap_or(0) + len;
            assert!(
                total <= MAX,
                "a fragmented message of {total} bytes passed (limit {MAX})"
            );
            *fragmented = (!last).then_some(total);
        }
    }
}
