//! Times as RFC 3339 text in UTC, the way Go prints them: the one formatter for the runtime's
//! state, the CRI's logs and labels, and berthctl's tables.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds and nanoseconds since the epoch, as Go's `time.RFC3339Nano` prints them: the
/// fraction without trailing zeros, none at all on a whole second
/// (`2006-01-02T15:04:05.999999999Z`).
pub fn rfc3339(secs: i64, nanos: u32) -> String {
    format(secs, nanos, true)
}

/// As [`rfc3339`] with exactly nine fractional digits (Go's
/// `2006-01-02T15:04:05.000000000Z07:00`, the CRI log format's time stamp).
pub fn rfc3339_fixed(secs: i64, nanos: u32) -> String {
    format(secs, nanos, false)
}

/// A system time to the whole second, as labels such as `containerd.io/gc.expire` carry it
/// (a time before the epoch counts as the epoch).
pub fn rfc3339_secs(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    rfc3339(d.as_secs() as i64, 0)
}

/// Now, as [`rfc3339`].
pub fn now_rfc3339() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs() as i64, d.subsec_nanos())
}

/// Days since 1970-01-01 as (year, month, day) of the proleptic Gregorian calendar (Howard
/// Hinnant's civil-from-days).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn format(secs: i64, nanos: u32, trim: bool) -> String {
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let mut frac = String::new();
    if nanos != 0 || !trim {
        frac = format!(".{nanos:09}");
        while trim && frac.ends_with('0') {
            frac.pop();
        }
    }
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{frac}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_go_prints_them() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_257_894_000, 0), "2009-11-10T23:00:00Z");
        assert_eq!(
            rfc3339(1_700_000_000, 120_000_000),
            "2023-11-14T22:13:20.12Z"
        );
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(
            rfc3339_fixed(1_700_000_000, 120_000_000),
            "2023-11-14T22:13:20.120000000Z"
        );
        assert_eq!(rfc3339(-1, 0), "1969-12-31T23:59:59Z");
        assert_eq!(
            rfc3339_secs(UNIX_EPOCH + std::time::Duration::new(951_782_400 + 3661, 5)),
            "2000-02-29T01:01:01Z"
        );
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_792), (2026, 12, 5));
    }
}
