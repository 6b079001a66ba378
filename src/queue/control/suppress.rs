//! `mailvalve suppress ...` as requests: the wire form of each (one line, and for `add`
//! a CSV body), and [`execute_suppress`] against the instance's open list or the
//! database the CLI opened.
//!
//! It must never change the suppression list except through the list's own durable
//! operations, and never accept a body larger than [`MAX_SUPPRESS_BODY`].

use crate::policy::suppression::{normalize, Entry, SuppressionStore, Suppressions};

/// Largest `suppress add` body a running instance reads (JSON lines of entries): about
/// half a million addresses. A bigger import is refused with this figure in the error.
pub const MAX_SUPPRESS_BODY: u64 = 64 << 20;

/// What the control socket needs of the running instance's suppression list. The list's
/// own durable operations do the work; this adds nothing but the wire.
pub trait SuppressionList: Send + Sync {
    /// Every entry (suppressed ones and soft failures still being counted).
    fn entries(&self) -> Vec<Entry>;
    /// Adds `entries` all or nothing (durable before it returns).
    fn add(&self, entries: Vec<Entry>) -> Result<(), String>;
    /// `Ok(true)` when the address was on the list.
    fn remove(&self, address: &str) -> Result<bool, String>;
}

impl<S: SuppressionStore> SuppressionList for Suppressions<S> {
    fn entries(&self) -> Vec<Entry> {
        self.list()
    }
    fn add(&self, entries: Vec<Entry>) -> Result<(), String> {
        self.add_all(entries).map_err(|e| e.to_string())
    }
    fn remove(&self, address: &str) -> Result<bool, String> {
        Suppressions::remove(self, address).map_err(|e| e.to_string())
    }
}

/// One operation on the suppression list. The CLI builds it; a running instance (over
/// the socket) or the CLI itself (list opened directly) runs it with
/// [`execute_suppress`], so the answer is the same either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SuppressRequest {
    /// Answer: one JSON [`Entry`] per line.
    List,
    /// Add (or replace) these entries, all or nothing. Answer: the number added.
    Add(Vec<Entry>),
    /// Answer: `true` when the address was listed.
    Remove(String),
}

impl SuppressRequest {
    /// The command line, and for `Add` the body sent after it (one JSON entry per line).
    pub fn to_wire(&self) -> (String, Vec<u8>) {
        match self {
            Self::List => ("suppress list".into(), Vec::new()),
            Self::Add(entries) => {
                let mut body = Vec::new();
                for e in entries {
                    // Serialising a plain struct of strings and numbers cannot fail.
                    if serde_json::to_writer(&mut body, e).is_ok() {
                        body.push(b'\n');
                    }
                }
                ("suppress add".into(), body)
            }
            // JSON-quoted: an address may hold spaces (a quoted local part).
            Self::Remove(a) => (
                format!("suppress remove {}", serde_json::Value::String(a.clone())),
                Vec::new(),
            ),
        }
    }

    /// Parses a command line after `suppress `, and the body for `add`.
    pub(super) fn parse(rest: &str, body: &[u8]) -> Result<Self, String> {
        let (verb, arg) = match rest.split_once(' ') {
            Some((v, a)) => (v, a.trim()),
            None => (rest, ""),
        };
        match (verb, arg) {
            ("list", "") => Ok(Self::List),
            ("remove", a) if !a.is_empty() => serde_json::from_str::<String>(a)
                .map(Self::Remove)
                .map_err(|e| format!("suppress remove: the address must be a JSON string: {e}")),
            ("add", "") => {
                let mut entries = Vec::new();
                for (i, line) in body.split(|&b| b == b'\n').enumerate() {
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let mut e: Entry = serde_json::from_slice(line)
                        .map_err(|err| format!("suppress add: entry {}: {err}", i + 1))?;
                    e.address = normalize(&e.address);
                    if e.address.is_empty() || !e.address.contains('@') {
                        return Err(format!(
                            "suppress add: entry {}: {:?} is not an email address",
                            i + 1,
                            e.address
                        ));
                    }
                    entries.push(e);
                }
                Ok(Self::Add(entries))
            }
            _ => Err(format!("unknown command: \"suppress {rest}\"")),
        }
    }
}

/// Runs a suppression request against `list`; the text is what goes back over the
/// socket (see [`SuppressRequest`] for its shape per request). Blocking (a commit): call
/// it off the async workers.
pub fn execute_suppress(
    list: &dyn SuppressionList,
    req: SuppressRequest,
) -> Result<String, String> {
    match req {
        SuppressRequest::List => {
            let mut out = String::new();
            for e in list.entries() {
                if let Ok(line) = serde_json::to_string(&e) {
                    out.push_str(&line);
                    out.push('\n');
                }
            }
            Ok(out)
        }
        SuppressRequest::Add(entries) => {
            let n = entries.len();
            list.add(entries)?;
            Ok(format!("{n}\n"))
        }
        SuppressRequest::Remove(address) => Ok(format!("{}\n", list.remove(&address)?)),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A manual entry for `address`.
    pub(in crate::queue::control) fn entry(address: &str) -> Entry {
        Entry {
            address: address.into(),
            code: 550,
            enhanced: Some("5.1.1".into()),
            text: "gone".into(),
            first_seen: 1,
            last_seen: 2,
            count: 1,
            source: crate::policy::suppression::Source::Manual,
            suppressed: true,
            soft_times: Vec::new(),
            soft_marks: Vec::new(),
        }
    }

    #[test]
    fn suppress_wire_round_trips_and_refuses_garbage() {
        for req in [
            SuppressRequest::List,
            SuppressRequest::Remove("a b@c".into()),
            SuppressRequest::Add(vec![entry("a@b.example"), entry("c@d.example")]),
        ] {
            let (line, body) = req.to_wire();
            let rest = line.strip_prefix("suppress ").unwrap();
            assert_eq!(SuppressRequest::parse(rest, &body), Ok(req));
        }
        assert!(
            SuppressRequest::parse("remove a@b", b"").is_err(),
            "not JSON"
        );
        assert!(SuppressRequest::parse("remove", b"").is_err());
        assert!(SuppressRequest::parse("list extra", b"").is_err());
        assert!(SuppressRequest::parse("add", b"{not json}\n").is_err());
        assert!(SuppressRequest::parse("frobnicate", b"").is_err());
    }
}
