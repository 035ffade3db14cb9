//! The order of `GET /batches` and `GET /messages/batches`, and their pages: each API lists
//! its own batches only, in the same order.
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

use crate::model::{Api, ListOrder};
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

    /// A page of `api`'s batches, as indices in list order: at most `limit` visible ones from
    /// where `cursor` says, and whether another visible one follows them in the direction
    /// read. An unknown cursor gives an empty page.
    pub(crate) fn list_page(
        &self,
        api: Api,
        cursor: Cursor<'_>,
        limit: usize,
    ) -> (Vec<usize>, bool) {
        let (from, forward) = match cursor {
            Cursor::Start => (None, true),
            Cursor::After(id) | Cursor::Before(id) => match self.batch_index.get(id) {
                Some(&i) => (Some(i), matches!(cursor, Cursor::After(_))),
                None => return (Vec::new(), false),
            },
        };
        let rest: Box<dyn Iterator<Item = usize> + '_> = match (self.list_order, forward) {
            (ListOrder::NewestFirst, true) => {
                Box::new((0..from.unwrap_or(self.batches.len())).rev())
            }
            (ListOrder::NewestFirst, false) => {
                Box::new(from.map_or(0, |i| i + 1)..self.batches.len())
            }
            (ListOrder::Shuffled, true) => {
                let from = from.map_or(Bound::Unbounded, |i| Bound::Excluded(self.list_key(i)));
                Box::new(
                    self.shuffled
                        .range((from, Bound::Unbounded))
                        .map(|&(_, i)| i),
                )
            }
            (ListOrder::Shuffled, false) => {
                let to = from.map_or(Bound::Unbounded, |i| Bound::Excluded(self.list_key(i)));
                Box::new(
                    self.shuffled
                        .range((Bound::Unbounded, to))
                        .rev()
                        .map(|&(_, i)| i),
                )
            }
        };
        let mut visible = rest.filter(|&i| !self.batches[i].vanished && self.batches[i].api == api);
        let mut page: Vec<usize> = visible.by_ref().take(limit).collect();
        let has_more = visible.next().is_some();
        if !forward {
            page.reverse();
        }
        (page, has_more)
    }
}

/// Where a page of the list starts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Cursor<'a> {
    Start,
    /// After this batch, in list order (OpenAI's `after`, Anthropic's `after_id`).
    After(&'a str),
    /// Just before this batch, read backwards and given in list order (Anthropic's
    /// `before_id`).
    Before(&'a str),
}
