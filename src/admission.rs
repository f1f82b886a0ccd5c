//! Who may open a connection, and who has failed to log in too often.
//!
//! Checked in the Listener right after accept (connection caps, global and per source IP, and
//! the per-IP connection rate), and by the Session before a password is hashed (bans after
//! repeated authentication failures, per address and per username, and flapping bans per
//! client id), so that brute force and reconnect storms cost the broker little.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::broker::Shared;

/// Window of the per-IP connection rate.
const RATE_WINDOW: Duration = Duration::from_secs(1);
/// Window in which authentication failures count towards a ban.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// What the broker remembers about one source address.
#[derive(Debug)]
struct Source {
    connections: usize,
    rate_window_start: Instant,
    connects_in_window: u32,
    /// Authentication failures, and the ban they lead to.
    failures: Strike,
}

impl Source {
    fn new(now: Instant) -> Source {
        Source {
            connections: 0,
            rate_window_start: now,
            connects_in_window: 0,
            failures: Strike::new(now),
        }
    }

    /// Nothing left worth remembering: no connection, no ban, no window still counting.
    fn is_idle(&self, now: Instant) -> bool {
        self.connections == 0
            && self.failures.is_idle(now)
            && now.duration_since(self.rate_window_start) >= RATE_WINDOW
    }
}

#[derive(Debug, Default)]
struct SourceMap {
    sources: HashMap<IpAddr, Source>,
    /// Size at which idle entries are swept out; doubles with the live entries, so sweeping
    /// costs O(1) per insert on average.
    sweep_at: usize,
}

/// Per-source-address state, shared by every listener and session. Idle entries are removed
/// when their last connection ends or by a sweep, so the map holds the connected, recently
/// connecting, failing and banned addresses only.
#[derive(Debug, Default)]
pub struct Sources(Mutex<SourceMap>);

/// Fewest entries before a sweep is worth doing.
const MIN_SWEEP: usize = 1024;

impl Sources {
    fn lock(&self) -> MutexGuard<'_, SourceMap> {
        // A panic while holding this lock cannot leave the map inconsistent (every update is
        // a few integer writes), so a poisoned lock is still usable.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether `ip` is banned for failing to authenticate.
    pub fn is_banned(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        self.lock()
            .sources
            .get(&ip)
            .is_some_and(|s| s.failures.is_banned(now))
    }

    /// Counts an authentication failure; `max` failures within a minute ban the address for
    /// `ban` (0 = never).
    pub fn auth_failed(&self, ip: IpAddr, max: u32, ban: Duration) {
        if max == 0 {
            return;
        }
        let now = Instant::now();
        let mut map = self.lock();
        map.entry(ip, now).failures.hit(now, max, ban);
    }
}

impl SourceMap {
    /// The entry for `ip`, created if needed; a new entry may first sweep out idle ones.
    fn entry(&mut self, ip: IpAddr, now: Instant) -> &mut Source {
        if !self.sources.contains_key(&ip) && self.sources.len() >= self.sweep_at.max(MIN_SWEEP) {
            self.sources.retain(|_, s| !s.is_idle(now));
            self.sweep_at = self.sources.len() * 2;
        }
        self.sources.entry(ip).or_insert_with(|| Source::new(now))
    }
}

/// Most keys one [`Strikes`] remembers. An entry is about 64 bytes whatever the key's length
/// (keys are stored hashed), so a full map is a few MB.
const MAX_STRIKE_KEYS: usize = 100_000;

/// Events counted for one key within `FAILURE_WINDOW`, and its ban.
#[derive(Debug, Clone, Copy)]
struct Strike {
    window_start: Instant,
    count: u32,
    banned_until: Option<Instant>,
}

impl Strike {
    fn new(now: Instant) -> Strike {
        Strike {
            window_start: now,
            count: 0,
            banned_until: None,
        }
    }

    fn is_banned(&self, now: Instant) -> bool {
        self.banned_until.is_some_and(|until| until > now)
    }

    /// No ban and no window still counting.
    fn is_idle(&self, now: Instant) -> bool {
        !self.is_banned(now)
            && (self.count == 0 || now.duration_since(self.window_start) >= FAILURE_WINDOW)
    }

    /// Counts one event; the `max`-th within `FAILURE_WINDOW` bans for `ban`.
    fn hit(&mut self, now: Instant, max: u32, ban: Duration) {
        if now.duration_since(self.window_start) >= FAILURE_WINDOW {
            self.window_start = now;
            self.count = 0;
        }
        self.count += 1;
        if self.count >= max {
            self.banned_until = Some(now + ban);
            self.count = 0;
        }
    }
}

