//! A literal pre-filter for the rule table's text patterns: one pass over the
//! lower-cased ASCII reply text says which of the patterns still in question *can*
//! match it, so `classify` runs the regex of only those rules (usually none) instead of
//! one overlapping `RegexSet` scan of every pattern over the whole text.
//!
//! For each pattern, regex-syntax's literal extractor gives a finite set of literals of
//! which every match must start with one (the same extraction the regex crate uses for
//! its own prefilters); we keep the ASCII ones, lower-cased. The scan looks at every
//! position of the lower-cased text: a bit table over a hash of the next four bytes
//! rules out almost every position, and at the rest the literals with those four first
//! bytes are compared in full — only those of patterns the caller still needs.
//!
//! Why by hand: `RegexSet::matches` must report every pattern, so it cannot stop early
//! or skip patterns, and with case-insensitive patterns the regex crate finds no usable
//! prefilter for the set — its lazy DFA walks every byte in overlapping mode. An
//! Aho-Corasick automaton over the same literals was measured and is hardly cheaper
//! (about 2 ns per byte: one dependent table load per byte, ~400 literals, ~1 MB of
//! DFA). The bit-table test is independent per position (it pipelines, and the 8 KiB
//! table stays in L1), and it skips literals of patterns that can no longer win.
//!
//! What it must never do: report "cannot match" for a pattern that matches (a false
//! negative would change a classification). It is therefore only a necessary
//! condition — a hit is confirmed by the rule's own regex unless the pattern is a
//! plain list of words — it is used only on ASCII text (on ASCII text a
//! case-insensitive match can only consist of ASCII case variants of an extracted
//! literal; non-ASCII replies take the exact `RegexSet` path), and a pattern without a
//! usable literal set (one that can match the empty string or starts with an unbounded
//! class) is always reported as "may match".

use memchr::memmem;
use regex_syntax::hir::literal::{ExtractKind, Extractor};
use regex_syntax::ParserBuilder;

/// Patterns tracked individually (bits of a `Candidates`).
pub(crate) const TRACKED: usize = 128;

/// One bit per text pattern below `TRACKED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Candidates(u128);

impl Candidates {
    #[inline]
    pub(crate) fn has(self, pattern: usize) -> bool {
        pattern < TRACKED && self.0 & (1 << pattern) != 0
    }

    /// Sets the bit of `pattern`; false (and nothing set) if it is not tracked.
    #[inline]
    pub(crate) fn set(&mut self, pattern: usize) -> bool {
        if pattern < TRACKED {
            self.0 |= 1 << pattern;
            true
        } else {
            false
        }
    }

    #[inline]
    fn and(self, o: Candidates) -> Candidates {
        Candidates(self.0 & o.0)
    }

    #[inline]
    fn without(self, o: Candidates) -> Candidates {
        Candidates(self.0 & !o.0)
    }

