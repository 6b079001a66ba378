//! CSV import and export of the suppression list (csv crate). Columns:
//! `address,code,enhanced,text,first_seen,last_seen,count,source`; only `address` is
//! required on import (a list exported from a newsletter tool often has just that).
//! Times are RFC 3339. An import is checked completely before anything is written: a
//! malformed file reports every bad line by number and changes nothing.
//!
//! It must never write part of a bad import, and never export anything but the list.

use crate::policy::suppression::{normalize, Entry, Source};
use std::io::{Read, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const HEADER: [&str; 8] = [
    "address",
    "code",
    "enhanced",
    "text",
    "first_seen",
    "last_seen",
    "count",
    "source",
];

/// One problem in an import file, with its 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: u64,
    pub message: String,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// 9999-12-31T23:59:59Z: the last time RFC 3339 (and so the import) can write.
const MAX_TIME: u64 = 253_402_300_799;

/// RFC 3339 seconds. A stored time past the year 9999 (only a corrupt entry or a wild
/// clock has one) is written as [`MAX_TIME`]: humantime's formatter fails on it (and
/// `to_string` then panics), and the export must never panic.
fn fmt_time(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs.min(MAX_TIME)))
        .to_string()
}

fn parse_time(s: &str) -> Result<u64, String> {
    let t = humantime::parse_rfc3339_weak(s.trim()).map_err(|e| format!("bad time {s:?}: {e}"))?;
    Ok(t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0))
}

pub fn export(entries: &[Entry], out: impl Write) -> Result<(), csv::Error> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record(HEADER)?;
    for e in entries.iter().filter(|e| e.suppressed) {
        w.write_record([
            e.address.as_str(),
            &e.code.to_string(),
            e.enhanced.as_deref().unwrap_or(""),
            &e.text,
            &fmt_time(e.first_seen),
            &fmt_time(e.last_seen),
            &e.count.to_string(),
            e.source.as_str(),
        ])?;
    }
    w.flush()?;
    Ok(())
}

/// Parses a whole CSV. A first row whose first cell is `address` is a header and names
/// the columns; without one the columns are in the export order.
pub fn import(mut input: impl Read, now: SystemTime) -> Result<Vec<Entry>, Vec<LineError>> {
    let now = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Read it all first: line numbers are computed from byte offsets, because the csv
    // crate's own line counter skips blank lines.
    let mut bytes = Vec::new();
    if let Err(e) = input.read_to_end(&mut bytes) {
        return Err(vec![LineError {
            line: 0,
            message: format!("cannot read: {e}"),
        }]);
    }
    let line_of = |byte: u64| -> u64 {
        // A record's position may point at blank lines before it: skip them.
        let mut end = (byte as usize).min(bytes.len());
        while end < bytes.len() && matches!(bytes[end], b'\r' | b'\n') {
            end += 1;
        }
        bytes[..end].iter().filter(|&&c| c == b'\n').count() as u64 + 1
    };
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(bytes.as_slice());
    let mut columns: Vec<String> = HEADER.iter().map(|s| s.to_string()).collect();
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                let line = e
                    .position()
                    .map(|p| line_of(p.byte()))
                    .unwrap_or(i as u64 + 1);
                errors.push(LineError {
                    line,
                    message: e.to_string(),
                });
                continue;
            }
        };
        let line = rec
            .position()
            .map(|p| line_of(p.byte()))
            .unwrap_or(i as u64 + 1);
        if i == 0
            && rec
                .get(0)
                .is_some_and(|c| c.eq_ignore_ascii_case("address"))
        {
            columns = rec.iter().map(|c| c.to_ascii_lowercase()).collect();
            if let Some(bad) = columns.iter().find(|c| !HEADER.contains(&c.as_str())) {
                errors.push(LineError {
                    line,
                    message: format!("unknown column {bad:?}"),
                });
            }
            continue;
        }
        if rec.iter().all(str::is_empty) {
            continue;
        }
        match entry_from(&columns, &rec, now) {
            Ok(e) => entries.push(e),
            Err(message) => errors.push(LineError { line, message }),
        }
    }
    if errors.is_empty() {
        Ok(entries)
    } else {
        Err(errors)
    }
}

