//! Quorum arithmetic, in one place. With n = 3f + 1 replicas:
//! - `2f + 1` (a *quorum*) intersect in at least one correct replica: commits,
//!   stable checkpoints, view changes;
//! - `2f` prepares from backups plus the primary's pre-prepare make a slot
//!   *prepared*;
//! - `f + 1` (a *weak quorum*) contain at least one correct replica: enough to
//!   trust a claim (a result, a reply, a higher view).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quorum {
    pub n: usize,
    pub f: usize,
}

impl Quorum {
    /// The quorum of a network of `n` replicas; tolerates `f = (n - 1) / 3`.
    pub fn new(n: usize) -> Quorum {
        assert!(n >= 1, "a network has at least one replica");
        Quorum { n, f: (n - 1) / 3 }
    }

    /// Matching messages that make a certificate: 2f + 1.
    pub fn quorum(&self) -> usize {
        2 * self.f + 1
    }

    /// Prepares from backups (besides the pre-prepare) that make a slot prepared: 2f.
    pub fn prepares(&self) -> usize {
        2 * self.f
    }

    /// A set this large holds at least one correct replica: f + 1.
    pub fn weak(&self) -> usize {
        self.f + 1
    }

    /// Whether a gateway's answers fix where a request is in the order:
    /// f + 1 replicas that executed it there (one of them correct), or
    /// 2f + 1 that executed or prepared it there (tentative execution:
    /// f + 1 correct replicas hold the prepared certificate, which every
    /// later view keeps).
    pub fn ordered(&self, executed: &BTreeSet<usize>, prepared: &BTreeSet<usize>) -> bool {
        executed.len() >= self.weak() || executed.union(prepared).count() >= self.quorum()
    }

    /// The primary of `view`.
    pub fn primary(&self, view: u64) -> usize {
        (view % self.n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// n, f, quorum (2f+1), prepares (2f), weak (f+1)
    const TABLE: &[(usize, usize, usize, usize, usize)] =
        &[(4, 1, 3, 2, 2), (7, 2, 5, 4, 3), (10, 3, 7, 6, 4), (13, 4, 9, 8, 5)];

    #[test]
    fn quorum_sizes_match_the_table() {
        for &(n, f, quorum, prepares, weak) in TABLE {
            let q = Quorum::new(n);
            assert_eq!((q.f, q.quorum(), q.prepares(), q.weak()), (f, quorum, prepares, weak), "n = {n}");
        }
    }

    #[test]
    fn two_quorums_share_a_correct_replica() {
        for &(n, ..) in TABLE {
            let q = Quorum::new(n);
            // |A ∩ B| ≥ 2·quorum − n, and more than f of those can't all be faulty.
            assert!(2 * q.quorum() - n > q.f, "n = {n}");
            // A quorum is reachable with f replicas silent.
            assert!(n - q.f >= q.quorum(), "n = {n}");
        }
    }

    #[test]
    fn a_place_in_the_order_needs_f_plus_1_executed_or_2f_plus_1_executed_or_prepared() {
        let q = Quorum::new(4);
        let set = |v: &[usize]| v.iter().copied().collect::<BTreeSet<usize>>();
        assert!(q.ordered(&set(&[0, 1]), &set(&[])));
        assert!(!q.ordered(&set(&[0]), &set(&[])));
        assert!(!q.ordered(&set(&[]), &set(&[0, 1])), "f + 1 tentative answers fix nothing");
        assert!(q.ordered(&set(&[]), &set(&[0, 1, 2])));
        assert!(q.ordered(&set(&[2]), &set(&[0, 1])));
        // A replica that answered both ways counts once.
        assert!(!q.ordered(&set(&[0]), &set(&[0, 1])));
    }

    #[test]
    fn primary_rotates_through_all_replicas() {
        let q = Quorum::new(4);
        let p: Vec<usize> = (0..8).map(|v| q.primary(v)).collect();
        assert_eq!(p, vec![0, 1, 2, 3, 0, 1, 2, 3]);
    }
}
