//! What the spool keeps about a message besides its body: the envelope, when it arrived,
//! and one state per recipient. Stored as JSON in redb (new fields must be
//! `#[serde(default)]` so older spools stay readable).
//!
//! A record must never hold the message body (that is a file of its own), and a field
//! must never be removed or renamed without a migration.

use crate::smtp::{Envelope, Reply};
use serde::{Deserialize, Serialize};

use super::QueueId;

/// A provider reply as stored: code, enhanced code and text (the same shape as a
/// suppression entry keeps).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredReply {
    pub code: u16,
    pub enhanced: Option<String>,
    pub text: String,
}

/// One line: `550 5.1.1 text`, control characters (line breaks of a multi-line reply)
/// shown as spaces.
impl std::fmt::Display for StoredReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(e) = &self.enhanced {
            write!(f, " {e}")?;
        }
        f.write_str(" ")?;
        for c in self.text.chars() {
            write!(f, "{}", if c.is_control() { ' ' } else { c })?;
        }
        Ok(())
    }
}

impl From<&Reply> for StoredReply {
    fn from(r: &Reply) -> Self {
        Self {
            code: r.code,
            enhanced: r.enhanced.map(|e| e.to_string()),
            text: r.text(),
        }
    }
}

/// Where one recipient of a message stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum RcptState {
    /// Still to be delivered: not before `next_attempt` (unix ms); `attempts` made so far
    /// (throttles and pauses are not counted); the provider's last reply, if any.
    Pending {
        attempts: u32,
        next_attempt: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_reply: Option<StoredReply>,
    },
    /// The provider accepted it (final).
    Delivered { reply: StoredReply },
    /// Given up: a permanent failure or expired (final).
    Failed { reply: StoredReply },
}

impl RcptState {
    /// A recipient that has not been tried yet and is due at once.
    pub const fn new_pending() -> Self {
        Self::Pending {
            attempts: 0,
            next_attempt: 0,
            last_reply: None,
        }
    }
    pub fn is_final(&self) -> bool {
        !matches!(self, Self::Pending { .. })
    }
}

/// One recipient and its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rcpt {
    pub address: String,
    #[serde(flatten)]
    pub state: RcptState,
}

/// The stored form of a message's envelope and recipient states.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub from: String,
    #[serde(default)]
    pub size: Option<usize>,
    #[serde(default)]
    pub eight_bit: bool,
    #[serde(default)]
    pub smtputf8: bool,
    /// Unix ms when the message was accepted.
    pub received: u64,
    /// The spool's total paused time (ms) when it was accepted (absent in older spools:
    /// 0, which only makes their messages live longer, never shorter).
    #[serde(default)]
    pub paused_at_arrival: u64,
    pub body_len: u64,
    pub rcpts: Vec<Rcpt>,
    /// The message's `Subject` (decoded, one line), read when it was accepted: headers
    /// may be shown by `queue list`, bodies never. Absent in older spools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

impl Record {
    pub(crate) fn new(
        env: &Envelope,
        rcpts: &[String],
        received: u64,
        body_len: u64,
        paused_at_arrival: u64,
    ) -> Self {
        Self {
            from: env.from.clone(),
            size: env.size,
            eight_bit: env.eight_bit,
            smtputf8: env.smtputf8,
            received,
            paused_at_arrival,
            body_len,
            rcpts: rcpts
                .iter()
                .map(|a| Rcpt {
                    address: a.clone(),
                    state: RcptState::new_pending(),
                })
                .collect(),
            subject: None,
        }
    }

    pub(crate) fn into_message(self, id: QueueId) -> Message {
        Message {
            id,
            envelope: Envelope {
                from: self.from,
                size: self.size,
                eight_bit: self.eight_bit,
                smtputf8: self.smtputf8,
            },
            received: self.received,
            paused_at_arrival: self.paused_at_arrival,
            body_len: self.body_len,
            rcpts: self.rcpts,
            subject: self.subject,
        }
    }
}

/// A spooled message without its body (read the body with `Spool::read_body`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: QueueId,
    pub envelope: Envelope,
    /// Unix ms when the message was accepted.
    pub received: u64,
    /// The spool's total paused time (ms) when it was accepted.
    pub paused_at_arrival: u64,
    pub body_len: u64,
    pub rcpts: Vec<Rcpt>,
    /// The `Subject` header, when it had one (see `Record::subject`).
    pub subject: Option<String>,
}

impl Message {
    /// Its age at `now` (unix ms) towards `max_age`: the time since it arrived, less the
    /// time delivery was paused since then (`paused_now`: the spool's total now).
    pub fn age_ms(&self, now: u64, paused_now: u64) -> u64 {
        let paused = paused_now.saturating_sub(self.paused_at_arrival);
        now.saturating_sub(self.received).saturating_sub(paused)
    }

    /// True when no recipient is pending any more.
    pub fn is_complete(&self) -> bool {
        self.rcpts.iter().all(|r| r.state.is_final())
    }
}

/// Decodes the bytes the spool stores for message `id` (what recovery, `get` and `list`
/// read back from the database). An error is a record that cannot be read; it never
/// panics, whatever the bytes. Public for the fuzz target of spool records (`fuzz/`).
pub fn decode(id: QueueId, bytes: &[u8]) -> Result<Message, serde_json::Error> {
    serde_json::from_slice::<Record>(bytes).map(|r| r.into_message(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::EnhancedCode;

    #[test]
    fn json_shape_is_readable_and_round_trips() {
        let env = Envelope {
            from: "news@example.org".into(),
            size: Some(10),
            eight_bit: true,
            smtputf8: false,
        };
        let mut r = Record::new(
            &env,
            &["a@x.example".into(), "b@y.example".into()],
            7,
            10,
            0,
        );
        r.rcpts[1].state = RcptState::Failed {
            reply: (&Reply::new(550, EnhancedCode::new(5, 1, 1), "no such user")).into(),
        };
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(r#""state":"pending""#), "{json}");
        assert!(json.contains(r#""enhanced":"5.1.1""#), "{json}");
        let back: Record = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        let m = back.into_message(QueueId::from_u64(1));
        assert_eq!(m.envelope, env);
        assert!(!m.is_complete());
    }
}