fn entry_from(columns: &[String], rec: &csv::StringRecord, now: u64) -> Result<Entry, String> {
    if rec.len() > columns.len() {
        return Err(format!(
            "{} fields, expected at most {}",
            rec.len(),
            columns.len()
        ));
    }
    let get = |name: &str| {
        columns
            .iter()
            .position(|c| c == name)
            .and_then(|i| rec.get(i))
            .filter(|v| !v.is_empty())
    };
    let address = get("address").ok_or("address is empty")?;
    let address = normalize(address);
    let valid = address
        .split_once('@')
        .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty() && !d.contains('@'))
        && !address.chars().any(|c| c.is_whitespace() || c.is_control());
    if !valid {
        return Err(format!("{address:?} is not an email address"));
    }
    let code = match get("code") {
        Some(c) => c
            .parse::<u16>()
            .ok()
            .filter(|c| (200..600).contains(c))
            .ok_or_else(|| format!("code {c:?} is not a reply code"))?,
        None => 550,
    };
    let enhanced = get("enhanced").map(str::to_string);
    if let Some(e) = &enhanced {
        if crate::smtp::EnhancedCode::parse_prefix(e).is_none() {
            return Err(format!("enhanced code {e:?} is not like 5.1.1"));
        }
    }
    let first_seen = get("first_seen")
        .map(parse_time)
        .transpose()?
        .unwrap_or(now);
    let last_seen = get("last_seen")
        .map(parse_time)
        .transpose()?
        .unwrap_or(first_seen);
    let count = get("count")
        .map(|c| {
            c.parse::<u32>()
                .map_err(|_| format!("count {c:?} is not a number"))
        })
        .transpose()?
        .unwrap_or(1);
    let source = match get("source") {
        Some(s) => Source::parse(s)
            .ok_or_else(|| format!("source {s:?} is not upstream, manual or import"))?,
        None => Source::Import,
    };
    Ok(Entry {
        address,
        code,
        enhanced,
        text: get("text").unwrap_or("").to_string(),
        first_seen,
        last_seen,
        count,
        source,
        suppressed: true,
        soft_times: Vec::new(),
        soft_marks: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let input = "address,code,enhanced,text\nA@x.example,550,5.1.1,\"user unknown, sorry\"\nb@y.example\n";
        let entries = import(input.as_bytes(), now).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].address, "a@x.example");
        assert_eq!(entries[0].text, "user unknown, sorry");
        assert_eq!(entries[1].code, 550);
        let mut out = Vec::new();
        export(&entries, &mut out).unwrap();
        let again = import(out.as_slice(), now).unwrap();
        assert_eq!(again, entries);
    }

    /// Found by fuzzing (fuzz/ target `record`): an entry stored with a time past the
    /// year 9999 made `suppress export` panic.
    #[test]
    fn export_of_a_time_past_9999_does_not_panic() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut e = import("a@x.example\n".as_bytes(), now).unwrap().remove(0);
        e.last_seen = 99_999_999_910_000_050;
        e.first_seen = u64::MAX;
        let mut out = Vec::new();
        export(&[e], &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("9999-12-31T23:59:59Z"), "{text}");
        let back = import(text.as_bytes(), now).unwrap();
        assert_eq!(back[0].last_seen, MAX_TIME);
    }

    #[test]
    fn malformed_lines_are_all_reported() {
        let input = "address,code\ngood@x.example,550\nnot-an-address,550\nok@x.example,abc\n\nlast@x.example,550,extra\n";
        let errs = import(input.as_bytes(), SystemTime::now()).unwrap_err();
        let lines: Vec<u64> = errs.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![3, 4, 6], "{errs:?}");
    }
}
