//! Values many clients of a shard hold the same copy of (startup settings, prepared statements), kept while any
//! client holds them.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::Hash;
use std::rc::{Rc, Weak};

pub struct Interner<K, T> {
    map: RefCell<HashMap<K, Weak<T>>>,
}

impl<K, T> Default for Interner<K, T> {
    fn default() -> Self {
        Interner {
            map: RefCell::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq, T> Interner<K, T> {
    /// The shared value under `key` if one is alive and `same` says it is the `wanted` one, else
    /// `make(wanted)`, which then replaces it.
    pub fn intern<W>(
        &self,
        key: K,
        wanted: W,
        same: impl Fn(&T, &W) -> bool,
        make: impl FnOnce(W) -> T,
    ) -> Rc<T> {
        let mut map = self.map.borrow_mut();
        if let Some(shared) = map
            .get(&key)
            .and_then(Weak::upgrade)
            .filter(|v| same(v, &wanted))
        {
            return shared;
        }
        // Values no client holds any more are dropped as the map grows, so its size follows the live clients.
        if map.len() >= 64 && map.len().is_power_of_two() {
            map.retain(|_, v| v.strong_count() > 0);
        }
        let shared = Rc::new(make(wanted));
        map.insert(key, Rc::downgrade(&shared));
        shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_are_shared_and_dead_ones_pruned() {
        let interner: Interner<u32, String> = Interner::default();
        let same = |v: &String, w: &&str| v == w;
        let a = interner.intern(1, "a", same, |w| w.to_owned());
        let b = interner.intern(1, "a", same, |_| unreachable!());
        assert!(Rc::ptr_eq(&a, &b));
        // Same key, different value: replaced, never confused.
        let c = interner.intern(1, "c", same, |w| w.to_owned());
        assert_eq!(*c, "c");
        for k in 2..200 {
            drop(interner.intern(k, (), |_, _| false, |_| k.to_string()));
        }
        assert!(interner.map.borrow().len() < 150);
    }
}
