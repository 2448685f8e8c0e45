//! Golden tests of the wire protocol, both ways: commands parsed from text, frames
//! serialized to text, and malformed input answered with a code, never a panic.

use std::sync::Arc;

use serde_json::json;
use serde_json::value::RawValue;

use super::*;

fn text(f: ServerFrame) -> serde_json::Value {
    serde_json::from_str(&f.to_text()).expect("valid json")
}

fn raw(s: &str) -> Arc<RawValue> {
    Arc::from(RawValue::from_string(s.to_string()).expect("raw"))
}

#[test]
fn golden_commands_parse() {
    let r = parse_command(
        r#"{"type":"subscribe","id":1,"channel":"chat:lobby","since":{"offset":5,"epoch":"e1"}}"#,
    )
    .expect("subscribe");
    assert_eq!(r.id, Some(Id::Num(1)));
    match r.command {
        Command::Subscribe { channel, since } => {
            assert_eq!(channel.as_str(), "chat:lobby");
            assert_eq!(
                since,
                Some(StreamPosition {
                    offset: 5,
                    epoch: "e1".into()
                })
            );
        }
        other => panic!("{other:?}"),
    }
    let r = parse_command(r#"{"type":"publish","id":"a","channel":"c","data":{"x":[1,2]}}"#)
        .expect("publish");
    assert_eq!(r.id, Some(Id::Str("a".into())));
    match r.command {
        Command::Publish { data, .. } => assert_eq!(data.get(), r#"{"x":[1,2]}"#),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        parse_command(r#"{"type":"ping"}"#).unwrap().command,
        Command::Ping
    ));
    assert!(matches!(
        parse_command(r#"{"type":"history","channel":"c","limit":3}"#)
            .unwrap()
            .command,
        Command::History {
            limit: Some(3),
            since: None,
            ..
        }
    ));
    assert!(matches!(
        parse_command(r#"{"type":"refresh","token":"t"}"#)
            .unwrap()
            .command,
        Command::Refresh { .. }
    ));
    assert!(matches!(
        parse_command(r#"{"type":"presence","channel":"c"}"#)
            .unwrap()
            .command,
        Command::Presence { .. }
    ));
    assert!(matches!(
        parse_command(r#"{"type":"unsubscribe","channel":"c"}"#)
            .unwrap()
            .command,
        Command::Unsubscribe { .. }
    ));
    // Escaped characters in a channel name are decoded before validation.
    assert!(matches!(
        parse_command(r#"{"type":"unsubscribe","channel":"\u0063"}"#).unwrap().command,
        Command::Unsubscribe { channel } if channel.as_str() == "c"
    ));
}

#[test]
fn malformed_commands_get_the_right_code_and_keep_the_id() {
    let cases = [
        ("not json", ErrorCode::BadRequest, None),
        ("[1,2]", ErrorCode::BadRequest, None),
        ("\"str\"", ErrorCode::BadRequest, None),
        ("{}", ErrorCode::BadRequest, None),
        (
            r#"{"type":"fly","id":7}"#,
            ErrorCode::BadRequest,
            Some(Id::Num(7)),
        ),
        (r#"{"type":5}"#, ErrorCode::BadRequest, None),
        (
            r#"{"type":"subscribe","id":2}"#,
            ErrorCode::BadRequest,
            Some(Id::Num(2)),
        ),
        (
            r#"{"type":"subscribe","id":2,"channel":7}"#,
            ErrorCode::BadRequest,
            Some(Id::Num(2)),
        ),
        (
            r#"{"type":"subscribe","id":2,"channel":""}"#,
            ErrorCode::InvalidChannel,
            Some(Id::Num(2)),
        ),
        (
            r#"{"type":"subscribe","channel":"a b"}"#,
            ErrorCode::InvalidChannel,
            None,
        ),
        (
            r#"{"type":"publish","channel":"a"}"#,
            ErrorCode::BadRequest,
            None,
        ),
        (
            r#"{"type":"subscribe","channel":"a","since":{"offset":-1,"epoch":"x"}}"#,
            ErrorCode::BadRequest,
            None,
        ),
        (
            r#"{"type":"history","channel":"a","limit":"x"}"#,
            ErrorCode::BadRequest,
            None,
        ),
        (r#"{"type":"ping","id":-1}"#, ErrorCode::BadRequest, None),
        (r#"{"type":"ping","id":1.5}"#, ErrorCode::BadRequest, None),
    ];
    for (input, code, id) in cases {
        let e = parse_command(input).expect_err(input);
        assert_eq!(e.code, code, "{input}");
        assert_eq!(e.id, id, "{input}");
    }
    let long_id = format!(r#"{{"type":"ping","id":"{}"}}"#, "x".repeat(65));
    assert_eq!(
        parse_command(&long_id).unwrap_err().code,
        ErrorCode::BadRequest
    );
    let ok_id = format!(r#"{{"type":"ping","id":"{}"}}"#, "x".repeat(64));
    assert!(parse_command(&ok_id).is_ok());
}

#[test]
fn golden_frames_serialize() {
    assert_eq!(
        text(ServerFrame::Welcome {
            client: "c1",
            node: "n1",
            user: "",
            heartbeat_ms: 10000,
            protocol: SUBPROTOCOL
        }),
        json!({"type":"welcome","client":"c1","node":"n1","user":"","heartbeat_ms":10000,"protocol":"switchboard.v1.json"})
    );
    let pubs = vec![Publication {
        offset: 3,
        data: raw("{\"a\":1}"),
        info: None,
    }];
    assert_eq!(
        text(ServerFrame::Subscribed {
            id: Some(&Id::Num(1)),
            channel: "c",
            offset: 3,
            epoch: "e",
            recovered: Some(true),
            publications: Some(&pubs)
        }),
        json!({"type":"subscribed","id":1,"channel":"c","offset":3,"epoch":"e","recovered":true,"publications":[{"offset":3,"data":{"a":1}}]})
    );
    assert_eq!(
        text(ServerFrame::Subscribed {
            id: None,
            channel: "c",
            offset: 0,
            epoch: "e",
            recovered: None,
            publications: None
        }),
        json!({"type":"subscribed","channel":"c","offset":0,"epoch":"e"})
    );
    assert_eq!(
        text(ServerFrame::Error {
            id: Some(&Id::Str("x".into())),
            code: ErrorCode::RateLimited,
            message: "slow down"
        }),
        json!({"type":"error","id":"x","code":"rate_limited","message":"slow down"})
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&disconnect_frame(CloseCode::SlowConsumer))
            .unwrap(),
        json!({"type":"disconnect","code":4001,"reason":"slow_consumer","reconnect":true})
    );
    let info = ClientInfo {
        client: "c".into(),
        user: "u".into(),
    };
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&message_frame(
            "ch",
            &Publication {
                offset: 9,
                data: raw("[1]"),
                info: Some(info.clone())
            }
        ))
        .unwrap(),
        json!({"type":"message","channel":"ch","offset":9,"data":[1],"info":{"client":"c","user":"u"}})
    );
    assert_eq!(
        text(ServerFrame::Join {
            channel: "ch",
            info: &info
        }),
        json!({"type":"join","channel":"ch","info":{"client":"c","user":"u"}})
    );
    assert_eq!(
        text(ServerFrame::Reset {
            channel: "ch",
            epoch: "e2"
        }),
        json!({"type":"reset","channel":"ch","epoch":"e2"})
    );
    assert_eq!(text(ServerFrame::Pong { id: None }), json!({"type":"pong"}));
}

#[test]
fn message_frame_matches_serde_for_awkward_strings() {
    for user in [
        "",
        "plain",
        "quo\"te",
        "back\\slash",
        "tab\there",
        "é ü 字",
        "\u{7f}\u{1}",
    ] {
        let info = ClientInfo {
            client: "c-1".into(),
            user: user.into(),
        };
        let p = Publication {
            offset: 12,
            data: raw(r#"{"k":"v"}"#),
            info: Some(info.clone()),
        };
        let got: serde_json::Value =
            serde_json::from_str(&message_frame("a:b", &p)).expect("valid JSON");
        assert_eq!(
            got,
            json!({"type":"message","channel":"a:b","offset":12,"data":{"k":"v"},"info":{"client":"c-1","user":user}})
        );
    }
    let p = Publication {
        offset: 1,
        data: raw("null"),
        info: None,
    };
    assert_eq!(
        &*message_frame("x", &p),
        r#"{"type":"message","channel":"x","offset":1,"data":null}"#
    );
}

#[test]
fn publications_round_trip() {
    let p: Publication =
        serde_json::from_str(r#"{"offset":4,"data":"hi","info":{"client":"a","user":""}}"#)
            .unwrap();
    assert_eq!(p.offset, 4);
    assert_eq!(p.data.get(), "\"hi\"");
    let back = serde_json::to_string(&p).unwrap();
    assert_eq!(
        back,
        r#"{"offset":4,"data":"hi","info":{"client":"a","user":""}}"#
    );
}

#[test]
fn close_codes_match_the_table() {
    let table: Vec<(u16, &str, bool)> = CloseCode::ALL
        .iter()
        .map(|c| (c.code(), c.reason(), c.reconnect()))
        .collect();
    assert_eq!(
        table,
        vec![
            (1001, "shutdown", true),
            (1003, "unsupported_data", false),
            (1007, "invalid_payload", false),
            (1009, "message_too_big", false),
            (4000, "heartbeat_timeout", true),
            (4001, "slow_consumer", true),
            (4002, "token_expired", true),
            (4003, "disconnected", false),
            (4004, "too_many_errors", false),
        ]
    );
}

proptest::proptest! {
    #[test]
    fn parser_never_panics_on_any_text(s in "\\PC*") {
        let _ = parse_command(&s);
    }

    #[test]
    fn parser_never_panics_on_json_like_text(
        t in proptest::sample::select(vec!["subscribe","unsubscribe","publish","ping","presence","history","refresh","x"]),
        ch in "[ -~]{0,300}",
        extra in "[{}\\[\\]\":,0-9a-z ]{0,40}",
    ) {
        let frame = format!(r#"{{"type":"{t}","channel":{ch:?},"data":{extra},"since":{extra}}}"#);
        let _ = parse_command(&frame);
        let frame = format!(r#"{{"type":"{t}","channel":{ch:?},"id":{extra}}}"#);
        let _ = parse_command(&frame);
    }
}

#[test]
fn json_depth_counts_brackets_outside_strings() {
    assert_eq!(json_depth("1"), 0);
    assert_eq!(json_depth(r#""[{""#), 0);
    assert_eq!(json_depth("[]"), 1);
    assert_eq!(json_depth(r#"{"a":[1,{"b":[]}],"c":{}}"#), 4);
    assert_eq!(json_depth(r#"["\"[[[", [2]]"#), 2);
    assert_eq!(json_depth(r#"["\\", [[3]]]"#), 3);
    let deep = format!(
        "{}{}",
        "[".repeat(MAX_DATA_DEPTH + 1),
        "]".repeat(MAX_DATA_DEPTH + 1)
    );
    assert_eq!(json_depth(&deep), MAX_DATA_DEPTH + 1);
    let e = parse_command(&format!(
        r#"{{"type":"publish","id":9,"channel":"c","data":{deep}}}"#
    ))
    .expect_err("too deep");
    assert_eq!((e.code, e.id), (ErrorCode::BadRequest, Some(Id::Num(9))));
}

/// Found by the command fuzz target: `data` with a lone surrogate escape or a number past
/// 64-bit floats was relayed, and serde_json refuses the whole `message` push that carries it.
#[test]
fn data_that_json_readers_refuse_is_found_and_refused() {
    let long = format!("{}0", "9".repeat(400));
    for (bad, what) in [
        (r#""\ud83d""#, "surrogate"),
        (r#""\uDE00""#, "surrogate"),
        (r#"["\ud83dx"]"#, "surrogate"),
        (r#"{"a":"\ud83d\n"}"#, "surrogate"),
        (r#""\ud83d\u0041""#, "surrogate"),
        (r#""\ude00\ud83d""#, "surrogate"),
        (r#""\\\ud800""#, "surrogate"),
        ("1e309", "1e308"),
        ("[-1.5e605]", "1e308"),
        (r#"{"n":1.8e308}"#, "1e308"),
        (long.as_str(), "1e308"),
    ] {
        assert!(unreadable(bad).is_some(), "{bad}");
        assert!(serde_json::from_str::<serde_json::Value>(bad).is_err());
        let e = parse_command(&format!(
            r#"{{"type":"publish","id":3,"channel":"c","data":{bad}}}"#
        ))
        .expect_err(bad);
        assert_eq!((e.code, e.id), (ErrorCode::BadRequest, Some(Id::Num(3))));
        assert!(e.message.contains(what), "{}", e.message);
    }
    for fine in [
        r#""\ud83d\ude00""#,
        r#""\uD83D\uDE00\ud7ff\ue000""#,
        r#""\\ud800""#,
        r#"["\\\\ud800", 1]"#,
        r#""\u00e9\"\/ 1e999""#,
        "[1e308, -1e308, 1e-400, 0e999999, 123456789012345678901234567890, -0.0]",
        "null",
    ] {
        assert_eq!(unreadable(fine), None, "{fine}");
        assert!(serde_json::from_str::<serde_json::Value>(fine).is_ok());
        let r = parse_command(&format!(
            r#"{{"type":"publish","channel":"c","data":{fine}}}"#
        ));
        assert!(r.is_ok(), "{fine}: {r:?}");
    }
}

#[test]
fn data_with_line_breaks_is_stored_compact() {
    let written = "{\r\n  \"a\": [1,\n 2],\n  \"s\": \"x \\n y \\\" {\\\\\"\t, \"t\" : \"\\\\\"\n}";
    let r = parse_command(&format!(
        r#"{{"type":"publish","channel":"c","data":{written}}}"#
    ))
    .expect("publish");
    let Command::Publish { data, .. } = r.command else {
        panic!("not a publish: {:?}", r.command);
    };
    assert_eq!(data.get(), r#"{"a":[1,2],"s":"x \n y \" {\\","t":"\\"}"#);
    let before: serde_json::Value = serde_json::from_str(written).expect("json");
    let after: serde_json::Value = serde_json::from_str(data.get()).expect("json");
    assert_eq!(before, after, "the same value");
    // Without a line break the value goes exactly as written, spaces and all.
    let spaced = raw(r#"{ "a" : 1 }"#);
    assert_eq!(compact_data(&spaced).get(), r#"{ "a" : 1 }"#);
    assert_eq!(compact_data(&raw("\"é\"")).get(), "\"é\"");
}

#[test]
fn publish_takes_an_optional_idempotency_key() {
    let r = parse_command(r#"{"type":"publish","channel":"c","data":1,"idempotency_key":"k-1"}"#)
        .expect("publish");
    let Command::Publish {
        idempotency_key, ..
    } = r.command
    else {
        panic!("not a publish: {:?}", r.command);
    };
    assert_eq!(idempotency_key.as_ref().map(|k| k.as_str()), Some("k-1"));
    for absent in [
        r#"{"type":"publish","channel":"c","data":1}"#,
        r#"{"type":"publish","channel":"c","data":1,"idempotency_key":null}"#,
    ] {
        let r = parse_command(absent).expect("publish");
        assert!(
            matches!(
                r.command,
                Command::Publish {
                    idempotency_key: None,
                    ..
                }
            ),
            "{absent}"
        );
    }
    let long = "k".repeat(65);
    for bad in [r#""""#, "5", "{}", &format!("\"{long}\"")] {
        let e = parse_command(&format!(
            r#"{{"type":"publish","id":7,"channel":"c","data":1,"idempotency_key":{bad}}}"#
        ))
        .expect_err(bad);
        assert_eq!(
            (e.id, e.code),
            (Some(Id::Num(7)), ErrorCode::BadRequest),
            "{bad}"
        );
        assert!(e.message.contains("idempotency_key"), "{}", e.message);
        assert!(!e.message.contains(&long), "the key is not echoed");
    }
    // Other commands ignore it, as they ignore every field they do not use.
    assert!(parse_command(r#"{"type":"ping","idempotency_key":5}"#).is_ok());
}