#[derive(Debug, Default)]
struct StrikeMap {
    /// By the key's hash: a client id or username may be 64 KiB long, its hash is 8 bytes.
    /// The hasher is keyed at random per process, so a client cannot pick keys that collide.
    strikes: HashMap<u64, Strike>,
    /// Size at which idle entries are swept out (doubles with the live entries).
    sweep_at: usize,
    /// The last sweep that found the map full of live entries: the next waits a second, so a
    /// flood of new keys does not make every insert walk the whole map.
    full_since: Option<Instant>,
}

/// Events per key (a username, a client id) within a minute, and temporary bans for keys with
/// too many: failed logins per username (`max_auth_failures_per_user`) and accepted
/// connections per client id (`max_connects_per_client_id_per_minute`, flapping).
///
/// Memory is bounded: idle keys (window over, no ban) are swept out, and at most
/// `MAX_STRIKE_KEYS` are remembered. When that many are live at once, new keys go uncounted
/// until some fall idle: filling the map takes 100,000 distinct failed logins (or accepted
/// connections) within a minute, which the per-address limits make expensive.
#[derive(Debug, Default)]
pub struct Strikes {
    map: Mutex<StrikeMap>,
    hasher: RandomState,
}

impl Strikes {
    fn lock(&self) -> MutexGuard<'_, StrikeMap> {
        // As for `Sources`: every update is a few integer writes, so a poisoned lock is usable.
        self.map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether `key` is banned now.
    pub fn is_banned(&self, key: &str) -> bool {
        let hash = self.hasher.hash_one(key);
        let now = Instant::now();
        self.lock()
            .strikes
            .get(&hash)
            .is_some_and(|s| s.is_banned(now))
    }

    /// Counts one event for `key`; the `max`-th within a minute bans the key for `ban`
    /// (`max` 0: nothing is counted).
    pub fn strike(&self, key: &str, max: u32, ban: Duration) {
        if max == 0 {
            return;
        }
        let hash = self.hasher.hash_one(key);
        let now = Instant::now();
        let mut map = self.lock();
        if let Some(strike) = map.entry(hash, now) {
            strike.hit(now, max, ban);
        }
    }
}

impl StrikeMap {
    /// The entry for `hash`, created if there is room; a new entry may first sweep out idle
    /// ones. `None`: the map is full of live entries.
    fn entry(&mut self, hash: u64, now: Instant) -> Option<&mut Strike> {
        if !self.strikes.contains_key(&hash) {
            let full = self.strikes.len() >= MAX_STRIKE_KEYS;
            let sweep = self.strikes.len() >= self.sweep_at.clamp(MIN_SWEEP, MAX_STRIKE_KEYS);
            let swept_recently = self
                .full_since
                .is_some_and(|at| now.duration_since(at) < Duration::from_secs(1));
            if sweep && !(full && swept_recently) {
                self.strikes.retain(|_, s| !s.is_idle(now));
                self.sweep_at = self.strikes.len() * 2;
                self.full_since = (self.strikes.len() >= MAX_STRIKE_KEYS).then_some(now);
            }
            if self.strikes.len() >= MAX_STRIKE_KEYS {
                return None;
            }
        }
        Some(self.strikes.entry(hash).or_insert_with(|| Strike::new(now)))
    }
}

/// Counts one connection against the caps for as long as it lives.
pub struct ConnectionSlot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("max_connections reached")]
    MaxConnections,
    #[error("max_connections_per_ip reached")]
    MaxConnectionsPerIp,
    #[error("max_connection_rate_per_ip exceeded")]
    ConnectionRate,
    #[error("banned after repeated authentication failures")]
    Banned,
}

