//! The consistent-hash ring that maps each uid (and each storage server,
//! by [`storage_key`]) to its owner node.
//!
//! Built the same way on every node and in the client from the same input
//! (a set of node ids and a virtual-node count), so everyone agrees on owners
//! without talking: `hashring`'s hasher is SipHash with fixed keys. Each node
//! is placed `vnodes` times so load spreads evenly and a membership change
//! moves about 1/N of the users.

use std::collections::BTreeSet;

use hashring::HashRing;

/// Virtual nodes per member unless configured otherwise.
pub const DEFAULT_VNODES: u32 = 64;

/// The key a storage server's owner (the node that keeps its heartbeats)
/// is found by on the ring: a prefix no user id needs, so servers spread
/// apart from users.
pub fn storage_key(server_id: &str) -> String {
    format!("storage/{server_id}")
}

/// One point of a node on the ring.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
struct VNode {
    node: u64,
    replica: u32,
}

/// A ring over a set of node ids.
#[derive(Debug, Clone)]
pub struct Ring {
    ring: HashRing<VNode>,
    nodes: BTreeSet<u64>,
    vnodes: u32,
}

impl Ring {
    /// A ring over `nodes`, each placed `vnodes` times (at least once).
    pub fn new(nodes: impl IntoIterator<Item = u64>, vnodes: u32) -> Ring {
        let nodes: BTreeSet<u64> = nodes.into_iter().collect();
        let vnodes = vnodes.max(1);
        let mut ring = HashRing::new();
        ring.batch_add(
            nodes
                .iter()
                .flat_map(|&node| (0..vnodes).map(move |replica| VNode { node, replica }))
                .collect(),
        );
        Ring {
            ring,
            nodes,
            vnodes,
        }
    }

    /// The node that owns `uid`, or `None` on an empty ring.
    pub fn owner(&self, uid: &str) -> Option<u64> {
        self.ring.get(&uid).map(|v| v.node)
    }

    /// The nodes on the ring.
    pub fn nodes(&self) -> &BTreeSet<u64> {
        &self.nodes
    }

    /// Virtual nodes per member.
    pub fn vnodes(&self) -> u32 {
        self.vnodes
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn uids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("user-{i}")).collect()
    }

    fn spread(ring: &Ring, uids: &[String]) -> f64 {
        let mut per: BTreeMap<u64, usize> = BTreeMap::new();
        for u in uids {
            *per.entry(ring.owner(u).unwrap()).or_default() += 1;
        }
        let max = *per.values().max().unwrap() as f64;
        max / (uids.len() as f64 / ring.nodes().len() as f64)
    }

    fn moved(a: &Ring, b: &Ring, uids: &[String]) -> f64 {
        uids.iter().filter(|u| a.owner(u) != b.owner(u)).count() as f64 / uids.len() as f64
    }

    /// The report: spread (max/mean users per node) for 3 and 5
    /// nodes, and the share of 100 000 uids that move when a node joins or
    /// leaves. `cargo test -p herald-client ring_report -- --nocapture`
    /// prints it.
    #[test]
    fn ring_report_spread_and_movement() {
        let uids = uids(100_000);
        let r3 = Ring::new([1, 2, 3], DEFAULT_VNODES);
        let r4 = Ring::new([1, 2, 3, 4], DEFAULT_VNODES);
        let r5 = Ring::new([1, 2, 3, 4, 5], DEFAULT_VNODES);
        let (s3, s5) = (spread(&r3, &uids), spread(&r5, &uids));
        let join = moved(&r3, &r4, &uids);
        let leave = moved(&r5, &r4, &uids);
        println!("ring report ({} vnodes, 100000 uids):", DEFAULT_VNODES);
        println!("  spread max/mean: 3 nodes {s3:.3}, 5 nodes {s5:.3}");
        println!("  moved on 3->4 join: {join:.3} (ideal 1/4 = 0.250)");
        println!("  moved on 5->4 leave: {leave:.3} (ideal 1/5 = 0.200)");
        assert!(s3 < 1.25 && s5 < 1.3, "uneven ring: {s3} {s5}");
        assert!((0.15..0.35).contains(&join), "join moved {join}");
        assert!((0.12..0.28).contains(&leave), "leave moved {leave}");
        // Only the joining node gains users; nobody else trades them.
        for u in &uids {
            let (before, after) = (r3.owner(u).unwrap(), r4.owner(u).unwrap());
            assert!(before == after || after == 4, "{u}: {before} -> {after}");
        }
    }

    #[test]
    fn same_input_same_owners_and_empty_ring_has_none() {
        let a = Ring::new([3, 1, 2], 16);
        let b = Ring::new([1, 2, 3], 16);
        for u in uids(1000) {
            assert_eq!(a.owner(&u), b.owner(&u));
        }
        assert_eq!(Ring::new([], 16).owner("x"), None);
    }

    #[test]
    fn a_single_vnode_ring_is_lumpier_than_a_many_vnode_ring() {
        // Shows the vnode count is what evens the load out (and that the
        // spread measure can fail).
        let uids = uids(20_000);
        let lumpy = spread(&Ring::new([1, 2, 3, 4, 5], 1), &uids);
        let even = spread(&Ring::new([1, 2, 3, 4, 5], 128), &uids);
        assert!(lumpy > even, "{lumpy} vs {even}");
    }
}
