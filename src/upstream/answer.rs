//! [`Answer`]: a reply as the client hands it back — the provider's reply with the
//! verdict the observer reached where it arrived, so the verdict travels with the reply
//! and nothing downstream classifies it again (queue mode's decision reads it from here).
//!
//! It must never claim a verdict for a reply that was not classified: `verdict` is
//! `None` when no observer classifies (an admission built without the policy) and for a
//! reply the client made up itself ([`Answer::local`]).

use crate::policy::verdict::Verdict;
use crate::smtp::Reply;
use std::fmt;
use std::ops::Deref;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub reply: Reply,
    /// What the observer made of the reply when it arrived.
    pub verdict: Option<Verdict>,
    /// The client made this reply up (an address the provider cannot take); it never
    /// reached the provider and was not classified.
    pub local: bool,
}

impl Answer {
    /// A reply read from the provider, with the observer's verdict.
    pub fn provider(reply: Reply, verdict: Option<Verdict>) -> Self {
        Self {
            reply,
            verdict,
            local: false,
        }
    }

    /// A reply the client made up itself.
    pub fn local(reply: Reply) -> Self {
        Self {
            reply,
            verdict: None,
            local: true,
        }
    }
}

/// The reply's fields and methods (`code`, `class()`, `text()`) read through.
impl Deref for Answer {
    type Target = Reply;
    fn deref(&self) -> &Reply {
        &self.reply
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.reply.fmt(f)
    }
}

impl From<Answer> for Reply {
    fn from(a: Answer) -> Reply {
        a.reply
    }
}
