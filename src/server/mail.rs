//! MAIL FROM and RCPT TO: open the relay transaction and add recipients, using
//! PIPELINING for throughput — the RCPT commands already buffered behind a MAIL go to
//! the relay in the same `begin` call (one upstream round trip), consecutive buffered
//! RCPTs in one `rcpt` call; every command still gets its own reply, in order.
//!
//! Addresses are passed to the relay exactly as the mailer wrote them, or refused (the
//! syntax rules are in `smtp::command`). A non-ASCII address needs SMTPUTF8 on the MAIL
//! of its transaction: without it, MAIL or RCPT gets `553 5.6.7` (RFC 6531 3.7.4.1:
//! "mailbox name not allowed", enhanced code "non-ASCII addresses not permitted").
//!
//! Must never: answer 2xx to MAIL or RCPT unless the relay returned it; forward more
//! recipients than `max_recipients` (the rest get `452 4.5.3` locally); start a
//! transaction before EHLO/HELO, or before AUTH where AUTH is required; forward a
//! non-ASCII address in a transaction without SMTPUTF8.

use super::replies;
use super::session::{Close, Session, Transaction};
use super::{Relay, RelayTransaction};
use crate::smtp::command::{self, Command};
use crate::smtp::line::{find_line, MAX_COMMAND_LINE};
use crate::smtp::{Envelope, Reply};
use bytes::Buf;
use smtp_proto::{MailFrom, RcptTo, MAIL_BODY_7BIT, MAIL_BODY_8BITMIME, MAIL_SMTPUTF8};

/// MAIL parameters we advertise and accept; anything else (DSN, BINARYMIME, ...) is 555.
const MAIL_FLAGS_ALLOWED: u64 = MAIL_BODY_7BIT | MAIL_BODY_8BITMIME | MAIL_SMTPUTF8;

/// One RCPT of a pipelined batch: forwarded to the relay, or answered here.
enum Pending {
    Forward(String),
    Local(Reply),
}

fn forwards(batch: &[Pending]) -> Vec<String> {
    batch
        .iter()
        .filter_map(|p| match p {
            Pending::Forward(a) => Some(a.clone()),
            Pending::Local(_) => None,
        })
        .collect()
}

impl<R: Relay> Session<R> {
    pub(crate) async fn handle_mail(&mut self, from: MailFrom<String>) -> Result<(), Close> {
        if self.helo.is_none() {
            self.reply(replies::need_helo());
            return Ok(());
        }
        if self.tx.is_some() {
            self.reply(replies::nested_mail());
            return Ok(());
        }
        if self.auth_required() && self.user.is_none() {
            self.reply(replies::auth_required());
            return Ok(());
        }
        if from.flags & !MAIL_FLAGS_ALLOWED != 0 {
            self.reply(replies::unsupported_parameter());
            return Ok(());
        }
        if from.size > self.shared.max_message_size() {
            self.reply(replies::message_too_big());
            return Ok(());
        }
        let smtputf8 = from.flags & MAIL_SMTPUTF8 != 0;
        if !smtputf8 && !from.address.is_ascii() {
            self.reply(replies::non_ascii_needs_smtputf8());
            return Ok(());
        }
        self.failed_mail = None;
        self.mail_seen();
        let env = Envelope {
            from: from.address,
            size: (from.size > 0).then_some(from.size),
            eight_bit: from.flags & MAIL_BODY_8BITMIME != 0,
            smtputf8,
        };
        tracing::debug!(from = %env.from, "MAIL");

        let mut batch = Vec::new();
        self.take_pipelined_rcpts(&mut batch, 0, smtputf8);
        let rcpts = forwards(&batch);
        tracing::debug!(pipelined_rcpts = rcpts.len(), "relay begin");
        let relay = std::sync::Arc::clone(&self.shared.relay);
        match self.shared.in_flight(relay.begin(env, rcpts)).await? {
            Ok((tx, mail_reply, rcpt_replies)) if mail_reply.class() == 2 => {
                self.reply(mail_reply);
                let mut t = Transaction {
                    tx,
                    accepted: 0,
                    smtputf8,
                };
                self.answer_batch(&mut t, batch, rcpt_replies);
                self.tx = Some(t);
            }
            Ok((tx, mail_reply, _)) => {
                // An open transaction with a refused MAIL: not usable.
                self.shared.in_flight(tx.end()).await?;
                self.mail_failed(mail_reply, batch);
            }
            Err(reply) => self.mail_failed(reply, batch),
        }
        Ok(())
    }