    #[inline]
    pub(crate) fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// Literals at least this long are found through the four-byte slot table; shorter
/// ones (e.g. "rbl") with `memmem`.
const KEY: usize = 4;
/// log2 of the slots in the position table (4096 × 2 bytes: stays in L1).
const SLOT_BITS: u32 = 12;
const SLOTS: usize = 1 << SLOT_BITS;

/// A literal and the pattern it belongs to.
#[derive(Debug, Clone)]
struct Lit {
    bytes: Vec<u8>,
    owner: usize,
}

/// The literals of one pattern whose first `KEY` bytes hash to one slot.
#[derive(Debug, Clone, Copy)]
struct Group {
    slot: u16,
    owner: u16,
    start: u32,
    end: u32,
}

/// The compiled pre-filter over all text patterns of a rule table.
#[derive(Debug, Clone)]
pub(crate) struct LiteralFilter {
    /// `slots[hash(first KEY bytes)]` is 1 + the index of its first group, or 0.
    slots: Box<[u16; SLOTS]>,
    /// Sorted by slot, then pattern.
    groups: Vec<Group>,
    /// Literals of `KEY` bytes or more, in group order.
    long: Vec<Lit>,
    /// Shorter literals, with their searchers.
    short: Vec<(memmem::Finder<'static>, usize)>,
    /// Patterns without a literal set: always "may match".
    always: Candidates,
    /// Patterns that are a plain list of words: on ASCII text, a hit is a match.
    exact: Candidates,
}

/// `hay.starts_with(lit)`, eight bytes at a time: literals in one group share their
/// first bytes and differ late, and a libc `memcmp` call per literal was a tenth of
/// the scan.
#[inline]
fn starts_with(hay: &[u8], lit: &[u8]) -> bool {
    let Some(hay) = hay.get(..lit.len()) else {
        return false;
    };
    let mut a = hay.chunks_exact(8);
    let mut b = lit.chunks_exact(8);
    for (x, y) in a.by_ref().zip(b.by_ref()) {
        let x = u64::from_le_bytes([x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]]);
        let y = u64::from_le_bytes([y[0], y[1], y[2], y[3], y[4], y[5], y[6], y[7]]);
        if x != y {
            return false;
        }
    }
    a.remainder() == b.remainder()
}

#[inline]
fn hash(k: u32) -> usize {
    (k.wrapping_mul(0x9E37_79B1) >> (32 - SLOT_BITS)) as usize
}

#[inline]
fn slot(b: &[u8]) -> Option<usize> {
    let k: [u8; KEY] = b.get(..KEY)?.try_into().ok()?;
    Some(hash(u32::from_le_bytes(k)))
}

impl LiteralFilter {
    /// Builds the filter for `patterns` (case-insensitive, as the classifier compiles
    /// them). Never fails: a pattern it cannot analyse is always "may match", and a
    /// pattern beyond `TRACKED` is left to the caller (`Candidates::set` says so).
    pub(crate) fn new<S: AsRef<str>>(patterns: &[S]) -> LiteralFilter {
        let mut always = Candidates::default();
        let mut exact = Candidates::default();
        let mut long = Vec::new();
        let mut short = Vec::new();
        for (i, p) in patterns.iter().enumerate().take(TRACKED) {
            match necessary_literals(p.as_ref()) {
                Some((lits, is_exact)) => {
                    if is_exact {
                        exact.set(i);
                    }
                    for bytes in lits {
                        if bytes.len() >= KEY {
                            long.push(Lit { bytes, owner: i });
                        } else {
                            short.push((memmem::Finder::new(&bytes).into_owned(), i));
                        }
                    }
                }
                None => {
                    always.set(i);
                }
            }
        }
        long.sort_by_key(|l| (slot(&l.bytes), l.owner));
        let mut slots = Box::new([0u16; SLOTS]);
        let mut groups: Vec<Group> = Vec::new();
        for (j, l) in long.iter().enumerate() {
            let Some(sl) = slot(&l.bytes) else { continue };
            let (sl16, owner) = (sl as u16, l.owner as u16);
            match groups.last_mut() {
                Some(g) if g.slot == sl16 && g.owner == owner => g.end = j as u32 + 1,
                _ => {
                    groups.push(Group {
                        slot: sl16,
                        owner,
                        start: j as u32,
                        end: j as u32 + 1,
                    });
                    if let Some(e) = slots.get_mut(sl) {
                        if *e == 0 {
                            *e = groups.len() as u16;
                        }
                    }
                }
            }
        }
        LiteralFilter {
            slots,
            groups,
            long,
            short,
            always,
            exact,
        }
    }

    /// Of the patterns in `needed`, those that may match the text whose ASCII
    /// lower-case form is `lower` (the caller checks that the text is ASCII; on other
    /// text the answer would not be sound). Patterns outside `needed` are not looked
    /// for and come back unset.
    pub(crate) fn scan(&self, lower: &[u8], needed: Candidates) -> Candidates {
        let mut found = self.always.and(needed);
        let mut todo = needed.without(found);
        for (finder, owner) in &self.short {
            if todo.has(*owner) && finder.find(lower).is_some() {
                found.set(*owner);
                todo = todo.without(found);
            }
        }
        if todo.is_empty() {
            return found;
        }
        // The hot loop: one hash and one L1 load per position; hits go to `verify`.
        for (at, w) in lower.windows(KEY).enumerate() {
            let k = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            let sl = hash(k) & (SLOTS - 1);
            let first = self.slots[sl];
            if first != 0 {
                let rest = lower.get(at..).unwrap_or_default();
                self.verify(rest, sl, usize::from(first) - 1, &mut found, &mut todo);
                if todo.is_empty() {
                    break;
                }
            }
        }
        found
    }

    /// The groups of slot `sl` (from index `first`) against the text at `rest`.
    #[inline(never)]
    fn verify(
        &self,
        rest: &[u8],
        sl: usize,
        first: usize,
        found: &mut Candidates,
        todo: &mut Candidates,
    ) {
        for g in self.groups.get(first..).unwrap_or_default() {
            if usize::from(g.slot) != sl {
                break;
            }
            if !todo.has(usize::from(g.owner)) {
                continue;
            }
            let lits = self.long.get(g.start as usize..g.end as usize);
            if lits
                .unwrap_or_default()
                .iter()
                .any(|l| starts_with(rest, &l.bytes))
            {
                found.set(usize::from(g.owner));
                *todo = todo.without(*found);
            }
        }
    }

