use std::collections::HashMap;

use super::*;

const GOOD: &str = r#"
[server]
listen = "127.0.0.1:9464"
admin_token = "${GAPWATCH_ADMIN_TOKEN}"

[state]
url = "sqlite:///tmp/gapwatch-test/state.db"

[aws]
region = "us-east-1"
endpoint_url = "http://127.0.0.1:5000"

[[feeds]]
name = "orders"
queue_url = "http://127.0.0.1:5000/123456789012/vendor-orders"

  [feeds.watch]
  mode = "relay"
  forward_to = "http://127.0.0.1:5000/123456789012/app-orders"
  event_time = "/created_at"
  event_time_format = "rfc3339"
  record_id = "/id"

  [feeds.freshness]
  max_silence = "5m"
  active = ["* * 8-21 * * Mon-Fri"]
  timezone = "America/New_York"

  [feeds.backfill]
  auto = true
  chunk = "1h"
  overlap = "2m"
  settle = "1m"
  concurrency = 2

    [feeds.backfill.source]
    url = "https://api.vendor.example/v1/events"
    query = { since = "{start}", until = "{end}", limit = "500", api_key = "${VENDOR_KEY}" }
    time_format = "rfc3339"
    headers = { Authorization = "Bearer ${VENDOR_TOKEN}" }
    records = "/data"
    record_id = "/id"
    record_time = "/created_at"
    rate_limit = "10/s"
    timeout = "30s"
    max_retries = 8
    pagination = { type = "cursor", cursor = "/next_cursor", param = "cursor" }
"#;

fn env() -> HashMap<String, String> {
    HashMap::from([
        (
            "GAPWATCH_ADMIN_TOKEN".to_string(),
            "admin-s3cret".to_string(),
        ),
        ("VENDOR_TOKEN".to_string(), "vendor-s3cret".to_string()),
        ("VENDOR_KEY".to_string(), "key-s3cret".to_string()),
    ])
}

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, &env())
}