    pub(crate) async fn handle_rcpt(&mut self, to: RcptTo<String>) -> Result<(), Close> {
        let Some(mut t) = self.tx.take() else {
            let reply = match (&self.failed_mail, &self.helo) {
                (Some(r), _) => r.clone(),
                (None, None) => replies::need_helo(),
                (None, Some(_)) => replies::need_mail(),
            };
            self.reply(reply);
            return Ok(());
        };
        let mut batch = vec![self.classify_rcpt(to, t.accepted, t.smtputf8)];
        self.take_pipelined_rcpts(&mut batch, t.accepted, t.smtputf8);
        let rcpts = forwards(&batch);
        let relay_replies = if rcpts.is_empty() {
            Vec::new()
        } else {
            tracing::debug!(rcpts = rcpts.len(), "relay rcpt");
            match self.shared.in_flight(t.tx.rcpt(rcpts)).await? {
                Ok(r) => r,
                Err(reply) => {
                    // The transaction is dead (upstream connection lost): dropping it
                    // closes what is left; the reply answers each forwarded RCPT.
                    drop(t);
                    let reply = not_positive(reply);
                    for p in batch {
                        match p {
                            Pending::Forward(_) => self.reply(reply.clone()),
                            Pending::Local(r) => self.reply(r),
                        }
                    }
                    self.failed_mail = reply.is_transient().then_some(reply);
                    return Ok(());
                }
            }
        };
        self.answer_batch(&mut t, batch, relay_replies);
        self.tx = Some(t);
        Ok(())
    }

    /// Moves the RCPT commands that directly follow in the buffer into `batch`. Stops at
    /// the first line that is incomplete, badly framed or not a valid RCPT: that line is
    /// left for the command loop, which answers (or refuses) it in order.
    fn take_pipelined_rcpts(&mut self, batch: &mut Vec<Pending>, accepted: usize, smtputf8: bool) {
        while let Ok(Some(n)) = find_line(&self.rbuf, MAX_COMMAND_LINE) {
            let Ok(Command::Rcpt { to }) = command::parse(&self.rbuf[..n]) else {
                break;
            };
            self.rbuf.advance(n);
            let counted = accepted + forwards(batch).len();
            let p = self.classify_rcpt(to, counted, smtputf8);
            batch.push(p);
        }
    }

    /// `counted`: recipients accepted so far plus those in the batch being forwarded;
    /// `smtputf8`: the transaction's MAIL carried SMTPUTF8.
    fn classify_rcpt(&self, to: RcptTo<String>, counted: usize, smtputf8: bool) -> Pending {
        if to.flags != 0 || to.orcpt.is_some() {
            Pending::Local(replies::unsupported_parameter())
        } else if !smtputf8 && !to.address.is_ascii() {
            Pending::Local(replies::non_ascii_needs_smtputf8())
        } else if counted >= self.shared.cfg.max_recipients {
            Pending::Local(replies::too_many_recipients())
        } else {
            tracing::debug!(to = %to.address, "RCPT");
            Pending::Forward(to.address)
        }
    }

    /// One reply per RCPT of the batch, in order: the relay's for the forwarded ones.
    fn answer_batch(
        &mut self,
        t: &mut Transaction<R::Tx>,
        batch: Vec<Pending>,
        relay_replies: Vec<Reply>,
    ) {
        let mut it = relay_replies.into_iter();
        for p in batch {
            match p {
                Pending::Forward(_) => {
                    // A relay that returned too few replies broke its contract: never
                    // invent a 2xx for it.
                    let r = it.next().unwrap_or_else(replies::local_error);
                    if r.class() == 2 {
                        t.accepted += 1;
                    }
                    self.reply(r);
                }
                Pending::Local(r) => self.reply(r),
            }
        }
    }

    /// MAIL was refused: its reply, then one for each pipelined RCPT — the same reply
    /// when it is a 4xx (the mailer should retry them), else `503 5.5.1`.
    fn mail_failed(&mut self, reply: Reply, batch: Vec<Pending>) {
        let reply = not_positive(reply);
        tracing::debug!(code = reply.code, "MAIL refused");
        let follow = reply.is_transient().then(|| reply.clone());
        self.reply(reply);
        for _ in batch {
            self.reply(follow.clone().unwrap_or_else(replies::need_mail));
        }
        self.failed_mail = follow;
    }
}

/// An error path must not carry a 2xx: a relay that returned one as an error broke its
/// contract and the mailer gets a local 4xx instead.
fn not_positive(reply: Reply) -> Reply {
    if reply.is_positive() {
        replies::local_error()
    } else {
        reply
    }
}
