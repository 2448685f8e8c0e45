//! Batched frames (`?batch=true`, issue 12): a subscriber that asks gets several frames per
//! WebSocket message, `\n` between them, and splits them back into the same frames, in
//! order, with no gap, plain or compressed (a batch of compressed publications inflates
//! as one message, here with flate2 and in Python's `websockets`, i.e. zlib); a
//! publication's `data` written with line breaks arrives compact; a connection that did not
//! ask gets one frame per message; `batch` takes `true` or `false` only.

mod common;

use std::net::SocketAddr;

use common::raw::{inflate, masked, upgrade_request_with, RawWs, CLOSE, RSV1, TEXT};
use common::spawn_app;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

/// How a test connection asks: batches or not, compression or not.
#[derive(Clone, Copy, Debug)]
struct Mode {
    batch: bool,
    deflate: bool,
}

async fn connect(addr: SocketAddr, mode: Mode) -> RawWs {
    let query = if mode.batch { "?batch=true" } else { "" };
    let offer = [("Sec-WebSocket-Extensions", "permessage-deflate")];
    let headers: &[(&str, &str)] = if mode.deflate { &offer } else { &[] };
    let request = upgrade_request_with(addr, query, headers);
    // A small receive window: what is published while the test does not read waits in the
    // node (where batches are made), not in this socket.
    let (head, mut ws) = RawWs::request_small(addr, &request, 4096).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{mode:?}: {head}");
    assert_eq!(
        head.contains("permessage-deflate"),
        mode.deflate,
        "{mode:?}: {head}"
    );
    let frames = message(&mut ws).await.frames;
    assert_eq!(frames[0]["type"], "welcome");
    ws
}

/// One WebSocket message as received: its frames, and how it came.
struct Message {
    frames: Vec<Value>,
    compressed: bool,
}

/// The next text message, inflated when RSV1 is set, split on newlines.
async fn message(ws: &mut RawWs) -> Message {
    loop {
        let (first, payload) = ws.whole_frame().await;
        assert_eq!(first & 0xb0, 0x80, "FIN set, RSV2, RSV3 clear: {first:#x}");
        match first & 0x0f {
            TEXT => {
                let compressed = first & RSV1 != 0;
                let text = if compressed {
                    inflate(&payload)
                } else {
                    payload
                };
                let text = String::from_utf8(text).expect("UTF-8");
                let frames = text
                    .split('\n')
                    .map(|f| serde_json::from_str(f).unwrap_or_else(|e| panic!("{e}: {f:?}")))
                    .collect();
                return Message { frames, compressed };
            }
            CLOSE => panic!("closed: {payload:?}"),
            _ => {}
        }
    }
}

/// Realistic JSON of a few hundred bytes to a few KiB, changing with `i`: some publications
/// are compressed, some too short to be.
fn data(i: usize) -> Value {
    const CITIES: &[&str] = &["Lisbon", "Nairobi", "Osaka", "Quito", "Tallinn", "Lyon"];
    let rows = (i * 7) % 23;
    json!({
        "seq": i,
        "rows": (0..rows)
            .map(|r| json!({
                "id": 1000 + (i * 31 + r * 37) % 911,
                "user": format!("user{}", (i + r) * 7919 % 1000),
                "city": CITIES[(i + r) % CITIES.len()],
                "score": ((i + r) * 13 % 100) as f64 + 0.5,
            }))
            .collect::<Vec<_>>(),
    })
}

/// A publisher pipelines, in one write, `fill` publications to `filler` (a few MB of text
/// that compresses poorly: they fill the subscriber's socket, so what follows waits in its
/// outbox), then `n` publications to `channel` (see [`data`]), and waits for every
/// `published` reply.
async fn publish_burst(addr: SocketAddr, channel: &str, n: usize, fill: usize) {
    let mut publisher = connect(
        addr,
        Mode {
            batch: false,
            deflate: false,
        },
    )
    .await;
    let mut burst = Vec::new();
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    for i in 0..fill {
        let noise: String = (0..FILLER)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                char::from(
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
                        [(seed % 64) as usize],
                )
            })
            .collect();
        let cmd = json!({"type": "publish", "id": i, "channel": "filler", "data": noise});
        burst.extend(masked(TEXT, true, cmd.to_string().as_bytes()));
    }
    for i in 0..n {
        let cmd = json!({"type": "publish", "id": i, "channel": channel, "data": data(i)});
        burst.extend(masked(TEXT, true, cmd.to_string().as_bytes()));
    }
    publisher.stream.write_all(&burst).await.expect("write");
    let mut published = 0;
    while published < n + fill {
        for f in message(&mut publisher).await.frames {
            assert_eq!(f["type"], "published", "{f}");
            published += 1;
        }
    }
}