/// What `check-config` says about a config that does not load.
fn load_err(text: &str) -> String {
    match load(text) {
        Ok(_) => panic!("the config loads:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_design_example_loads_with_real_types() {
    let c = load(GOOD).unwrap();
    assert_eq!(c.server.listen.port(), 9464);
    assert_eq!(
        c.state.url,
        StateUrl::Sqlite(PathBuf::from("/tmp/gapwatch-test/state.db"))
    );
    let f = &c.feeds[0];
    assert_eq!(f.watch.mode, WatchMode::Relay);
    assert_eq!(f.freshness.max_silence, Duration::from_secs(300));
    assert!(!f.freshness.window.is_always());
    let b = f.backfill.as_ref().unwrap();
    assert_eq!(b.chunk, Duration::from_secs(3600));
    assert_eq!(b.source.rate_limit.per_second(), 10.0);
    // Defaults: the format's own resolution, 16 MiB pages.
    assert_eq!(
        b.source.time_resolution,
        crate::timefmt::Resolution::MILLISECOND
    );
    assert_eq!(b.source.max_page_bytes, 16 << 20);
    let c = load(&GOOD.replacen(
        "\n    time_format = \"rfc3339\"",
        "\ntime_format = \"rfc3339\"\ntime_resolution = \"1s\"\nmax_page_bytes = \"512KiB\"",
        1,
    ))
    .unwrap();
    let s = &c.feeds[0].backfill.as_ref().unwrap().source;
    assert_eq!(s.time_resolution, crate::timefmt::Resolution::SECOND);
    assert_eq!(s.max_page_bytes, 512 << 10);
    assert_eq!(
        b.source.headers["Authorization"].expose(),
        "Bearer vendor-s3cret"
    );
    // The sink defaults to the relay's destination.
    match &b.sink {
        SinkConfig::Sqs { queue_url, .. } => assert!(queue_url.ends_with("/app-orders")),
        other => panic!("unexpected sink {other:?}"),
    }
}

#[test]
fn redacted_output_hides_every_secret() {
    let c = load(GOOD).unwrap();
    let out = c.to_redacted_toml();
    for secret in ["admin-s3cret", "vendor-s3cret", "key-s3cret"] {
        assert!(!out.contains(secret), "{secret} leaked:\n{out}");
    }
    assert!(out.contains("<redacted>"));
    // Plain values stay visible.
    assert!(out.contains("{start}"));
    assert!(format!("{c:?}").contains("<redacted>"));
    assert!(!format!("{c:?}").contains("vendor-s3cret"));
}

#[test]
fn env_overrides_use_double_underscores() {
    let mut e = env();
    e.insert("GAPWATCH__SERVER__LISTEN".into(), "127.0.0.1:19464".into());
    e.insert("GAPWATCH__STATE__URL".into(), "sqlite://other.db".into());
    let c = Config::from_toml(GOOD, &e).unwrap();
    assert_eq!(c.server.listen.port(), 19464);
    assert_eq!(c.state.url, StateUrl::Sqlite(PathBuf::from("other.db")));
}

/// Each bad value must produce an error naming its key.
#[test]
fn invalid_values_name_their_key() {
    let cases: &[(&str, &str, &str)] = &[
        ("max_silence = \"5m\"", "max_silence = \"5 parsecs\"", "feeds[0].freshness.max_silence"),
        ("max_silence = \"5m\"", "max_silence = \"0s\"", "feeds[0].freshness.max_silence: must be greater than zero"),
        ("\"* * 8-21 * * Mon-Fri\"", "\"* * 25 * * Mon-Fri\"", "feeds[0].freshness.active[0]"),
        ("\"* * 8-21 * * Mon-Fri\"", "\"8-21 * * *\"", "feeds[0].freshness.active[0]: invalid cron expression"),
        ("mode = \"relay\"", "mode = \"tail\"", "feeds[0].watch.mode"),
        ("timezone = \"America/New_York\"", "timezone = \"Mars/Olympus\"", "feeds[0].freshness.timezone"),
        ("chunk = \"1h\"", "chunk = \"soon\"", "feeds[0].backfill.chunk"),
        ("concurrency = 2", "concurrency = 0", "feeds[0].backfill.concurrency"),
        ("record_id = \"/id\"\n\n  [feeds.freshness]", "record_id = \"/id\"\n  pollers = 0\n\n  [feeds.freshness]", "feeds[0].watch.pollers: must be between 1 and 64, got 0"),
        ("record_id = \"/id\"\n\n  [feeds.freshness]", "record_id = \"/id\"\n  pollers = 65\n\n  [feeds.freshness]", "feeds[0].watch.pollers: must be between 1 and 64, got 65"),
        ("/v1/events\"", "/v1/events/{stat}\"", "feeds[0].backfill.source.url: unknown placeholder {stat}"),
        ("since = \"{start}\"", "since = \"{begin}\"", "feeds[0].backfill.source.query.since: unknown placeholder {begin}"),
        ("rate_limit = \"10/s\"", "rate_limit = \"fast\"", "feeds[0].backfill.source.rate_limit"),
        ("url = \"https://api.vendor.example/v1/events\"", "url = \"not a url\"", "feeds[0].backfill.source.url"),
        ("queue_url = \"http://127.0.0.1:5000/123456789012/vendor-orders\"", "", "feeds[0].queue_url: is required in relay mode"),
        ("forward_to = \"http://127.0.0.1:5000/123456789012/app-orders\"", "", "feeds[0].watch.forward_to: is required in relay mode"),
        ("event_time = \"/created_at\"", "event_time = \"created_at\"", "feeds[0].watch.event_time: invalid JSON pointer"),
        ("listen = \"127.0.0.1:9464\"", "listen = \"everywhere\"", "server.listen"),
        ("[server]", "[server]\nlisten_port = 1", "server"),
        ("url = \"sqlite:///tmp/gapwatch-test/state.db\"", "url = \"mysql://x\"", "state.url: unsupported store"),
        ("pagination = { type = \"cursor\", cursor = \"/next_cursor\", param = \"cursor\" }", "pagination = { type = \"scroll\" }", "feeds[0].backfill.source"),
        ("timeout = \"30s\"", "timeout = \"0s\"", "feeds[0].backfill.source.timeout"),
        ("Bearer ${VENDOR_TOKEN}", "Bearer ${MISSING_TOKEN}", "feeds[0].backfill.source.headers.Authorization: environment variable MISSING_TOKEN is not set"),
        ("max_retries = 8\n", "max_retries = 8\ntime_resolution = \"1500us\"\n", "feeds[0].backfill.source.time_resolution: must be a whole multiple of 1ms"),
        ("\n    time_format = \"rfc3339\"", "\ntime_format = \"unix_s\"\ntime_resolution = \"1500ms\"", "feeds[0].backfill.source.time_resolution: must be a whole multiple of 1s (what time_format unix_s can write)"),
        ("max_retries = 8\n", "max_retries = 8\nmax_page_bytes = \"lots\"\n", "feeds[0].backfill.source.max_page_bytes: invalid size"),
        ("pagination = { type = \"cursor\", cursor = \"/next_cursor\", param = \"cursor\" }", "pagination = { type = \"cursor\", cursor = \"/next_cursor\", param = \"cursor\" }\n[feeds.backfill.sink]\ntype = \"sqs\"\nin_flight = 0", "feeds[0].backfill.sink.in_flight: must be between 1 and 16, got 0"),
        ("pagination = { type = \"cursor\", cursor = \"/next_cursor\", param = \"cursor\" }", "pagination = { type = \"cursor\", cursor = \"/next_cursor\", param = \"cursor\" }\n[feeds.backfill.sink]\ntype = \"sqs\"\nqueue_url = \"http://127.0.0.1:5000/123456789012/app.fifo\"\nin_flight = 4", "feeds[0].backfill.sink.in_flight: must be 1 for a FIFO queue"),
        ("max_retries = 8\n", "max_retries = 8\nmax_page_bytes = \"0\"\n", "feeds[0].backfill.source.max_page_bytes: invalid size"),
    ];
    for (from, to, want) in cases {
        assert!(GOOD.contains(from), "test case does not apply: {from}");
        let text = GOOD.replacen(from, to, 1);
        let err = load(&text)
            .expect_err(&format!("{to} should be refused"))
            .to_string();
        assert!(err.contains(want), "for {to:?}: wanted {want:?} in:\n{err}");
        for secret in ["admin-s3cret", "vendor-s3cret", "key-s3cret"] {
            assert!(!err.contains(secret), "{secret} leaked in: {err}");
        }
    }
}

#[test]
fn a_window_in_the_path_alone_is_enough() {
    // {end} alone in the path asks for an interval too; JSON braces in a
    // query value are not placeholders.
    let text = GOOD
        .replacen("/v1/events\"", "/v1/events/until/{end}\"", 1)
        .replacen(
            "since = \"{start}\", until = \"{end}\",",
            "filter = '{\"type\":\"order\"}',",
            1,
        );
    let c = load(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.feeds[0].watch.pollers.get(), 4);
}

#[test]
fn duplicate_feed_names_are_refused() {
    let second = GOOD.split("[[feeds]]").nth(1).unwrap();
    let text = format!("{GOOD}\n[[feeds]]{second}");
    let err = load_err(&text);
    assert!(
        err.contains("feeds[1].name: duplicate feed name \"orders\""),
        "{err}"
    );
}

#[test]
fn all_problems_are_reported_at_once() {
    let text = GOOD
        .replace("max_silence = \"5m\"", "max_silence = \"0s\"")
        .replace("chunk = \"1h\"", "chunk = \"x\"");
    let err = load_err(&text);
    assert!(err.contains("max_silence"), "{err}");
    assert!(err.contains("backfill.chunk"), "{err}");
}

#[test]
fn report_mode_needs_no_queue() {
    let text = r#"
[state]
url = "sqlite://x.db"
[server]
report_token = "r3port"
[[feeds]]
name = "clicks"
[feeds.watch]
mode = "report"
"#;
    let c = load(text).unwrap();
    assert_eq!(c.feeds[0].watch.mode, WatchMode::Report);
    assert!(c.feeds[0].freshness.window.is_always());
    assert!(c.server.admin_token.is_none());
    assert!(c.server.report_token.is_some());
}

#[test]
fn report_mode_needs_a_token() {
    let text = r#"
[state]
url = "sqlite://x.db"
[[feeds]]
name = "clicks"
[feeds.watch]
mode = "report"
"#;
    let err = load_err(text);
    assert!(
        err.contains("feeds[0].watch.mode: report mode needs server.report_token"),
        "{err}"
    );
}

#[test]
fn passive_mode_needs_cloudwatch() {
    let text = r#"
[state]
url = "sqlite://x.db"
[monitor]
cloudwatch = false
[[feeds]]
name = "clicks"
queue_url = "https://sqs.us-east-1.amazonaws.com/1/clicks"
[feeds.watch]
mode = "passive"
[feeds.freshness]
max_silence = "30s"
"#;
    let err = load_err(text);
    assert!(
        err.contains("feeds[0].watch.mode: passive mode reads CloudWatch"),
        "{err}"
    );
}

#[test]
fn two_feeds_cannot_share_a_file_sink() {
    let feed = |name: &str| {
        format!(
            r#"
[[feeds]]
name = "{name}"
[feeds.watch]
mode = "report"
[feeds.backfill.source]
url = "http://127.0.0.1:1/v1"
query = {{ since = "{{start}}" }}
record_time = "/t"
[feeds.backfill.sink]
type = "file"
path = "/tmp/same.ndjson"
"#
        )
    };
    let text = format!(
        "[state]\nurl = \"sqlite://x.db\"\n{}{}",
        feed("a"),
        feed("b")
    );
    let err = load_err(&text);
    assert!(err.contains("feeds[1].backfill.sink.path: /tmp/same.ndjson is already the file sink of another feed"), "{err}");
}

#[test]
fn a_postgres_state_url_is_accepted_and_its_password_never_shown() {
    let text = GOOD.replace(
        "url = \"sqlite:///tmp/gapwatch-test/state.db\"",
        "url = \"postgres://gapwatch:pg-s3cret@db.internal:5432/gapwatch\"",
    );
    let c = load(&text).unwrap();
    assert!(matches!(c.state.url, StateUrl::Postgres(_)));
    let out = c.to_redacted_toml();
    assert!(!out.contains("pg-s3cret"), "{out}");
    assert!(out.contains("postgres://gapwatch:<redacted>@db.internal:5432/gapwatch"));
    assert!(!format!("{c:?}").contains("pg-s3cret"));
    let bad = GOOD.replace(
        "url = \"sqlite:///tmp/gapwatch-test/state.db\"",
        "url = \"postgres://u:pg-s3cret@[bad\"",
    );
    let err = load_err(&bad);
    assert!(
        err.contains("state.url") && !err.contains("pg-s3cret"),
        "{err}"
    );
}

// === properties ===

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// A config without secrets, so its rendering is complete.
    fn relay_config(
        names: &[String],
        silence: &str,
        skew: &str,
        chunk: &str,
        concurrency: i64,
        tz: &str,
    ) -> String {
        let mut text = String::from("[state]\nurl = \"sqlite:///tmp/gapwatch-prop/state.db\"\n[monitor]\ncloudwatch = false\n");
        for (i, name) in names.iter().enumerate() {
            text.push_str(&format!(
                r#"
[[feeds]]
name = "{name}"
queue_url = "http://127.0.0.1:5000/1/vendor-{i}"
  [feeds.watch]
  mode = "relay"
  forward_to = "http://127.0.0.1:5000/1/app-{i}"
  event_time = "/t"
  event_time_format = "unix_ms"
  [feeds.freshness]
  max_silence = "{silence}"
  max_future_skew = "{skew}"
  timezone = "{tz}"
  active = ["* * 8-17 * * Mon-Fri"]
  [feeds.backfill]
  chunk = "{chunk}"
  concurrency = {concurrency}
    [feeds.backfill.source]
    url = "http://127.0.0.1:8080/v1/events"
    query = {{ since = "{{start}}", until = "{{end}}" }}
    record_time = "/t"
"#
            ));
        }
        text
    }

    #[test]
    fn the_generated_shape_loads_and_round_trips() {
        let text = relay_config(&["orders".into()], "5m", "30s", "1h", 2, "UTC");
        let c = Config::from_toml(&text, &env()).unwrap();
        let rendered = c.to_redacted_toml();
        let again = Config::from_toml(&rendered, &env()).unwrap();
        assert_eq!(again.to_redacted_toml(), rendered);
        assert_eq!(
            again.feeds[0].freshness.max_future_skew,
            std::time::Duration::from_secs(30)
        );
    }

    fn duration() -> impl Strategy<Value = String> {
        (
            1u64..100_000,
            prop::sample::select(vec!["s", "m", "h", "ms", "d"]),
        )
            .prop_map(|(n, u)| format!("{n}{u}"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the bytes, loading answers Ok or a list of errors; it never panics.
        #[test]
        fn arbitrary_text_never_panics(text in ".{0,400}") {
            let _ = Config::from_toml(&text, &env());
        }

        /// TOML-shaped noise reaches the validator (keys, tables, odd values)
        /// and still never panics; every error names a key or the parse.
        #[test]
        fn arbitrary_values_never_panic(
            key in prop::sample::select(vec![
                "max_silence", "max_future_skew", "timezone", "chunk", "overlap", "settle",
                "concurrency", "rate_limit", "timeout", "max_retries", "event_time_format",
            ]),
            value in prop_oneof![
                ".{0,30}".prop_map(|s| format!("{s:?}")),
                any::<i64>().prop_map(|n| n.to_string()),
                any::<f64>().prop_map(|f| format!("{f:?}")),
                Just("[]".to_string()),
                Just("{}".to_string()),
            ],
        ) {
            let section = match key {
                "max_silence" | "max_future_skew" | "timezone" => "feeds.freshness",
                "rate_limit" | "timeout" | "max_retries" => "feeds.backfill.source",
                "event_time_format" => "feeds.watch",
                _ => "feeds.backfill",
            };
            let base = relay_config(&["orders".into()], "5m", "5m", "1h", 2, "UTC");
            // Append the key to its table (TOML allows re-opening by a later
            // dotted key only through a new table header, so patch in place).
            let header = format!("[{section}]\n");
            let text = base.replacen(&header, &format!("{header}  {key} = {value}\n"), 1);
            if let Err(e) = Config::from_toml(&text, &env()) {
                prop_assert!(!e.to_string().is_empty());
            }
        }

        /// A valid config, rendered by `check-config` and loaded again,
        /// renders the same: the resolved form is a fixed point.
        #[test]
        fn resolved_config_round_trips(
            names in prop::collection::btree_set("[a-z][a-z0-9_-]{0,15}", 1..4),
            silence in duration(),
            skew in duration(),
            chunk in duration(),
            concurrency in 1i64..16,
            tz in prop::sample::select(vec!["UTC", "America/New_York", "Europe/Berlin", "Asia/Kolkata"]),
        ) {
            let names: Vec<String> = names.into_iter().collect();
            let text = relay_config(&names, &silence, &skew, &chunk, concurrency, tz);
            let first = match Config::from_toml(&text, &env()) {
                Ok(c) => c,
                // Some generated values are refused (a chunk below the floor, say):
                // the refusal must name its key.
                Err(e) => {
                    let e = e.to_string();
                    prop_assert!(e.lines().all(|l| l.contains(".backfill.chunk") || l.contains(".max_silence")), "{}", e);
                    return Ok(());
                }
            };
            let rendered = first.to_redacted_toml();
            let second = Config::from_toml(&rendered, &env())
                .map_err(|e| TestCaseError::fail(format!("{e}\n{rendered}")))?;
            prop_assert_eq!(second.to_redacted_toml(), rendered);
            prop_assert_eq!(second.feeds.len(), names.len());
            prop_assert_eq!(second.feeds[0].freshness.max_future_skew, first.feeds[0].freshness.max_future_skew);
        }
    }
}

#[test]
fn the_audit_section_defaults_and_is_checked() {
    let c = load(&format!("{GOOD}\n  [feeds.audit]\n")).unwrap();
    let a = c.feeds[0].audit.as_ref().unwrap();
    assert_eq!(
        (a.every, a.lookback, a.delay),
        (
            Duration::from_secs(900),
            Duration::from_secs(86_400),
            Duration::from_secs(600)
        )
    );
    // The ledger keeps ids for the lookback plus the margin.
    assert_eq!(
        c.feeds[0].ledger_retention(),
        Duration::from_secs(86_400) + LEDGER_MARGIN
    );
    let c = load(&format!(
        "{GOOD}\n  [feeds.audit]\n  every = \"1m\"\n  lookback = \"2h\"\n  delay = \"5m\"\n"
    ))
    .unwrap();
    assert_eq!(
        c.feeds[0].ledger_retention(),
        Duration::from_secs(7200) + LEDGER_MARGIN
    );
    for (audit, key) in [
        (
            "delay = \"10s\"",
            "feeds[0].audit.delay: must be at least backfill.settle",
        ),
        (
            "lookback = \"20m\"",
            "feeds[0].audit.lookback: must be longer than delay + every",
        ),
        ("every = \"0s\"", "feeds[0].audit.every"),
        ("often = \"1m\"", "unknown field `often`"),
    ] {
        let err = load_err(&format!("{GOOD}\n  [feeds.audit]\n  {audit}\n"));
        assert!(err.contains(key), "{audit}: {err}");
    }
    // Without a backfill section there is nothing to list records with.
    let no_backfill = GOOD.split("  [feeds.backfill]").next().unwrap();
    let err = load_err(&format!("{no_backfill}\n  [feeds.audit]\n"));
    assert!(
        err.contains("feeds[0].audit: needs [feeds.backfill]"),
        "{err}"
    );
}

const SHAPED: &str = r#"
  envelope = "eventbridge"
  envelope_fields = { "detail-type" = "order.created", source = "partner.acme" }

  [feeds.freshness]"#;

const RENDER: &str = r#"
  concurrency = 2
  render = '{kind: .type, data: .}'
  filter = '.type == "order"'
  attributes = { event-type = ".type" }
"#;

#[test]
fn envelope_and_jq_programs_load_and_print_back() {
    let text = GOOD
        .replacen(
            "

  [feeds.freshness]",
            SHAPED,
            1,
        )
        .replacen(
            "
  concurrency = 2
",
            RENDER,
            1,
        );
    let c = load(&text).unwrap();
    let f = &c.feeds[0];
    assert_eq!(f.watch.envelope, Envelope::EventBridge);
    assert_eq!(f.watch.envelope_fields["detail-type"], "order.created");
    let b = f.backfill.as_ref().unwrap();
    assert_eq!(
        b.render.as_ref().unwrap().source(),
        "{kind: .type, data: .}"
    );
    assert_eq!(
        b.attributes["event-type"].key(),
        "feeds[0].backfill.attributes.event-type"
    );
    let printed = c.to_redacted_toml();
    assert!(printed.contains("envelope = \"eventbridge\""), "{printed}");
    // What check-config prints loads again.
    let again = load(&printed.replace("<redacted>", "x")).unwrap();
    assert_eq!(
        again.feeds[0]
            .backfill
            .as_ref()
            .unwrap()
            .filter
            .as_ref()
            .unwrap()
            .source(),
        ".type == \"order\""
    );
}

#[test]
fn a_program_that_does_not_compile_names_its_key_and_position() {
    let text = GOOD.replacen(
        "
  concurrency = 2
",
        "
  concurrency = 2
  render = '{id: .id, detail: .'
  attributes = { \"bad name\" = \".x\", kind = \".type |\" }
",
        1,
    );
    let err = load_err(&text);
    assert!(
        err.contains("feeds[0].backfill.render: jq program does not compile at line 1, column"),
        "{err}"
    );
    assert!(
        err.contains("feeds[0].backfill.attributes.bad name: is not an SQS attribute name"),
        "{err}"
    );
    assert!(
        err.contains(
            "feeds[0].backfill.attributes.kind: jq program does not compile at line 1, column 8"
        ),
        "{err}"
    );
}

#[test]
fn envelope_fields_need_an_envelope() {
    let text = GOOD.replacen(
        "

  [feeds.freshness]",
        "
  envelope_fields = { source = \"x\" }

  [feeds.freshness]",
        1,
    );
    let err = load_err(&text);
    assert!(
        err.contains("feeds[0].watch.envelope_fields: needs watch.envelope"),
        "{err}"
    );
    let text = GOOD.replacen(
        "

  [feeds.freshness]",
        "
  envelope = \"kafka\"

  [feeds.freshness]",
        1,
    );
    let err = load_err(&text);
    assert!(err.contains("envelope"), "{err}");
}

fn with_auth(auth: &str) -> String {
    GOOD.replace(
        "    headers = { Authorization = \"Bearer ${VENDOR_TOKEN}\" }\n",
        &format!("    auth = {auth}\n"),
    )
}

#[test]
fn source_auth_secrets_are_redacted_and_errors_name_the_key() {
    for auth in [
        r#"{ type = "bearer", token = "${VENDOR_TOKEN}" }"#,
        r#"{ type = "basic", username = "user-s3cret", password = "${VENDOR_TOKEN}" }"#,
        r#"{ type = "oauth2_client_credentials", token_url = "https://id.vendor.example/token", client_id = "user-s3cret", client_secret = "${VENDOR_TOKEN}", scopes = ["a", "b"], auth_style = "basic" }"#,
    ] {
        let c = load(&with_auth(auth)).unwrap();
        let shown = c.to_redacted_toml() + &format!("{c:?}");
        assert!(!shown.contains("vendor-s3cret"), "{shown}");
        assert!(!shown.contains("user-s3cret"), "{shown}");
        assert!(c.feeds[0].backfill.as_ref().unwrap().source.auth.is_some());
    }
    let bad = [
        (
            r#"{ type = "bearer", token = "" }"#,
            "feeds[0].backfill.source.auth.token: must not be empty",
        ),
        (
            r#"{ type = "basic", username = "a:b", password = "p" }"#,
            "feeds[0].backfill.source.auth.username: must not contain ':'",
        ),
        (
            r#"{ type = "oauth2_client_credentials", token_url = "ftp://x", client_id = "i", client_secret = "s" }"#,
            "feeds[0].backfill.source.auth.token_url: must be an http",
        ),
        (
            r#"{ type = "oauth2_client_credentials", token_url = "https://x/t", client_id = "i", client_secret = "s", scopes = ["a b"] }"#,
            "feeds[0].backfill.source.auth.scopes[0]:",
        ),
    ];
    for (auth, want) in bad {
        let e = load_err(&with_auth(auth));
        assert!(e.contains(want), "{auth}: {e}");
        assert!(!e.contains("vendor-s3cret"), "{e}");
    }
    let e = load_err(&with_auth(
        r#"{ type = "api_key", token = "vendor-s3cret" }"#,
    ));
    assert!(e.contains("auth"), "{e}");
    assert!(!e.contains("vendor-s3cret"), "{e}");
}

#[test]
fn status_lists_name_the_key_of_a_bad_status() {
    let add = |l: &str| {
        GOOD.replace(
            "    max_retries = 8\n",
            &format!("    max_retries = 8\n    {l}\n"),
        )
    };
    let c = load(&add("empty_on = [404]")).unwrap();
    assert_eq!(
        c.feeds[0].backfill.as_ref().unwrap().source.empty_on,
        vec![404]
    );
    let e = load_err(&add("retry_on = [200]"));
    assert!(e.contains("feeds[0].backfill.source.retry_on[0]:"), "{e}");
    let e = load_err(&add("empty_on = [404]\n    fail_on = [404]"));
    assert!(
        e.contains("feeds[0].backfill.source.empty_on: status 404 is also in fail_on"),
        "{e}"
    );
}

/// GOOD with its source asking for one store at a time.
fn partitioned(partitions: &str) -> String {
    let text = GOOD.replacen("/v1/events\"", "/v1/stores/{partition}/events\"", 1);
    format!("{text}\n  [feeds.partitions]\n{partitions}")
}

#[test]
fn partitions_load_from_values_or_a_listing_and_print_back() {
    let c = load(&partitioned(
        "  key = \"/store_id\"\n  values = [\"s1\", \"s2\"]\n",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let p = c.feeds[0].partitions.as_ref().unwrap();
    assert_eq!(p.key, "/store_id");
    assert_eq!(p.max.get(), 10_000);
    assert!(matches!(&p.list, PartitionList::Values(v) if v == &["s1", "s2"]));
    // The resolved config loads again.
    let again = load(&c.to_redacted_toml().replace("<redacted>", "x")).unwrap_or_else(|e| {
        panic!("{e}\n{}", c.to_redacted_toml());
    });
    assert!(again.feeds[0].is_partitioned());

    let c = load(&partitioned(
        "  key = \"/store_id\"\n  max = 50\n  from = { url = \"https://api.vendor.example/v1/stores\", records = \"/stores\" }\n",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let p = c.feeds[0].partitions.as_ref().unwrap();
    match &p.list {
        PartitionList::From(f) => {
            assert_eq!(f.url.as_str(), "https://api.vendor.example/v1/stores");
            assert_eq!((f.records.as_str(), f.value.as_str()), ("/stores", "/id"));
            assert_eq!(f.every, Duration::from_secs(3600));
        }
        other => panic!("{other:?}"),
    }
    let text = c.to_redacted_toml();
    assert!(text.contains("[feeds.partitions.from]"), "{text}");
    load(&text.replace("<redacted>", "x")).unwrap_or_else(|e| panic!("{e}\n{text}"));

    // A listing of several pages, by next URL or by cursor, prints back too.
    for (paging, want) in [
        (
            "next = \"/links/next\"",
            ListingPages::Next {
                next: "/links/next".into(),
            },
        ),
        (
            "cursor = \"/next_cursor\", param = \"after\"",
            ListingPages::Cursor {
                cursor: "/next_cursor".into(),
                param: "after".into(),
            },
        ),
    ] {
        let c = load(&partitioned(&format!(
            "  key = \"/store_id\"\n  from = {{ url = \"https://api.vendor.example/v1/stores\", {paging} }}\n"
        )))
        .unwrap_or_else(|e| panic!("{e}"));
        let pages = |c: &Config| match &c.feeds[0].partitions.as_ref().unwrap().list {
            PartitionList::From(f) => f.pages.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(pages(&c), Some(want.clone()));
        let text = c.to_redacted_toml();
        let again =
            load(&text.replace("<redacted>", "x")).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(pages(&again), Some(want), "{text}");
    }
}

#[test]
fn partition_errors_name_their_key() {
    let cases: &[(&str, &str)] = &[
        (
            "  key = \"store_id\"\n  values = [\"s1\"]\n",
            "feeds[0].partitions.key: invalid JSON pointer",
        ),
        (
            "  key = \"\"\n  values = [\"s1\"]\n",
            "feeds[0].partitions.key: must point into the record",
        ),
        ("  key = \"/s\"\n", "feeds[0].partitions: needs values"),
        (
            "  key = \"/s\"\n  values = [\"a\"]\n  from = { url = \"https://x.example/s\" }\n",
            "feeds[0].partitions: give values or from, not both",
        ),
        (
            "  key = \"/s\"\n  values = []\n",
            "feeds[0].partitions.values: must list at least one partition",
        ),
        (
            "  key = \"/s\"\n  values = [\"a\", \"\"]\n",
            "feeds[0].partitions.values[1]: must be 1 to 256 bytes long",
        ),
        (
            "  key = \"/s\"\n  values = [\"a\", \"b\", \"a\"]\n",
            "feeds[0].partitions.values[2]: duplicate value \"a\" (also values[0])",
        ),
        (
            "  key = \"/s\"\n  values = [\"a\", \"b\"]\n  max = 1\n",
            "feeds[0].partitions.values: 2 values, more than partitions.max (1)",
        ),
        (
            "  key = \"/s\"\n  values = [\"a\"]\n  max = 0\n",
            "feeds[0].partitions.max: must be between 1 and 1000000, got 0",
        ),
        (
            "  key = \"/s\"\n  from = { url = \"ftp://x\" }\n",
            "feeds[0].partitions.from.url",
        ),
        (
            "  key = \"/s\"\n  from = { url = \"https://x.example/s\", every = \"0s\" }\n",
            "feeds[0].partitions.from.every: must be greater than zero",
        ),
        (
            "  key = \"/s\"\n  from = { url = \"https://x.example/s\", value = \"id\" }\n",
            "feeds[0].partitions.from.value: invalid JSON pointer",
        ),
        (
            "  key = \"/s\"\n  from = { url = \"https://x.example/s\", next = \"/next\", cursor = \"/c\", param = \"c\" }\n",
            "feeds[0].partitions.from: give next or cursor (with param), not both",
        ),
        (
            "  key = \"/s\"\n  from = { url = \"https://x.example/s\", cursor = \"/c\" }\n",
            "feeds[0].partitions.from.param: needed with cursor",
        ),
        (
            "  key = \"/s\"\n  from = { url = \"https://x.example/s\", next = \"/next\", param = \"p\" }\n",
            "feeds[0].partitions.from.param: goes with cursor",
        ),
        (
            "  key = \"/s\"\n  from = { url = \"https://x.example/s\", next = \"links.next\" }\n",
            "feeds[0].partitions.from.next: invalid JSON pointer",
        ),
        (
            "  key = \"/s\"\n  values = [\"a\"]\n  color = \"red\"\n",
            "unknown field `color`",
        ),
    ];
    for (partitions, want) in cases {
        let err = load(&partitioned(partitions))
            .expect_err(partitions)
            .to_string();
        assert!(
            err.contains(want),
            "for {partitions:?}: wanted {want:?} in:\n{err}"
        );
    }
    // The source must name the partition it asks for, and only a
    // partitioned feed has one.
    let err = load_err(&format!(
        "{GOOD}\n  [feeds.partitions]\n  key = \"/s\"\n  values = [\"a\"]\n"
    ));
    assert!(
        err.contains("feeds[0].backfill.source.url: the feed is partitioned: name {partition}"),
        "{err}"
    );
    let err = load_err(&GOOD.replacen(
        "limit = \"500\"",
        "limit = \"500\", store = \"{partition}\"",
        1,
    ));
    assert!(
        err.contains("feeds[0].backfill.source.query.store: {partition} needs [feeds.partitions]"),
        "{err}"
    );
    // A query value naming it is enough.
    load(&format!(
        "{}\n  [feeds.partitions]\n  key = \"/s\"\n  values = [\"a\"]\n",
        GOOD.replacen(
            "limit = \"500\"",
            "limit = \"500\", store = \"{partition}\"",
            1
        )
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    // So is a header (or the body).
    load(&format!(
        "{}\n  [feeds.partitions]\n  key = \"/s\"\n  values = [\"a\"]\n",
        GOOD.replacen(
            "headers = { Authorization = \"Bearer ${VENDOR_TOKEN}\" }",
            "headers = { Authorization = \"Bearer ${VENDOR_TOKEN}\", X-Store = \"{partition}\" }",
            1
        )
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    // Passive feeds see no records; a listing needs the backfill source.
    let passive = partitioned("  key = \"/s\"\n  values = [\"a\"]\n")
        .replacen("mode = \"relay\"", "mode = \"passive\"", 1)
        .replacen(
            "forward_to = \"http://127.0.0.1:5000/123456789012/app-orders\"",
            "",
            1,
        );
    let err = load_err(&passive);
    assert!(
        err.contains("feeds[0].partitions: needs each record's partition value"),
        "{err}"
    );
    let no_backfill = GOOD.split("  [feeds.backfill]").next().unwrap();
    let err = load_err(&format!(
        "{no_backfill}\n  [feeds.partitions]\n  key = \"/s\"\n  from = {{ url = \"https://x.example/s\" }}\n"
    ));
    assert!(
        err.contains("feeds[0].partitions.from: needs [feeds.backfill]"),
        "{err}"
    );
}

#[test]
fn the_shape_check_runs_by_default_where_it_can_and_is_checked() {
    // A relay feed with both pointers and a backfill: on, with the defaults.
    let c = load(GOOD).unwrap();
    let s = c.feeds[0].shape.as_ref().expect("on by default");
    assert_eq!(s.every, Duration::from_secs(3600));
    assert_eq!(s.sample.get(), 20);
    assert!(s.ignore.is_empty());
    // The envelope's fresh fields are ignored first; `ignore` adds to them.
    let wrapped = GOOD.replacen("  [feeds.freshness]", SHAPED.trim_start_matches('\n'), 1);
    let c = load(&format!(
        "{wrapped}\n  [feeds.shape]\n  every = \"10m\"\n  sample = 5\n  ignore = [\"/detail/updated_at\", \"/id\"]\n  ignore_attributes = [\"trace-id\"]\n"
    ))
    .unwrap();
    let s = c.feeds[0].shape.as_ref().unwrap();
    assert_eq!(s.ignore, ["/id", "/time", "/detail/updated_at"]);
    assert_eq!(s.ignore_attributes, ["trace-id"]);
    assert_eq!((s.every, s.sample.get()), (Duration::from_secs(600), 5));
    let c = load(&format!("{GOOD}\n  [feeds.shape]\n  enabled = false\n")).unwrap();
    assert!(c.feeds[0].shape.is_none());
    // Off stays off when the resolved config is loaded again.
    let again = load(&c.to_redacted_toml().replace("<redacted>", "x")).unwrap();
    assert!(again.feeds[0].shape.is_none());

    for (shape, key) in [
        (
            "every = \"0s\"",
            "feeds[0].shape.every: must be greater than zero",
        ),
        (
            "sample = 0",
            "feeds[0].shape.sample: must be between 1 and 100, got 0",
        ),
        (
            "sample = 101",
            "feeds[0].shape.sample: must be between 1 and 100",
        ),
        (
            "ignore = [\"id\"]",
            "feeds[0].shape.ignore[0]: invalid JSON pointer",
        ),
        (
            "ignore = [\"\"]",
            "feeds[0].shape.ignore[0]: \"\" is the whole message",
        ),
        ("often = \"1m\"", "unknown field `often`"),
    ] {
        let err = load_err(&format!("{GOOD}\n  [feeds.shape]\n  {shape}\n"));
        assert!(err.contains(key), "{shape}: {err}");
    }
    // Where it cannot run: off by default, an error when asked for.
    let no_pointers = GOOD.replacen("  record_id = \"/id\"\n", "", 1);
    assert!(load(&no_pointers).unwrap().feeds[0].shape.is_none());
    let err = load_err(&format!("{no_pointers}\n  [feeds.shape]\n"));
    assert!(
        err.contains("feeds[0].shape: relay mode needs watch.record_id and watch.event_time"),
        "{err}"
    );
    let no_backfill = GOOD.split("  [feeds.backfill]").next().unwrap();
    assert!(load(no_backfill).unwrap().feeds[0].shape.is_none());
    let err = load_err(&format!("{no_backfill}\n  [feeds.shape]\n"));
    assert!(
        err.contains("feeds[0].shape: needs [feeds.backfill]"),
        "{err}"
    );
}

/// GOOD's source with its query and pagination lines replaced by `lines`.
fn with_request(lines: &str) -> String {
    GOOD.replace(
        "    query = { since = \"{start}\", until = \"{end}\", limit = \"500\", api_key = \"${VENDOR_KEY}\" }\n",
        "",
    )
    .replace(
        "    pagination = { type = \"cursor\", cursor = \"/next_cursor\", param = \"cursor\" }\n",
        &format!("{lines}\n"),
    )
}

#[test]
fn a_post_body_template_loads_as_a_table_or_as_json_text() {
    let table = with_request(
        r#"    method = "POST"
    pagination = { type = "cursor", cursor = "/next" }
    [feeds.backfill.source.body]
    query = { range = { from = "{start}", to = "{end}" }, kinds = ["order", "refund"] }
    cursor = "{cursor}"
    size = 100
    api_key = "${VENDOR_KEY}""#,
    );
    let text = with_request(
        r#"    method = "POST"
    pagination = { type = "cursor", cursor = "/next" }
    body = '{"query": {"range": {"from": "{start}", "to": "{end}"}, "kinds": ["order", "refund"]}, "cursor": "{cursor}", "size": 100, "api_key": "${VENDOR_KEY}"}'"#,
    );
    let mut templates = Vec::new();
    for t in [table, text] {
        let c = load(&t).unwrap_or_else(|e| panic!("{e}"));
        let s = &c.feeds[0].backfill.as_ref().unwrap().source;
        assert_eq!(s.method, Method::Post);
        let body = s.body.as_ref().unwrap();
        assert_eq!(body.template()["api_key"], "key-s3cret");
        assert_eq!(body.template()["size"], 100);
        templates.push(body.template().clone());
        // The secret is shown nowhere; the resolved config loads again.
        let out = c.to_redacted_toml();
        assert!(!out.contains("key-s3cret"), "{out}");
        assert!(!format!("{c:?}").contains("key-s3cret"));
        assert!(
            out.contains("<redacted>") && out.contains("{cursor}"),
            "{out}"
        );
        let again = load(&out).unwrap_or_else(|e| panic!("{e}\n{out}"));
        assert_eq!(again.to_redacted_toml(), out);
    }
    assert_eq!(templates[0], templates[1]);
}

#[test]
fn request_template_errors_name_their_key() {
    let cases = [
        (
            "    method = \"PUT\"\n    pagination = { type = \"none\" }\n    query = { from = \"{start}\" }",
            "feeds[0].backfill.source.method: unknown variant `PUT`",
        ),
        (
            "    pagination = { type = \"none\" }\n    body = { from = \"{start}\" }",
            "feeds[0].backfill.source.body: a GET request carries no body: set method = \"POST\"",
        ),
        (
            "    method = \"POST\"\n    pagination = { type = \"none\" }\n    body = '{\"from\": \"{start}\",}'",
            "feeds[0].backfill.source.body: not JSON: trailing comma at line 1 column 20",
        ),
        (
            "    method = \"POST\"\n    pagination = { type = \"none\" }\n    body = { q = { from = \"{start}\", key = \"${MISSING_KEY}\" } }",
            "feeds[0].backfill.source.body.q.key: environment variable MISSING_KEY is not set",
        ),
        (
            "    method = \"POST\"\n    pagination = { type = \"none\" }\n    body = { q = [{ from = \"{begin}\" }], to = \"{end}\" }",
            "feeds[0].backfill.source.body.q[0].from: unknown placeholder {begin} (known: {start}, {end}, {cursor}, {partition})",
        ),
        (
            "    pagination = { type = \"next_url\", next = \"/next\" }\n    query = { from = \"{start}\", c = \"{cursor}\" }",
            "feeds[0].backfill.source.query.c: {cursor} has no value",
        ),
        (
            "    pagination = { type = \"cursor\", cursor = \"/next\" }\n    query = { from = \"{start}\" }",
            "feeds[0].backfill.source.pagination.param: is required unless the request places the page with a {cursor} placeholder",
        ),
        (
            "    pagination = { type = \"page\", size = 10 }\n    query = { from = \"{start}\" }",
            "feeds[0].backfill.source.pagination.param: is required unless",
        ),
        (
            "    pagination = { type = \"cursor\", cursor_header = \"X Next\", param = \"c\" }\n    query = { from = \"{start}\" }",
            "feeds[0].backfill.source.pagination: cursor_header: \"X Next\" is not an HTTP header name",
        ),
        (
            "    method = \"POST\"\n    pagination = { type = \"none\" }\n    body = { size = 5 }",
            "feeds[0].backfill.source.query: no {start}/{end} placeholder",
        ),
        (
            "    pagination = { type = \"none\" }\n    query = { from = \"{start}\" }\n    error_when = '.status =='",
            "feeds[0].backfill.source.error_when: jq program does not compile at line 1, column 11",
        ),
    ];
    for (lines, want) in cases {
        let e = load(&with_request(lines)).expect_err(lines).to_string();
        assert!(e.contains(want), "for {lines:?}: wanted {want:?} in:\n{e}");
        for secret in ["admin-s3cret", "vendor-s3cret", "key-s3cret"] {
            assert!(!e.contains(secret), "{secret} leaked in: {e}");
        }
    }
    let e = load_err(&GOOD.replace("Bearer ${VENDOR_TOKEN}", "Bearer ${VENDOR_TOKEN} {until}"));
    assert!(
        e.contains("feeds[0].backfill.source.headers.Authorization: unknown placeholder {until}"),
        "{e}"
    );
    assert!(!e.contains("vendor-s3cret"), "{e}");
    // The same places are fine with known placeholders; a header and the
    // body may carry the cursor, and the page style's param is then optional.
    let c = load(&with_request(
        "    method = \"post\"\n    pagination = { type = \"page\", size = 50 }\n    body = { from = \"{start}\", page = \"{cursor}\", per_page = 50 }\n    error_when = '.status? == \"error\"'",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let s = &c.feeds[0].backfill.as_ref().unwrap().source;
    assert!(s.error_when.is_some());
    assert_eq!(s.pagination.param(), None);
}

#[test]
fn a_strftime_time_format_derives_its_resolution() {
    let day = |lines: &str| {
        with_request(&format!(
            "    pagination = {{ type = \"cursor\", cursor_header = \"X-Next-Cursor\", param = \"cursor\" }}\n{lines}"
        ))
        .replace(
            "url = \"https://api.vendor.example/v1/events\"",
            "url = \"https://api.vendor.example/v1/days/{start}/events\"",
        )
    };
    let c = load(&day("    time_format = \"%Y-%m-%d\"").replacen(
        "\n    time_format = \"rfc3339\"",
        "",
        1,
    ))
    .map(|c| c.feeds[0].backfill.as_ref().unwrap().source.clone());
    let s = c.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.time_resolution.as_millis(), 86_400_000);
    assert_eq!(s.time_format.to_string(), "%Y-%m-%d");
    // Records are read in time_format unless record_time_format says otherwise.
    assert_eq!(s.record_time_format, s.time_format);

    // One day per request ({start} only): a chunk of more would skip days.
    let e = load_err(
        &day("    time_format = \"%Y-%m-%d\"")
            .replacen("\n    time_format = \"rfc3339\"", "", 1)
            .replace("chunk = \"1h\"", "chunk = \"2d\""),
    );
    assert!(
        e.contains("feeds[0].backfill.chunk: must be at most 1d (the resolution of time_format \"%Y-%m-%d\")"),
        "{e}"
    );
    for (format, want) in [
        (
            "%Y-%m-%Q",
            "feeds[0].backfill.source.time_format: \"%Y-%m-%Q\" is not a strftime pattern chrono knows",
        ),
        (
            "%Y-%m",
            "feeds[0].backfill.source.time_format: strftime pattern \"%Y-%m\" cannot be read back",
        ),
        (
            "yyyy-MM-dd",
            "feeds[0].backfill.source.time_format: unknown time format \"yyyy-MM-dd\"",
        ),
    ] {
        let e = load_err(&GOOD.replace(
            "time_format = \"rfc3339\"",
            &format!("time_format = \"{format}\""),
        ));
        assert!(e.contains(want), "{format}: {e}");
    }
    let e = load_err(&GOOD.replace(
        "event_time_format = \"rfc3339\"",
        "event_time_format = \"%d.%m\"",
    ));
    assert!(e.contains("feeds[0].watch.event_time_format:"), "{e}");
}
