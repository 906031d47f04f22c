//! The retry budget: a token bucket that requests fill and retries drain (see
//! [`RetryPolicy`](crate::RetryPolicy)). Lock-free; a request costs one relaxed
//! load and, unless the bucket is full, one add.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use crate::RetryPolicy;

/// Tokens are counted in thousandths so a ratio of 0.2 deposits exactly 200.
const MILLI: i64 = 1000;

pub(crate) struct RetryBudget {
    deposit: i64,
    refill_per_second: i64,
    cap: i64,
    balance: AtomicI64,
    /// Whole seconds since `epoch` up to which the refill has been added.
    refilled_to: AtomicU64,
    epoch: Instant,
}

impl RetryBudget {
    pub fn new(policy: &RetryPolicy) -> RetryBudget {
        let ratio = if policy.budget_ratio.is_finite() { policy.budget_ratio.clamp(0.0, 1000.0) } else { 0.0 };
        let deposit = (ratio * MILLI as f64).round() as i64;
        let refill_per_second = i64::from(policy.min_per_second) * MILLI;
        RetryBudget {
            deposit,
            refill_per_second,
            cap: 10 * refill_per_second + 1000 * deposit,
            // One second's floor from the start, so the first failures of a
            // new router can be retried.
            balance: AtomicI64::new(refill_per_second),
            refilled_to: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// A request (or TCP connection) arrived.
    pub fn deposit(&self) {
        if self.deposit > 0 && self.balance.load(Relaxed) < self.cap {
            self.balance.fetch_add(self.deposit, Relaxed);
        }
    }

    /// Takes a token for one retry, or refuses.
    pub fn withdraw(&self) -> bool {
        self.refill();
        self.balance.fetch_update(Relaxed, Relaxed, |b| (b >= MILLI).then_some(b - MILLI)).is_ok()
    }

    /// Adds `min_per_second` for every whole second since the last refill.
    /// Only the caller that moves `refilled_to` adds, so no second counts twice.
    fn refill(&self) {
        if self.refill_per_second == 0 {
            return;
        }
        let now = self.epoch.elapsed().as_secs();
        let last = self.refilled_to.load(Relaxed);
        if now > last && self.refilled_to.compare_exchange(last, now, Relaxed, Relaxed).is_ok() {
            let add = i64::try_from(now - last).unwrap_or(i64::MAX).saturating_mul(self.refill_per_second);
            let cap = self.cap;
            let _ = self.balance.fetch_update(Relaxed, Relaxed, |b| Some(b.saturating_add(add).min(cap.max(b))));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(budget_ratio: f64, min_per_second: u32) -> RetryPolicy {
        RetryPolicy { budget_ratio, min_per_second, ..RetryPolicy::default() }
    }

    #[test]
    fn deposits_pay_for_a_share_of_retries() {
        let budget = RetryBudget::new(&policy(0.2, 0));
        assert!(!budget.withdraw(), "nothing deposited yet");
        for _ in 0..10 {
            budget.deposit();
        }
        assert!(budget.withdraw() && budget.withdraw());
        assert!(!budget.withdraw(), "ten requests pay for two retries");
    }

    #[test]
    fn the_floor_allows_retries_without_traffic() {
        let budget = RetryBudget::new(&policy(0.0, 3));
        assert!((0..3).all(|_| budget.withdraw()));
        assert!(!budget.withdraw());
    }

    #[test]
    fn deposits_are_capped() {
        let budget = RetryBudget::new(&policy(1.0, 0));
        for _ in 0..5000 {
            budget.deposit();
        }
        let granted = (0..5000).take_while(|_| budget.withdraw()).count();
        assert_eq!(granted, 1000);
    }

    #[test]
    fn odd_ratios_are_tamed() {
        assert!(!RetryBudget::new(&policy(f64::NAN, 0)).withdraw());
        let negative = RetryBudget::new(&policy(-1.0, 0));
        negative.deposit();
        assert!(!negative.withdraw());
    }
}
