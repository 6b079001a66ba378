//! The one protocol guard of the client: which positive replies the protocol allows at
//! each point of the conversation. A positive reply it does not allow (a `250` to DATA,
//! to STARTTLS, a `334` at the end of AUTH) is an error, never a reply, so nothing above
//! the client can take it for acceptance.
//!
//! It must never allow a positive reply the protocol does not; negative replies are
//! always allowed (they are the provider's to give).

use crate::smtp::Reply;

/// The positive replies the protocol allows at one point of the conversation. Negative
/// replies (4xx, 5xx) are always possible and are not listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expect {
    /// One of these codes.
    Codes(&'static [u16]),
    /// Any 2xx (the end of DATA: RFC 5321 says 250, providers send others).
    Any2xx,
    /// Anything (QUIT: the connection is being closed, the reply does not matter).
    Anything,
}

impl Expect {
    pub(crate) const GREETING: Expect = Expect::Codes(&[220]);
    pub(crate) const EHLO: Expect = Expect::Codes(&[250]);
    pub(crate) const STARTTLS: Expect = Expect::Codes(&[220]);
    /// An AUTH step that asks for the next credential.
    pub(crate) const AUTH_CONTINUE: Expect = Expect::Codes(&[334]);
    /// The last AUTH step: authenticated.
    pub(crate) const AUTH_DONE: Expect = Expect::Codes(&[235]);
    /// XOAUTH2 / OAUTHBEARER with the token sent at once: done, or the provider's error
    /// challenge (a `334` carrying a JSON error) that the client must acknowledge.
    pub(crate) const OAUTH_FIRST: Expect = Expect::Codes(&[235, 334]);
    pub(crate) const MAIL: Expect = Expect::Codes(&[250, 251, 252]);
    pub(crate) const RCPT: Expect = Expect::Codes(&[250, 251, 252]);
    pub(crate) const DATA: Expect = Expect::Codes(&[354]);
    pub(crate) const DATA_END: Expect = Expect::Any2xx;
    pub(crate) const RSET: Expect = Expect::Codes(&[250]);
    pub(crate) const QUIT: Expect = Expect::Anything;

    /// Whether `reply` is a valid answer here: negative, or one of the positive replies
    /// the protocol allows.
    pub(crate) fn allows(self, reply: &Reply) -> bool {
        if !reply.is_positive() {
            return true;
        }
        match self {
            Expect::Codes(codes) => codes.contains(&reply.code),
            Expect::Any2xx => reply.class() == 2,
            Expect::Anything => true,
        }
    }
}
