//! The report's time range: `--from` (inclusive) and `--to` (exclusive), as RFC 3339 times or
//! dates (midnight UTC). Records carry microseconds, so a bound is kept in microseconds too; a
//! bound finer than that is rounded up, which selects exactly the records a nanosecond bound
//! would (a record at t µs is ≥ a bound b ns exactly when t ≥ ⌈b / 1000⌉).

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};

/// A point in time, microseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Micros(pub i64);

impl Micros {
    /// RFC 3339 in UTC with microseconds: the text bound to the queries and shown in reports.
    pub fn rfc3339(self) -> String {
        DateTime::<Utc>::from_timestamp_micros(self.0)
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true))
            .unwrap_or_else(|| format!("{} µs since 1970-01-01T00:00:00Z", self.0))
    }
}

const FIX: &str = "use an RFC 3339 time such as 2026-03-02T10:00:00Z (or with an offset, \
                   2026-03-02T11:00:00+01:00) or a date such as 2026-03-02 (midnight UTC)";

/// Parses one bound. The error says what is wrong and how to write it (clap prefixes the flag).
pub fn parse(s: &str) -> Result<Micros, String> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        let t = t.with_timezone(&Utc);
        let secs = t.timestamp();
        let nanos = i64::from(t.timestamp_subsec_nanos());
        let micros = secs
            .checked_mul(1_000_000)
            .and_then(|m| m.checked_add((nanos + 999) / 1000))
            .ok_or_else(|| format!("`{s}` is out of range. Fix: {FIX}"))?;
        return Ok(Micros(micros));
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        if s.len() == 10 {
            let t = d
                .and_hms_opt(0, 0, 0)
                .map(|t| t.and_utc().timestamp_micros())
                .ok_or_else(|| format!("`{s}` is out of range. Fix: {FIX}"))?;
            return Ok(Micros(t));
        }
    }
    let hint = if s.contains('T') && !s.ends_with('Z') && !has_offset(s) {
        " (a time needs a zone: add Z for UTC)"
    } else {
        ""
    };
    Err(format!(
        "`{s}` is neither an RFC 3339 time nor a date{hint}. Fix: {FIX}"
    ))
}

fn has_offset(s: &str) -> bool {
    s.rsplit_once('T')
        .is_some_and(|(_, time)| time.contains('+') || time.contains('-'))
}

/// `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    pub from: Micros,
    pub to: Micros,
}

impl TimeRange {
    pub fn new(from: Micros, to: Micros) -> Result<TimeRange, String> {
        if from >= to {
            return Err(format!(
                "--from ({}) must be earlier than --to ({}); --from is inclusive and --to \
                 exclusive. Fix: swap them, or widen the range (e.g. --from 2026-03-02 --to \
                 2026-03-03 for one UTC day)",
                from.rfc3339(),
                to.rfc3339()
            ));
        }
        Ok(TimeRange { from, to })
    }

    pub fn contains(&self, t: i64) -> bool {
        self.from.0 <= t && t < self.to.0
    }

    /// Whether `[start, start + len)` (microseconds) overlaps the range.
    pub fn overlaps(&self, start: i64, len: i64) -> bool {
        start < self.to.0 && start.saturating_add(len) > self.from.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_772_445_600_000_000; // 2026-03-02T10:00:00Z

    #[test]
    fn accepted_forms() {
        let cases = [
            ("2026-03-02T10:00:00Z", T),
            ("2026-03-02T10:00:00.000001Z", T + 1),
            ("2026-03-02T11:00:00+01:00", T),
            ("2026-03-02t10:00:00z", T),
            (" 2026-03-02T10:00:00Z ", T),
            // Finer than a microsecond: rounded up (see the module doc).
            ("2026-03-02T10:00:00.0000001Z", T + 1),
            ("2026-03-02T10:00:00.000001000Z", T + 1),
            ("2026-03-02", T - 10 * 3600 * 1_000_000),
        ];
        for (s, want) in cases {
            assert_eq!(parse(s), Ok(Micros(want)), "{s}");
        }
    }

    #[test]
    fn rejected_forms_say_how_to_fix() {
        for s in [
            "2026-03-02T10:00:00",
            "2026-13-01",
            "2026-3-2",
            "yesterday",
            "",
            "1772445600",
        ] {
            let e = parse(s).expect_err(s);
            assert!(e.contains("Fix: use an RFC 3339 time"), "{s}: {e}");
        }
        assert!(parse("2026-03-02T10:00:00")
            .expect_err("no zone")
            .contains("add Z"));
    }

    #[test]
    fn range_is_half_open_and_ordered() {
        let r = TimeRange::new(Micros(T), Micros(T + 10)).expect("range");
        assert!(r.contains(T) && r.contains(T + 9) && !r.contains(T + 10) && !r.contains(T - 1));
        assert!(r.overlaps(T - 5, 6) && !r.overlaps(T - 5, 5) && !r.overlaps(T + 10, 5));
        let e = TimeRange::new(Micros(T), Micros(T)).expect_err("empty");
        assert!(
            e.contains("--from") && e.contains("--to") && e.contains("Fix:"),
            "{e}"
        );
        assert_eq!(Micros(T + 1).rfc3339(), "2026-03-02T10:00:00.000001Z");
    }
}