impl ConnectionSlot {
    pub fn acquire(shared: &Arc<Shared>, ip: IpAddr) -> Result<ConnectionSlot, Refusal> {
        let limits = &shared.config.limits;
        let now = Instant::now();
        {
            let mut map = shared.sources.lock();
            let source = map.entry(ip, now);
            if source.failures.is_banned(now) {
                return Err(Refusal::Banned);
            }
            if limits.max_connections_per_ip != 0
                && source.connections >= limits.max_connections_per_ip
            {
                return Err(Refusal::MaxConnectionsPerIp);
            }
            if now.duration_since(source.rate_window_start) >= RATE_WINDOW {
                source.rate_window_start = now;
                source.connects_in_window = 0;
            }
            if limits.max_connection_rate_per_ip != 0
                && source.connects_in_window >= limits.max_connection_rate_per_ip
            {
                return Err(Refusal::ConnectionRate);
            }
            source.connects_in_window += 1;
            let previous = shared.connections.fetch_add(1, Ordering::AcqRel);
            if limits.max_connections != 0 && previous >= limits.max_connections {
                shared.connections.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::MaxConnections);
            }
            source.connections += 1;
        }
        Ok(ConnectionSlot {
            shared: shared.clone(),
            ip,
        })
    }

    pub fn ip(&self) -> IpAddr {
        self.ip
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.shared.connections.fetch_sub(1, Ordering::AcqRel);
        let now = Instant::now();
        let mut map = self.shared.sources.lock();
        if let Some(source) = map.sources.get_mut(&self.ip) {
            source.connections = source.connections.saturating_sub(1);
            if source.is_idle(now) {
                map.sources.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn repeated_failures_ban_and_the_ban_ends() {
        let sources = Sources::default();
        sources.auth_failed(IP, 3, Duration::from_secs(60));
        sources.auth_failed(IP, 3, Duration::from_secs(60));
        assert!(!sources.is_banned(IP));
        sources.auth_failed(IP, 3, Duration::from_secs(60));
        assert!(sources.is_banned(IP));
        let other = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
        assert!(!sources.is_banned(other));
        // A zero-length ban is over at once.
        sources.auth_failed(other, 1, Duration::ZERO);
        assert!(!sources.is_banned(other));
    }

    #[test]
    fn failures_are_not_counted_when_bans_are_off() {
        let sources = Sources::default();
        for _ in 0..100 {
            sources.auth_failed(IP, 0, Duration::from_secs(60));
        }
        assert!(!sources.is_banned(IP));
        assert!(sources.lock().sources.is_empty());
    }

    #[test]
    fn strikes_ban_a_key_at_the_limit_and_only_that_key() {
        let strikes = Strikes::default();
        let ban = Duration::from_secs(60);
        for _ in 0..2 {
            strikes.strike("alice", 3, ban);
        }
        assert!(!strikes.is_banned("alice"));
        strikes.strike("alice", 3, ban);
        assert!(strikes.is_banned("alice"));
        assert!(!strikes.is_banned("bob"));
        // Off: nothing is counted or remembered.
        for _ in 0..100 {
            strikes.strike("carol", 0, ban);
        }
        assert!(!strikes.is_banned("carol"));
        assert_eq!(strikes.lock().strikes.len(), 1);
        // A zero-length ban is over at once.
        strikes.strike("dave", 1, Duration::ZERO);
        assert!(!strikes.is_banned("dave"));
    }

    #[test]
    fn strikes_stay_bounded_and_idle_keys_are_swept() {
        let mut map = StrikeMap::default();
        let then = Instant::now();
        let ban = Duration::from_secs(300);
        for key in 0..MAX_STRIKE_KEYS as u64 {
            map.entry(key, then).unwrap().hit(then, 10, ban);
        }
        // Full of live entries: a new key is not remembered, an old one still is.
        assert!(map.entry(u64::MAX, then).is_none());
        assert!(map.entry(0, then).is_some());
        assert_eq!(map.strikes.len(), MAX_STRIKE_KEYS);
        // A window later they are idle and make room (after the pause between full sweeps).
        let later = then + FAILURE_WINDOW + Duration::from_secs(1);
        assert!(map.entry(u64::MAX, later).is_some());
        assert_eq!(map.strikes.len(), 1);
        // A banned key outlives its window.
        map.entry(7, later).unwrap().banned_until = Some(later + Duration::from_secs(600));
        let much_later = later + FAILURE_WINDOW * 2;
        for key in 0..MIN_SWEEP as u64 * 2 {
            map.entry(1_000_000 + key, much_later);
        }
        assert!(map.strikes.contains_key(&7));
        assert!(!map.strikes.contains_key(&u64::MAX));
    }

    #[test]
    fn idle_entries_are_swept_so_the_map_stays_bounded() {
        let mut map = SourceMap::default();
        let then = Instant::now();
        let now = then + RATE_WINDOW;
        // Addresses that connected once, a rate window ago: idle by `now`.
        for i in 0..MIN_SWEEP as u32 * 3 {
            map.entry(IpAddr::V4(std::net::Ipv4Addr::from(i)), then);
        }
        // New addresses arriving now sweep the idle ones out.
        for i in 0..MIN_SWEEP as u32 * 8 {
            map.entry(IpAddr::V4(std::net::Ipv4Addr::from(u32::MAX - i)), now);
        }
        assert!(map.sources.values().all(|s| s.rate_window_start == now));
    }
}
