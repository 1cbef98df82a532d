//! `--translate-uid` / `--translate-gid`: virtiofsd's in-daemon id translation (no user
//! namespace). Pure: ids in, ids out; fs/ applies it to the caller's credentials and to SETATTR's
//! owner (guest → host) and to every attribute it replies with (host → guest).
//!
//! Each entry is `<type>:<a>:<b>:<count>` (any separator that is not alphanumeric, `-` or `_`;
//! the same throughout one entry):
//! - `guest:<guest base>:<host base>:<count>`: guest ids [a, a+count) → host b + (id - a);
//! - `host:<host base>:<guest base>:<count>`: host ids [a, a+count) → guest b + (id - a);
//! - `squash-guest:<guest base>:<host id>:<count>`: guest ids [a, a+count) → host b;
//! - `squash-host:<host base>:<guest id>:<count>`: host ids [a, a+count) → guest b;
//! - `forbid-guest:<guest base>:<count>`: guest ids [a, a+count) are refused (EPERM) wherever
//!   they would act on or be written to the host;
//! - `map:<guest base>:<host base>:<count>`: both `guest` and `host` at once.
//!
//! An id no entry covers maps to itself. Within one direction, source ranges must not overlap.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdMapError {
    #[error("{0:?}: unknown type (guest, host, squash-guest, squash-host, forbid-guest, map)")]
    BadType(String),
    #[error("{0:?}: expected {1} numbers after the type")]
    BadLength(String, usize),
    #[error("{0:?}: {1:?} is not an id")]
    BadNumber(String, String),
    #[error("{0:?}: the range goes past the largest id")]
    Overflow(String),
    #[error("{0:?}: its range overlaps an earlier entry's")]
    Overlap(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// 1:1 from this base.
    Base(u32),
    /// Every id of the range to this one.
    Squash(u32),
    /// Refused.
    Forbid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    start: u32,
    /// Exclusive (at most u32::MAX).
    end: u64,
    to: Target,
}

impl Entry {
    fn covers(&self, id: u32) -> bool {
        self.start <= id && u64::from(id) < self.end
    }

    fn apply(&self, id: u32) -> Option<u32> {
        match self.to {
            Target::Base(b) => Some(b.wrapping_add(id - self.start)),
            Target::Squash(t) => Some(t),
            Target::Forbid => None,
        }
    }
}

/// One kind of id (uids or gids), both directions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdMap {
    guest_to_host: Vec<Entry>,
    host_to_guest: Vec<Entry>,
}

impl IdMap {
    /// The map the command line's entries describe.
    pub fn parse(entries: &[String]) -> Result<IdMap, IdMapError> {
        let mut map = IdMap::default();
        for spec in entries {
            map.add(spec)?;
        }
        Ok(map)
    }

    fn add(&mut self, spec: &str) -> Result<(), IdMapError> {
        let sep = spec.find(|c: char| !(c.is_alphanumeric() || c == '-' || c == '_'));
        let (kind, nums) = match sep {
            Some(i) => {
                let sep = spec[i..].chars().next().expect("found");
                (spec[..i].to_lowercase(), spec[i + sep.len_utf8()..].split(sep).collect::<Vec<_>>())
            }
            None => (spec.to_lowercase(), Vec::new()),
        };
        let want = match kind.as_str() {
            "guest" | "host" | "squash-guest" | "squash-host" | "map" => 3,
            "forbid-guest" => 2,
            _ => return Err(IdMapError::BadType(spec.to_string())),
        };
        if nums.len() != want {
            return Err(IdMapError::BadLength(spec.to_string(), want));
        }
        let n: Vec<u32> = nums
            .iter()
            .map(|v| v.parse().map_err(|_| IdMapError::BadNumber(spec.to_string(), v.to_string())))
            .collect::<Result<_, _>>()?;
        let range = |start: u32, count: u32| -> Result<(u32, u64), IdMapError> {
            // As virtiofsd: the end must itself be an id (so u32::MAX is never in a range).
            let end = u64::from(start) + u64::from(count);
            if end > u64::from(u32::MAX) {
                return Err(IdMapError::Overflow(spec.to_string()));
            }
            Ok((start, end))
        };
        let entry = |(start, end), to| Entry { start, end, to };
        let (g2h, h2g) = match kind.as_str() {
            "guest" => (Some(entry(range(n[0], n[2])?, Target::Base(n[1]))), None),
            "host" => (None, Some(entry(range(n[0], n[2])?, Target::Base(n[1])))),
            "squash-guest" => (Some(entry(range(n[0], n[2])?, Target::Squash(n[1]))), None),
            "squash-host" => (None, Some(entry(range(n[0], n[2])?, Target::Squash(n[1])))),
            "forbid-guest" => (Some(entry(range(n[0], n[1])?, Target::Forbid)), None),
            _ => (
                Some(entry(range(n[0], n[2])?, Target::Base(n[1]))),
                Some(entry(range(n[1], n[2])?, Target::Base(n[0]))),
            ),
        };
        for (e, list) in [(g2h, &mut self.guest_to_host), (h2g, &mut self.host_to_guest)] {
            let Some(e) = e else { continue };
            if list.iter().any(|o| u64::from(e.start) < o.end && u64::from(o.start) < e.end) {
                return Err(IdMapError::Overlap(spec.to_string()));
            }
            list.push(e);
        }
        Ok(())
    }

