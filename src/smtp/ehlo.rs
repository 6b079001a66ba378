//! EHLO capabilities as a client sees them in the provider's EHLO reply (RFC 5321 4.1.1.1
//! and the extensions we use). Parsed fresh after every EHLO: after STARTTLS the old set
//! must be forgotten (RFC 3207 4.2).
//!
//! It must never keep capabilities across a STARTTLS, and never do I/O.

use super::reply::Reply;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub pipelining: bool,
    pub starttls: bool,
    pub auth_plain: bool,
    pub auth_login: bool,
    /// `AUTH XOAUTH2` (Google, Microsoft): OAuth2 bearer token.
    pub auth_xoauth2: bool,
    /// `AUTH OAUTHBEARER` (RFC 7628).
    pub auth_oauthbearer: bool,
    pub size: Option<usize>,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub enhanced_status_codes: bool,
}

impl Capabilities {
    /// Reads the capability lines of a 250 EHLO reply (the first line is the greeting
    /// name and is skipped). Unknown keywords are ignored.
    pub fn from_ehlo(reply: &Reply) -> Self {
        let mut caps = Self::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(kw) = words.next() else { continue };
            let kw = kw.to_ascii_uppercase();
            match kw.as_str() {
                "PIPELINING" => caps.pipelining = true,
                "STARTTLS" => caps.starttls = true,
                "8BITMIME" => caps.eight_bit_mime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "ENHANCEDSTATUSCODES" => caps.enhanced_status_codes = true,
                "SIZE" => caps.size = words.next().and_then(|n| n.parse().ok()).filter(|&n| n > 0),
                "AUTH" | "AUTH=LOGIN" => {
                    if kw == "AUTH=LOGIN" {
                        caps.auth_login = true;
                    }
                    for m in words {
                        match m.to_ascii_uppercase().as_str() {
                            "PLAIN" => caps.auth_plain = true,
                            "LOGIN" => caps.auth_login = true,
                            "XOAUTH2" => caps.auth_xoauth2 = true,
                            "OAUTHBEARER" => caps.auth_oauthbearer = true,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        caps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_capabilities() {
        let wire = b"250-smtp.example.org Hello\r\n250-PIPELINING\r\n250-SIZE 35882577\r\n250-AUTH LOGIN PLAIN XOAUTH2\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 STARTTLS\r\n";
        let (r, _) = Reply::parse(wire).unwrap().unwrap();
        let c = Capabilities::from_ehlo(&r);
        assert!(c.pipelining && c.starttls && c.auth_plain && c.auth_login);
        assert_eq!(c.size, Some(35882577));
        assert!(!c.smtputf8);
        assert!(c.auth_xoauth2 && !c.auth_oauthbearer);
    }
}
