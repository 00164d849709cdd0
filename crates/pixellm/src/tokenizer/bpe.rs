//! The BPE merge loop shared by the two BPE tokenizers (`tokenizer.json` models and the
//! byte-level BPE of GGUF chat models): Hugging Face `tokenizers`' `Word::merge_all`.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// `(left id, right id) -> (rank, merged id)`; a lower rank merges first.
pub(crate) type Merges = HashMap<(u32, u32), (u32, u32)>;

/// One symbol of a word being merged: a doubly linked list over a vector, so a merge is
/// O(1) and positions stay stable for the queue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sym {
    pub(crate) id: u32,
    /// False once merged into its left neighbour.
    pub(crate) live: bool,
    prev: Option<usize>,
    next: Option<usize>,
}

/// Appends symbol `id` to `word`.
pub(crate) fn push(word: &mut Vec<Sym>, id: u32) {
    let i = word.len();
    if let Some(last) = word.last_mut() {
        last.next = Some(i);
    }
    word.push(Sym {
        id,
        live: true,
        prev: i.checked_sub(1),
        next: None,
    });
}

/// The ids of the symbols left after merging.
pub(crate) fn ids(word: &[Sym]) -> Vec<u32> {
    word.iter().filter(|s| s.live).map(|s| s.id).collect()
}

/// Applies `merges` to `word` until none applies: a min-heap on (rank, position); stale
/// entries (a side already merged away, or the pair changed) are skipped when popped.
pub(crate) fn merge_all(merges: &Merges, word: &mut [Sym]) {
    let mut queue: BinaryHeap<Merge> = word
        .windows(2)
        .enumerate()
        .filter_map(|(pos, w)| {
            merges
                .get(&(w[0].id, w[1].id))
                .map(|&(rank, new_id)| Merge { pos, rank, new_id })
        })
        .collect();
    while let Some(top) = queue.pop() {
        let cur = word[top.pos];
        if !cur.live {
            continue;
        }
        let Some(next_pos) = cur.next else {
            continue;
        };
        let right = word[next_pos];
        match merges.get(&(cur.id, right.id)) {
            Some(&(_, new_id)) if new_id == top.new_id => {}
            _ => continue,
        }
        word[top.pos].id = top.new_id;
        word[top.pos].next = right.next;
        word[next_pos].live = false;
        if let Some(n) = right.next {
            word[n].prev = Some(top.pos);
        }
        let cur = word[top.pos];
        if let Some(p) = cur.prev {
            if let Some(&(rank, new_id)) = merges.get(&(word[p].id, cur.id)) {
                queue.push(Merge {
                    pos: p,
                    rank,
                    new_id,
                });
            }
        }
        if let Some(n) = cur.next {
            if let Some(&(rank, new_id)) = merges.get(&(cur.id, word[n].id)) {
                queue.push(Merge {
                    pos: top.pos,
                    rank,
                    new_id,
                });
            }
        }
    }
}

/// Min-heap entry on (rank, position), as `tokenizers`' `Merge` ordering.
#[derive(PartialEq, Eq)]
struct Merge {
    pos: usize,
    rank: u32,
    new_id: u32,
}

impl PartialOrd for Merge {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Merge {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .rank
            .cmp(&self.rank)
            .then_with(|| other.pos.cmp(&self.pos))
    }
}
