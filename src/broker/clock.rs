//! The milliseconds queue commands are stamped with (`Meta::now_ms`): wall-clock time at
//! start, advanced by the monotonic clock, so TTLs neither jump with the system clock nor
//! depend on which task reads the time.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn origin() -> &'static (Instant, u64) {
    static ORIGIN: OnceLock<(Instant, u64)> = OnceLock::new();
    ORIGIN.get_or_init(|| {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        (Instant::now(), wall)
    })
}

pub fn now_ms() -> u64 {
    let (at, wall) = origin();
    wall + at.elapsed().as_millis() as u64
}

/// The instant at which `now_ms()` reaches `ms`.
pub fn instant_at(ms: u64) -> Instant {
    let (at, wall) = origin();
    *at + Duration::from_millis(ms.saturating_sub(*wall))
}
