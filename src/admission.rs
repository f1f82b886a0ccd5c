//! Who may open a connection, and who has failed to log in too often.
//!
//! Checked in the Listener right after accept (connection caps, global and per source IP, and
//! the per-IP connection rate), and by the Session before a password is hashed (bans after
//! repeated authentication failures), so that brute force costs the broker little.

use std::collections::HashMap;
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
    failure_window_start: Instant,
    failures_in_window: u32,
    banned_until: Option<Instant>,
}

impl Source {
    fn new(now: Instant) -> Source {
        Source {
            connections: 0,
            rate_window_start: now,
            connects_in_window: 0,
            failure_window_start: now,
            failures_in_window: 0,
            banned_until: None,
        }
    }

    /// Nothing left worth remembering: no connection, no ban, no window still counting.
    fn is_idle(&self, now: Instant) -> bool {
        self.connections == 0
            && self.banned_until.is_none_or(|until| until <= now)
            && (self.failures_in_window == 0
                || now.duration_since(self.failure_window_start) >= FAILURE_WINDOW)
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
            .and_then(|s| s.banned_until)
            .is_some_and(|until| until > now)
    }

    /// Counts an authentication failure; `max` failures within a minute ban the address for
    /// `ban` (0 = never).
    pub fn auth_failed(&self, ip: IpAddr, max: u32, ban: Duration) {
        if max == 0 {
            return;
        }
        let now = Instant::now();
        let mut map = self.lock();
        let source = map.entry(ip, now);
        if now.duration_since(source.failure_window_start) >= FAILURE_WINDOW {
            source.failure_window_start = now;
            source.failures_in_window = 0;
        }
        source.failures_in_window += 1;
        if source.failures_in_window >= max {
            source.banned_until = Some(now + ban);
            source.failures_in_window = 0;
        }
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
            if source.banned_until.is_some_and(|until| until > now) {
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
