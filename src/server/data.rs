//! DATA: read the message with [`DataDecoder`] and hand it to the relay.
//!
//! Only CRLF.CRLF ends the message. A bare CR, bare LF or NUL anywhere in it is answered
//! `550 5.5.2` and the session is closed: the message is not relayed and nothing that
//! followed it (a smuggled MAIL/RCPT/DATA) is executed. A line over 1000 octets
//! (`500 5.5.6`) or a message over `max_message_size` (`552 5.3.4`) is read to its real
//! end and refused there; the session goes on.
//!
//! Must never: relay a message that was refused here; reply to the end of DATA with
//! anything but the relay's reply or a local error; wait for a block of the body longer
//! than the idle timeout.

use super::replies;
use super::session::{Close, Session};
use super::{Relay, RelayTransaction};
use crate::smtp::data::{DataDecoder, DataProblem};
use bytes::Buf;

impl<R: Relay> Session<R> {
    pub(crate) async fn handle_data(&mut self) -> Result<(), Close> {
        let Some(t) = self.tx.as_ref() else {
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
        self.reply(replies::start_data());

        let mut decoder = DataDecoder::new(self.shared.cfg.max_message_size);
        let mut message = Vec::new();
        loop {
            match decoder.feed(&self.rbuf, &mut message) {
                Ok((n, done)) => {
                    self.rbuf.advance(n);
                    if done {
                        break;
                    }
                }
                Err(e) => {
                    // Framing is lost: refuse, close, relay nothing. The transaction is
                    // ended by the session's cleanup.
                    tracing::info!(error = %e, "DATA framing error, closing");
                    self.rbuf.clear();
                    self.reply(replies::bare_line_ending());
                    return Err(Close::Done);
                }
            }
            // Each block of the body within the idle timeout (RFC 5321 4.5.3.2.5).
            self.read_more().await?;
        }

        let reply = match decoder.problem() {
            Some(DataProblem::LineTooLong) => Some(replies::data_line_too_long()),
            Some(DataProblem::TooBig) => Some(replies::message_too_big()),
            None => None,
        };
        let Some(mut t) = self.tx.take() else {
            return Err(Close::Io);
        };
        let reply = match reply {
            Some(local) => {
                tracing::debug!(code = local.code, size = decoder.size(), "message refused");
                local
            }
            None => {
                tracing::debug!(size = message.len(), "relay data");
                self.shared.in_flight(t.tx.data(message)).await?
            }
        };
        self.reply(reply);
        self.shared.in_flight(t.tx.end()).await?;
        Ok(())
    }
}
