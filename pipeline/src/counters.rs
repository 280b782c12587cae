//! What this process has done so far, process-wide: the figures `floe
//! watch` exports as per-process metrics. Plain atomics, bumped where the
//! work happens (a login, a chunk download, a budget reservation), so
//! counting costs nothing on the data path and needs no registry there.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

static SNOWFLAKE_LOGINS: AtomicU64 = AtomicU64::new(0);
static SNOWFLAKE_BYTES: AtomicU64 = AtomicU64::new(0);
static BUDGET_RESERVED: AtomicI64 = AtomicI64::new(0);

/// A successful Snowflake login.
pub(crate) fn login() {
    SNOWFLAKE_LOGINS.fetch_add(1, Ordering::Relaxed);
}

/// Result bytes downloaded from Snowflake (chunk bodies, as sent).
pub(crate) fn downloaded(bytes: usize) {
    SNOWFLAKE_BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
}

pub(crate) fn reserved(bytes: u32) {
    BUDGET_RESERVED.fetch_add(i64::from(bytes), Ordering::Relaxed);
}

pub(crate) fn released(bytes: u32) {
    BUDGET_RESERVED.fetch_sub(i64::from(bytes), Ordering::Relaxed);
}

/// The figures now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub snowflake_logins: u64,
    pub snowflake_bytes: u64,
    /// Bytes held in byte budgets right now (every stream's, together).
    pub budget_reserved: u64,
}

pub fn now() -> Counters {
    Counters {
        snowflake_logins: SNOWFLAKE_LOGINS.load(Ordering::Relaxed),
        snowflake_bytes: SNOWFLAKE_BYTES.load(Ordering::Relaxed),
        budget_reserved: BUDGET_RESERVED.load(Ordering::Relaxed).max(0) as u64,
    }
}
