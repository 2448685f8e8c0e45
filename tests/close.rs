//! The end of a WebSocket connection as RFC 6455 section 7.1.1 wants it: once the close
//! handshake is done, the server closes the TCP connection first, and promptly (clients such
//! as Python's `websockets` wait for it in every `close()`). Whoever closes first, the
//! client here then only reads, and must see the end of the stream (EOF, not a reset).
//!
//! The client speaks RFC 6455 over a raw TCP socket (tests/common/raw.rs), because the moment the server closes
//! the connection is what is tested: WebSocket client libraries end their `close()` at the
//! Close frame without showing when the TCP connection ended.
//!
//! Before the fix, the server lingered until the client closed its side or about 1 s passed
//! (actix-web's `client_disconnect_timeout`, counted from a clock that is updated every
//! 500 ms, so it took 0.5 to 1 s); after it, the server closes within a millisecond or two.
//! [`PROMPT`] lies between the two, with two orders of magnitude of room for a busy machine.

mod common;

use std::time::Duration;

use common::raw::{close_payload, masked, RawWs, BINARY, CLOSE, TEXT};
use common::{now, spawn_app, token, WAIT};
use serde_json::json;
use tokio::io::AsyncWriteExt;

/// How soon after the close handshake the server must have closed the connection.
const PROMPT: Duration = Duration::from_millis(400);

const KEY: &str = "k-close";
const SECRET: &str = "close-secret";

#[tokio::test]
async fn after_the_clients_close_the_server_closes_the_connection_at_once() {
    let s = spawn_app(&[]);
    let mut c = RawWs::connect(s.addr, "").await;
    c.send(CLOSE, &close_payload(1000)).await;
    let (texts, code) = c.until_close().await;
    assert_eq!((texts.len(), code), (0, 1000), "{texts:?}");
    let took = c.eof_within(PROMPT).await;
    println!("client closed: EOF {took:?} after the server's Close");

    // A Close sent right behind a command, in the same write: the reply, the Close, the end.
    let mut c = RawWs::connect(s.addr, "").await;
    let mut both = masked(TEXT, true, br#"{"type":"ping","id":1}"#);
    both.extend(masked(CLOSE, true, &close_payload(1000)));
    c.stream.write_all(&both).await.expect("write");
    let (texts, code) = c.until_close().await;
    assert_eq!(texts, [r#"{"type":"pong","id":1}"#]);
    assert_eq!(code, 1000);
    c.eof_within(PROMPT).await;
}

#[tokio::test]
async fn after_the_servers_close_and_the_clients_reply_the_server_closes_at_once() {
    let s = spawn_app(&[("api.keys", KEY), ("auth.hmac_secret", SECRET)]);
    let t = token(SECRET, json!({"sub":"carol","exp":now()+60}));
    let mut c = RawWs::connect(s.addr, &format!("?token={t}")).await;
    let (status, r) = s
        .api(
            "POST",
            "/api/disconnect",
            KEY,
            Some(json!({"user":"carol"})),
        )
        .await;
    assert_eq!((status, r.clone()), (200, json!({"disconnected":1})), "{r}");
    let (texts, code) = c.until_close().await;
    assert_eq!(code, 4003);
    assert!(
        texts
            .last()
            .is_some_and(|t| t.contains(r#""type":"disconnect""#)),
        "{texts:?}"
    );
    c.send(CLOSE, &close_payload(code)).await;
    let took = c.eof_within(PROMPT).await;
    println!("server closed (4003): EOF {took:?} after the client's reply");

    // A close for a protocol matter (a binary frame: 1003), answered the same way.
    let mut c = RawWs::connect(s.addr, "").await;
    c.send(BINARY, b"not JSON").await;
    let (_, code) = c.until_close().await;
    assert_eq!(code, 1003);
    c.send(CLOSE, &close_payload(code)).await;
    c.eof_within(PROMPT).await;
}

#[tokio::test]
async fn a_client_that_does_not_answer_the_close_is_given_time_then_closed() {
    let s = spawn_app(&[]);
    let mut c = RawWs::connect(s.addr, "").await;
    c.send(BINARY, b"not JSON").await;
    let (_, code) = c.until_close().await;
    assert_eq!(code, 1003);
    // The server waits for the client's Close (src/session/body.rs: 1 s), then closes anyway.
    let took = c.eof_within(WAIT).await;
    assert!(
        took >= Duration::from_millis(500),
        "the server closed {took:?} after its Close, without waiting for the client's"
    );
}
