use serde::{Deserialize, Serialize};
use std::fmt;

/// Number of low bits holding the logical counter of a hybrid timestamp.
const LOGICAL_BITS: u32 = 18;

/// A hybrid logical timestamp: `physical_ms << 18 | logical`.
///
/// Every write carries one, allocated by the coordinator's timestamp oracle;
/// reads pick one as their MVCC snapshot. Ordering of the raw `u64` is the
/// ordering of events.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// Smaller than every allocated timestamp.
    pub const ZERO: Timestamp = Timestamp(0);
    /// Larger than every allocated timestamp ("never", e.g. not deleted).
    pub const MAX: Timestamp = Timestamp(u64::MAX);

    pub fn compose(physical_ms: u64, logical: u64) -> Self {
        Timestamp((physical_ms << LOGICAL_BITS) | (logical & ((1 << LOGICAL_BITS) - 1)))
    }

    pub fn physical_ms(self) -> u64 {
        self.0 >> LOGICAL_BITS
    }

    pub fn logical(self) -> u64 {
        self.0 & ((1 << LOGICAL_BITS) - 1)
    }

    /// Largest number of timestamps one physical millisecond can hold.
    pub const fn logical_capacity() -> u64 {
        1 << LOGICAL_BITS
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.physical_ms(), self.logical())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compose_round_trips_and_orders() {
        let a = Timestamp::compose(1_700_000_000_000, 5);
        assert_eq!(a.physical_ms(), 1_700_000_000_000);
        assert_eq!(a.logical(), 5);
        assert!(Timestamp::compose(1_700_000_000_001, 0) > a);
        assert!(Timestamp::compose(1_700_000_000_000, 6) > a);
    }
}
