//! Unit tests of the settings: loading, validation, environment names and printing.

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_match_the_contract() {
    let s = Settings::load_from(None, vec![]).expect("defaults load");
    assert_eq!(s.server.bind, "127.0.0.1:8080");
    assert_eq!(s.server.allowed_origins, vec!["*"]);
    assert_eq!(s.heartbeat.interval.0, Duration::from_secs(10));
    assert_eq!(s.heartbeat.timeout.0, Duration::from_secs(30));
    assert_eq!(s.limits.max_message_size, 65536);
    assert_eq!(s.limits.max_pending_bytes, 1_048_576);
    assert_eq!(s.channels.history_ttl.0, Duration::from_secs(300));
    assert!(s.api.keys.is_empty());
}

#[test]
fn environment_overrides_with_lists_and_namespaces() {
    let s = Settings::load_from(
        None,
        env(&[
            ("SWITCHBOARD__API__KEYS", "k1,k2"),
            ("SWITCHBOARD__HEARTBEAT__INTERVAL", "250ms"),
            ("SWITCHBOARD__LIMITS__MAX_ERRORS", "3"),
            ("SWITCHBOARD__AUTH__HMAC_SECRET", "12345"),
            ("SWITCHBOARD__LIMITS__MAX_CONNECTIONS", "7"),
            ("SWITCHBOARD__CHANNELS__PRESENCE", "false"),
            ("SWITCHBOARD__NAMESPACES__CHAT__JOIN_LEAVE", "true"),
            ("OTHER__THING", "x"),
        ]),
    )
    .expect("env loads");
    assert_eq!(s.api.keys, vec!["k1", "k2"]);
    assert_eq!(s.heartbeat.interval.0, Duration::from_millis(250));
    assert_eq!(s.limits.max_errors, 3);
    assert_eq!(s.auth.hmac_secret.as_deref(), Some("12345"));
    assert_eq!(s.limits.max_connections, 7);
    assert!(!s.channels.presence);
    let one = Settings::load_from(None, env(&[("SWITCHBOARD__API__KEYS", "12345")]))
        .expect("an all-digit key");
    assert_eq!(one.api.keys, vec!["12345"]);
    let none =
        Settings::load_from(None, env(&[("SWITCHBOARD__API__KEYS", "")])).expect("empty keys");
    assert!(none.api.keys.is_empty());
    let ns = Namespaces::new(&s);
    assert!(ns.get("chat").join_leave);
    assert!(ns.get("chat").anonymous, "inherits from [channels]");
    assert!(!ns.get("other").join_leave);
}

#[test]
fn unknown_key_is_named() {
    let e = Settings::load_from(None, env(&[("SWITCHBOARD__LIMITS__MAX_BANANAS", "1")]))
        .expect_err("unknown key refused");
    assert!(e.to_string().contains("max_bananas"), "{e}");
}

#[test]
fn every_key_is_listed_for_the_warnings() {
    let mut s = Settings::default();
    s.server.tls_cert = Some("c".into());
    s.server.tls_key = Some("k".into());
    s.auth.hmac_secret = Some("x".into());
    s.auth.public_key_pem = Some("x".into());
    s.api.keys = vec!["k".into()];
    let table = toml::Table::try_from(&s).expect("settings as a table");
    let mut keys: Vec<String> = table
        .iter()
        .filter(|(section, _)| *section != "namespaces")
        .flat_map(|(section, t)| {
            let t = t.as_table().expect("a section is a table");
            t.keys().map(move |k| format!("{section}.{k}"))
        })
        .collect();
    keys.sort();
    let mut listed: Vec<String> = KEYS.iter().map(|k| k.to_string()).collect();
    listed.sort();
    assert_eq!(keys, listed);
}

