//! Failed authentications per client address: a token bucket per address, checked before a
//! bearer token is looked up, so that a client sending bad tokens is refused without costing a
//! database lookup each time.
//!
//! Only failures spend the bucket (every `401`); a correct token never does, and a success does
//! not refill it (or a holder of one good token could interleave it with guesses). While an
//! address's bucket is empty, every authenticated request from it is refused with `429` and
//! `Retry-After` — a good token too, since telling it apart would need the lookup this avoids
//! (GitHub's API does the same after repeated bad credentials). The bucket refills at the
//! configured rate, so a client that stops failing is served again within seconds.
//!
//! The table holds only addresses that failed recently and is capped: a full table first drops
//! the addresses whose buckets have refilled (they are as good as absent), then the tenth that
//! failed longest ago. IPv6 clients are counted per /64, the block one host usually holds.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::auth::RateLimit;

/// Addresses tracked at most (each entry is a few dozen bytes).
pub(crate) const MAX_ADDRESSES: usize = 10_000;

pub(crate) struct AddressThrottle {
    /// Failures an address may make at once.
    burst: f64,
    /// Failures forgiven per second.
    refill: f64,
    capacity: usize,
    table: Mutex<HashMap<IpAddr, Bucket>>,
}

/// An address's failures not yet forgiven, as of `at`.
#[derive(Clone, Copy)]
struct Bucket {
    spent: f64,
    at: Instant,
}

impl Bucket {
    fn spent_at(self, now: Instant, refill: f64) -> f64 {
        (self.spent - now.saturating_duration_since(self.at).as_secs_f64() * refill).max(0.0)
    }
}

impl AddressThrottle {
    pub(crate) fn new(limit: RateLimit, capacity: usize) -> Self {
        Self {
            burst: f64::from(limit.burst.max(1)),
            refill: f64::from(limit.per_minute.max(1)) / 60.0,
            capacity: capacity.max(1),
            table: Mutex::default(),
        }
    }

    /// `Err(wait)` while `address` has no failure left to spend: how long until it has one.
    pub(crate) fn admit(&self, address: IpAddr) -> Result<(), Duration> {
        let table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let Some(bucket) = table.get(&key(address)) else {
            return Ok(());
        };
        let spent = bucket.spent_at(Instant::now(), self.refill);
        let over = spent - (self.burst - 1.0);
        if over > 0.0 {
            Err(Duration::from_secs_f64(over / self.refill))
        } else {
            Ok(())
        }
    }

    /// Spends one of `address`'s failures.
    pub(crate) fn failed(&self, address: IpAddr) {
        let now = Instant::now();
        let address = key(address);
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if !table.contains_key(&address) && table.len() >= self.capacity {
            self.make_room(&mut table, now);
        }
        let spent = table.get(&address).map_or(0.0, |b| b.spent_at(now, self.refill));
        table.insert(
            address,
            Bucket {
                spent: (spent + 1.0).min(self.burst),
                at: now,
            },
        );
    }

    /// Drops refilled buckets; if that is not enough, the tenth that failed longest ago.
    fn make_room(&self, table: &mut HashMap<IpAddr, Bucket>, now: Instant) {
        table.retain(|_, b| b.spent_at(now, self.refill) > 0.0);
        if table.len() < self.capacity {
            return;
        }
        let mut times: Vec<Instant> = table.values().map(|b| b.at).collect();
        let drop = (self.capacity / 10).max(1);
        let (_, cutoff, _) = times.select_nth_unstable(drop - 1);
        let cutoff = *cutoff;
        table.retain(|_, b| b.at > cutoff);
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.table.lock().unwrap().len()
    }
}

/// The key an address is counted under: IPv4 as is (also when mapped into IPv6), IPv6 by /64.
fn key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(burst: u32, per_minute: u32) -> RateLimit {
        RateLimit { per_minute, burst }
    }

    #[test]
    fn an_address_is_refused_after_its_burst_of_failures_and_others_are_not() {
        let throttle = AddressThrottle::new(limit(3, 60), 100);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert!(throttle.admit(a).is_ok());
            throttle.failed(a);
        }
        let wait = throttle.admit(a).unwrap_err();
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        assert!(throttle.admit("192.0.2.2".parse().unwrap()).is_ok());
    }

    #[test]
    fn ipv6_hosts_of_one_block_share_a_bucket() {
        let throttle = AddressThrottle::new(limit(1, 1), 100);
        throttle.failed("2001:db8:1:2::1".parse().unwrap());
        assert!(throttle.admit("2001:db8:1:2:ffff::9".parse().unwrap()).is_err());
        assert!(throttle.admit("2001:db8:1:3::1".parse().unwrap()).is_ok());
        throttle.failed("::ffff:192.0.2.7".parse().unwrap());
        assert!(throttle.admit("192.0.2.7".parse().unwrap()).is_err());
    }

    #[test]
    fn the_table_stays_within_its_capacity() {
        let throttle = AddressThrottle::new(limit(5, 1), 50);
        for i in 0..10_000u32 {
            throttle.failed(IpAddr::V4(i.into()));
            assert!(throttle.tracked() <= 50);
        }
        // The newest failures are still counted.
        let newest = IpAddr::V4(9_999u32.into());
        for _ in 0..4 {
            throttle.failed(newest);
        }
        assert!(throttle.admit(newest).is_err());
    }
}
