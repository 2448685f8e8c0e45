//! The backend HTTP API (section 5) and the operator endpoints against the real binary:
//! API keys, each call, body limits, and cluster-wide (here: node-wide) disconnect.

mod common;

use common::{eventually, now, spawn_app, token, App};
use serde_json::json;

const KEY: &str = "k-api";
const SECRET: &str = "api-secret";

fn server() -> App {
    spawn_app(&[
        ("api.keys", "other-key,k-api"),
        ("auth.hmac_secret", SECRET),
        ("limits.max_message_size", "1024"),
        ("namespaces.quiet.presence", "false"),
        ("namespaces.quiet.history_size", "0"),
    ])
}

#[tokio::test]
async fn api_keys_are_required() {
    let s = server();
    let (status, body) = s.http("GET", "/api/channels", &[], None).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains(r#""code":"unauthorized""#), "{body}");
    let (status, _) = s.api("GET", "/api/channels", "k-ap", None).await;
    assert_eq!(status, 401);
    let (status, _) = s
        .http(
            "GET",
            "/api/channels",
            &[("Authorization", "Bearer k-api")],
            None,
        )
        .await;
    assert_eq!(status, 401);
    let (status, _) = s.api("GET", "/api/channels", "other-key", None).await;
    assert_eq!(status, 200);
    // With no keys configured, every call is refused.
    let open = spawn_app(&[]);
    let (status, body) = open.api("GET", "/api/channels", "", None).await;
    assert_eq!(status, 401, "{body}");
}

#[tokio::test]
async fn publish_and_broadcast_reach_subscribers() {
    let s = server();
    let mut a = s.client().await;
    let mut b = s.client().await;
    a.subscribe("news").await;
    b.subscribe("sport").await;
    let (status, r) = s
        .api(
            "POST",
            "/api/publish",
            KEY,
            Some(json!({"channel":"news","data":{"headline":"hi"}})),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["offset"], 1);
    let epoch = r["epoch"].as_str().unwrap().to_string();
    let m = a.recv().await;
    assert_eq!(
        m,
        json!({"type":"message","channel":"news","offset":1,"data":{"headline":"hi"}})
    );
    let (status, r) = s
        .api(
            "POST",
            "/api/broadcast",
            KEY,
            Some(json!({"channels":["news","sport"],"data":[1,2]})),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        r["results"][0],
        json!({"channel":"news","offset":2,"epoch":epoch})
    );
    assert_eq!(r["results"][1]["channel"], "sport");
    assert_eq!(r["results"][1]["offset"], 1);
    assert_eq!(a.recv().await["data"], json!([1, 2]));
    assert_eq!(b.recv().await["data"], json!([1, 2]));
    // Bad bodies: 400 with the error shape, nothing published.
    for (path, body, code) in [
        ("/api/publish", json!({"channel":"news"}), "bad_request"),
        (
            "/api/publish",
            json!({"channel":"bad name","data":1}),
            "invalid_channel",
        ),
        (
            "/api/broadcast",
            json!({"channels":["ok","bad name"],"data":1}),
            "invalid_channel",
        ),
        (
            "/api/broadcast",
            json!({"channels":[],"data":1}),
            "bad_request",
        ),
    ] {
        let (status, r) = s.api("POST", path, KEY, Some(body)).await;
        assert_eq!(status, 400, "{r}");
        assert_eq!(r["error"]["code"], code, "{r}");
    }
    let (status, _) = s
        .http(
            "POST",
            "/api/publish",
            &[("Authorization", "apikey k-api")],
            Some("{not json"),
        )
        .await;
    assert_eq!(status, 400);
    let (_, h) = s.api("GET", "/api/history/ok", KEY, None).await;
    assert_eq!(h["offset"], 0, "the failed broadcast published nothing");
}

#[tokio::test]
async fn body_size_limit_edge() {
    let s = server();
    let body = |len: usize| {
        let head = r#"{"channel":"x","data":""#;
        let tail = r#""}"#;
        format!("{head}{}{tail}", "z".repeat(len - head.len() - tail.len()))
    };
    let (status, r) = s
        .http(
            "POST",
            "/api/publish",
            &[("Authorization", "apikey k-api")],
            Some(&body(1024)),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    let (status, r) = s
        .http(
            "POST",
            "/api/publish",
            &[("Authorization", "apikey k-api")],
            Some(&body(1025)),
        )
        .await;
    assert_eq!(status, 413, "{r}");
    assert!(r.contains(r#""code":"too_large""#), "{r}");
}

#[tokio::test]
async fn channels_presence_and_history() {
    let s = server();
    let t = token(SECRET, json!({"sub":"zoe","exp":now()+60}));
    let mut a = s.client_with_token(&t).await;
    let mut b = s.client().await;
    a.subscribe("room").await;
    b.subscribe("room").await;
    b.subscribe("lobby").await;
    let (status, r) = s.api("GET", "/api/channels", KEY, None).await;
    assert_eq!(status, 200);
    assert_eq!(
        r["channels"],
        json!([{"channel":"lobby","subscribers":1},{"channel":"room","subscribers":2}])
    );
    let (_, r) = s.api("GET", "/api/presence/room", KEY, None).await;
    let clients = r["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 2);
    let node = a.welcome["node"].clone();
    assert!(
        clients.contains(&json!({"client":a.id(),"user":"zoe","node":node})),
        "{r}"
    );
    let (status, r) = s.api("GET", "/api/presence/quiet:x", KEY, None).await;
    assert_eq!(
        (status, r["error"]["code"].as_str()),
        (404, Some("not_available"))
    );
    for i in 1..=4 {
        let (status, r) = s
            .api(
                "POST",
                "/api/publish",
                KEY,
                Some(json!({"channel":"room","data":i})),
            )
            .await;
        assert_eq!((status, r["offset"].as_u64()), (200, Some(i)), "{r}");
        assert_eq!(a.recv().await["data"], i, "a subscriber gets it");
        assert_eq!(b.recv().await["data"], i, "a subscriber gets it");
    }
    let (_, r) = s.api("GET", "/api/history/room?limit=2", KEY, None).await;
    assert_eq!(r["offset"], 4);
    let epoch = r["epoch"].as_str().unwrap().to_string();
    assert_eq!(
        r["publications"],
        json!([{"offset":3,"data":3},{"offset":4,"data":4}])
    );
    let (_, r) = s
        .api(
            "GET",
            &format!("/api/history/room?since_offset=1&epoch={epoch}&limit=2"),
            KEY,
            None,
        )
        .await;
    assert_eq!(
        r["publications"],
        json!([{"offset":2,"data":2},{"offset":3,"data":3}])
    );
    let (status, _) = s
        .api("GET", "/api/history/room?since_offset=1", KEY, None)
        .await;
    assert_eq!(status, 400);
    let (status, _) = s.api("GET", "/api/history/quiet:x", KEY, None).await;
    assert_eq!(status, 404);
    let (status, _) = s.api("GET", "/api/nothing-here", KEY, None).await;
    assert_eq!(status, 404);
    // A client that goes away leaves the channels and the presence it was in; the other
    // stays, with nothing queued for it but its own reply.
    b.close().await;
    eventually("b gone from the channel counts", || async {
        let (_, r) = s.api("GET", "/api/channels", KEY, None).await;
        (r["channels"] == json!([{"channel":"room","subscribers":1}])).then_some(())
    })
    .await;
    eventually("b gone from presence", || async {
        let (_, r) = s.api("GET", "/api/presence/room", KEY, None).await;
        (r["clients"] == json!([{"client":a.id(),"user":"zoe","node":node}])).then_some(())
    })
    .await;
    assert_eq!(
        a.call(json!({"type":"ping","id":"last"})).await,
        json!({"type":"pong","id":"last"})
    );
}

#[tokio::test]
async fn disconnect_reaches_every_session_of_the_user() {
    let s = server();
    let dave = token(SECRET, json!({"sub":"dave","exp":now()+60}));
    let erin = token(SECRET, json!({"sub":"erin","exp":now()+60}));
    let mut d1 = s.client_with_token(&dave).await;
    let mut d2 = s.client_with_token(&dave).await;
    let mut e = s.client_with_token(&erin).await;
    let (status, r) = s
        .api("POST", "/api/disconnect", KEY, Some(json!({"user":"dave"})))
        .await;
    assert_eq!((status, r.clone()), (200, json!({"disconnected":2})), "{r}");
    d1.expect_disconnect(4003).await;
    d2.expect_disconnect(4003).await;
    assert_eq!(e.call(json!({"type":"ping"})).await["type"], "pong");
    let (_, r) = s
        .api(
            "POST",
            "/api/disconnect",
            KEY,
            Some(json!({"user":"nobody"})),
        )
        .await;
    assert_eq!(r, json!({"disconnected":0}));
}

#[tokio::test]
async fn operator_endpoints() {
    let s = server();
    let (status, _) = s.http("GET", "/healthz", &[], None).await;
    assert_eq!(status, 200);
    let (status, _) = s.http("GET", "/readyz", &[], None).await;
    assert_eq!(status, 200);
    let mut c = s.client().await;
    c.send_text("garbage").await;
    assert_eq!(c.recv().await["code"], "bad_request");
    let (status, body) = s.http("GET", "/metrics", &[], None).await;
    assert_eq!(status, 200);
    for name in [
        "switchboard_connections 1",
        "switchboard_subscriptions 0",
        "switchboard_channels 0",
        "switchboard_publications_total 0",
        "switchboard_deliveries_total 0",
        "switchboard_disconnects_total{code=\"4001\"} 0",
        "switchboard_slow_consumers_total 0",
    ] {
        assert!(body.contains(name), "{name} missing from\n{body}");
    }
    assert!(
        body.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .all(|l| l.starts_with("switchboard_")),
        "{body}"
    );
}
