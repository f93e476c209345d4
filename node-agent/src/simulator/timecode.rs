//! How After Effects writes times in the render log: timecodes, frame rates, elapsed time and
//! the date of the Starting/Finished lines.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Whether `fps` is an NTSC rate (29.97, 59.94) that After Effects shows in drop-frame form.
pub fn is_ntsc(fps: f64) -> bool {
    let nominal = fps.round();
    (nominal == 30.0 || nominal == 60.0) && (fps - nominal * 1000.0 / 1001.0).abs() < 0.005
}

/// The timecode of `frame` (counted from 0): `H:MM:SS:FF`, or `H;MM;SS;FF` in drop-frame form,
/// which skips frame numbers 0 and 1 (0-3 at 59.94) at each minute but every tenth.
pub fn timecode(frame: u64, fps: f64, drop_frame: bool) -> String {
    let base = (fps.round() as u64).max(1);
    let mut number = frame;
    let separator = if drop_frame && is_ntsc(fps) {
        let dropped = base / 15; // 2 at 29.97, 4 at 59.94
        let per_minute = base * 60 - dropped;
        let per_ten_minutes = base * 600 - dropped * 9;
        let (tens, rest) = (frame / per_ten_minutes, frame % per_ten_minutes);
        number += dropped * 9 * tens;
        if rest > dropped {
            number += dropped * ((rest - dropped) / per_minute);
        }
        ';'
    } else {
        ':'
    };
    let (frames, seconds) = (number % base, number / base);
    let (hours, minutes, seconds) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    format!("{hours}{separator}{minutes:02}{separator}{seconds:02}{separator}{frames:02}")
}

/// The frame rate as the settings block shows it: `30.00`, `29.97`.
pub fn frame_rate(fps: f64) -> String {
    format!("{fps:.2}")
}

/// Total elapsed time as the last line shows it: `3 Seconds`, `1 Min, 28 Sec`, `26 Hr, 15 Min`.
pub fn elapsed(time: Duration) -> String {
    let seconds = time.as_secs();
    match seconds {
        0..60 => format!("{seconds} Seconds"),
        60..3600 => format!("{} Min, {} Sec", seconds / 60, seconds % 60),
        _ => format!("{} Hr, {} Min", seconds / 3600, seconds / 60 % 60),
    }
}

/// The date of the Starting/Finished lines, US style in UTC: `11/29/26 7:40:02 PM`.
pub fn log_date(now: SystemTime) -> String {
    let secs = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let (hour, minute, second) = (secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let (hour12, half) = match hour {
        0 => (12, "AM"),
        1..12 => (hour, "AM"),
        12 => (12, "PM"),
        _ => (hour - 12, "PM"),
    };
    format!("{month}/{day}/{:02} {hour12}:{minute:02}:{second:02} {half}", year.rem_euclid(100))
}

/// Gregorian (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_drop_timecodes() {
        assert_eq!(timecode(0, 30.0, false), "0:00:00:00");
        assert_eq!(timecode(61, 30.0, false), "0:00:02:01");
        assert_eq!(timecode(299, 30.0, false), "0:00:09:29");
        assert_eq!(timecode(25 * 3600 + 24, 25.0, true), "1:00:00:24", "25 fps never drops");
        assert_eq!(timecode(61, 29.97, false), "0:00:02:01", "29.97 without drop-frame counts like 30");
    }

    #[test]
    fn drop_frame_timecodes_at_29_97_and_59_94() {
        assert!(is_ntsc(29.97) && is_ntsc(59.94) && !is_ntsc(30.0) && !is_ntsc(25.0));
        assert_eq!(timecode(61, 29.97, true), "0;00;02;01");
        assert_eq!(timecode(1799, 29.97, true), "0;00;59;29");
        assert_eq!(timecode(1800, 29.97, true), "0;01;00;02", "frames 0 and 1 of minute 1 are skipped");
        assert_eq!(timecode(17982, 29.97, true), "0;10;00;00", "every tenth minute keeps them");
        assert_eq!(timecode(3600, 59.94, true), "0;01;00;04");
    }

    #[test]
    fn rates_elapsed_and_dates() {
        assert_eq!(frame_rate(30.0), "30.00");
        assert_eq!(frame_rate(29.97), "29.97");
        assert_eq!(elapsed(Duration::from_millis(3900)), "3 Seconds");
        assert_eq!(elapsed(Duration::from_secs(88)), "1 Min, 28 Sec");
        assert_eq!(elapsed(Duration::from_secs(26 * 3600 + 15 * 60 + 7)), "26 Hr, 15 Min");
        // 2026-11-29 19:40:02 UTC
        assert_eq!(log_date(UNIX_EPOCH + Duration::from_secs(1_795_981_202)), "11/29/26 7:40:02 PM");
        assert_eq!(log_date(UNIX_EPOCH), "1/1/70 12:00:00 AM");
    }
}
