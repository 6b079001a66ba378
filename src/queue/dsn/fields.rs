//! The fields of a bounce report: a provider reply on one line, the status code, the
//! recipient in RFC 3464 / RFC 6533 form, the report's `Message-ID` and its MIME boundary.
//! Pure; must never let provider text through unsanitised.

use super::text::sanitize_line;
use super::DsnInput;
use crate::queue::record::StoredReply;
use crate::smtp::EnhancedCode;

/// `550 5.1.1 text`, ASCII only, on one logical line (the caller folds it).
pub(super) fn reply_line(r: &StoredReply) -> String {
    let mut s = format!("{:03}", r.code.min(999));
    if let Some(e) = valid_enhanced(r) {
        s.push(' ');
        s.push_str(&e.to_string());
    }
    let text = sanitize_line(&r.text);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if !text.is_empty() {
        s.push(' ');
        s.push_str(&text);
    }
    s
}

/// The stored enhanced code, when it parses and its class is a failure class.
fn valid_enhanced(r: &StoredReply) -> Option<EnhancedCode> {
    let s = r.enhanced.as_deref()?.trim();
    match EnhancedCode::parse_prefix(s) {
        Some((e, n)) if n == s.len() && matches!(e.class, 4 | 5) => Some(e),
        _ => None,
    }
}

/// The reply's enhanced code, else 5.0.0 for a permanent reply, 4.0.0 for an expired
/// recipient whose last reply was temporary.
pub(super) fn status_code(r: &StoredReply, expired: bool) -> String {
    if let Some(e) = valid_enhanced(r) {
        return e.to_string();
    }
    match r.code / 100 {
        5 => "5.0.0".into(),
        4 => "4.0.0".into(),
        _ if expired => "4.0.0".into(),
        _ => "5.0.0".into(),
    }
}

pub(super) fn final_recipient(addr: &str) -> String {
    let a = addr.trim().trim_start_matches('<').trim_end_matches('>');
    if a.is_ascii() {
        format!("rfc822; {}", sanitize_line(a))
    } else {
        format!("utf-8; {}", xtext_addr(a))
    }
}

/// RFC 6533 `utf-8-addr-xtext` for a non-ASCII address (`\x{E9}` for each character that
/// is not a QCHAR); ASCII addresses come back as they are, minus control characters.
pub(super) fn xtext_addr(addr: &str) -> String {
    let a = addr.trim().trim_start_matches('<').trim_end_matches('>');
    if a.is_ascii() {
        return sanitize_line(a);
    }
    let mut s = String::with_capacity(a.len() + 16);
    for c in a.chars() {
        let qchar =
            matches!(c, '\x21'..='\x2a' | '\x2c'..='\x3c' | '\x3e'..='\x5b' | '\x5d'..='\x7e');
        if qchar {
            s.push(c);
        } else {
            s.push_str(&format!("\\x{{{:X}}}", c as u32));
        }
    }
    s
}

/// `dsn.{queue id}.{now}.{hash of the recipients}@{mta}` (the brackets come with the header): unique per message, time and
/// set of failed recipients, and deterministic (the module has no clock of its own).
pub(super) fn message_id(input: &DsnInput, mta: &str, id: &str) -> String {
    let mut h = Fnv::default();
    for f in input.failed {
        h.write(f.address.as_bytes());
        h.write(b"\0");
    }
    format!("dsn.{id}.{}.{:08x}@{mta}", input.now_ms, h.0 as u32)
}

/// A boundary that occurs in none of `parts` (nor, so, in the original message).
pub(super) fn pick_boundary(input: &DsnInput, id: &str, parts: &[&[u8]]) -> String {
    let mut h = Fnv::default();
    h.write(&input.now_ms.to_be_bytes());
    h.write(input.original);
    for n in 0u32.. {
        let b = format!("=_mailvalve-dsn-{id}-{:016x}-{n}", h.0);
        if !parts.iter().any(|p| contains(p, b.as_bytes())) {
            return b;
        }
        h.write(&n.to_be_bytes());
    }
    // Unreachable in practice (2^32 collisions); still a valid boundary.
    format!("=_mailvalve-dsn-{id}")
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[derive(Clone, Copy)]
struct Fnv(u64);
impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}
impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}
