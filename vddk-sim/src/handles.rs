//! Opaque handle tokens. C sees `VixDiskLibConnection` / `VixDiskLibHandle` pointers, but
//! they are never dereferenced: each is a token looked up in a table, so a stale, closed or
//! forged handle is rejected instead of trusted. Tokens are unique for the life of the
//! process (one counter for every table), so a disk token passed as a connection is
//! simply not found.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// First token, and the distance between tokens: they look like aligned heap pointers and
/// never collide with small integers or NULL.
const TOKEN_BASE: usize = 0x5151_0000;
const TOKEN_STEP: usize = 0x10;

static NEXT_TOKEN: AtomicUsize = AtomicUsize::new(TOKEN_BASE);

/// A table of live objects by token.
#[derive(Debug)]
pub(crate) struct HandleTable<T> {
    map: Mutex<HashMap<usize, Arc<T>>>,
}

impl<T> Default for HandleTable<T> {
    fn default() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<T> HandleTable<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<usize, Arc<T>>> {
        // A panic while holding this lock cannot leave the map half-updated.
        self.map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stores `value` and returns its new token.
    pub(crate) fn insert(&self, value: Arc<T>) -> usize {
        let token = NEXT_TOKEN.fetch_add(TOKEN_STEP, Ordering::Relaxed);
        self.lock().insert(token, value);
        token
    }

    pub(crate) fn get(&self, token: usize) -> Option<Arc<T>> {
        self.lock().get(&token).cloned()
    }

    pub(crate) fn remove(&self, token: usize) -> Option<Arc<T>> {
        self.lock().remove(&token)
    }

    /// Removes and returns everything (Exit).
    pub(crate) fn drain(&self) -> Vec<Arc<T>> {
        self.lock().drain().map(|(_, v)| v).collect()
    }

    pub(crate) fn values(&self) -> Vec<Arc<T>> {
        self.lock().values().cloned().collect()
    }
}

/// The pointer C sees for `token`.
pub(crate) fn token_to_ptr<P>(token: usize) -> *mut P {
    std::ptr::without_provenance_mut(token)
}

/// The token a C handle pointer carries (never dereferenced).
pub(crate) fn ptr_to_token<P>(ptr: *const P) -> usize {
    ptr.addr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_removed_ones_are_gone() {
        let a: HandleTable<u32> = HandleTable::default();
        let b: HandleTable<u32> = HandleTable::default();
        let ta = a.insert(Arc::new(1));
        let tb = b.insert(Arc::new(2));
        assert_ne!(ta, tb);
        assert!(b.get(ta).is_none());
        assert_eq!(*a.remove(ta).unwrap(), 1);
        assert!(a.get(ta).is_none());
        assert_eq!(ptr_to_token(token_to_ptr::<u8>(tb)), tb);
    }
}
