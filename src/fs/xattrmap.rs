//! `--xattrmap`: virtiofsd's rules for translating extended attribute names between the guest
//! (client) and the host (server). Pure: names in, names out; fs/xattr.rs applies it.
//!
//! The language (virtiofsd's doc/xattr-mapping.md): a list of rules, each `<d>type<d>scope<d>key
//! <d>prepend<d>` where `<d>` is the rule's first non-blank character, used as its separator.
//! The first rule that matches decides:
//! - a guest name (GETXATTR, SETXATTR, REMOVEXATTR) is matched against `key` by rules of scope
//!   `client` or `all`: `prefix` passes it on with `prepend` in front, `ok` passes it unchanged,
//!   `bad` refuses it (EPERM), `unsupported` refuses it (ENOTSUP);
//! - a host name (each name of a LISTXATTR) is matched against `prepend` by rules of scope
//!   `server` or `all`: `prefix` strips `prepend`, `ok` passes it, `bad` and `unsupported` hide it.
//! - `<d>map<d>key<d>prepend<d>` (no scope; only as the last rule) is shorthand for: prefix all
//!   `key` `prepend`; then, when `key` is not empty, bad all `prepend` `key` and ok all; when it is
//!   empty, bad all.
//!
//! A name no rule matches is refused (client) or hidden (server). virtiofsd aborts there; a map
//! without a catch-all is a configuration mistake, and refusing is the safe answer.

use std::ffi::{CStr, CString};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XattrMapError {
    #[error("no rules")]
    NoRules,
    #[error("rule {0}: it ends before its last separator")]
    Incomplete(usize),
    #[error("rule {0}: unknown type {1:?} (prefix, ok, bad, unsupported, map)")]
    BadType(usize, String),
    #[error("rule {0}: unknown scope {1:?} (client, server, all)")]
    BadScope(usize, String),
    #[error("rule {0}: a map rule must be the last rule")]
    MapNotLast(usize),
    #[error("rule {0}: a name cannot contain a NUL byte")]
    Nul(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Prefix,
    Ok,
    Bad,
    Unsupported,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    kind: Kind,
    client: bool,
    server: bool,
    key: Vec<u8>,
    prepend: Vec<u8>,
}

/// A parsed `--xattrmap`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XattrMap {
    rules: Vec<Rule>,
}

/// What becomes of a guest's xattr name.
#[derive(Debug, PartialEq, Eq)]
pub enum Mapped {
    /// Use this name on the host.
    Host(CString),
    /// Refuse with this errno (EPERM for `bad`, ENOTSUP for `unsupported`).
    Refuse(i32),
}

impl std::str::FromStr for XattrMap {
    type Err = XattrMapError;

    fn from_str(input: &str) -> Result<XattrMap, XattrMapError> {
        let mut rules = Vec::new();
        let mut rest = input.trim_start();
        let mut n = 0;
        while !rest.is_empty() {
            n += 1;
            let delim = rest.chars().next().expect("not empty");
            rest = &rest[delim.len_utf8()..];
            let mut field = || -> Result<&str, XattrMapError> {
                let end = rest.find(delim).ok_or(XattrMapError::Incomplete(n))?;
                let f = &rest[..end];
                rest = &rest[end + delim.len_utf8()..];
                Ok(f)
            };
            let kind = field()?;
            let scope = if kind == "map" { "all" } else { field()? };
            let (key, prepend) = (field()?.as_bytes().to_vec(), field()?.as_bytes().to_vec());
            if key.contains(&0) || prepend.contains(&0) {
                return Err(XattrMapError::Nul(n));
            }
            let (client, server) = match scope {
                "client" => (true, false),
                "server" => (false, true),
                "all" => (true, true),
                other => return Err(XattrMapError::BadScope(n, other.to_string())),
            };
            let rule = |kind, key: &[u8], prepend: &[u8]| Rule {
                kind,
                client,
                server,
                key: key.to_vec(),
                prepend: prepend.to_vec(),
            };
            rest = rest.trim_start();
            match kind {
                "prefix" => rules.push(rule(Kind::Prefix, &key, &prepend)),
                "ok" => rules.push(rule(Kind::Ok, &key, &prepend)),
                "bad" => rules.push(rule(Kind::Bad, &key, &prepend)),
                "unsupported" => rules.push(rule(Kind::Unsupported, &key, &prepend)),
                "map" => {
                    if !rest.is_empty() {
                        return Err(XattrMapError::MapNotLast(n));
                    }
                    rules.push(rule(Kind::Prefix, &key, &prepend));
                    if key.is_empty() {
                        rules.push(rule(Kind::Bad, b"", b""));
                    } else {
                        rules.push(rule(Kind::Bad, &prepend, &key));
                        rules.push(rule(Kind::Ok, b"", b""));
                    }
                }
                other => return Err(XattrMapError::BadType(n, other.to_string())),
            }
        }
        if rules.is_empty() {
            return Err(XattrMapError::NoRules);
        }
        Ok(XattrMap { rules })
    }
}

