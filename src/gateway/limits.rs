//! Token buckets: one per WebSocket connection for its publishes, and keyed ones (per
//! source address) for guest tokens and match creation. Keyed tables stay bounded: when
//! one grows past `MAX_KEYS`, the keys whose bucket has refilled are forgotten (a full
//! bucket is what a new key gets anyway).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::request::Parts;
use tokio::time::Instant;

/// Most keys a keyed table holds before refilled ones are dropped.
const MAX_KEYS: usize = 100_000;

/// A token bucket: `burst` tokens, refilled at `rate` per second.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            at: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
    }

    /// Takes a token, or says how long until one is there.
    pub fn take(&mut self) -> Result<(), Duration> {
        self.refill(Instant::now());
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else if self.rate > 0.0 {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        } else {
            Err(Duration::from_secs(3600))
        }
    }

    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

/// A bucket per key (`None`: no limit).
pub struct Keyed<K> {
    limit: Option<(f64, f64)>,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    /// `per_minute` takes per key and minute, as a burst of as many (0: no limit).
    pub fn per_minute(per_minute: u32) -> Self {
        let limit = (per_minute > 0).then(|| (f64::from(per_minute) / 60.0, f64::from(per_minute)));
        Self {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `key`, or says how long until one is there.
    pub fn take(&self, key: &K) -> Result<(), Duration> {
        let Some((rate, burst)) = self.limit else {
            return Ok(());
        };
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            let now = Instant::now();
            buckets.retain(|_, b| !b.is_full(now));
        }
        buckets
            .entry(key.clone())
            .or_insert_with(|| Bucket::new(rate, burst))
            .take()
    }
}

/// The address a request comes from: the peer, or, when the peer is a trusted proxy, the
/// rightmost `X-Forwarded-For` address that is not one of the trusted proxies.
pub fn client_ip(parts: &Parts, trusted: &[IpAddr]) -> Option<IpAddr> {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())?;
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let forwarded: Vec<IpAddr> = parts
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    Some(
        forwarded
            .iter()
            .rev()
            .find(|a| !trusted.contains(a))
            .or(forwarded.first())
            .copied()
            .unwrap_or(peer),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_gives_its_burst_then_says_when() {
        let mut b = Bucket::new(1.0, 3.0);
        assert!(b.take().is_ok() && b.take().is_ok() && b.take().is_ok());
        let wait = b.take().unwrap_err();
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1));
    }

    #[test]
    fn keyed_buckets_are_per_key_and_zero_means_no_limit() {
        let k = Keyed::per_minute(2);
        assert!(k.take(&1).is_ok() && k.take(&1).is_ok());
        assert!(k.take(&1).is_err());
        assert!(k.take(&2).is_ok());
        let off = Keyed::per_minute(0);
        for _ in 0..1000 {
            assert!(off.take(&1).is_ok());
        }
    }

    #[test]
    fn forwarded_addresses_count_only_through_trusted_proxies() {
        let req = |peer: &str, xff: &str| {
            let mut r = axum::http::Request::builder().header("x-forwarded-for", xff);
            r.extensions_mut()
                .unwrap()
                .insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
            r.body(()).unwrap().into_parts().0
        };
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let p = req("10.0.0.1:5000", "1.2.3.4, 6.6.6.6");
        assert_eq!(client_ip(&p, &[proxy]), Some("6.6.6.6".parse().unwrap()));
        let p = req("9.9.9.9:5000", "1.2.3.4");
        assert_eq!(client_ip(&p, &[proxy]), Some("9.9.9.9".parse().unwrap()));
        let p = req("10.0.0.1:5000", "1.2.3.4, 10.0.0.1");
        assert_eq!(client_ip(&p, &[proxy]), Some("1.2.3.4".parse().unwrap()));
    }
}
