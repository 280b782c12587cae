//! The one backoff policy floe's retries share (Snowflake REST calls and
//! chunk downloads, the swap's lock waits): exponential, capped, with
//! random jitter so clients that failed together do not retry together.

use std::time::Duration;

use ring::rand::SecureRandom;

/// A uniformly random duration in `[0, max]`.
pub fn jitter(max: Duration) -> Duration {
    let mut bytes = [0u8; 8];
    // The system RNG failing is not worth failing a retry over: no jitter then.
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        return Duration::ZERO;
    }
    let nanos = max.as_nanos().min(u64::MAX as u128) as u64;
    Duration::from_nanos(u64::from_le_bytes(bytes) % nanos.saturating_add(1))
}

/// The wait before retry number `attempt` (1-based): `base × 2^(attempt-1)`,
/// capped at `cap`, plus up to half of that again as jitter.
pub fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exp = base
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(cap);
    exp + jitter(exp / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_jitter_stays_in_bounds() {
        let (base, cap) = (Duration::from_millis(100), Duration::from_secs(5));
        let mut last = Duration::ZERO;
        for attempt in 1..=8 {
            let exp = base.saturating_mul(1 << (attempt - 1)).min(cap);
            for _ in 0..50 {
                let d = backoff(attempt, base, cap);
                assert!(d >= exp && d <= exp + exp / 2, "attempt {attempt}: {d:?}");
            }
            assert!(exp >= last);
            last = exp;
        }
        assert_eq!(last, cap);
        let spread: std::collections::HashSet<Duration> =
            (0..20).map(|_| jitter(Duration::from_secs(1))).collect();
        assert!(spread.len() > 10, "jitter is not random: {spread:?}");
    }
}