impl XattrMap {
    /// The host name for a guest's `name` (GETXATTR, SETXATTR, REMOVEXATTR).
    pub fn to_host(&self, name: &CStr) -> Mapped {
        let name = name.to_bytes();
        let Some(rule) = self.rules.iter().find(|r| r.client && name.starts_with(&r.key)) else {
            return Mapped::Refuse(libc::EPERM);
        };
        match rule.kind {
            Kind::Ok => Mapped::Host(CString::new(name).expect("from a CStr")),
            Kind::Prefix => {
                let mut host = rule.prepend.clone();
                host.extend_from_slice(name);
                Mapped::Host(CString::new(host).expect("no NUL in either part"))
            }
            Kind::Bad => Mapped::Refuse(libc::EPERM),
            Kind::Unsupported => Mapped::Refuse(libc::ENOTSUP),
        }
    }

    /// The guest's view of one host name (a LISTXATTR entry), or None to hide it.
    pub fn to_guest<'n>(&self, name: &'n [u8]) -> Option<&'n [u8]> {
        let rule = self.rules.iter().find(|r| r.server && name.starts_with(&r.prepend))?;
        match rule.kind {
            Kind::Ok => Some(name),
            Kind::Prefix => Some(&name[rule.prepend.len()..]),
            Kind::Bad | Kind::Unsupported => None,
        }
    }

    /// A host LISTXATTR result (NUL-terminated names) as the guest sees it.
    pub fn list_to_guest(&self, host: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(host.len());
        for name in host.split(|b| *b == 0).filter(|n| !n.is_empty()) {
            if let Some(guest) = self.to_guest(name) {
                out.extend_from_slice(guest);
                out.push(0);
            }
        }
        out
    }

    /// Whether the guest's security.capability is stored under another name (or refused): then
    /// the host kernel cannot clear it on a write (see `Cli::killpriv_v2`).
    pub fn renames_security_capability(&self) -> bool {
        self.to_host(c"security.capability") != Mapped::Host(c"security.capability".to_owned())
    }

    /// Whether every guest name and every host name meets some rule (else some are refused or
    /// hidden by default: worth a warning at start-up).
    pub fn is_terminated(&self) -> bool {
        let client = self.rules.iter().any(|r| r.client && r.key.is_empty());
        let server = self.rules.iter().any(|r| r.server && r.prepend.is_empty());
        client && server
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(s: &str) -> XattrMap {
        s.parse().unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn host(m: &XattrMap, name: &CStr) -> Mapped {
        m.to_host(name)
    }

    fn h(s: &str) -> Mapped {
        Mapped::Host(CString::new(s).unwrap())
    }

    #[test]
    fn test_xattrmap_parses_virtiofsd_examples() {
        let m = map(":prefix:client:trusted.:user.virtiofs.:");
        assert_eq!(m.rules.len(), 1);
        assert!(m.rules[0].client && !m.rules[0].server);
        let m = map(":prefix:all::user.virtiofs.::bad:all:::");
        assert_eq!(m.rules.len(), 2);
        // Any separator, white space between rules.
        let m = map(
            "\n  /prefix/all/trusted./user.virtiofs./\n  /bad/server//trusted./\n  /bad/client/user.virtiofs.//\n  /ok/all///\n",
        );
        assert_eq!(m.rules.len(), 4);
        assert!(m.is_terminated());
    }

    #[test]
    fn test_xattrmap_refuses_malformed_maps() {
        assert_eq!("".parse::<XattrMap>(), Err(XattrMapError::NoRules));
        assert_eq!("   ".parse::<XattrMap>(), Err(XattrMapError::NoRules));
        assert_eq!(":prefix:all:a.:".parse::<XattrMap>(), Err(XattrMapError::Incomplete(1)));
        assert_eq!(":ok:all:::x".parse::<XattrMap>(), Err(XattrMapError::Incomplete(2)));
        assert!(matches!(":frob:all:::".parse::<XattrMap>(), Err(XattrMapError::BadType(1, _))));
        assert!(matches!(":ok:all:::;ok;guest;;;".parse::<XattrMap>(), Err(XattrMapError::BadScope(2, _))));
        assert_eq!(":map::user.x.::ok:all:::".parse::<XattrMap>(), Err(XattrMapError::MapNotLast(1)));
    }

    #[test]
    fn test_xattrmap_prefix_all_then_bad_hides_unprefixed_host_names() {
        // virtiofsd's example 1: everything under user.virtiofs. on the host.
        let m = map(":prefix:all::user.virtiofs.::bad:all:::");
        assert_eq!(host(&m, c"trusted.x"), h("user.virtiofs.trusted.x"));
        assert_eq!(host(&m, c"security.selinux"), h("user.virtiofs.security.selinux"));
        let list = m.list_to_guest(b"user.virtiofs.trusted.x\0user.plain\0security.selinux\0");
        assert_eq!(list, b"trusted.x\0");
        assert!(m.renames_security_capability());
    }

    #[test]
    fn test_xattrmap_map_rule_expands_as_virtiofsd_does() {
        let m = map(":map::user.virtiofs.:");
        assert_eq!(m, map(":prefix:all::user.virtiofs.::bad:all:::"));
        let m = map(":map:trusted.:user.virtiofs.:");
        assert_eq!(m, map(":prefix:all:trusted.:user.virtiofs.::bad:all:user.virtiofs.:trusted.::ok:all:::"));
        assert_eq!(host(&m, c"trusted.a"), h("user.virtiofs.trusted.a"));
        assert_eq!(host(&m, c"user.b"), h("user.b"));
        // A guest may not reach the mapped names directly.
        assert_eq!(host(&m, c"user.virtiofs.trusted.a"), Mapped::Refuse(libc::EPERM));
        let list = m.list_to_guest(b"user.virtiofs.trusted.a\0user.b\0trusted.raw\0");
        // trusted.raw on the host meets `bad all user.virtiofs. trusted.` (prepend trusted.): hidden.
        assert_eq!(list, b"trusted.a\0user.b\0");
        assert!(!m.renames_security_capability());
    }

    #[test]
    fn test_xattrmap_security_use_case_selinux_labels_kept_apart() {
        // A guest running SELinux on a host running SELinux: the guest's labels live under
        // user.virtiofs.security.*, the host's own security.* are hidden from the guest and out
        // of its reach, everything else passes.
        let m = map(
            "/prefix/all/security./user.virtiofs./ /bad/server//security./ /bad/client/user.virtiofs.// /ok/all///",
        );
        assert_eq!(host(&m, c"security.selinux"), h("user.virtiofs.security.selinux"));
        assert_eq!(host(&m, c"user.virtiofs.security.selinux"), Mapped::Refuse(libc::EPERM));
        assert_eq!(host(&m, c"user.note"), h("user.note"));
        let list = m.list_to_guest(b"security.selinux\0user.virtiofs.security.selinux\0user.note\0");
        assert_eq!(list, b"security.selinux\0user.note\0");
        assert!(m.renames_security_capability());
    }

    #[test]
    fn test_xattrmap_ok_unsupported_and_unmatched() {
        let m = map(":ok:client:user.:: :unsupported:client:trusted.:: :ok:server::user.:");
        assert_eq!(host(&m, c"user.a"), h("user.a"));
        assert_eq!(host(&m, c"trusted.a"), Mapped::Refuse(libc::ENOTSUP));
        assert_eq!(host(&m, c"system.posix_acl_access"), Mapped::Refuse(libc::EPERM), "no rule: refused");
        assert_eq!(m.list_to_guest(b"user.a\0trusted.b\0"), b"user.a\0", "no rule: hidden");
        assert!(!m.is_terminated());
    }
}
