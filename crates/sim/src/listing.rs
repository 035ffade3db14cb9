//! The order of `GET /batches`, and its pages.
//!
//! The real API lists batches newest first, but its description promises no order, so a
//! client must not depend on it. [`ListOrder::NewestFirst`] (the default) is the real habit;
//! [`ListOrder::Shuffled`] breaks it: batches come in a fixed pseudo-random order drawn from
//! each batch's seed, so a new batch lands anywhere in the list, not at its head. Either way a
//! walk with `after` is consistent and complete: every batch that exists for the whole walk
//! appears on exactly one of its pages, and `has_more` is true exactly when another visible
//! batch follows the page.
//!
//! A page costs the same wherever it is in a list of 20,000: the cursor is found through the
//! id index (creation order) or the ordered set of keys (shuffled), then only the page and the
//! one batch after it are read. Vanished batches are skipped, but a vanished cursor still
//! marks its place.

use std::ops::Bound;

use crate::model::ListOrder;
use crate::output;
use crate::state::State;

/// Salt of a batch's place in the shuffled order.
const SALT_LIST: u64 = 0x6c69_7374;

impl State {
    /// Batch `i`'s key in the shuffled order: its seed mixed, then its index to break ties.
    fn list_key(&self, i: usize) -> (u64, usize) {
        (output::mix(self.batches[i].seed, SALT_LIST), i)
    }

    /// Puts a new batch in the list order's index (creation order needs none).
    pub(crate) fn place(&mut self, i: usize) {
        if self.list_order == ListOrder::Shuffled {
            let key = self.list_key(i);
            self.shuffled.insert(key);
        }
    }

    /// The batches after the one named `after` (from the start without it), as indices: at
    /// most `limit` visible ones, and whether another visible one follows. An unknown cursor
    /// gives an empty page.
    pub(crate) fn list_page(&self, after: Option<&str>, limit: usize) -> (Vec<usize>, bool) {
        let cursor = match after {
            None => None,
            Some(id) => match self.batch_index.get(id) {
                Some(&i) => Some(i),
                None => return (Vec::new(), false),
            },
        };
        let rest: Box<dyn Iterator<Item = usize> + '_> = match self.list_order {
            ListOrder::NewestFirst => Box::new((0..cursor.unwrap_or(self.batches.len())).rev()),
            ListOrder::Shuffled => {
                let from = cursor.map_or(Bound::Unbounded, |i| Bound::Excluded(self.list_key(i)));
                Box::new(
                    self.shuffled
                        .range((from, Bound::Unbounded))
                        .map(|&(_, i)| i),
                )
            }
        };
        let mut visible = rest.filter(|&i| !self.batches[i].vanished);
        let page: Vec<usize> = visible.by_ref().take(limit).collect();
        let has_more = visible.next().is_some();
        (page, has_more)
    }
}
