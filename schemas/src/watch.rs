//! `[watch]`: when `floe watch` loads each table. A daily full refresh by
//! cron in a time zone, an on-change incremental sync every interval, and
//! the service's own settings; `[tables.<name>.watch]` overrides the
//! schedule per table.
//!
//! Cron is parsed by `croner` (5 fields, evaluated in the IANA zone with
//! `chrono-tz`, so 4 AM stays 4 AM across DST), not by hand.

use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use croner::Cron;
use serde::Deserialize;

/// The process-wide `[watch]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchConfig {
    /// Cron (5 fields) for the full refresh, in `timezone`; `"off"`: none.
    pub full_refresh: String,
    /// IANA zone the cron is read in, e.g. `America/Chicago`.
    pub timezone: String,
    /// How often to look for changes (`"off"`: never), e.g. `1m`, `10s`.
    pub incremental_every: String,
    /// Tables loading at once; the load budgets are shared among them.
    pub max_concurrent_tables: usize,
    /// Where `/metrics`, `/healthz` and `/status` are served.
    pub listen: String,
    /// On SIGTERM, how long running loads may take to finish before they
    /// are rolled back.
    #[serde(with = "crate::duration::text")]
    pub drain_timeout: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            full_refresh: "0 4 * * *".into(),
            timezone: "UTC".into(),
            incremental_every: "1m".into(),
            max_concurrent_tables: 2,
            listen: "127.0.0.1:9187".into(),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// `[tables.<name>.watch]`: the schedule keys, per table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableWatch {
    pub full_refresh: Option<String>,
    pub timezone: Option<String>,
    pub incremental_every: Option<String>,
}

/// One table's schedule, parsed and checked.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// `None`: no scheduled full refresh.
    full_refresh: Option<(Cron, String)>,
    timezone: Tz,
    /// `None`: no incremental sync.
    pub incremental_every: Option<Duration>,
}

impl Schedule {
    /// The schedule of a table: its overrides over `[watch]`. The error
    /// names the key and says what to write.
    pub fn resolve(watch: &WatchConfig, table: &TableWatch) -> Result<Schedule, (String, String)> {
        let full = table.full_refresh.as_deref().unwrap_or(&watch.full_refresh);
        let zone = table.timezone.as_deref().unwrap_or(&watch.timezone);
        let every = table
            .incremental_every
            .as_deref()
            .unwrap_or(&watch.incremental_every);
        let full_refresh = match full.trim() {
            "off" => None,
            pattern => Some((
                parse_cron(pattern).map_err(|m| ("full_refresh".to_string(), m))?,
                pattern.to_string(),
            )),
        };
        let timezone: Tz = zone.parse().map_err(|_| {
            (
                "timezone".to_string(),
                format!(
                    "`{zone}` is not an IANA time zone (e.g. UTC, America/Chicago, Europe/Berlin)"
                ),
            )
        })?;
        let incremental_every = match every.trim() {
            "off" => None,
            text => {
                let d = crate::duration::parse_duration(text)
                    .map_err(|m| ("incremental_every".to_string(), format!("{m}, or \"off\"")))?;
                if d < Duration::from_secs(1) {
                    return Err((
                        "incremental_every".into(),
                        format!("`{text}` is under a second; use 1s or more, or \"off\""),
                    ));
                }
                Some(d)
            }
        };
        Ok(Schedule {
            full_refresh,
            timezone,
            incremental_every,
        })
    }

    /// The cron as written (`None`: no scheduled full refresh).
    pub fn full_refresh(&self) -> Option<&str> {
        self.full_refresh.as_ref().map(|(_, text)| text.as_str())
    }

    pub fn timezone(&self) -> Tz {
        self.timezone
    }

