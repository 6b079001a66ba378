//! A [`Relay`] wrapper that answers RCPT TO a suppressed address locally with
//! `550 5.1.1` and the original reason, without contacting the provider, and passes
//! every other recipient on. Replies keep the mailer's order.
//!
//! It only reads the suppression list; adding to it is the job of whoever sees the
//! provider's reply (the policy feedback path). It must never drop a recipient silently.

use super::relay::{Relay, RelayTransaction};
use crate::policy::suppression::{Entry, SuppressionStore, Suppressions};
use crate::smtp::{Envelope, Reply};
use std::sync::Arc;

pub struct SuppressingRelay<R, S: SuppressionStore> {
    inner: R,
    list: Arc<Suppressions<S>>,
}

impl<R, S: SuppressionStore> SuppressingRelay<R, S> {
    pub fn new(inner: R, list: Arc<Suppressions<S>>) -> Self {
        Self { inner, list }
    }
}

/// Splits recipients into (index, local reply) for suppressed ones and the rest.
fn split<S: SuppressionStore>(
    list: &Suppressions<S>,
    rcpts: Vec<String>,
) -> (Vec<Option<Entry>>, Vec<String>) {
    let mut marks = Vec::with_capacity(rcpts.len());
    let mut pass = Vec::with_capacity(rcpts.len());
    for r in rcpts {
        match list.lookup(&r) {
            Some(e) => marks.push(Some(e)),
            None => {
                marks.push(None);
                pass.push(r);
            }
        }
    }
    (marks, pass)
}

/// Puts the local replies back between the provider's, in the mailer's order.
fn merge(marks: Vec<Option<Entry>>, upstream: Vec<Reply>) -> Vec<Reply> {
    let mut up = upstream.into_iter();
    marks
        .into_iter()
        .map(|m| match m {
            Some(e) => e.rcpt_reply(),
            // The inner relay returns one reply per recipient; if it returned fewer
            // (a contract breach), say so rather than inventing a 250.
            None => up.next().unwrap_or_else(|| {
                Reply::new(
                    451,
                    crate::smtp::EnhancedCode::new(4, 3, 0),
                    "No reply from provider for this recipient",
                )
            }),
        })
        .collect()
}

fn no_valid_recipients() -> Reply {
    Reply::new(
        554,
        crate::smtp::EnhancedCode::new(5, 5, 1),
        "No valid recipients",
    )
}

impl<R: Relay + Clone, S: SuppressionStore> Relay for SuppressingRelay<R, S> {
    type Tx = SuppressingTx<R, S>;

    async fn begin(
        &self,
        env: Envelope,
        rcpts: Vec<String>,
    ) -> Result<(Self::Tx, Reply, Vec<Reply>), Reply> {
        let (marks, pass) = split(&self.list, rcpts);
        let mut tx = SuppressingTx {
            relay: self.inner.clone(),
            inner: None,
            env,
            list: self.list.clone(),
        };
        if pass.is_empty() && !marks.is_empty() {
            // Every recipient given is suppressed: don't lease a provider connection
            // or spend a MAIL on the provider's rate. The transaction starts upstream at
            // the first deliverable recipient, if one comes.
            let mail = Reply::new(
                250,
                crate::smtp::EnhancedCode::new(2, 1, 0),
                "Sender OK (nothing sent to the provider yet: the recipients so far are suppressed)",
            );
            return Ok((tx, mail, merge(marks, Vec::new())));
        }
        let (inner, mail, replies) = self.inner.begin(tx.env.clone(), pass).await?;
        tx.inner = Some(inner);
        Ok((tx, mail, merge(marks, replies)))
    }
    fn max_message_size(&self) -> Option<usize> {
        self.inner.max_message_size()
    }
}

pub struct SuppressingTx<R: Relay, S: SuppressionStore> {
    relay: R,
    /// The provider's transaction, once one was needed.
    inner: Option<R::Tx>,
    env: Envelope,
    list: Arc<Suppressions<S>>,
}