/// One filler publication's length: five of them pass the 4 MiB a loopback socket can hold.
const FILLER: usize = 1_000_000;

/// Reads until `n` publications of `channel` arrived: their frames in arrival order, the
/// messages they came in, and how many of those were compressed. Other frames (fillers)
/// are skipped.
async fn receive(ws: &mut RawWs, channel: &str, n: usize) -> (Vec<Value>, usize, usize) {
    let (mut got, mut messages, mut compressed) = (Vec::new(), 0, 0);
    while got.len() < n {
        let m = message(ws).await;
        let before = got.len();
        got.extend(m.frames.into_iter().filter(|f| f["channel"] == channel));
        if got.len() > before {
            messages += 1;
            compressed += usize::from(m.compressed);
        }
    }
    (got, messages, compressed)
}

#[tokio::test]
async fn batches_split_back_into_the_same_frames_in_order() {
    const N: usize = 400;
    let s = spawn_app(&[
        ("limits.client_publish_rate", "100000"),
        ("limits.max_message_size", "2097152"),
        ("limits.max_pending_bytes", "33554432"),
    ]);
    for deflate in [false, true] {
        let mode = Mode {
            batch: true,
            deflate,
        };
        let channel = format!("batch{deflate}");
        let mut sub = connect(s.addr, mode).await;
        for (id, ch) in [(1, channel.as_str()), (2, "filler")] {
            let cmd = json!({"type": "subscribe", "id": id, "channel": ch});
            sub.send(TEXT, cmd.to_string().as_bytes()).await;
            let reply = message(&mut sub).await.frames;
            assert_eq!(reply[0]["type"], "subscribed", "{reply:?}");
        }
        // The subscriber reads nothing until every publication was made: the fillers fill
        // its socket, and the rest waits in its outbox, which drains in batches.
        publish_burst(s.addr, &channel, N, 5).await;
        let (got, messages, compressed) = receive(&mut sub, &channel, N).await;
        assert_eq!(got.len(), N, "{mode:?}: nothing more than the publications");
        for (i, f) in got.iter().enumerate() {
            assert_eq!(f["type"], "message", "{mode:?}: {f}");
            assert_eq!(f["offset"], i as u64 + 1, "{mode:?}: in order, no gap");
            assert_eq!(f["data"], data(i), "{mode:?}: intact");
        }
        assert!(
            messages < N / 4,
            "{mode:?}: {N} frames came in {messages} messages"
        );
        if deflate {
            assert!(compressed > 0, "batches of compressed publications");
        } else {
            assert_eq!(compressed, 0);
        }
        println!("{mode:?}: {N} frames in {messages} messages, {compressed} compressed");
    }
}

#[tokio::test]
async fn without_batch_each_frame_is_its_own_message() {
    const N: usize = 200;
    let s = spawn_app(&[("limits.client_publish_rate", "100000")]);
    for deflate in [false, true] {
        let mode = Mode {
            batch: false,
            deflate,
        };
        let mut sub = connect(s.addr, mode).await;
        let cmd = json!({"type": "subscribe", "id": 1, "channel": "single"});
        sub.send(TEXT, cmd.to_string().as_bytes()).await;
        assert_eq!(message(&mut sub).await.frames[0]["type"], "subscribed");
        publish_burst(s.addr, "single", N, 0).await;
        let (got, messages, _) = receive(&mut sub, "single", N).await;
        assert_eq!(messages, N, "{mode:?}");
        assert_eq!(got.len(), N);
    }
}

