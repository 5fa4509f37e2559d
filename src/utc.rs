//! UTC wall-clock time as text, for file names and log separators (the harness's
//! `store/<time>/` folders, `oncekv cluster`'s run markers). Written out here
//! rather than pulling in a date crate: one conversion, tested below.
//!
//! It imports nothing from the crate and knows nothing of what its text is for.

use std::time::{SystemTime, UNIX_EPOCH};

/// A moment of UTC, split into its civil fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utc {
    /// Year.
    pub year: i64,
    /// Month, 1-12.
    pub month: i64,
    /// Day of the month, 1-31.
    pub day: i64,
    /// Hour, 0-23.
    pub hour: u64,
    /// Minute, 0-59.
    pub minute: u64,
    /// Second, 0-59.
    pub second: u64,
    /// Millisecond, 0-999.
    pub milli: u32,
}

impl Utc {
    /// The current time (the epoch if the clock is before it).
    pub fn now() -> Utc {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Utc::from_unix(since.as_secs(), since.subsec_millis())
    }

    /// The civil time `secs` seconds after 1970-01-01T00:00:00Z (Howard
    /// Hinnant's days-to-civil algorithm).
    pub fn from_unix(secs: u64, milli: u32) -> Utc {
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let z = (days as i64) + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        Utc {
            year: yoe + era * 400 + i64::from(month <= 2),
            month,
            day,
            hour: rem / 3_600,
            minute: rem % 3_600 / 60,
            second: rem % 60,
            milli,
        }
    }

    /// `2026-12-02T07:15:44Z`.
    pub fn iso(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }

    /// `20261202T071544.123`, for folder names.
    pub fn compact(&self) -> String {
        format!(
            "{:04}{:02}{:02}T{:02}{:02}{:02}.{:03}",
            self.year, self.month, self.day, self.hour, self.minute, self.second, self.milli
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_of_known_instants() {
        assert_eq!(Utc::from_unix(0, 0).iso(), "1970-01-01T00:00:00Z");
        // 2000-02-29 (a leap day of a century leap year) 12:34:56.
        assert_eq!(Utc::from_unix(951_827_696, 7).iso(), "2000-02-29T12:34:56Z");
        assert_eq!(
            Utc::from_unix(951_827_696, 7).compact(),
            "20000229T123456.007"
        );
        assert_eq!(
            Utc::from_unix(1_796_195_671, 0).iso(),
            "2026-12-02T07:14:31Z"
        );
    }
}
