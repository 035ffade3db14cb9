//! The SHA-256 of a file, computed while its lines are checked.
//!
//! With the CPU's SHA extensions (which sha2 finds at run time) SHA-256 runs at about 1.6 GB/s
//! a core here, about as fast as all the checks together: hashed on the checking thread, it
//! would halve the speed of validation. So once a file proves large ([`APART_FROM`] bytes),
//! its hashing moves to a thread of its own, fed copies of the reads in order; a small file
//! never starts one.

use std::sync::mpsc::{Receiver, SyncSender, channel, sync_channel};
use std::thread::{Scope, ScopedJoinHandle};

use sha2::{Digest, Sha256};

/// How much of a file is hashed on the checking thread. A thread costs tens of microseconds;
/// checking this much takes milliseconds.
const APART_FROM: u64 = 4 << 20;

/// The most bytes in one copy sent to the hashing thread.
const PIECE: usize = 256 * 1024;

/// Copies on their way to the hashing thread at most. With the one it hashes and the one
/// being filled, there are at most six copies (1.5 MiB): a new one is made only when none
/// came back.
const QUEUED: usize = 4;

/// The hash of what was read so far.
pub(super) struct Hash<'scope, 'env> {
    scope: &'scope Scope<'scope, 'env>,
    state: State<'scope>,
}

enum State<'scope> {
    /// Hashed here, so far this many bytes.
    Here(Sha256, u64),
    Apart(Apart<'scope>),
}

impl<'scope, 'env> Hash<'scope, 'env> {
    /// A hash that may start a thread in `scope` for a large file.
    pub(super) fn new(scope: &'scope Scope<'scope, 'env>) -> Self {
        Hash {
            scope,
            state: State::Here(Sha256::new(), 0),
        }
    }

    /// Hashes the next bytes read.
    pub(super) fn update(&mut self, bytes: &[u8]) {
        match &mut self.state {
            State::Here(sha, hashed) => {
                sha.update(bytes);
                *hashed += bytes.len() as u64;
                if *hashed >= APART_FROM {
                    match Apart::start(self.scope, sha.clone()) {
                        Ok(apart) => self.state = State::Apart(apart),
                        // No thread to be had: hash here, and try again later.
                        Err(_) => *hashed = 0,
                    }
                }
            }
            State::Apart(apart) => apart.update(bytes),
        }
    }

    /// The lower-case hex SHA-256 of all the bytes read.
    pub(super) fn finish(self) -> String {
        let sha = match self.state {
            State::Here(sha, _) => sha,
            State::Apart(apart) => apart.finish(),
        };
        super::hex(&sha.finalize())
    }
}

/// A thread that hashes copies of the reads, and hands the buffers back to be filled again.
/// Dropped without [`Apart::finish`] (a file refused half-way), it hashes what it was sent and
/// ends; its scope waits for it.
struct Apart<'scope> {
    copies: SyncSender<Vec<u8>>,
    spare: Receiver<Vec<u8>>,
    thread: ScopedJoinHandle<'scope, Sha256>,
}

impl<'scope> Apart<'scope> {
    fn start(scope: &'scope Scope<'scope, '_>, mut sha: Sha256) -> std::io::Result<Self> {
        let (copies, to_hash) = sync_channel::<Vec<u8>>(QUEUED);
        let (hashed, spare) = channel();
        let thread = std::thread::Builder::new()
            .name("sha256".into())
            .spawn_scoped(scope, move || {
                for copy in to_hash {
                    sha.update(&copy);
                    // Gone once the checks stopped early.
                    let _ = hashed.send(copy);
                }
                sha
            })?;
        Ok(Apart {
            copies,
            spare,
            thread,
        })
    }

    fn update(&mut self, bytes: &[u8]) {
        for piece in bytes.chunks(PIECE) {
            let mut copy = self.spare.try_recv().unwrap_or_default();
            copy.clear();
            copy.extend_from_slice(piece);
            // Waits while QUEUED copies are on their way. Fails only when the thread is gone,
            // which `finish` reports.
            let _ = self.copies.send(copy);
        }
    }

    fn finish(self) -> Sha256 {
        drop(self.copies);
        self.thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes that are not all alike, so that a piece out of order changes the hash.
    fn bytes(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4093) as u8).collect()
    }

    #[test]
    fn a_large_file_is_hashed_apart_in_pieces_and_gets_the_hash_of_its_whole() {
        let data = bytes(APART_FROM as usize * 2 + 12_345);
        let hex = std::thread::scope(|scope| {
            let mut hash = Hash::new(scope);
            // Reads of many sizes, one larger than a piece.
            let mut rest = &data[..];
            for size in [1, 1_000, PIECE * 3 + 7, 65_536].into_iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (read, after) = rest.split_at(size.min(rest.len()));
                hash.update(read);
                rest = after;
            }
            assert!(matches!(hash.state, State::Apart(_)), "hashed apart");
            hash.finish()
        });
        assert_eq!(hex, super::super::hex(&Sha256::digest(&data)));
    }

    #[test]
    fn a_small_file_is_hashed_here() {
        let data = bytes(APART_FROM as usize - 1);
        std::thread::scope(|scope| {
            let mut hash = Hash::new(scope);
            hash.update(&data);
            assert!(matches!(hash.state, State::Here(..)));
            assert_eq!(hash.finish(), super::super::hex(&Sha256::digest(&data)));
        });
    }
}
