//! Backend selection, pure: no I/O, no clock, no locks. Everything here works on
//! indices into one membership snapshot, so the router builds what it needs once
//! per membership change and per request only picks.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Points each backend of weight 1 gets on the ring. With 160 points the busiest
/// of 10 backends carries within about 15% of the mean.
pub const VIRTUAL_NODES: u32 = 160;

/// Longest smooth weighted order; larger weight sums are scaled down to it.
pub const MAX_ORDER: usize = 1024;

/// Round robin over a sequence of candidates; one relaxed atomic per pick.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// A position in `0..n`, advancing by one each call.
    pub fn pick(&self, n: usize) -> Option<usize> {
        if n == 0 {
            return None;
        }
        Some(self.next.fetch_add(1, Ordering::Relaxed) % n)
    }
}

/// The smooth weighted round-robin order over `weights` (nginx's algorithm):
/// each index appears in proportion to its weight, spread out rather than in
/// runs; weight 0 never appears. Weights are reduced by their common divisor
/// and, if they still sum past [`MAX_ORDER`], scaled down (each keeps at least
/// one turn). Built once per membership change; a pick is an index into it.
pub fn weighted_order(weights: &[u32]) -> Vec<u32> {
    let present = || weights.iter().enumerate().filter(|&(_, &w)| w > 0);
    let Some(&first) = weights.iter().find(|&&w| w > 0) else { return Vec::new() };
    if present().all(|(_, &w)| w == first) {
        return present().map(|(i, _)| i as u32).collect();
    }
    let divisor = present().fold(0u32, |g, (_, &w)| gcd(g, w));
    let mut scaled: Vec<u64> = weights.iter().map(|&w| u64::from(w / divisor.max(1))).collect();
    let sum: u64 = scaled.iter().sum();
    if sum > MAX_ORDER as u64 {
        for w in scaled.iter_mut().filter(|w| **w > 0) {
            *w = (*w * MAX_ORDER as u64 / sum).max(1);
        }
    }
    let total: u64 = scaled.iter().sum();
    let mut current = vec![0i64; scaled.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best: Option<usize> = None;
        for (i, &w) in scaled.iter().enumerate().filter(|&(_, &w)| w > 0) {
            current[i] += w as i64;
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        let Some(best) = best else { break };
        current[best] -= total as i64;
        order.push(best as u32);
    }
    order
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Whether `b` carries less load per unit of weight than `a`.
pub fn lighter(a: (usize, u32), b: (usize, u32)) -> bool {
    (b.0 as u128) * u128::from(a.1) < (a.0 as u128) * u128::from(b.1)
}

/// Power of two choices: two candidates drawn at distinct positions of
/// `order` (so in proportion to weight), the one with the lower load per unit
/// of weight wins (ties go to the first). `cost(i)` is (load, weight).
pub fn p2c(order: &[u32], cost: impl Fn(usize) -> (usize, u32)) -> Option<usize> {
    let n = order.len();
    match n {
        0 => None,
        1 => Some(order[0] as usize),
        _ => {
            let r = random();
            let a = (r % n as u64) as usize;
            // A second draw in 0..n-1, shifted past `a`, so the two positions differ.
            let mut b = ((r >> 32) % (n as u64 - 1)) as usize;
            if b >= a {
                b += 1;
            }
            let (a, b) = (order[a] as usize, order[b] as usize);
            Some(if a != b && lighter(cost(a), cost(b)) { b } else { a })
        }
    }
}

/// The candidate with the least load per unit of weight, scanning from a
/// rotating start so ties are shared. `cost(i)` is (load, weight), or `None`
/// for a candidate that may not be picked. For small sets.
pub fn least(n: usize, start: usize, cost: impl Fn(usize) -> Option<(usize, u32)>) -> Option<usize> {
    let mut best: Option<(usize, (usize, u32))> = None;
    for i in (0..n).map(|k| (start + k) % n) {
        if let Some(c) = cost(i)
            && best.is_none_or(|(_, b)| lighter(b, c))
        {
            best = Some((i, c));
        }
    }
    best.map(|(i, _)| i)
}

/// A consistent-hash ring over stable backend identities. Built once per
/// membership; `pick` is a binary search. The hash is fixed (not seeded per
/// process), so every router, on every host, sends a tenant to the same instance.
#[derive(Debug, Default, Clone)]
pub struct Ring {
    /// (point, backend index), sorted by point then by id order for determinism.
    points: Vec<(u64, u32)>,
}

impl Ring {
    /// `members` yields (id, weight) in snapshot order; the index in that order is
    /// what `pick` returns. A weight of 0 places no points.
    pub fn new<'a>(members: impl IntoIterator<Item = (&'a str, u32)>) -> Ring {
        let mut points = Vec::new();
        for (index, (id, weight)) in members.into_iter().enumerate() {
            let base = hash(id.as_bytes());
            for v in 0..VIRTUAL_NODES.saturating_mul(weight) {
                points.push((mix(base ^ mix(u64::from(v) + 1)), index as u32));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The owner of `key` (already hashed with [`hash`]): the first point at or
    /// after it, wrapping around.
    pub fn pick(&self, key: u64) -> Option<usize> {
        self.walk(key).next()
    }

    /// The owners of the points from `key` on, round the whole ring once: the
    /// owner first, then who takes over if it cannot serve (repeats included).
    pub fn walk(&self, key: u64) -> impl Iterator<Item = usize> + '_ {
        let n = self.points.len();
        let at = self.points.partition_point(|&(p, _)| p < key);
        (0..n).map(move |k| self.points[(at + k) % n].1 as usize)
    }
}

/// A canary split's shares are in thousandths: [`split_bucket`] is in `0..SPLIT_BUCKETS`.
pub const SPLIT_BUCKETS: u16 = 1000;

/// Xored into a tenant key before [`split_bucket`] mixes it again.
const SPLIT_SALT: u64 = 0x5be0_cd19_137e_2179;

/// The bucket of a tenant key (hashed with [`hash`]) in a canary split, in
/// `0..1000`: the tenant goes to the canary when it is below the split's
/// permille, so raising the permille only ever adds tenants. A second mix of
/// the key rather than its ring position, so which tenants are canary does not
/// depend on which instance owns them (a canary share of 10% is 10% of every
/// stable instance's tenants, not all of one instance's). Fixed, like [`hash`]:
/// every router on every host puts a tenant in the same group.
pub fn split_bucket(key: u64) -> u16 {
    (mix(key ^ SPLIT_SALT) % u64::from(SPLIT_BUCKETS)) as u16
}

/// Whether turn `n` (one per request: 0, 1, 2, …) goes to the canary in a split
/// of `permille` (more than 1000 counts as 1000): exactly `permille` turns of
/// every 1000, as evenly spaced as whole turns allow (at 100 every tenth, at
/// 300 three of every ten), so the canary gets its share at once rather than in
/// runs, and by count rather than by chance.
pub fn canary_turn(n: u64, permille: u16) -> bool {
    let p = u64::from(permille.min(SPLIT_BUCKETS));
    let m = n % u64::from(SPLIT_BUCKETS);
    (m + 1) * p / 1000 > m * p / 1000
}

/// FNV-1a over the bytes, finished with a 64-bit mixer so that nearby inputs
/// spread over the whole ring. Stable across processes and versions.
pub fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// The MurmurHash3 / splitmix64 finaliser.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

thread_local! {
    static RNG: Cell<u64> = Cell::new({
        // Seeded per thread from the std hasher's random keys and the thread's stack address.
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::hash::RandomState::new().build_hasher();
        let local = 0u8;
        h.write_usize(&local as *const u8 as usize);
        h.finish() | 1
    });
}

/// A fast thread-local random number (splitmix64); not for anything secret.
pub(crate) fn random() -> u64 {
    RNG.with(|s| {
        let x = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(x);
        mix(x)
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("host-a/web-{i}")).collect()
    }

    fn ring_of(ids: &[String]) -> Ring {
        Ring::new(ids.iter().map(|s| (s.as_str(), 1)))
    }

    fn owners(ring: &Ring, keys: usize) -> Vec<usize> {
        (0..keys).map(|k| ring.pick(hash(format!("tenant-{k}").as_bytes())).unwrap()).collect()
    }

    #[test]
    fn round_robin_is_even() {
        let rr = RoundRobin::default();
        let mut counts = [0usize; 3];
        for _ in 0..3000 {
            counts[rr.pick(3).unwrap()] += 1;
        }
        assert_eq!(counts, [1000, 1000, 1000]);
        assert_eq!(rr.pick(0), None);
    }

    #[test]
    fn weighted_order_is_proportional_and_interleaved() {
        assert_eq!(weighted_order(&[1, 1, 1]), [0, 1, 2]);
        assert_eq!(weighted_order(&[7, 0, 7]), [0, 2]);
        assert_eq!(weighted_order(&[]), Vec::<u32>::new());
        assert_eq!(weighted_order(&[0, 0]), Vec::<u32>::new());
        // nginx's example: a, a, b, a, c, a, b for 5, 1, 1 is spread out, not a run.
        assert_eq!(weighted_order(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(weighted_order(&[2, 4]), [1, 0, 1]);
        let big = weighted_order(&[u32::MAX, 1, u32::MAX / 2]);
        assert!(big.len() <= MAX_ORDER + 3, "{}", big.len());
        let count = |i: u32| big.iter().filter(|&&x| x == i).count();
        assert_eq!(count(1), 1, "a tiny weight keeps one turn");
        assert!((count(0) as f64 / count(2) as f64 - 2.0).abs() < 0.05);
    }

    #[test]
    fn p2c_prefers_the_idle_backend() {
        // Backend 2 is idle, the others busy: it wins every draw it is part of,
        // which with three candidates is two draws in three.
        let loads = [10usize, 10, 0];
        let order = [0, 1, 2];
        let mut wins = 0;
        for _ in 0..3000 {
            if p2c(&order, |i| (loads[i], 1)) == Some(2) {
                wins += 1;
            }
        }
        assert!((1800..=2200).contains(&wins), "idle backend won {wins} of 3000");
        // With two candidates both are always drawn: the idle one always wins.
        assert!((0..100).all(|_| p2c(&[0, 1], |i| ([5, 0][i], 1)) == Some(1)));
        assert_eq!(p2c(&[0], |_| (99, 1)), Some(0));
        assert_eq!(p2c(&[], |_| (0, 1)), None);
    }

    #[test]
    fn p2c_weighs_load_by_weight() {
        // Backend 1 has twice the weight and less than twice the load: it is lighter.
        let order = weighted_order(&[1, 2]);
        assert!((0..100).all(|_| p2c(&order, |i| ([4, 7][i], [1, 2][i])) == Some(1)));
        // Backend 0 is lighter, but drawn by weight it meets backend 1 in two
        // draws of three (the third draws backend 1 twice).
        let wins = (0..3000).filter(|_| p2c(&order, |i| ([4, 9][i], [1, 2][i])) == Some(0)).count();
        assert!((1800..=2200).contains(&wins), "{wins}");
    }

    #[test]
    fn p2c_draws_over_all_backends() {
        let mut seen = [0usize; 4];
        for _ in 0..4000 {
            seen[p2c(&[0, 1, 2, 3], |_| (0, 1)).unwrap()] += 1;
        }
        assert!(seen.iter().all(|&c| c > 600), "{seen:?}");
    }

    #[test]
    fn least_picks_the_minimum_rotates_ties_and_skips_the_excluded() {
        let one = |loads: [usize; 3]| move |i: usize| Some((loads[i], 1));
        assert_eq!(least(3, 0, one([3, 1, 2])), Some(1));
        assert_eq!(least(3, 0, one([0, 0, 0])), Some(0));
        assert_eq!(least(3, 2, one([0, 0, 0])), Some(2));
        assert_eq!(least(3, 0, |i| (i != 1).then_some(([3, 1, 2][i], 1))), Some(2));
        assert_eq!(least(3, 0, |i| Some(([2, 3, 9][i], [1, 2, 1][i]))), Some(1));
        assert_eq!(least(0, 0, |_| Some((0, 1))), None);
        assert_eq!(least(2, 0, |_| None), None);
    }

    #[test]
    fn ring_is_sticky_and_deterministic() {
        let ring = ring_of(&ids(5));
        let again = ring_of(&ids(5));
        assert_eq!(owners(&ring, 10_000), owners(&again, 10_000));
        // Snapshot order does not matter: owners are the same identities.
        let mut reversed = ids(5);
        reversed.reverse();
        let rev = ring_of(&reversed);
        let names = ids(5);
        for k in 0..2000 {
            let key = hash(format!("tenant-{k}").as_bytes());
            assert_eq!(names[ring.pick(key).unwrap()], reversed[rev.pick(key).unwrap()]);
        }
    }

    #[test]
    fn ring_spreads_tenants() {
        let ring = ring_of(&ids(10));
        let mut counts = [0usize; 10];
        for o in owners(&ring, 10_000) {
            counts[o] += 1;
        }
        // Mean 1000; every backend within 30% of it.
        assert!(counts.iter().all(|&c| (700..=1300).contains(&c)), "{counts:?}");
    }

    #[test]
    fn removing_a_backend_moves_only_its_tenants() {
        let all = ids(5);
        let before = owners(&ring_of(&all), 10_000);
        let removed = 2;
        let rest: Vec<String> = all.iter().enumerate().filter(|&(i, _)| i != removed).map(|(_, s)| s.clone()).collect();
        let after = owners(&ring_of(&rest), 10_000);
        let mut moved_to = [0usize; 5];
        for (b, a) in before.iter().zip(&after) {
            let (b_id, a_id) = (&all[*b], &rest[*a]);
            if *b != removed {
                assert_eq!(b_id, a_id, "a tenant of a remaining backend moved");
            } else {
                moved_to[all.iter().position(|s| s == a_id).unwrap()] += 1;
            }
        }
        // The removed backend's tenants spread over all the others.
        let total: usize = moved_to.iter().sum();
        assert!(total > 1000, "{total}");
        assert!(moved_to.iter().enumerate().all(|(i, &c)| i == removed || c > total / 10), "{moved_to:?}");
    }

    #[test]
    fn adding_a_backend_takes_tenants_only_for_itself() {
        let all = ids(5);
        let before = owners(&ring_of(&all[..4]), 10_000);
        let after = owners(&ring_of(&all), 10_000);
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        assert!(before.iter().zip(&after).all(|(b, a)| b == a || *a == 4));
        assert!((1400..=2600).contains(&moved), "{moved} of 10000 moved to the new backend");
    }

    #[test]
    fn weight_scales_share_and_zero_weight_gets_nothing() {
        let ring = Ring::new([("a", 1), ("b", 3), ("c", 0)]);
        let mut counts = [0usize; 3];
        for o in owners(&ring, 10_000) {
            counts[o] += 1;
        }
        assert_eq!(counts[2], 0);
        assert!((6500..=8500).contains(&counts[1]), "{counts:?}");
        assert!(Ring::new([("a", 0)]).is_empty());
    }

    #[test]
    fn canary_turns_are_exact_and_spread() {
        for permille in [0u16, 1, 7, 100, 250, 300, 333, 500, 600, 999, 1000] {
            let turns: Vec<u64> = (0..1000).filter(|&n| canary_turn(n, permille)).collect();
            assert_eq!(turns.len(), usize::from(permille), "{permille}");
            // Spread: the gaps between canary turns differ by at most one.
            let gaps: Vec<u64> = turns.windows(2).map(|w| w[1] - w[0]).collect();
            if let (Some(min), Some(max)) = (gaps.iter().min(), gaps.iter().max()) {
                assert!(max - min <= 1, "{permille}: gaps {min}..={max}");
            }
            // Any window of 1000 turns, not only the first.
            assert_eq!((4321..5321).filter(|&n| canary_turn(n, permille)).count(), usize::from(permille));
        }
        // At 100‰ exactly every tenth turn.
        let turns: Vec<u64> = (0..1000).filter(|&n| canary_turn(n, 100)).collect();
        assert_eq!(turns, (0..100).map(|k| 10 * k + 9).collect::<Vec<_>>());
        // At 300‰ the canary never gets two turns in a row.
        assert!((0..1000).all(|n| !(canary_turn(n, 300) && canary_turn(n + 1, 300))));
        assert!((0..100).all(|n| canary_turn(n, 1000) && canary_turn(n, u16::MAX) && !canary_turn(n, 0)));
    }

    #[test]
    fn split_buckets_nest_as_the_share_rises_and_are_uniform() {
        let buckets: Vec<u16> = (0..10_000).map(|k| split_bucket(hash(format!("tenant-{k}").as_bytes()))).collect();
        assert!(buckets.iter().all(|&b| b < SPLIT_BUCKETS));
        let canary = |permille: u16| -> BTreeSet<usize> {
            buckets.iter().enumerate().filter(|&(_, &b)| b < permille).map(|(k, _)| k).collect()
        };
        let (at100, at300, at600) = (canary(100), canary(300), canary(600));
        assert!(at100.is_subset(&at300) && at300.is_subset(&at600));
        assert!(canary(0).is_empty());
        assert_eq!(canary(1000).len(), 10_000);
        for (set, expected) in [(&at100, 1000), (&at300, 3000), (&at600, 6000)] {
            assert!(set.len().abs_diff(expected) < expected / 10, "{} for {expected}", set.len());
        }
        // Deterministic: the same key, the same bucket.
        assert_eq!(split_bucket(hash(b"tenant-7")), buckets[7]);
    }

    #[test]
    fn split_buckets_are_independent_of_the_ring() {
        // Every instance's tenants are split in the same proportion: which
        // tenants are canary does not follow from where they sit on the ring.
        let ring = ring_of(&ids(5));
        let mut owned = [0usize; 5];
        let mut canary = [0usize; 5];
        for k in 0..20_000 {
            let key = hash(format!("tenant-{k}").as_bytes());
            let owner = ring.pick(key).unwrap();
            owned[owner] += 1;
            if split_bucket(key) < 200 {
                canary[owner] += 1;
            }
        }
        for (o, c) in owned.iter().zip(&canary) {
            let share = *c as f64 / *o as f64;
            assert!((0.17..0.23).contains(&share), "owned {owned:?}, canary {canary:?}");
        }
        // Nor is the bucket the key's position scaled down: neighbours on the
        // ring (keys in one arc) land in all buckets.
        let mut arc: Vec<u64> = (0..20_000).map(|k| hash(format!("tenant-{k}").as_bytes())).collect();
        arc.sort_unstable();
        let low = arc[..2000].iter().filter(|&&key| split_bucket(key) < 500).count();
        assert!((800..1200).contains(&low), "{low} of the lowest 2000 keys in the lower half");
    }

    #[test]
    fn ring_walk_starts_at_the_owner_and_visits_everyone() {
        let ring = ring_of(&ids(4));
        for k in 0..100 {
            let key = hash(format!("tenant-{k}").as_bytes());
            let walk: Vec<usize> = ring.walk(key).collect();
            assert_eq!(walk.len(), 4 * VIRTUAL_NODES as usize);
            assert_eq!(Some(walk[0]), ring.pick(key));
            assert!((0..4).all(|i| walk.contains(&i)));
        }
        assert_eq!(Ring::default().walk(7).next(), None);
    }
}