    pub fn is_identity(&self) -> bool {
        self.guest_to_host.is_empty() && self.host_to_guest.is_empty()
    }

    /// The host id for a guest id; None where `forbid-guest` refuses it.
    pub fn to_host(&self, guest: u32) -> Option<u32> {
        match self.guest_to_host.iter().find(|e| e.covers(guest)) {
            Some(e) => e.apply(guest),
            None => Some(guest),
        }
    }

    /// The guest's view of a host id.
    pub fn to_guest(&self, host: u32) -> u32 {
        self.host_to_guest.iter().find(|e| e.covers(host)).and_then(|e| e.apply(host)).unwrap_or(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[&str]) -> IdMap {
        IdMap::parse(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn err(entries: &[&str]) -> IdMapError {
        IdMap::parse(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap_err()
    }

    #[test]
    fn test_idmap_virtiofsd_readme_example() {
        // virtiofsd runs as 1001:100; every guest user writes as it; the host's 1001 shows as
        // 1000 in the guest; other ids unchanged.
        let uids = map(&["squash-guest:0:1001:4294967295", "squash-host:1001:1000:1"]);
        assert_eq!(uids.to_host(0), Some(1001));
        assert_eq!(uids.to_host(4294967294), Some(1001));
        assert_eq!(uids.to_guest(1001), 1000);
        assert_eq!(uids.to_guest(0), 0);
        assert_eq!(uids.to_guest(1002), 1002);
    }

    #[test]
    fn test_idmap_each_type() {
        let m = map(&["guest:100:1100:10", "host:5000:50:2", "forbid-guest:300:5", "map/7/70/2"]);
        assert_eq!(m.to_host(105), Some(1105));
        assert_eq!(m.to_host(110), Some(110), "past the range: itself");
        assert_eq!(m.to_guest(1105), 1105, "guest: is one-way");
        assert_eq!(m.to_guest(5001), 51);
        assert_eq!(m.to_host(302), None);
        assert_eq!(m.to_host(305), Some(305));
        assert_eq!(m.to_host(8), Some(71));
        assert_eq!(m.to_guest(71), 8);
        // Any separator, the type in any case.
        assert_eq!(map(&["MAP;0;1000;1"]).to_host(0), Some(1000));
        assert!(map(&[]).is_identity());
    }

    #[test]
    fn test_idmap_refuses_malformed_entries() {
        assert!(matches!(err(&["frob:1:2:3"]), IdMapError::BadType(_)));
        assert!(matches!(err(&["guest:1:2"]), IdMapError::BadLength(_, 3)));
        assert!(matches!(err(&["forbid-guest:1:2:3"]), IdMapError::BadLength(_, 2)));
        assert!(matches!(err(&["guest"]), IdMapError::BadLength(_, 3)));
        assert!(matches!(err(&["guest:1:x:3"]), IdMapError::BadNumber(..)));
        assert!(matches!(err(&["guest:1:2:4294967295"]), IdMapError::Overflow(_)));
        assert!(matches!(err(&["guest:0:10:10", "squash-guest:5:1:1"]), IdMapError::Overlap(_)));
        // Different directions may cover the same ids.
        map(&["guest:0:10:10", "host:0:10:10"]);
    }
}
