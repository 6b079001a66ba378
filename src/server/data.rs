//! DATA: decode the message with [`DataDecoder`] and hand it to the relay chunk by
//! chunk, as it arrives ([`RelayTransaction::body`], [`BodySink::write`]): the session
//! never holds a whole message.
//!
//! Only CRLF.CRLF ends the message. A bare CR, bare LF or NUL anywhere in it is answered
//! `550 5.5.2` and the session is closed: the message is not relayed and nothing that
//! followed it (a smuggled MAIL/RCPT/DATA) is executed. A line over 1000 octets
//! (`500 5.5.6`) or a message over `max_message_size` (`552 5.3.4`) is read to its real
//! end and refused there; the session goes on. A body the relay could not take (disk
//! full, no memory budget left) is read to its end too and answered with the relay's
//! 4xx. In every refused case the body sink is dropped, which discards what it held.
//!
//! Must never: relay a message that was refused here; reply to the end of DATA with
//! anything but the relay's reply or a local error; wait for a block of the body longer
//! than the idle timeout.

use super::relay::BodySink;
use super::replies;
use super::session::{Close, Session};
use super::{Relay, RelayTransaction};
use crate::smtp::data::{DataDecoder, DataProblem};
use bytes::Buf;

impl<R: Relay> Session<R> {
    pub(crate) async fn handle_data(&mut self) -> Result<(), Close> {
        let Some(t) = self.tx.as_mut() else {
            let reply = match (self.failed_mail.take(), &self.helo) {
                (Some(r), _) => r,
                (None, None) => replies::need_helo(),
                (None, Some(_)) => replies::need_mail(),
            };
            self.reply(reply);
            return Ok(());
        };
        if t.accepted == 0 {
            self.reply(replies::no_valid_recipients());
            return Ok(());
        }
        let mut sink = match self.shared.in_flight(t.tx.body()).await? {
            Ok(sink) => Some(sink),
            Err(reply) => {
                // Nothing can be taken now: DATA is refused, the transaction stays.
                self.reply(reply);
                return Ok(());
            }
        };
        self.reply(replies::start_data());

        let mut decoder = DataDecoder::new(self.shared.max_message_size());
        // One decoded block at a time; it goes to the sink before the next is read.
        let mut chunk = Vec::new();
        let mut refused: Option<crate::smtp::Reply> = None;
        loop {
            let done = match decoder.feed(&self.rbuf, &mut chunk) {
                Ok((n, done)) => {
                    self.rbuf.advance(n);
                    done
                }
                Err(e) => {
                    // Framing is lost: refuse, close, relay nothing. The sink is dropped
                    // (its content discarded); the transaction is ended by the
                    // session's cleanup.
                    tracing::info!(error = %e, "DATA framing error, closing");
                    self.rbuf.clear();
                    self.reply(replies::bare_line_ending());
                    return Err(Close::Done);
                }
            };
            if !chunk.is_empty() {
                if let Some(s) = sink.as_mut() {
                    if let Err(reply) = self.shared.in_flight(s.write(&chunk)).await? {
                        // Not taken (disk full, no room in memory): read on to the end
                        // of DATA without keeping anything, then say so.
                        tracing::info!(code = reply.code, "message body not taken");
                        sink = None;
                        refused = Some(reply);
                    }
                }
                chunk.clear();
            }
            if done {
                break;
            }
            // Each block of the body within the idle timeout (RFC 5321 4.5.3.2.5).
            self.read_more().await?;
        }

        let local = match decoder.problem() {
            Some(DataProblem::LineTooLong) => Some(replies::data_line_too_long()),
            Some(DataProblem::TooBig) => Some(replies::message_too_big()),
            None => refused,
        };
        let Some(mut t) = self.tx.take() else {
            return Err(Close::Io);
        };
        let reply = match (local, sink) {
            (None, Some(sink)) => {
                tracing::debug!(size = decoder.size(), "relay data");
                self.shared.in_flight(t.tx.data(sink)).await?
            }
            // No sink means its write was refused, and `refused` says why.
            (local, _) => {
                let local = local.unwrap_or_else(crate::server::relay::no_buffer_room);
                tracing::debug!(code = local.code, size = decoder.size(), "message refused");
                local
            }
        };
        self.reply(reply);
        self.shared.in_flight(t.tx.end()).await?;
        Ok(())
    }
}
