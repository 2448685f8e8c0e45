//! Fuzz target: the command parser, `switchboard::protocol::parse_command`, which the session
//! calls on every text message a client sends (src/protocol/command.rs), and what the
//! session then writes back from its result: the `message` push built from a publish's
//! `data` (`message_frame`) or the `error` reply (`error_frame`).
//!
//! Input: one text message. The session hands the parser valid UTF-8 only (the frame layer
//! refuses the rest with 1007), so bytes that are not UTF-8 are replaced, not dropped.
//!
//! Invariants, past "no panic":
//! - an accepted command's `id` is a number or a string of at most 64 bytes, and its channel
//!   is a valid name;
//! - an accepted publish's `data` nests at most 64 levels, and the `message` push built from
//!   it is JSON that serde_json reads with its default limits (what subscribers run; this
//!   found lone surrogate escapes and numbers past 1e308 in `data`, now refused);
//! - an error reply is JSON, and its message is short (the parser echoes at most 64 bytes
//!   of input, in an unknown command type, escaped).

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use switchboard::channel::ChannelName;
use switchboard::protocol::{
    error_frame, json_depth, message_frame, parse_command, ClientInfo, Command, Id, Publication,
    MAX_DATA_DEPTH, MAX_IDEMPOTENCY_KEY_LEN, MAX_ID_LEN,
};

/// Longest error message a reply may carry: the longest is an unknown command type, whose
/// first 64 bytes are echoed in Rust's debug form, where a control character takes up to 6
/// (`\u{7f}`), so about 400 bytes.
const MAX_MESSAGE: usize = 512;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match parse_command(&text) {
        Ok(request) => {
            if let Some(Id::Str(id)) = &request.id {
                assert!(id.len() <= MAX_ID_LEN, "a {}-byte id", id.len());
            }
            match request.command {
                Command::Subscribe { channel, .. }
                | Command::Unsubscribe { channel }
                | Command::Presence { channel }
                | Command::History { channel, .. } => valid(&channel),
                Command::Publish {
                    channel,
                    data,
                    idempotency_key,
                } => {
                    if let Some(k) = &idempotency_key {
                        let n = k.as_str().len();
                        assert!((1..=MAX_IDEMPOTENCY_KEY_LEN).contains(&n), "a {n}-byte key");
                    }
                    valid(&channel);
                    assert!(json_depth(data.get()) <= MAX_DATA_DEPTH);
                    let publication = Publication {
                        offset: u64::MAX,
                        data: Arc::from(data),
                        info: Some(ClientInfo {
                            client: Arc::from("c"),
                            user: Arc::from("u\"\\\u{1}"),
                        }),
                    };
                    let frame = message_frame(channel.as_str(), &publication);
                    let push: serde_json::Value = serde_json::from_str(&frame)
                        .unwrap_or_else(|e| panic!("the push {frame:?} is not JSON: {e}"));
                    assert_eq!(push["channel"], channel.as_str());
                }
                Command::Ping | Command::Refresh { .. } => {}
            }
        }
        Err(e) => {
            assert!(
                e.message.len() <= MAX_MESSAGE,
                "a {}-byte error message: {:?}",
                e.message.len(),
                e.message
            );
            let frame = error_frame(e.id.as_ref(), e.code, &e.message);
            let reply: serde_json::Value = serde_json::from_str(&frame)
                .unwrap_or_else(|e| panic!("the reply {frame:?} is not JSON: {e}"));
            assert_eq!(reply["message"], e.message.as_str());
        }
    }
});

/// A channel the parser accepted must be one `ChannelName::parse` accepts as it is.
fn valid(channel: &ChannelName) {
    assert!(ChannelName::parse(channel.as_str()).is_ok(), "{channel:?}");
}
