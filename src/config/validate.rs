//! `RawConfig` → `Config`. Every problem is collected (not just the first) and
//! reported as `key: what is wrong`. Secret values never enter a message.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use url::Url;

use super::raw::{
    RawAudit, RawAuth, RawBackfill, RawConfig, RawFeed, RawMode, RawPartitionSource, RawPartitions,
    RawShape, RawSink, RawSource,
};
use super::request::Uses;
use super::{
    AuditConfig, AwsConfig, BackfillConfig, Config, FeedConfig, FreshnessConfig, ListingPages,
    MonitorConfig, PartitionList, PartitionSource, PartitionsConfig, RateLimit, Secret,
    ServerConfig, ShapeConfig, SinkConfig, SourceAuth, SourceConfig, StateConfig, StateUrl,
    WatchConfig, WatchMode, MAX_PARTITION_LEN, MAX_SHAPE_SAMPLE,
};
use crate::detector::ActiveWindow;
use crate::jq::Program;
use crate::timefmt::Resolution;

/// What a feed's shape check depends on.
struct LiveSide {
    mode: WatchMode,
    backfill: bool,
    /// `watch.record_id` and `watch.event_time` are both set.
    pointers: bool,
    envelope: crate::envelope::Envelope,
}

pub(super) struct Checker<'a> {
    env: &'a HashMap<String, String>,
    errors: Vec<String>,
}

pub(super) fn validate(
    raw: RawConfig,
    env: &HashMap<String, String>,
) -> Result<Config, Vec<String>> {
    let mut c = Checker {
        env,
        errors: Vec::new(),
    };
    let config = c.config(raw);
    if let Some(config) = &config {
        c.report_token_rule(config);
    }
    match config {
        Some(config) if c.errors.is_empty() => Ok(config),
        _ => Err(c.errors),
    }
}