    /// The first full refresh time strictly after `t`.
    pub fn next_full_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let (cron, _) = self.full_refresh.as_ref()?;
        cron.find_next_occurrence(&t.with_timezone(&self.timezone), false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The latest full refresh time at or before `now`: a table whose last
    /// full refresh is older is due (so one missed while floe was down runs
    /// at start-up).
    pub fn last_full_due(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let (cron, _) = self.full_refresh.as_ref()?;
        cron.find_previous_occurrence(&now.with_timezone(&self.timezone), true)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }
}

fn parse_cron(pattern: &str) -> Result<Cron, String> {
    if pattern.split_whitespace().count() != 5 {
        return Err(format!(
            "`{pattern}` is not a 5-field cron (minute hour day-of-month month day-of-week, e.g. \"0 4 * * *\"), or \"off\""
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .build()
        .parse(pattern)
        .map_err(|e| format!("`{pattern}` is not a valid cron: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn schedule(full: &str, zone: &str, every: &str) -> Schedule {
        let w = WatchConfig {
            full_refresh: full.into(),
            timezone: zone.into(),
            incremental_every: every.into(),
            ..Default::default()
        };
        Schedule::resolve(&w, &TableWatch::default()).expect("valid")
    }

    #[test]
    fn four_am_stays_four_am_local_across_dst() {
        let s = schedule("0 4 * * *", "America/Chicago", "1m");
        // CDT (UTC-5) until 2 AM on Sunday 1 November 2026, CST (UTC-6) after.
        let before = Utc.with_ymd_and_hms(2026, 10, 30, 12, 0, 0).unwrap();
        assert_eq!(
            s.next_full_after(before),
            Some(Utc.with_ymd_and_hms(2026, 10, 31, 9, 0, 0).unwrap())
        );
        let after = Utc.with_ymd_and_hms(2026, 11, 1, 12, 0, 0).unwrap();
        assert_eq!(
            s.next_full_after(after),
            Some(Utc.with_ymd_and_hms(2026, 11, 2, 10, 0, 0).unwrap())
        );
        assert_eq!(s.incremental_every, Some(Duration::from_secs(60)));
    }

    #[test]
    fn the_last_due_time_is_the_latest_occurrence_not_after_now() {
        let s = schedule("0 4 * * *", "UTC", "off");
        let at = |d, h, m| Utc.with_ymd_and_hms(2026, 12, d, h, m, 0).unwrap();
        assert_eq!(s.last_full_due(at(2, 3, 59)), Some(at(1, 4, 0)));
        assert_eq!(s.last_full_due(at(2, 4, 0)), Some(at(2, 4, 0)));
        assert_eq!(s.incremental_every, None);
    }

    #[test]
    fn per_table_keys_override_and_bad_values_name_the_key() {
        let w = WatchConfig::default();
        let t = TableWatch {
            incremental_every: Some("off".into()),
            full_refresh: Some("30 2 * * 0".into()),
            ..Default::default()
        };
        let s = Schedule::resolve(&w, &t).unwrap();
        assert_eq!(s.incremental_every, None);
        assert_eq!(s.full_refresh(), Some("30 2 * * 0"));
        let bad = |t: TableWatch| Schedule::resolve(&w, &t).unwrap_err();
        let (key, message) = bad(TableWatch {
            full_refresh: Some("0 4 * *".into()),
            ..Default::default()
        });
        assert_eq!(key, "full_refresh");
        assert!(message.contains("5-field"), "{message}");
        let (key, _) = bad(TableWatch {
            full_refresh: Some("61 4 * * *".into()),
            ..Default::default()
        });
        assert_eq!(key, "full_refresh");
        let (key, message) = bad(TableWatch {
            timezone: Some("Mars/Olympus".into()),
            ..Default::default()
        });
        assert_eq!(key, "timezone");
        assert!(message.contains("IANA"), "{message}");
        let (key, _) = bad(TableWatch {
            incremental_every: Some("soon".into()),
            ..Default::default()
        });
        assert_eq!(key, "incremental_every");
    }
}
