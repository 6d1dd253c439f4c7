//! Request rate limits for the tenant API (GCRA, from governor): one budget per API key and one
//! per client IP address. Past either, the answer is 429 `rate_limited` with `Retry-After`. The
//! IP budget is checked before the key is looked up, so a flood of guessed keys never reaches
//! the database at full speed.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use uuid::Uuid;

/// Requests per second, with bursts of twice that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rates {
    /// Per API key; 0 for none.
    pub per_key: u32,
    /// Per client IP address; 0 for none.
    pub per_ip: u32,
}

impl Default for Rates {
    fn default() -> Self {
        Rates {
            per_key: 50,
            per_ip: 100,
        }
    }
}

struct Keyed<K: Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
    checks: AtomicU64,
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    fn new(per_second: u32) -> Option<Self> {
        let rate = NonZeroU32::new(per_second)?;
        let burst = NonZeroU32::new(per_second.saturating_mul(2)).unwrap_or(rate);
        Some(Keyed {
            limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            checks: AtomicU64::new(0),
        })
    }

    /// `Err(wait)` when `key` is over its budget.
    fn check(&self, key: &K) -> Result<(), Duration> {
        // Forget idle keys now and then, so the table stays the size of the active set.
        if self.checks.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
            self.limiter.retain_recent();
        }
        self.limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// The API's limiters.
pub struct Limiters {
    per_key: Option<Keyed<Uuid>>,
    per_ip: Option<Keyed<IpAddr>>,
    pub rates: Rates,
}

impl std::fmt::Debug for Limiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiters")
            .field("rates", &self.rates)
            .finish()
    }
}

impl Limiters {
    pub fn new(rates: Rates) -> Self {
        Limiters {
            per_key: Keyed::new(rates.per_key),
            per_ip: Keyed::new(rates.per_ip),
            rates,
        }
    }

    pub fn check_key(&self, key: Uuid) -> Result<(), Duration> {
        self.per_key.as_ref().map_or(Ok(()), |l| l.check(&key))
    }

    /// An IPv6 client is limited by its /64, the block one host or customer is usually given.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Duration> {
        let key = match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let mut s = v6.segments();
                    s[4..].fill(0);
                    IpAddr::V6(s.into())
                }
            },
            v4 => v4,
        };
        self.per_ip.as_ref().map_or(Ok(()), |l| l.check(&key))
    }
}