impl<R: Relay + Clone, S: SuppressionStore> RelayTransaction for SuppressingTx<R, S> {
    type Body = <R::Tx as RelayTransaction>::Body;

    async fn rcpt(&mut self, rcpts: Vec<String>) -> Result<Vec<Reply>, Reply> {
        let (marks, pass) = split(&self.list, rcpts);
        let replies = match (&mut self.inner, pass.is_empty()) {
            (_, true) => Vec::new(),
            (Some(tx), false) => tx.rcpt(pass).await?,
            (None, false) => match self.relay.begin(self.env.clone(), pass.clone()).await {
                Ok((tx, _mail, replies)) => {
                    self.inner = Some(tx);
                    replies
                }
                // The provider refused the (late) MAIL: its reply answers each of them.
                Err(mail) => vec![mail; pass.len()],
            },
        };
        Ok(merge(marks, replies))
    }

    async fn body(&mut self) -> Result<Self::Body, Reply> {
        match &mut self.inner {
            Some(tx) => tx.body().await,
            None => Err(no_valid_recipients()),
        }
    }

    async fn data(&mut self, message: Self::Body) -> Reply {
        match &mut self.inner {
            Some(tx) => tx.data(message).await,
            None => no_valid_recipients(),
        }
    }

    async fn end(self) {
        if let Some(tx) = self.inner {
            tx.end().await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::suppression::{MemoryStore, SoftPolicy};
    use crate::smtp::EnhancedCode;
    use std::sync::Mutex;

    /// Records what reached the "provider" and accepts everything.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<String>>>);
    struct RecTx(Arc<Mutex<Vec<String>>>);

    fn ok() -> Reply {
        Reply::new(250, EnhancedCode::new(2, 1, 5), "ok")
    }

    impl Relay for Recorder {
        type Tx = RecTx;
        async fn begin(
            &self,
            _env: Envelope,
            rcpts: Vec<String>,
        ) -> Result<(RecTx, Reply, Vec<Reply>), Reply> {
            let n = rcpts.len();
            self.0.lock().unwrap().extend(rcpts);
            Ok((RecTx(self.0.clone()), ok(), vec![ok(); n]))
        }
    }
    impl RelayTransaction for RecTx {
        type Body = Vec<u8>;
        async fn body(&mut self) -> Result<Vec<u8>, Reply> {
            Ok(Vec::new())
        }
        async fn rcpt(&mut self, rcpts: Vec<String>) -> Result<Vec<Reply>, Reply> {
            let n = rcpts.len();
            self.0.lock().unwrap().extend(rcpts);
            Ok(vec![ok(); n])
        }
        async fn data(&mut self, _m: Vec<u8>) -> Reply {
            ok()
        }
        async fn end(self) {}
    }

    #[tokio::test]
    async fn suppressed_recipients_never_reach_the_provider() {
        let list =
            Arc::new(Suppressions::open(MemoryStore::default(), SoftPolicy::default()).unwrap());
        let bad = Reply::new(550, EnhancedCode::new(5, 1, 1), "no such user");
        list.record_hard("gone@example.org", &bad, 1).unwrap();
        let rec = Recorder::default();
        let relay = SuppressingRelay::new(rec.clone(), list);
        let env = Envelope::default();
        let (mut tx, mail, replies) = relay
            .begin(
                env,
                vec![
                    "a@example.org".into(),
                    "GONE@example.org".into(),
                    "b@example.org".into(),
                ],
            )
            .await
            .unwrap();
        assert_eq!(mail.code, 250);
        let codes: Vec<u16> = replies.iter().map(|r| r.code).collect();
        assert_eq!(codes, vec![250, 550, 250]);
        assert!(replies[1].text().contains("no such user"));
        assert_eq!(replies[1].enhanced, Some(EnhancedCode::new(5, 1, 1)));
        let later = tx.rcpt(vec!["gone@example.org".into()]).await.unwrap();
        assert_eq!(later[0].code, 550);
        assert_eq!(
            *rec.0.lock().unwrap(),
            vec!["a@example.org", "b@example.org"]
        );
    }
}
