//! Library-owned C allocations (error texts, Info, block lists, connect params).
//!
//! Every pointer handed to C is recorded by kind; the matching Free function releases only
//! pointers it finds, so a foreign, already-freed or wrong-kind pointer is logged and
//! ignored instead of corrupting the heap.

use std::collections::HashSet;
use std::sync::Mutex;

/// Which Free function owns an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    ErrorText,
    Info,
    #[cfg_attr(feature = "vddk65", allow(dead_code))]
    BlockList,
    ConnectParams,
}

static LIVE: Mutex<Option<HashSet<(Kind, usize)>>> = Mutex::new(None);

/// Records `addr` as a live allocation of `kind`.
pub(crate) fn track(kind: Kind, addr: usize) {
    let mut live = LIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    live.get_or_insert_with(HashSet::new).insert((kind, addr));
}

/// Forgets `addr`; true when it was a live allocation of `kind` (the caller may free it).
pub(crate) fn untrack(kind: Kind, addr: usize) -> bool {
    let mut live = LIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    live.as_mut().is_some_and(|set| set.remove(&(kind, addr)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tracked_pointers_of_the_right_kind_are_released() {
        track(Kind::Info, 0x1000);
        assert!(!untrack(Kind::BlockList, 0x1000));
        assert!(untrack(Kind::Info, 0x1000));
        assert!(!untrack(Kind::Info, 0x1000));
    }
}