    /// Whether a `scan` hit of `pattern` on ASCII text is already a match (the pattern
    /// is a finite list of words, without look-around or inline flags), so that its
    /// regex need not confirm it.
    #[inline]
    pub(crate) fn hit_is_match(&self, pattern: usize) -> bool {
        self.exact.has(pattern)
    }
}

/// The lower-cased ASCII literals of which every match of `pattern` (compiled
/// case-insensitively) on an ASCII text starts with one, ASCII case aside, and whether
/// the pattern matches exactly these words; `None` when there is no such finite set.
///
/// The literals come from the pattern parsed *case-sensitively*: case-insensitive
/// parsing turns every letter into a class of its case variants, and the product of
/// those (`sender` alone is 96 strings, with the long s) exceeds any sensible limit,
/// so the extractor would cut every literal to four bytes and "reci", "addr", "not "
/// would hit almost every reply. Why this is sound: case-insensitive matching only
/// widens each literal character or class to its Unicode simple case-fold variants.
/// In ASCII text, a variant of an ASCII character is its other ASCII case (covered by
/// the ASCII case-insensitive scan), and a non-ASCII character can only stand for an
/// ASCII one if it is U+017F (long s) or U+212A (Kelvin sign) — a pattern whose
/// literals contain either (even cut off: their UTF-8 lead bytes are 0xC5 and 0xE2) is
/// therefore not filtered at all. Any other literal with a non-ASCII byte can never
/// occur in ASCII text and is dropped.
///
/// "Exact" needs the extractor's word that every literal is a whole match, no
/// look-around (`\b` counts as an empty, i.e. exact, literal to the extractor) and no
/// inline flags (a `(?-i)` group would be case-sensitive, which the case-sensitive
/// parse cannot see).
pub(crate) fn necessary_literals(pattern: &str) -> Option<(Vec<Vec<u8>>, bool)> {
    // The syntax options of `regex::bytes::RegexBuilder`, except case-insensitivity.
    let hir = ParserBuilder::new()
        .utf8(false)
        .build()
        .parse(pattern)
        .ok()?;
    let seq = Extractor::new()
        .kind(ExtractKind::Prefix)
        .limit_total(1000)
        .extract(&hir);
    let lits = seq.literals()?;
    let exact = seq.is_exact() && hir.properties().look_set().is_empty() && !pattern.contains("(?");
    let mut kept: Vec<Vec<u8>> = Vec::new();
    for l in lits {
        let b = l.as_bytes();
        if b.is_empty() || b.iter().any(|&c| c == 0xC5 || c == 0xE2) {
            // A match may start anywhere, or with an ASCII `s`/`k` the literal
            // does not show.
            return None;
        }
        // A literal with any other non-ASCII byte can never occur in ASCII text.
        if b.is_ascii() {
            kept.push(b.to_ascii_lowercase());
        }
    }
    kept.sort();
    kept.dedup();
    // A literal that contains another one adds nothing to a necessary condition.
    let all = kept.clone();
    kept.retain(|l| {
        !all.iter()
            .any(|s| s.len() < l.len() && l.windows(s.len()).any(|w| w == s.as_slice()))
    });
    Some((kept, exact))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_lowercased_ascii_variants() {
        let (l, exact) = necessary_literals("Sender (rejected|denied)").unwrap();
        assert_eq!(
            l,
            vec![b"sender denied".to_vec(), b"sender rejected".to_vec()]
        );
        assert!(exact);
        let (l, exact) = necessary_literals("gr[ae]y-?list").unwrap();
        assert_eq!(l.len(), 4);
        assert!(exact);
        // Word boundaries, inline flags, open ends: a hit still needs the regex.
        assert!(!necessary_literals(r"\brate\b").unwrap().1);
        assert!(!necessary_literals("(?-i)Rate").unwrap().1);
        assert!(!necessary_literals("rate.*").unwrap().1);
        // Matches of the empty string or of an unbounded class have no literal set.
        assert_eq!(necessary_literals("x*"), None);
        assert_eq!(necessary_literals(r"\S+ account"), None);
        // Literals that can stand for an ASCII `s` or `k` under case folding.
        assert_eq!(necessary_literals("\u{17F}pam"), None);
        assert_eq!(necessary_literals("(?i)spam"), None);
        assert_eq!(necessary_literals("\u{212A}"), None);
        // Only non-ASCII literals: it can never match ASCII text.
        assert_eq!(necessary_literals("für"), Some((vec![], true)));
    }

    #[test]
    fn scan_finds_overlaps_and_only_what_is_needed() {
        let f = LiteralFilter::new(&["rate", "ratelimit", "x*", "für", "te ?li", "rbl"]);
        let all = Candidates(0b11_1111);
        let c = f.scan(b"ratelimit dnsrbl", all);
        assert!(c.has(0) && c.has(1) && c.has(2) && c.has(4) && c.has(5));
        assert!(!c.has(3));
        let c = f.scan(b"nothing here", all);
        assert_eq!(c, Candidates(0b100));
        let c = f.scan(b"ratelimit", Candidates(0b10));
        assert_eq!(c, Candidates(0b10));
        assert!(!c.has(TRACKED + 1));
    }

    #[test]
    fn chunked_starts_with() {
        for (hay, lit) in [
            ("recipient table", "recipient limit"),
            ("recipient limit!", "recipient limit"),
            ("recipient", "recipient limit"),
            ("abc", "abc"),
            ("abd", "abc"),
            ("", ""),
            ("0123456789abcdefX", "0123456789abcdef"),
        ] {
            assert_eq!(
                starts_with(hay.as_bytes(), lit.as_bytes()),
                hay.starts_with(lit),
                "{hay:?} {lit:?}"
            );
        }
    }
}