#[test]
fn durations_take_fractions_and_numbers_as_text() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("f.toml");
    std::fs::write(&file, "[heartbeat]\ninterval = 1.5\ntimeout = 20\n").expect("write");
    let s = Settings::load_from(Some(&file), vec![]).expect("fractional seconds");
    assert_eq!(s.heartbeat.interval.0, Duration::from_millis(1500));
    assert_eq!(s.heartbeat.timeout.0, Duration::from_secs(20));
    let s = Settings::load_from(
        None,
        env(&[
            ("SWITCHBOARD__HEARTBEAT__INTERVAL", "5"),
            ("SWITCHBOARD__HEARTBEAT__TIMEOUT", "7.25"),
        ]),
    )
    .expect("seconds as text");
    assert_eq!(s.heartbeat.interval.0, Duration::from_secs(5));
    assert_eq!(s.heartbeat.timeout.0, Duration::from_millis(7250));
    for bad in ["-1", "-0.5", "NaN", "inf", "-2s"] {
        let e =
            Settings::load_from(None, env(&[("SWITCHBOARD__AUTH__LEEWAY", bad)])).expect_err(bad);
        assert!(e.to_string().contains("key `auth.leeway`"), "{e}");
    }
    let s = Settings::load_from(None, env(&[("SWITCHBOARD__AUTH__LEEWAY", "1day")]))
        .expect("a day, the longest leeway");
    assert_eq!(s.auth.leeway.0, Duration::from_secs(86_400));
    for bad in ["1day 1s", "60y"] {
        let e =
            Settings::load_from(None, env(&[("SWITCHBOARD__AUTH__LEEWAY", bad)])).expect_err(bad);
        assert!(e.to_string().contains("at most 1 day"), "{e}");
    }
}

#[test]
fn lists_from_the_environment_may_be_arrays() {
    let s = Settings::load_from(
        None,
        env(&[
            (
                "SWITCHBOARD__SERVER__ALLOWED_ORIGINS",
                r#"["http://a", 'https://b:8443']"#,
            ),
            ("SWITCHBOARD__API__KEYS", r#"["k,1", "k2"]"#),
        ]),
    )
    .expect("arrays");
    assert_eq!(s.server.allowed_origins, vec!["http://a", "https://b:8443"]);
    assert_eq!(s.api.keys, vec!["k,1", "k2"]);
    let s = Settings::load_from(
        None,
        env(&[(
            "SWITCHBOARD__SERVER__ALLOWED_ORIGINS",
            "http://a, http://b,",
        )]),
    )
    .expect("comma separated");
    assert_eq!(s.server.allowed_origins, vec!["http://a", "http://b"]);
}

#[test]
fn printed_settings_read_back_the_same() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("in.toml");
    std::fs::write(
        &file,
        "[heartbeat]\ninterval = 1.5\n[namespaces.chat]\njoin_leave = true\n\
         [namespaces.b]\nhistory_ttl = 90\nhistory_size = 0\n",
    )
    .expect("write");
    let s = Settings::load_from(
        Some(&file),
        env(&[
            ("SWITCHBOARD__API__KEYS", "k1,k\"2"),
            ("SWITCHBOARD__AUTH__HMAC_SECRET", "s3cret"),
            ("SWITCHBOARD__ENGINE__REDIS_URL", "redis://:pw@h:1/0"),
            ("SWITCHBOARD__SERVER__ALLOWED_ORIGINS", "http://a"),
        ]),
    )
    .expect("loads");
    let printed = s.to_toml(true).expect("toml");
    let again = dir.path().join("again.toml");
    std::fs::write(&again, &printed).expect("write");
    let back = Settings::load_from(Some(&again), vec![]).expect("reads back");
    assert_eq!(back.to_toml(true).expect("toml"), printed);
    assert_eq!(back.api.keys, vec!["k1", "k\"2"]);
    assert_eq!(back.heartbeat.interval.0, Duration::from_millis(1500));
    assert!(Namespaces::new(&back).get("chat").join_leave);
    let hidden = s.to_toml(false).expect("toml");
    for secret in ["s3cret", "k1", "pw@"] {
        assert!(!hidden.contains(secret), "{secret} in {hidden}");
    }
}