#[tokio::test]
async fn data_with_line_breaks_arrives_compact_in_a_batch() {
    let s = spawn_app(&[("api.keys", "k-batch")]);
    let mode = Mode {
        batch: true,
        deflate: false,
    };
    let mut ws = connect(s.addr, mode).await;
    // Pipelined in one write: the reply and the message may share a message.
    let data = "{\n  \"text\": \"two\\nlines\",\n  \"n\": [1,\r\n 2]\n}";
    let burst = [
        r#"{"type":"subscribe","id":1,"channel":"lines"}"#.to_string(),
        format!(r#"{{"type":"publish","id":2,"channel":"lines","data":{data}}}"#),
    ];
    let mut bytes = Vec::new();
    for cmd in &burst {
        bytes.extend(masked(TEXT, true, cmd.as_bytes()));
    }
    ws.stream.write_all(&bytes).await.expect("write");
    let mut frames = Vec::new();
    while !frames.iter().any(|f: &Value| f["type"] == "message") {
        frames.extend(message(&mut ws).await.frames);
    }
    let m = frames
        .iter()
        .find(|f| f["type"] == "message")
        .expect("a message");
    assert_eq!(m["data"], json!({"text": "two\nlines", "n": [1, 2]}));
    // Over the HTTP API too, and history keeps the compact form.
    let (status, _) = s
        .api(
            "POST",
            "/api/publish",
            "k-batch",
            Some(json!({"channel": "lines", "data": "x"})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = s
        .http(
            "POST",
            "/api/publish",
            &[("Authorization", "apikey k-batch")],
            Some("{\"channel\":\"lines\",\n\"data\": {\"a\":\n[1,\n2]}}"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut frames = Vec::new();
    while frames.len() < 2 {
        frames.extend(
            message(&mut ws)
                .await
                .frames
                .into_iter()
                .filter(|f| f["type"] == "message"),
        );
    }
    assert_eq!(frames[1]["data"], json!({"a": [1, 2]}));
}

#[tokio::test]
async fn batch_takes_true_or_false_only() {
    let s = spawn_app(&[]);
    for query in ["?batch=false", "?batch=true&token="] {
        let (head, _) = RawWs::request(s.addr, &upgrade_request_with(s.addr, query, &[])).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{query}: {head}");
    }
    for query in ["?batch=yes", "?batch=1", "?batch="] {
        let (status, body) = s
            .http(
                "GET",
                &format!("/ws{query}"),
                &[
                    ("Connection", "Upgrade"),
                    ("Upgrade", "websocket"),
                    ("Sec-WebSocket-Version", "13"),
                    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ],
                None,
            )
            .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body.contains("batch must be true or false"),
            "{query}: {body}"
        );
    }
}

/// Python's `websockets` (zlib, not the flate2 of these tests) subscribing with
/// `?batch=true` and its defaults (permessage-deflate offered): a publisher pipelines
/// fillers and `n` publications while the subscriber's library has stopped reading (its
/// queue holds 16 messages), then the subscriber splits what came and checks every frame.
const PYTHON_BATCH: &str = r#"
import asyncio, json, random, sys
from websockets.asyncio.client import connect

def data(i):
    return {"seq": i, "rows": [{"id": 1000 + (i * 31 + r * 37) % 911, "user": "user%d" % ((i + r) * 7919 % 1000),
                                "city": ["Lisbon", "Osaka", "Quito"][(i + r) % 3]} for r in range(i * 7 % 23)]}

async def main(url, n):
    proto = ["switchboard.v1.json"]
    async with connect(url + "?batch=true", subprotocols=proto, max_size=None) as sub, \
               connect(url, subprotocols=proto, max_size=None) as pub:
        ext = sub.response.headers.get("Sec-WebSocket-Extensions")
        assert json.loads(await sub.recv())["type"] == "welcome"
        assert json.loads(await pub.recv())["type"] == "welcome"
        for i, ch in enumerate(["py", "filler"]):
            await sub.send(json.dumps({"type": "subscribe", "id": i, "channel": ch}))
            assert json.loads(await sub.recv())["type"] == "subscribed"
        rnd = random.Random(7)
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
        for i in range(5):
            noise = "".join(rnd.choice(alphabet) for _ in range(1_000_000))
            await pub.send(json.dumps({"type": "publish", "channel": "filler", "data": noise}))
        for i in range(n):
            await pub.send(json.dumps({"type": "publish", "channel": "py", "data": data(i)}))
        done = 0
        while done < n + 5:
            for line in (await pub.recv()).split("\n"):
                assert json.loads(line)["type"] == "published", line
                done += 1
        got, messages = [], 0
        while len(got) < n:
            frames = [json.loads(line) for line in (await sub.recv()).split("\n")]
            mine = [f for f in frames if f.get("channel") == "py"]
            messages += bool(mine)
            got += mine
        assert [f["offset"] for f in got] == list(range(1, n + 1)), "out of order or a gap"
        assert [f["data"] for f in got] == [data(i) for i in range(n)], "changed"
        print(json.dumps({"extension": ext, "messages": messages}))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"#;

#[tokio::test]
async fn python_websockets_splits_compressed_batches() {
    let s = spawn_app(&[
        ("limits.client_publish_rate", "100000"),
        ("limits.max_message_size", "2097152"),
        ("limits.max_pending_bytes", "33554432"),
    ]);
    let url = format!("ws://{}/ws", s.addr);
    let said = common::run_python(PYTHON_BATCH, &[&url, "300"]).await;
    assert!(
        said["extension"]
            .as_str()
            .is_some_and(|e| e.starts_with("permessage-deflate")),
        "{said}"
    );
    let messages = said["messages"].as_u64().expect("a count");
    assert!(messages < 300 / 4, "300 frames came in {messages} messages");
}
