//! Deliberate mistakes for the simulation's planted-bug tests: with the `plants` feature a test
//! switches one on and shows that the simulation's invariants catch it. Without the feature
//! (every build a user runs) [`active`] is a constant `false` and the checks compile away.

/// A planted mistake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Plant {
    /// The code as written.
    None = 0,
    /// The mobility change log moves when a delta is sent, before its commit is known.
    AdvanceBeforeCommit = 1,
    /// Garbage collection deletes a condemned pack even when a point references it again or a
    /// writer rescued it (the condemn/rescue handshake ignored).
    GcIgnoresRescue = 2,
    /// Dedup takes a block from any pack its index names (condemned, or deleted since the
    /// index was loaded) and does not tell the commit's rescue which pack it relied on.
    DedupCondemned = 3,
}

#[cfg(feature = "plants")]
static ACTIVE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Switches `p` on for this process (only with the `plants` feature).
#[cfg(feature = "plants")]
pub fn set(p: Plant) {
    ACTIVE.store(p as u8, std::sync::atomic::Ordering::SeqCst);
}

/// True if mistake `p` is planted.
#[inline]
pub fn active(p: Plant) -> bool {
    #[cfg(feature = "plants")]
    {
        p != Plant::None && ACTIVE.load(std::sync::atomic::Ordering::Relaxed) == p as u8
    }
    #[cfg(not(feature = "plants"))]
    {
        let _ = p;
        false
    }
}
