//! What the HTTP API and the WebSocket do with hostile or careless input (issue 11, items
//! 2 to 5): `data` nested deeper than `MAX_DATA_DEPTH` is refused and what is stored is read
//! back as it was published; every `/api/*` request without a valid key gets 401 first;
//! bodies must be JSON objects; errors name the field and never echo what was sent.

mod common;

use common::spawn_app;
use serde_json::{json, Value};

const KEY: &str = "input-key";

/// `data` nested `depth` levels deep: `[[[...1...]]]`.
fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

/// A raw request with the API key; status and body text.
async fn raw(app: &common::App, method: &str, path: &str, body: &str) -> (u16, String) {
    app.http(
        method,
        path,
        &[("Authorization", &format!("apikey {KEY}"))],
        Some(body),
    )
    .await
}

fn error_of(text: &str) -> (String, String) {
    let v: Value = serde_json::from_str(text).expect("a JSON error body");
    (
        v["error"]["code"].as_str().unwrap_or_default().to_string(),
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

#[tokio::test]
async fn data_nesting_is_capped_at_64_levels_and_history_reads_back_what_was_stored() {
    let app = spawn_app(&[("api.keys", KEY)]);
    // The last allowed depth is published, over HTTP and over WebSocket, and read back
    // through the history API byte for byte.
    let body = format!(r#"{{"channel":"deep","data":{}}}"#, nested(64));
    let (status, text) = raw(&app, "POST", "/api/publish", &body).await;
    assert_eq!(status, 200, "{text}");
    let mut c = app.client().await;
    let r = c
        .call(json!({"type":"publish","id":1,"channel":"deep","data":serde_json::from_str::<Value>(&nested(63)).unwrap()}))
        .await;
    assert_eq!(r["type"], "published", "{r}");
    let (status, text) = raw(&app, "GET", "/api/history/deep", "").await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains(&nested(64)) && text.contains(&nested(63)),
        "{text}"
    );
    // One level more is refused, and nothing is published.
    let body = format!(r#"{{"channel":"deep","data":{}}}"#, nested(65));
    let (status, text) = raw(&app, "POST", "/api/publish", &body).await;
    assert_eq!(status, 400, "{text}");
    let (code, message) = error_of(&text);
    assert_eq!(code, "bad_request");
    assert!(
        message.contains("`data`") && message.contains("64"),
        "{message}"
    );
    c.send_text(&format!(
        r#"{{"type":"publish","id":2,"channel":"deep","data":{}}}"#,
        nested(65)
    ))
    .await;
    let r = c.recv().await;
    assert_eq!(
        (r["code"].clone(), r["id"].clone()),
        (json!("bad_request"), json!(2))
    );
    let (_, text) = raw(&app, "GET", "/api/history/deep", "").await;
    let v: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["offset"], 2, "{text}");
    // Brackets inside strings do not count.
    let r = c
        .call(json!({"type":"publish","id":3,"channel":"deep","data":"[".repeat(500)}))
        .await;
    assert_eq!(r["type"], "published", "{r}");
}

/// Found by the command fuzz target (fuzz/): a lone surrogate escape or a number past 64-bit
/// floats in `data` was relayed, and a subscriber reading with serde_json could not read the
/// `message` push at all.
#[tokio::test]
async fn data_that_json_readers_refuse_is_refused_and_a_surrogate_pair_is_relayed() {
    let app = spawn_app(&[("api.keys", KEY)]);
    let mut sub = app.client().await;
    let r = sub
        .call(json!({"type":"subscribe","id":1,"channel":"s"}))
        .await;
    assert_eq!(r["type"], "subscribed", "{r}");
    let lone = r#"{"channel":"s","data":{"t":"\ud83d"}}"#;
    let (status, text) = raw(&app, "POST", "/api/publish", lone).await;
    assert_eq!(status, 400, "{text}");
    let (code, message) = error_of(&text);
    assert_eq!(code, "bad_request");
    assert!(message.contains("surrogate"), "{message}");
    let (status, text) = raw(
        &app,
        "POST",
        "/api/publish",
        r#"{"channel":"s","data":[1e400]}"#,
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(error_of(&text).1.contains("1e308"), "{text}");
    let mut c = app.client().await;
    c.send_text(r#"{"type":"publish","id":2,"channel":"s","data":"\ude00"}"#)
        .await;
    let r = c.recv().await;
    assert_eq!(
        (r["code"].clone(), r["id"].clone()),
        (json!("bad_request"), json!(2))
    );
    // A pair is one character: published, and the subscriber reads it.
    let pair = r#"{"channel":"s","data":"\ud83d\ude00"}"#;
    let (status, text) = raw(&app, "POST", "/api/publish", pair).await;
    assert_eq!(status, 200, "{text}");
    let m = sub.recv().await;
    assert_eq!(
        (m["type"].clone(), m["data"].clone()),
        (json!("message"), json!("\u{1f600}"))
    );
}

#[tokio::test]
async fn every_api_request_without_a_valid_key_gets_401_first() {
    let app = spawn_app(&[("api.keys", KEY)]);
    for (method, path) in [
        ("GET", "/api/nope"),
        ("POST", "/api/admin/users"),
        ("GET", "/api/publish"),
        ("GET", "/api/"),
    ] {
        let (status, text) = app.http(method, path, &[], None).await;
        assert_eq!(status, 401, "{method} {path}: {text}");
        assert_eq!(error_of(&text).0, "unauthorized");
        let (status, _) = app
            .http(method, path, &[("Authorization", "apikey wrong")], None)
            .await;
        assert_eq!(status, 401, "{method} {path} with a wrong key");
        let (status, text) = raw(&app, method, path, "").await;
        assert_eq!(status, 404, "{method} {path} with the key: {text}");
        assert_eq!(error_of(&text).0, "not_found");
    }
}

#[tokio::test]
async fn bodies_must_be_objects_and_errors_never_echo_input() {
    let app = spawn_app(&[("api.keys", KEY)]);
    // An array would fill the struct by position: refused, nothing published.
    for body in [r#"["chan",{"x":1}]"#, "null", "5", r#""text""#] {
        let (status, text) = raw(&app, "POST", "/api/publish", body).await;
        assert_eq!(status, 400, "{body}: {text}");
        let (code, message) = error_of(&text);
        assert_eq!(code, "bad_request");
        assert!(message.contains("JSON object"), "{message}");
        assert!(!message.contains("PublishBody"), "{message}");
    }
    let (_, text) = raw(&app, "GET", "/api/history/chan", "").await;
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["offset"],
        0,
        "{text}"
    );
    // A 60 KB field of the wrong type, and a 60 KB unknown field name: the message names
    // the field and what it must be, and stays short.
    let big = "A".repeat(60_000);
    let cases = [
        (
            json!({"channel": {"x": big}, "data": 1}),
            "`channel` must be a string",
        ),
        (json!({"channel": "c"}), "missing field `data`"),
        (json!({"data": 1}), "missing field `channel`"),
    ];
    for (body, expected) in cases {
        let (status, text) = raw(&app, "POST", "/api/publish", &body.to_string()).await;
        assert_eq!(status, 400);
        let (_, message) = error_of(&text);
        assert_eq!(message, expected);
    }
    let unknown = format!(r#"{{"channel":"c","data":1,"{big}":2}}"#);
    let (status, text) = raw(&app, "POST", "/api/publish", &unknown).await;
    assert_eq!(status, 400);
    let (_, message) = error_of(&text);
    assert!(
        message.len() < 200 && !message.contains("AAAA"),
        "{message}"
    );
    assert!(message.contains("channel, data"), "{message}");
    // Not JSON: the position, not the text.
    let (status, text) = raw(
        &app,
        "POST",
        "/api/publish",
        &format!("{{\"channel\": {big}"),
    )
    .await;
    assert_eq!(status, 400);
    let (_, message) = error_of(&text);
    assert!(
        message.len() < 200 && !message.contains("AAAA"),
        "{message}"
    );
    // Broadcast and disconnect take their fields the same way.
    let (status, text) = raw(
        &app,
        "POST",
        "/api/broadcast",
        r#"{"channels":"c","data":1}"#,
    )
    .await;
    assert_eq!(
        (status, error_of(&text).1),
        (400, "`channels` must be an array of strings".to_string())
    );
    let (status, text) = raw(&app, "POST", "/api/disconnect", r#"[{"user":"u"}]"#).await;
    assert_eq!(status, 400, "{text}");
    // A bad query is answered in our words.
    let (status, text) = raw(&app, "GET", &format!("/api/history/c?limit={big}"), "").await;
    assert_eq!(status, 400);
    assert!(!error_of(&text).1.contains("AAAA"));
}
