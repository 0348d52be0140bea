//! The one verdict type: a peer admitted under one policy epoch, for a
//! window of time. The memo, the tracker of live connections and the
//! client's session store all keep it, and ask it the one question of
//! whether it still holds; only the judgment makes one.

/// When a verdict holds: in one policy epoch, from `from` up to (not
/// including) `until`, in Unix seconds. `until` of [`Holds::NEVER`] holds
/// until the next policy change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Holds {
    pub(crate) epoch: u64,
    /// The latest notBefore of the verified path.
    pub(crate) from: u64,
    /// The first second it no longer holds: the earliest notAfter of the
    /// verified path plus one, or the CRLs' earliest nextUpdate.
    pub(crate) until: u64,
}

impl Holds {
    /// No end but the next policy change.
    pub(crate) const NEVER: u64 = u64::MAX;

    /// Whether the verdict holds in `epoch` at `now` (Unix seconds): the
    /// one test every cache of verdicts makes.
    pub(crate) fn at(&self, epoch: u64, now: u64) -> bool {
        self.epoch == epoch && self.from <= now && now < self.until
    }
}