impl Checker<'_> {
    /// Observations are never taken without a token: a report feed needs
    /// `server.report_token` or `server.admin_token` (either is accepted).
    fn report_token_rule(&mut self, config: &Config) {
        if config.server.report_token.is_some() || config.server.admin_token.is_some() {
            return;
        }
        for (i, f) in config.feeds.iter().enumerate() {
            if f.watch.mode == WatchMode::Report {
                self.fail(
                    &format!("feeds[{i}].watch.mode"),
                    "report mode needs server.report_token (or server.admin_token): observations are never accepted without a token",
                );
            }
        }
    }

    /// An optional secret: absent, or non-empty.
    fn token(&mut self, key: &str, raw: &Option<String>) -> Option<Option<Secret>> {
        match raw {
            None => Some(None),
            Some(t) => self.string(key, t).and_then(|t| {
                if t.trim().is_empty() {
                    self.fail(key, "must not be empty when set");
                    None
                } else {
                    Some(Some(Secret::hidden(t)))
                }
            }),
        }
    }

    pub(super) fn fail(&mut self, key: &str, msg: impl std::fmt::Display) {
        self.errors.push(format!("{key}: {msg}"));
    }

    /// `${VAR}` interpolation; `$$` is a literal `$`. Returns the value and
    /// whether anything came from the environment.
    pub(super) fn interp(&mut self, key: &str, s: &str) -> Option<(String, bool)> {
        let mut out = String::with_capacity(s.len());
        let mut from_env = false;
        let mut rest = s;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            if let Some(r) = after.strip_prefix('$') {
                out.push('$');
                rest = r;
            } else if let Some(r) = after.strip_prefix('{') {
                let Some(end) = r.find('}') else {
                    self.fail(key, "unterminated ${...}");
                    return None;
                };
                let name = &r[..end];
                match self.env.get(name) {
                    Some(v) => out.push_str(v),
                    None => {
                        self.fail(key, format!("environment variable {name} is not set"));
                        return None;
                    }
                }
                from_env = true;
                rest = &r[end + 1..];
            } else {
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
        Some((out, from_env))
    }

    fn string(&mut self, key: &str, s: &str) -> Option<String> {
        self.interp(key, s).map(|(v, _)| v)
    }

    fn duration(&mut self, key: &str, s: &str, allow_zero: bool) -> Option<Duration> {
        let s = self.string(key, s)?;
        match humantime::parse_duration(s.trim()) {
            Ok(d) if d.is_zero() && !allow_zero => {
                self.fail(key, "must be greater than zero");
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.fail(
                    key,
                    format!("invalid duration {s:?} ({e}); write e.g. \"30s\", \"5m\", \"1h\""),
                );
                None
            }
        }
    }

    fn url(&mut self, key: &str, s: &str) -> Option<Url> {
        let s = self.string(key, s)?;
        match Url::parse(&s) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(u),
            Ok(_) => {
                self.fail(key, "must be an http:// or https:// URL");
                None
            }
            Err(e) => {
                self.fail(key, format!("invalid URL: {e}"));
                None
            }
        }
    }

    fn pointer(&mut self, key: &str, s: &str) -> Option<String> {
        let s = self.string(key, s)?;
        if s.is_empty() || s.starts_with('/') {
            Some(s)
        } else {
            self.fail(
                key,
                format!("invalid JSON pointer {s:?}: it must be empty or start with '/'"),
            );
            None
        }
    }

    fn positive(&mut self, key: &str, n: i64) -> Option<NonZeroU32> {
        match u32::try_from(n).ok().and_then(NonZeroU32::new) {
            Some(v) => Some(v),
            None => {
                self.fail(key, format!("must be a positive integer, got {n}"));
                None
            }
        }
    }

    fn config(&mut self, raw: RawConfig) -> Option<Config> {
        let server = self.server(&raw);
        let state = self.state(&raw);
        let aws = self.aws(&raw);
        let monitor = self.monitor(&raw);
        if raw.feeds.is_empty() {
            self.fail("feeds", "at least one [[feeds]] entry is required");
        }
        let mut names = HashSet::new();
        let mut feeds = Vec::new();
        for (i, f) in raw.feeds.iter().enumerate() {
            let key = format!("feeds[{i}]");
            if !names.insert(f.name.clone()) {
                self.fail(
                    &format!("{key}.name"),
                    format!("duplicate feed name {:?}", f.name),
                );
            }
            if let Some(feed) = self.feed(&key, f) {
                feeds.push(feed);
            }
        }
        let mut paths = HashSet::new();
        for (i, f) in feeds.iter().enumerate() {
            if let Some(SinkConfig::File { path }) = f.backfill.as_ref().map(|b| &b.sink) {
                if !paths.insert(path.clone()) {
                    self.fail(
                        &format!("feeds[{i}].backfill.sink.path"),
                        format!(
                            "{} is already the file sink of another feed",
                            path.display()
                        ),
                    );
                }
            }
        }
        if let Some(m) = &monitor {
            for (i, f) in feeds.iter().enumerate() {
                if f.watch.mode == WatchMode::Passive && !m.cloudwatch {
                    self.fail(
                        &format!("feeds[{i}].watch.mode"),
                        "passive mode reads CloudWatch, but monitor.cloudwatch is false",
                    );
                }
            }
        }
        Some(Config {
            server: server?,
            state: state?,
            aws: aws?,
            monitor: monitor?,
            feeds,
        })
    }

    fn server(&mut self, raw: &RawConfig) -> Option<ServerConfig> {
        let listen = self
            .string("server.listen", &raw.server.listen)
            .and_then(|s| match s.parse() {
                Ok(a) => Some(a),
                Err(_) => {
                    self.fail(
                        "server.listen",
                        format!("invalid socket address {s:?}; write e.g. \"0.0.0.0:9464\""),
                    );
                    None
                }
            });
        let admin_token = self.token("server.admin_token", &raw.server.admin_token);
        let report_token = self.token("server.report_token", &raw.server.report_token);
        let grace = self.duration("server.shutdown_grace", &raw.server.shutdown_grace, false);
        Some(ServerConfig {
            listen: listen?,
            admin_token: admin_token?,
            report_token: report_token?,
            shutdown_grace: grace?,
        })
    }

    fn state(&mut self, raw: &RawConfig) -> Option<StateConfig> {
        let url = self.state_url(&raw.state.url);
        let edge_ids = usize::try_from(raw.state.edge_ids)
            .ok()
            .and_then(NonZeroUsize::new);
        if edge_ids.is_none() {
            self.fail("state.edge_ids", "must be a positive integer");
        }
        Some(StateConfig {
            url: url?,
            edge_ids: edge_ids?,
        })
    }

    fn state_url(&mut self, raw: &str) -> Option<StateUrl> {
        let url = self.string("state.url", raw)?;
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            if Url::parse(&url).is_err() {
                // The URL may hold a password: never echo it.
                self.fail("state.url", "not a valid postgres:// URL");
                return None;
            }
            return Some(StateUrl::Postgres(Secret::hidden(url)));
        }
        let path = if let Some(p) = url.strip_prefix("sqlite://") {
            Some(p)
        } else if let Some(p) = url.strip_prefix("sqlite:") {
            Some(p)
        } else {
            let scheme = url.split(':').next().unwrap_or_default();
            self.fail(
                "state.url",
                format!(
                    "unsupported store {scheme:?}: write sqlite://PATH (one replica, e.g. sqlite:///var/lib/gapwatch/state.db) or postgres://USER:PASSWORD@HOST/DB (several replicas)"
                ),
            );
            None
        }?;
        let path = path.split('?').next().unwrap_or_default();
        if path.is_empty() {
            self.fail("state.url", "the sqlite URL has no file path");
            return None;
        }
        Some(StateUrl::Sqlite(PathBuf::from(path)))
    }

    fn aws(&mut self, raw: &RawConfig) -> Option<AwsConfig> {
        let region = match &raw.aws.region {
            Some(r) => Some(self.string("aws.region", r)?),
            None => None,
        };
        let endpoint_url = match &raw.aws.endpoint_url {
            Some(u) => Some(self.url("aws.endpoint_url", u)?),
            None => None,
        };
        Some(AwsConfig {
            region,
            endpoint_url,
        })
    }

    fn monitor(&mut self, raw: &RawConfig) -> Option<MonitorConfig> {
        let m = &raw.monitor;
        let poll_interval = self.duration("monitor.poll_interval", &m.poll_interval, false);
        let cloudwatch_interval =
            self.duration("monitor.cloudwatch_interval", &m.cloudwatch_interval, false);
        let cloudwatch_delay = self.duration("monitor.cloudwatch_delay", &m.cloudwatch_delay, true);
        let cloudwatch_lookback =
            self.duration("monitor.cloudwatch_lookback", &m.cloudwatch_lookback, false);
        Some(MonitorConfig {
            poll_interval: poll_interval?,
            cloudwatch: m.cloudwatch,
            cloudwatch_interval: cloudwatch_interval?,
            cloudwatch_delay: cloudwatch_delay?,
            cloudwatch_lookback: cloudwatch_lookback?,
        })
    }

    fn feed(&mut self, key: &str, f: &RawFeed) -> Option<FeedConfig> {
        let name_ok = !f.name.is_empty()
            && f.name.len() <= 64
            && f.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !name_ok {
            self.fail(
                &format!("{key}.name"),
                format!(
                    "invalid feed name {:?}: use 1-64 letters, digits, '_', '-' or '.'",
                    f.name
                ),
            );
        }
        let mode = match f.watch.mode {
            RawMode::Relay => WatchMode::Relay,
            RawMode::Report => WatchMode::Report,
            RawMode::Passive => WatchMode::Passive,
        };
        let queue_url = match &f.queue_url {
            Some(q) => self.queue_url(&format!("{key}.queue_url"), q),
            None => {
                if mode != WatchMode::Report {
                    self.fail(
                        &format!("{key}.queue_url"),
                        format!("is required in {} mode", mode.as_str()),
                    );
                }
                None
            }
        };
        let forward_to = match &f.watch.forward_to {
            Some(q) => self.queue_url(&format!("{key}.watch.forward_to"), q),
            None => {
                if mode == WatchMode::Relay {
                    self.fail(
                        &format!("{key}.watch.forward_to"),
                        "is required in relay mode (the queue the app reads)",
                    );
                }
                None
            }
        };
        if mode != WatchMode::Relay && f.watch.forward_to.is_some() {
            self.fail(
                &format!("{key}.watch.forward_to"),
                format!("only applies to relay mode, not {}", mode.as_str()),
            );
        }
        if let (Some(q), Some(fwd)) = (&queue_url, &forward_to) {
            if q == fwd {
                self.fail(
                    &format!("{key}.watch.forward_to"),
                    "must differ from queue_url (it would relay the queue into itself)",
                );
            }
        }
        let event_time = match &f.watch.event_time {
            Some(p) => Some(self.pointer(&format!("{key}.watch.event_time"), p)?),
            None => None,
        };
        let record_id = match &f.watch.record_id {
            Some(p) => Some(self.pointer(&format!("{key}.watch.record_id"), p)?),
            None => None,
        };
        if f.watch.envelope == crate::envelope::Envelope::None
            && !f.watch.envelope_fields.is_empty()
        {
            self.fail(
                &format!("{key}.watch.envelope_fields"),
                "needs watch.envelope = \"sns\" or \"eventbridge\"",
            );
        }
        let pollers = usize::try_from(f.watch.pollers)
            .ok()
            .filter(|p| *p <= 64)
            .and_then(NonZeroUsize::new);
        if pollers.is_none() {
            self.fail(
                &format!("{key}.watch.pollers"),
                format!("must be between 1 and 64, got {}", f.watch.pollers),
            );
        }
        let freshness = self.freshness(key, f);
        let backfill = match &f.backfill {
            Some(b) => {
                Some(self.backfill(key, b, forward_to.as_deref().or(queue_url.as_deref()))?)
            }
            None => None,
        };
        let audit = match &f.audit {
            Some(a) => Some(self.audit(key, a, mode, backfill.as_ref())?),
            None => None,
        };
        let partitions = match &f.partitions {
            Some(p) => Some(self.partitions(key, p, mode, backfill.as_ref())?),
            None => None,
        };
        if let Some(b) = &backfill {
            self.partition_placeholder_rule(key, &b.source, partitions.is_some());
        }
        let live = LiveSide {
            mode,
            backfill: backfill.is_some(),
            pointers: record_id.is_some() && event_time.is_some(),
            envelope: f.watch.envelope,
        };
        let shape = self.shape(key, f.shape.as_ref(), &live)?;
        Some(FeedConfig {
            name: f.name.clone(),
            queue_url,
            watch: WatchConfig {
                mode,
                forward_to,
                event_time,
                event_time_format: f.watch.event_time_format,
                record_id,
                envelope: f.watch.envelope,
                envelope_fields: f.watch.envelope_fields.clone(),
                pollers: pollers?,
            },
            freshness: freshness?,
            backfill,
            audit,
            shape,
            partitions,
        })
    }

    fn partitions(
        &mut self,
        feed_key: &str,
        p: &RawPartitions,
        mode: WatchMode,
        backfill: Option<&BackfillConfig>,
    ) -> Option<PartitionsConfig> {
        let key = format!("{feed_key}.partitions");
        let pointer = self.pointer(&format!("{key}.key"), &p.key);
        if pointer.as_deref() == Some("") {
            self.fail(
                &format!("{key}.key"),
                "must point into the record (\"\" would be the whole record)",
            );
        }
        if mode == WatchMode::Passive {
            self.fail(
                &key,
                "needs each record's partition value: relay or report mode, not passive",
            );
        }
        let max = usize::try_from(p.max)
            .ok()
            .filter(|m| *m <= MAX_PARTITIONS)
            .and_then(NonZeroUsize::new);
        if max.is_none() {
            self.fail(
                &format!("{key}.max"),
                format!("must be between 1 and {MAX_PARTITIONS}, got {}", p.max),
            );
        }
        let list = match (&p.values, &p.from) {
            (Some(_), Some(_)) => {
                self.fail(&key, "give values or from, not both");
                None
            }
            (None, None) => {
                self.fail(
                    &key,
                    "needs values = [\"…\"] or from = { url = \"…\", records, value, every }",
                );
                None
            }
            (Some(values), None) => self.partition_values(&key, values, max),
            (None, Some(from)) => {
                if backfill.is_none() {
                    self.fail(
                        &format!("{key}.from"),
                        "needs [feeds.backfill]: its source's auth, headers and rate limit list the partitions",
                    );
                }
                let k = format!("{key}.from");
                let url = self.url(&format!("{k}.url"), &from.url);
                let records = self.pointer(&format!("{k}.records"), &from.records);
                let value = self.pointer(&format!("{k}.value"), &from.value);
                let every = self.duration(&format!("{k}.every"), &from.every, false);
                let pages = self.listing_pages(&k, from);
                Some(PartitionList::From(PartitionSource {
                    url: url?,
                    records: records?,
                    value: value?,
                    every: every?,
                    pages: pages?,
                }))
            }
        };
        Some(PartitionsConfig {
            key: pointer.filter(|p| !p.is_empty())?,
            list: list?,
            max: max?,
        })
    }

    /// `partitions.from`'s paging: `next`, or `cursor` with `param`, or
    /// neither (one page); `Some(None)` is a valid single-page listing.
    fn listing_pages(
        &mut self,
        key: &str,
        from: &RawPartitionSource,
    ) -> Option<Option<ListingPages>> {
        match (&from.next, &from.cursor, &from.param) {
            (None, None, None) => Some(None),
            (Some(_), Some(_), _) => {
                self.fail(key, "give next or cursor (with param), not both");
                None
            }
            (Some(next), None, param) => {
                if param.is_some() {
                    self.fail(
                        &format!("{key}.param"),
                        "goes with cursor (next is a whole URL)",
                    );
                }
                let next = self.pointer(&format!("{key}.next"), next)?;
                param.is_none().then_some(Some(ListingPages::Next { next }))
            }
            (None, Some(cursor), Some(param)) => {
                let cursor = self.pointer(&format!("{key}.cursor"), cursor)?;
                if param.is_empty() {
                    self.fail(&format!("{key}.param"), "must name a query parameter");
                    return None;
                }
                Some(Some(ListingPages::Cursor {
                    cursor,
                    param: param.clone(),
                }))
            }
            (None, Some(_), None) => {
                self.fail(
                    &format!("{key}.param"),
                    "needed with cursor: the query parameter the cursor is sent as",
                );
                None
            }
            (None, None, Some(_)) => {
                self.fail(&format!("{key}.param"), "goes with cursor");
                None
            }
        }
    }

    /// A fixed partition list: non-empty values (\"\" stands for the whole
    /// feed), each once, no more than `max`.
    fn partition_values(
        &mut self,
        key: &str,
        values: &[String],
        max: Option<NonZeroUsize>,
    ) -> Option<PartitionList> {
        let key = format!("{key}.values");
        if values.is_empty() {
            self.fail(&key, "must list at least one partition");
            return None;
        }
        if let Some(max) = max.filter(|m| values.len() > m.get()) {
            self.fail(
                &key,
                format!("{} values, more than partitions.max ({max})", values.len()),
            );
        }
        let mut seen: HashMap<String, usize> = HashMap::with_capacity(values.len());
        let mut out = Vec::with_capacity(values.len());
        let mut ok = true;
        for (i, v) in values.iter().enumerate() {
            let k = format!("{key}[{i}]");
            let Some(v) = self.string(&k, v) else {
                ok = false;
                continue;
            };
            if v.is_empty() || v.len() > MAX_PARTITION_LEN {
                self.fail(&k, format!("must be 1 to {MAX_PARTITION_LEN} bytes long"));
                ok = false;
            } else if let Some(first) = seen.get(&v) {
                self.fail(&k, format!("duplicate value {v:?} (also values[{first}])"));
                ok = false;
            } else {
                seen.insert(v.clone(), i);
                out.push(v);
            }
        }
        ok.then_some(PartitionList::Values(out))
    }

    /// A partitioned feed's fills ask for one partition at a time, so its
    /// source must name `{partition}` (URL, query, headers or body); an
    /// unpartitioned one has no value for it.
    fn partition_placeholder_rule(&mut self, feed_key: &str, s: &SourceConfig, partitioned: bool) {
        let key = format!("{feed_key}.backfill.source");
        let uses = Uses::of(&key, s);
        let places = uses.places_naming("partition");
        if partitioned && places.is_empty() {
            self.fail(
                &format!("{key}.url"),
                "the feed is partitioned: name {partition} in the URL, a query value, a header or the body, so that a fill asks for the silent partition only",
            );
        }
        if !partitioned {
            for place in places {
                self.fail(place, "{partition} needs [feeds.partitions]");
            }
        }
    }

    /// `[feeds.shape]`. Without the section the check runs with its defaults
    /// wherever it can: a relay feed whose live record id and event time are
    /// read from the body, or a report feed, with `[feeds.backfill]`. With the
    /// section, a feed where it cannot run is an error naming the key.
    fn shape(
        &mut self,
        feed_key: &str,
        raw: Option<&RawShape>,
        live: &LiveSide,
    ) -> Option<Option<ShapeConfig>> {
        let key = format!("{feed_key}.shape");
        let why_not = if !live.backfill {
            Some("needs [feeds.backfill] (its source lists the sampled records, its render step makes the messages compared)")
        } else {
            match live.mode {
                WatchMode::Passive => {
                    Some("needs live messages: relay or report mode, not passive")
                }
                WatchMode::Relay if !live.pointers => Some(
                    "relay mode needs watch.record_id and watch.event_time (a sampled message is looked up at the source by its event time and matched by its id)",
                ),
                _ => None,
            }
        };
        let Some(raw) = raw else {
            return Some(why_not.is_none().then(|| {
                ShapeConfig {
                    every: Duration::from_secs(3600),
                    ignore: live
                        .envelope
                        .volatile()
                        .iter()
                        .map(|p| p.to_string())
                        .collect(),
                    ignore_attributes: Vec::new(),
                    sample: NonZeroUsize::new(20).expect("20 is not zero"),
                }
            }));
        };
        if !raw.enabled {
            return Some(None);
        }
        if let Some(why) = why_not {
            self.fail(&key, why);
            return None;
        }
        let every = self.duration(&format!("{key}.every"), &raw.every, false);
        let sample = usize::try_from(raw.sample)
            .ok()
            .filter(|n| *n <= MAX_SHAPE_SAMPLE)
            .and_then(NonZeroUsize::new);
        if sample.is_none() {
            self.fail(
                &format!("{key}.sample"),
                format!(
                    "must be between 1 and {MAX_SHAPE_SAMPLE}, got {}",
                    raw.sample
                ),
            );
        }
        let mut ignore: Vec<String> = live
            .envelope
            .volatile()
            .iter()
            .map(|p| p.to_string())
            .collect();
        let mut ok = true;
        for (i, p) in raw.ignore.iter().enumerate() {
            let k = format!("{key}.ignore[{i}]");
            match self.pointer(&k, p) {
                Some(p) if p.is_empty() => {
                    self.fail(&k, "\"\" is the whole message: nothing would be compared");
                    ok = false;
                }
                Some(p) => {
                    if !ignore.contains(&p) {
                        ignore.push(p);
                    }
                }
                None => ok = false,
            }
        }
        let mut ignore_attributes = Vec::new();
        for (i, a) in raw.ignore_attributes.iter().enumerate() {
            match self.string(&format!("{key}.ignore_attributes[{i}]"), a) {
                Some(a) => ignore_attributes.push(a),
                None => ok = false,
            }
        }
        if !ok {
            return None;
        }
        Some(Some(ShapeConfig {
            every: every?,
            ignore,
            ignore_attributes,
            sample: sample?,
        }))
    }

    fn audit(
        &mut self,
        feed_key: &str,
        a: &RawAudit,
        mode: WatchMode,
        backfill: Option<&BackfillConfig>,
    ) -> Option<AuditConfig> {
        let key = format!("{feed_key}.audit");
        let every = self.duration(&format!("{key}.every"), &a.every, false);
        let lookback = self.duration(&format!("{key}.lookback"), &a.lookback, false);
        let delay = self.duration(&format!("{key}.delay"), &a.delay, true);
        if mode == WatchMode::Passive {
            self.fail(
                &key,
                "needs the ids of what reached the destination: relay or report mode, not passive",
            );
        }
        match backfill {
            None => self.fail(
                &key,
                "needs [feeds.backfill] (its source lists the vendor's records, its sink takes the missing ones)",
            ),
            Some(b) => {
                if let Some(delay) = delay.filter(|d| *d < b.settle) {
                    self.fail(
                        &format!("{key}.delay"),
                        format!(
                            "must be at least backfill.settle ({}), got {}",
                            humantime::format_duration(b.settle),
                            humantime::format_duration(delay)
                        ),
                    );
                }
            }
        }
        let (every, lookback, delay) = (every?, lookback?, delay?);
        if lookback <= delay + every {
            self.fail(
                &format!("{key}.lookback"),
                format!(
                    "must be longer than delay + every ({}), got {}",
                    humantime::format_duration(delay + every),
                    humantime::format_duration(lookback)
                ),
            );
            return None;
        }
        Some(AuditConfig {
            every,
            lookback,
            delay,
        })
    }

    fn queue_url(&mut self, key: &str, s: &str) -> Option<String> {
        let u = self.url(key, s)?;
        if u.path().trim_matches('/').is_empty() {
            self.fail(
                key,
                "is not a queue URL (expected https://sqs.REGION.amazonaws.com/ACCOUNT/NAME)",
            );
            return None;
        }
        Some(u.to_string())
    }

    fn freshness(&mut self, key: &str, f: &RawFeed) -> Option<FreshnessConfig> {
        let max_silence = self.duration(
            &format!("{key}.freshness.max_silence"),
            &f.freshness.max_silence,
            false,
        );
        let max_future_skew = self.duration(
            &format!("{key}.freshness.max_future_skew"),
            &f.freshness.max_future_skew,
            true,
        );
        let tz_key = format!("{key}.freshness.timezone");
        let timezone = self.string(&tz_key, &f.freshness.timezone)?;
        let tz = match timezone.parse::<chrono_tz::Tz>() {
            Ok(tz) => Some(tz),
            Err(_) => {
                self.fail(
                    &tz_key,
                    format!("unknown timezone {timezone:?}; use an IANA name such as \"America/New_York\""),
                );
                None
            }
        };
        let mut schedules = Vec::new();
        let mut active = Vec::new();
        for (i, expr) in f.freshness.active.iter().enumerate() {
            let k = format!("{key}.freshness.active[{i}]");
            let Some(expr) = self.string(&k, expr) else {
                continue;
            };
            let fields = expr.split_whitespace().count();
            if fields != 6 && fields != 7 {
                self.fail(&k, format!("invalid cron expression {expr:?}: expected 6 fields (sec min hour day-of-month month day-of-week), got {fields}"));
                continue;
            }
            match cron::Schedule::from_str(&expr) {
                Ok(s) => {
                    schedules.push(s);
                    active.push(expr);
                }
                Err(e) => self.fail(&k, format!("invalid cron expression {expr:?}: {e}")),
            }
        }
        let tz = tz?;
        let window = if schedules.is_empty() {
            ActiveWindow::always()
        } else {
            ActiveWindow::new(schedules, tz)
        };
        Some(FreshnessConfig {
            max_silence: max_silence?,
            active,
            timezone,
            max_future_skew: max_future_skew?,
            window,
        })
    }

    fn backfill(
        &mut self,
        feed_key: &str,
        b: &RawBackfill,
        default_queue: Option<&str>,
    ) -> Option<BackfillConfig> {
        let key = format!("{feed_key}.backfill");
        let chunk = self.duration(&format!("{key}.chunk"), &b.chunk, false);
        let overlap = self.duration(&format!("{key}.overlap"), &b.overlap, true);
        let settle = self.duration(&format!("{key}.settle"), &b.settle, true);
        let follow_step = self.duration(&format!("{key}.follow_step"), &b.follow_step, false);
        let concurrency = usize::try_from(b.concurrency)
            .ok()
            .and_then(NonZeroUsize::new);
        if concurrency.is_none() || b.concurrency > 64 {
            self.fail(
                &format!("{key}.concurrency"),
                format!("must be between 1 and 64, got {}", b.concurrency),
            );
        }
        let attempts = self.positive(&format!("{key}.max_chunk_attempts"), b.max_chunk_attempts);
        let source = self.source(&format!("{key}.source"), &b.source);
        if let (Some(s), Some(chunk)) = (&source, chunk) {
            let uses = Uses::of(&format!("{key}.source"), s);
            self.one_period_per_request(&key, &uses, s.time_format, chunk);
        }
        let sink = self.sink(&format!("{key}.sink"), b.sink.as_ref(), default_queue);
        let render = self.jq_opt(&format!("{key}.render"), b.render.as_deref());
        let filter = self.jq_opt(&format!("{key}.filter"), b.filter.as_deref());
        let attributes = self.attributes(&format!("{key}.attributes"), &b.attributes);
        Some(BackfillConfig {
            auto: b.auto,
            chunk: chunk?,
            overlap: overlap?,
            settle: settle?,
            follow_step: follow_step?,
            concurrency: concurrency.filter(|c| c.get() <= 64)?,
            max_chunk_attempts: attempts?,
            source: source?,
            sink: sink?,
            render: render?,
            attributes: attributes?,
            filter: filter?,
        })
    }

    fn jq(&mut self, key: &str, code: &str) -> Option<Program> {
        match Program::compile(key, code) {
            Ok(p) => Some(p),
            Err(e) => {
                // The error names the key itself.
                self.errors.push(e.to_string());
                None
            }
        }
    }

    fn jq_opt(&mut self, key: &str, code: Option<&str>) -> Option<Option<Program>> {
        match code {
            None => Some(None),
            Some(c) => self.jq(key, c).map(Some),
        }
    }

    /// SQS allows 10 attributes a message; recovered messages carry 3 of their own.
    fn attributes(
        &mut self,
        key: &str,
        map: &BTreeMap<String, String>,
    ) -> Option<BTreeMap<String, Program>> {
        const MAX: usize = 7;
        let mut out = BTreeMap::new();
        let mut ok = true;
        if map.len() > MAX {
            self.fail(
                key,
                format!(
                    "at most {MAX} attributes (SQS carries 10, gapwatch sets 3), got {}",
                    map.len()
                ),
            );
            ok = false;
        }
        for (name, code) in map {
            let k = format!("{key}.{name}");
            let valid = !name.is_empty()
                && name.len() <= 256
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
                && !name.starts_with('.')
                && !name.ends_with('.')
                && !name.contains("..");
            let lower = name.to_ascii_lowercase();
            if !valid {
                self.fail(
                    &k,
                    "is not an SQS attribute name (letters, digits, _ - . only)",
                );
                ok = false;
            } else if lower.starts_with("aws.") || lower.starts_with("amazon.") {
                self.fail(
                    &k,
                    "names starting with AWS. or Amazon. are reserved by SQS",
                );
                ok = false;
            } else if lower.starts_with("gapwatch-") {
                self.fail(&k, "gapwatch-* attributes are set by gapwatch itself");
                ok = false;
            }
            match self.jq(&k, code) {
                Some(p) => {
                    out.insert(name.clone(), p);
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn secrets(
        &mut self,
        key: &str,
        map: &BTreeMap<String, String>,
        always_hidden: bool,
    ) -> Option<BTreeMap<String, Secret>> {
        let mut out = BTreeMap::new();
        let mut ok = true;
        for (k, v) in map {
            match self.interp(&format!("{key}.{k}"), v) {
                Some((v, from_env)) if always_hidden || from_env => {
                    out.insert(k.clone(), Secret::hidden(v));
                }
                Some((v, _)) => {
                    out.insert(k.clone(), Secret::shown(v));
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn headers(
        &mut self,
        key: &str,
        map: &BTreeMap<String, String>,
    ) -> Option<BTreeMap<String, Secret>> {
        let mut ok = true;
        for name in map.keys() {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                self.fail(&format!("{key}.{name}"), "invalid HTTP header name");
                ok = false;
            }
        }
        let out = self.secrets(key, map, true)?;
        for (name, v) in &out {
            if reqwest::header::HeaderValue::from_str(v.expose()).is_err() {
                self.fail(
                    &format!("{key}.{name}"),
                    "invalid HTTP header value (control characters or non-ASCII)",
                );
                ok = false;
            }
        }
        ok.then_some(out)
    }

    fn source(&mut self, key: &str, s: &RawSource) -> Option<SourceConfig> {
        let url = self.url(&format!("{key}.url"), &s.url);
        let query = self.secrets(&format!("{key}.query"), &s.query, false);
        let headers = self.headers(&format!("{key}.headers"), &s.headers);
        let records = self.pointer(&format!("{key}.records"), &s.records);
        let record_id = self.pointer(&format!("{key}.record_id"), &s.record_id);
        let record_time = self.pointer(&format!("{key}.record_time"), &s.record_time);
        let rate_limit = self.rate_limit(&format!("{key}.rate_limit"), &s.rate_limit);
        let timeout = self.duration(&format!("{key}.timeout"), &s.timeout, false);
        let max_retries = match u32::try_from(s.max_retries) {
            Ok(n) if n <= 100 => Some(n),
            _ => {
                self.fail(
                    &format!("{key}.max_retries"),
                    format!("must be between 0 and 100, got {}", s.max_retries),
                );
                None
            }
        };
        let max_pages = self
            .positive(&format!("{key}.max_pages_per_chunk"), s.max_pages_per_chunk)
            .map(|n| u64::from(n.get()));
        if let Err(e) = s.pagination.validate() {
            self.fail(&format!("{key}.pagination"), e);
        }
        let time_resolution = self.time_resolution(key, s);
        let max_page_bytes = self.byte_size(&format!("{key}.max_page_bytes"), &s.max_page_bytes);
        let body = self.body(key, s);
        let error_when = self.jq_opt(&format!("{key}.error_when"), s.error_when.as_deref());
        let auth = match &s.auth {
            None => Some(None),
            Some(a) => self.auth(&format!("{key}.auth"), a).map(Some),
        };
        let empty_on = self.statuses(&format!("{key}.empty_on"), &s.empty_on);
        let retry_on = self.statuses(&format!("{key}.retry_on"), &s.retry_on);
        let fail_on = self.statuses(&format!("{key}.fail_on"), &s.fail_on);
        if let (Some(e), Some(r), Some(f)) = (&empty_on, &retry_on, &fail_on) {
            for (name, list, others) in [
                ("empty_on", e, [("retry_on", r), ("fail_on", f)]),
                ("retry_on", r, [("empty_on", e), ("fail_on", f)]),
            ] {
                for (other, o) in others {
                    if let Some(c) = list.iter().find(|c| o.contains(c)) {
                        if name == "empty_on" || other == "fail_on" {
                            self.fail(
                                &format!("{key}.{name}"),
                                format!("status {c} is also in {other}"),
                            );
                        }
                    }
                }
            }
        }
        let source = SourceConfig {
            method: s.method,
            body: body?,
            error_when: error_when?,
            empty_on: empty_on?,
            retry_on: retry_on?,
            fail_on: fail_on?,
            auth: auth?,
            url: url?,
            query: query?,
            time_format: s.time_format,
            headers: headers?,
            records: records?,
            record_id: record_id?,
            record_time: record_time?,
            record_time_format: s.record_time_format.unwrap_or(s.time_format),
            rate_limit: rate_limit?,
            timeout: timeout?,
            max_retries: max_retries?,
            pagination: s.pagination.clone(),
            max_pages_per_chunk: max_pages?,
            time_resolution: time_resolution?,
            max_page_bytes: max_page_bytes?,
        };
        let uses = Uses::of(key, &source);
        self.placeholders(key, &uses, &source.pagination);
        Some(source)
    }

    /// A list of HTTP statuses other than 2xx (which are pages) and 401
    /// (which refreshes the token).
    fn statuses(&mut self, key: &str, list: &[i64]) -> Option<Vec<u16>> {
        let mut out = Vec::with_capacity(list.len());
        let mut ok = true;
        for (n, c) in list.iter().enumerate() {
            match u16::try_from(*c) {
                Ok(c @ (300..=399 | 402..=599 | 400)) => out.push(c),
                _ => {
                    self.fail(
                        &format!("{key}[{n}]"),
                        format!("{c} is not an HTTP status from 300 to 599 other than 401"),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    fn secret(&mut self, key: &str, s: &str) -> Option<Secret> {
        let v = self.string(key, s)?;
        if v.is_empty() {
            self.fail(key, "must not be empty");
            return None;
        }
        Some(Secret::hidden(v))
    }

    fn auth(&mut self, key: &str, a: &RawAuth) -> Option<SourceAuth> {
        match a {
            RawAuth::Bearer { token } => {
                let token = self.secret(&format!("{key}.token"), token)?;
                if reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                    .is_err()
                {
                    self.fail(
                        &format!("{key}.token"),
                        "invalid in an HTTP header (control characters or non-ASCII)",
                    );
                    return None;
                }
                Some(SourceAuth::Bearer { token })
            }
            RawAuth::Basic { username, password } => {
                let username = self.secret(&format!("{key}.username"), username);
                let password = self
                    .string(&format!("{key}.password"), password)
                    .map(Secret::hidden);
                if let Some(u) = &username {
                    if u.expose().contains(':') {
                        self.fail(
                            &format!("{key}.username"),
                            "must not contain ':' (RFC 7617)",
                        );
                        return None;
                    }
                }
                Some(SourceAuth::Basic {
                    username: username?,
                    password: password?,
                })
            }
            RawAuth::Oauth2ClientCredentials {
                token_url,
                client_id,
                client_secret,
                scopes,
                auth_style,
            } => {
                let token_url = self.url(&format!("{key}.token_url"), token_url);
                let client_id = self.secret(&format!("{key}.client_id"), client_id);
                let client_secret = self.secret(&format!("{key}.client_secret"), client_secret);
                let mut ok = true;
                for (n, sc) in scopes.iter().enumerate() {
                    if sc.is_empty()
                        || sc
                            .chars()
                            .any(|c| c.is_whitespace() || c == '"' || c == '\\')
                    {
                        self.fail(
                            &format!("{key}.scopes[{n}]"),
                            "a scope is a non-empty token without spaces, quotes or backslashes (RFC 6749 §3.3)",
                        );
                        ok = false;
                    }
                }
                if !ok {
                    return None;
                }
                Some(SourceAuth::Oauth2ClientCredentials {
                    token_url: token_url?,
                    client_id: client_id?,
                    client_secret: client_secret?,
                    scopes: scopes.clone(),
                    auth_style: *auth_style,
                })
            }
        }
    }

    /// `time_resolution`: a whole number of milliseconds that `time_format`
    /// can write, i.e. a multiple of the format's own step (whole seconds for
    /// `unix_s`).
    fn time_resolution(&mut self, key: &str, s: &RawSource) -> Option<Resolution> {
        let own = s.time_format.resolution();
        let Some(raw) = &s.time_resolution else {
            return Some(own);
        };
        let key = format!("{key}.time_resolution");
        let d = self.duration(&key, raw, false)?;
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let res = Resolution::from_millis(ms)
            .filter(|r| Duration::from_millis(ms) == d && r.as_millis() % own.as_millis() == 0);
        if res.is_none() {
            self.fail(
                &key,
                format!(
                    "must be a whole multiple of {own} (what time_format {} can write), at most 1 day; got {raw:?}",
                    s.time_format
                ),
            );
        }
        res
    }

    /// `in_flight` of an SQS sink: 1 to 16, and 1 for a FIFO queue (batches
    /// sent side by side could reach it out of order).
    fn in_flight(&mut self, key: &str, n: i64, queue: &str) -> Option<NonZeroUsize> {
        let key = format!("{key}.in_flight");
        let v = usize::try_from(n)
            .ok()
            .filter(|n| (1..=16).contains(n))
            .and_then(NonZeroUsize::new);
        match v {
            None => {
                self.fail(&key, format!("must be between 1 and 16, got {n}"));
                None
            }
            Some(v) if v.get() > 1 && queue.ends_with(".fifo") => {
                self.fail(
                    &key,
                    "must be 1 for a FIFO queue: batches sent side by side could arrive out of order",
                );
                None
            }
            v => v,
        }
    }

    /// `16MiB`, `512KiB`, `1000000` (bytes); KB/MB/GB are powers of 1000.
    fn byte_size(&mut self, key: &str, s: &str) -> Option<u64> {
        let s = self.string(key, s)?;
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (n, unit) = t.split_at(split);
        let mult: Option<u64> = match unit.trim() {
            "" | "B" => Some(1),
            "KiB" => Some(1 << 10),
            "MiB" => Some(1 << 20),
            "GiB" => Some(1 << 30),
            "KB" | "kB" => Some(1_000),
            "MB" => Some(1_000_000),
            "GB" => Some(1_000_000_000),
            _ => None,
        };
        let v = n
            .parse::<u64>()
            .ok()
            .zip(mult)
            .and_then(|(n, m)| n.checked_mul(m))
            .filter(|v| *v > 0);
        if v.is_none() {
            self.fail(
                key,
                format!("invalid size {s:?}; write e.g. \"16MiB\", \"512KiB\" or a number of bytes (> 0)"),
            );
        }
        v
    }

    fn rate_limit(&mut self, key: &str, s: &str) -> Option<RateLimit> {
        let s = self.string(key, s)?;
        let parsed = s.split_once('/').and_then(|(n, unit)| {
            let count = n.trim().parse::<u32>().ok().and_then(NonZeroU32::new)?;
            let per = match unit.trim() {
                "s" | "sec" | "second" => Duration::from_secs(1),
                "m" | "min" | "minute" => Duration::from_secs(60),
                "h" | "hour" => Duration::from_secs(3600),
                _ => return None,
            };
            Some(RateLimit { count, per })
        });
        if parsed.is_none() {
            self.fail(
                key,
                format!("invalid rate limit {s:?}; write \"N/s\", \"N/m\" or \"N/h\" with N > 0"),
            );
        }
        parsed
    }

    fn sink(
        &mut self,
        key: &str,
        sink: Option<&RawSink>,
        default_queue: Option<&str>,
    ) -> Option<SinkConfig> {
        match sink {
            None
            | Some(RawSink::Sqs {
                queue_url: None, ..
            }) => {
                let group = match sink {
                    Some(RawSink::Sqs {
                        message_group_id: Some(g),
                        ..
                    }) => Some(self.string(&format!("{key}.message_group_id"), g)?),
                    _ => None,
                };
                let in_flight = match sink {
                    Some(RawSink::Sqs { in_flight, .. }) => *in_flight,
                    _ => 1,
                };
                match default_queue {
                    Some(q) => Some(SinkConfig::Sqs {
                        queue_url: q.to_string(),
                        message_group_id: group,
                        in_flight: self.in_flight(key, in_flight, q)?,
                    }),
                    None => {
                        self.fail(
                            &format!("{key}.queue_url"),
                            "is required: the feed has neither watch.forward_to nor queue_url",
                        );
                        None
                    }
                }
            }
            Some(RawSink::Sqs {
                queue_url: Some(q),
                message_group_id,
                in_flight,
            }) => {
                let queue_url = self.queue_url(&format!("{key}.queue_url"), q);
                let group = match message_group_id {
                    Some(g) => Some(self.string(&format!("{key}.message_group_id"), g)?),
                    None => None,
                };
                let in_flight = self.in_flight(key, *in_flight, q);
                Some(SinkConfig::Sqs {
                    queue_url: queue_url?,
                    message_group_id: group,
                    in_flight: in_flight?,
                })
            }
            Some(RawSink::Http {
                url,
                headers,
                timeout,
                max_retries,
                batch,
            }) => {
                let batch_size = usize::try_from(*batch)
                    .ok()
                    .filter(|b| *b <= 500)
                    .and_then(NonZeroUsize::new);
                if batch_size.is_none() {
                    self.fail(
                        &format!("{key}.batch"),
                        format!("must be between 1 and 500, got {batch}"),
                    );
                }
                let url = self.url(&format!("{key}.url"), url);
                let headers = self.headers(&format!("{key}.headers"), headers);
                let timeout = self.duration(&format!("{key}.timeout"), timeout, false);
                let retries = u32::try_from(*max_retries).ok();
                if retries.is_none() {
                    self.fail(&format!("{key}.max_retries"), "must not be negative");
                }
                Some(SinkConfig::Http {
                    url: url?,
                    headers: headers?,
                    timeout: timeout?,
                    max_retries: retries?,
                    batch: batch_size?,
                })
            }
            Some(RawSink::File { path }) => {
                let path = self.string(&format!("{key}.path"), path)?;
                if path.trim().is_empty() {
                    self.fail(&format!("{key}.path"), "must not be empty");
                    return None;
                }
                Some(SinkConfig::File {
                    path: PathBuf::from(path),
                })
            }
        }
    }
}

/// Most partitions a feed may watch (`partitions.max`).
const MAX_PARTITIONS: usize = 1_000_000;
