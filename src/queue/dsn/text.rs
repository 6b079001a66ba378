//! Writing text into a bounce report: provider and mailer text made safe for one line,
//! delivery-status fields folded, the notification wrapped, ages in words. Pure; every
//! line it writes ends in CRLF and is at most [`MAX_LINE`] octets.

use super::{FOLD_AT, MAX_LINE};

/// One line of text from outside: CR, LF, TAB and other control characters become spaces,
/// non-ASCII becomes `?`.
pub(super) fn sanitize_line(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            ' '..='~' => c,
            c if c.is_control() => ' ',
            _ => '?',
        })
        .collect()
}

/// A host name for `Reporting-MTA` and the From address: printable ASCII without spaces.
pub(super) fn sanitize_host(s: &str) -> String {
    let h: String = s
        .trim()
        .chars()
        .map(|c| match c {
            '!'..='~' if !matches!(c, '<' | '>' | '@' | '"' | '(' | ')' | ',' | ';') => c,
            _ => '-',
        })
        .collect();
    if h.is_empty() {
        "localhost".into()
    } else {
        h
    }
}

/// Writes `Name: value` (a field of the `message/delivery-status` part) folded at
/// whitespace near 78 columns. A word longer than that stands on a line of its own; one
/// that would pass [`MAX_LINE`] is cut (with a folding space), which only happens to
/// provider text.
pub(super) fn header(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.push(b':');
    let mut col = name.len() + 1;
    let mut first = true;
    for word in value.split([' ', '\t']).filter(|w| !w.is_empty()) {
        let mut word = word.as_bytes();
        if !first && col + 1 + word.len() > FOLD_AT {
            out.extend_from_slice(b"\r\n");
            col = 0;
        }
        while col + 1 + word.len() > MAX_LINE {
            let n = MAX_LINE - col - 1;
            out.push(b' ');
            out.extend_from_slice(&word[..n]);
            out.extend_from_slice(b"\r\n");
            word = &word[n..];
            col = 0;
        }
        out.push(b' ');
        out.extend_from_slice(word);
        col += 1 + word.len();
        first = false;
    }
    out.extend_from_slice(b"\r\n");
}

/// Plain text wrapped at 76 columns, CRLF line ends.
#[derive(Default)]
pub(super) struct Text(pub(super) Vec<u8>);

impl Text {
    fn wrap(&mut self, s: &str, indent: &str) {
        let width = 76usize;
        let mut line = String::from(indent);
        for word in s.split_whitespace() {
            let mut word = word;
            if line.len() > indent.len() && line.len() + 1 + word.len() > width {
                self.push(&line);
                line = String::from(indent);
            }
            while indent.len() + word.len() > width {
                // A word longer than a line (a URL): cut it. Safe: sanitized text is ASCII.
                let n = width - indent.len();
                if line.len() > indent.len() {
                    self.push(&line);
                    line = String::from(indent);
                }
                let (head, tail) = word.split_at(n.min(word.len()));
                line.push_str(head);
                self.push(&line);
                line = String::from(indent);
                word = tail;
            }
            if word.is_empty() {
                continue;
            }
            if line.len() > indent.len() {
                line.push(' ');
            }
            line.push_str(word);
        }
        if line.len() > indent.len() {
            self.push(&line);
        }
    }
    fn push(&mut self, line: &str) {
        self.0.extend_from_slice(line.as_bytes());
        self.0.extend_from_slice(b"\r\n");
    }
    pub(super) fn para(&mut self, s: &str) {
        self.wrap(&sanitize_line(s), "");
        self.blank();
    }
    pub(super) fn line(&mut self, s: &str) {
        self.wrap(&sanitize_line(s), "");
    }
    pub(super) fn indented(&mut self, s: &str) {
        self.wrap(&sanitize_line(s), "    ");
    }
    pub(super) fn blank(&mut self) {
        self.0.extend_from_slice(b"\r\n");
    }
}

/// `3 days 4 hours`, `25 minutes`: the two largest units.
pub(super) fn age(ms: u64) -> String {
    let s = ms / 1000;
    let units = [
        (86_400, "day"),
        (3600, "hour"),
        (60, "minute"),
        (1, "second"),
    ];
    let mut parts = Vec::new();
    let mut rest = s;
    for (len, name) in units {
        let n = rest / len;
        if n > 0 && parts.len() < 2 {
            parts.push(format!("{n} {name}{}", if n == 1 { "" } else { "s" }));
            rest %= len;
        } else if !parts.is_empty() {
            break;
        }
    }
    if parts.is_empty() {
        "less than a second".into()
    } else {
        parts.join(" ")
    }
}