#[test]
fn idempotency_windows_are_per_namespace_and_at_most_a_day() {
    let s = Settings::load_from(
        None,
        env(&[
            ("SWITCHBOARD__CHANNELS__IDEMPOTENCY_WINDOW", "90s"),
            ("SWITCHBOARD__NAMESPACES__FIRE__IDEMPOTENCY_WINDOW", "0"),
        ]),
    )
    .expect("loads");
    let ns = Namespaces::new(&s);
    assert_eq!(ns.get("").idempotency_window.0, Duration::from_secs(90));
    assert_eq!(
        ns.get("other").idempotency_window.0,
        Duration::from_secs(90)
    );
    assert!(ns.get("fire").idempotency_window.0.is_zero(), "0: off");
    assert_eq!(
        Settings::default().channels.idempotency_window.0,
        Duration::from_secs(300)
    );
    let day = Settings::load_from(
        None,
        env(&[("SWITCHBOARD__CHANNELS__IDEMPOTENCY_WINDOW", "1day")]),
    );
    assert!(day.is_ok(), "{day:?}");
    for (var, key) in [
        (
            "SWITCHBOARD__CHANNELS__IDEMPOTENCY_WINDOW",
            "channels.idempotency_window",
        ),
        (
            "SWITCHBOARD__NAMESPACES__FIRE__IDEMPOTENCY_WINDOW",
            "namespaces.fire.idempotency_window",
        ),
    ] {
        let e = Settings::load_from(None, env(&[(var, "1day 1s")])).expect_err("too long");
        let e = e.to_string();
        assert!(e.contains(&format!("key `{key}`")), "{e}");
        assert!(e.contains("at most 1 day"), "{e}");
    }
}

#[test]
fn toml_text_loads_like_a_file() {
    let text = "[limits]\nmax_errors = 3\n[namespaces.chat]\njoin_leave = true\n";
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("f.toml");
    std::fs::write(&file, text).expect("write");
    let vars = env(&[("SWITCHBOARD__LIMITS__MAX_ERRORS", "4")]);
    let from_file = Settings::load_from(Some(&file), vars.clone()).expect("file loads");
    let from_text = Settings::load_from_toml(text, vars).expect("text loads");
    assert_eq!(from_text.to_toml(true).ok(), from_file.to_toml(true).ok());
    assert_eq!(from_text.limits.max_errors, 4, "the environment wins");
    let e = Settings::load_from_toml("[limits]\nmax_errors = -1\n", vec![])
        .expect_err("checked as a file is");
    assert!(e.to_string().contains("key `limits.max_errors`"), "{e}");
}

#[test]
fn bad_duration_is_named() {
    let e = Settings::load_from(None, env(&[("SWITCHBOARD__HEARTBEAT__TIMEOUT", "soon")]))
        .expect_err("bad duration refused");
    assert!(e.to_string().contains("timeout"), "{e}");
}

#[test]
fn redis_cluster_needs_seed_urls() {
    let kind = ("SWITCHBOARD__ENGINE__KIND", "redis_cluster");
    let s = Settings::load_from(
        None,
        env(&[
            kind,
            (
                "SWITCHBOARD__ENGINE__REDIS_URLS",
                "redis://127.0.0.1:7001,rediss://u:p@10.0.0.2:7002",
            ),
        ]),
    )
    .expect("a cluster with two seeds");
    assert_eq!(s.engine.kind, EngineKind::RedisCluster);
    assert_eq!(
        s.engine.redis_urls,
        vec!["redis://127.0.0.1:7001", "rediss://u:p@10.0.0.2:7002"]
    );
    let e = Settings::load_from(None, env(&[kind])).expect_err("no seeds");
    assert!(e.to_string().contains("engine.redis_urls"), "{e}");
    let e = Settings::load_from(
        None,
        env(&[kind, ("SWITCHBOARD__ENGINE__REDIS_URLS", "127.0.0.1:7001")]),
    )
    .expect_err("not a URL");
    assert!(
        e.to_string().contains("not a redis:// or rediss:// URL"),
        "{e}"
    );
    let e = Settings::load_from(None, env(&[("SWITCHBOARD__ENGINE__KIND", "cluster")]))
        .expect_err("unknown kind");
    assert!(e.to_string().contains("redis_cluster"), "{e}");
    // Seeds are ignored (and not required) by the other engines.
    let s = Settings::load_from(None, env(&[("SWITCHBOARD__ENGINE__KIND", "redis")]))
        .expect("redis without seeds");
    assert!(s.engine.redis_urls.is_empty());
}
