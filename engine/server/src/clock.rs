//! The wall clock, in one place: the session driver, the sign-and-spool step and the delivery
//! side's spool view all stamp times with it, and none of them needs the others for it.

/// Milliseconds since the Unix epoch; 0 if the system clock is set before 1970.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
