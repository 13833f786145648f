//! The commands Redis runs while a script is busy (ALLOW_BUSY in the
//! command table: SCRIPT KILL, FUNCTION KILL and STATS, SHUTDOWN), sent on
//! a connection of their own ([`crate::backend::urgent`]): on the client's
//! shared connection they would wait behind the very script they are about.
//! A PING that keygate would answer itself goes this way too while the
//! master may be busy with a script, so the client gets Redis's answer.
//!
//! Invariant: the client's earlier commands are answered first, so a KILL
//! pipelined after the client's own EVAL finds it finished, as on Redis
//! (`-NOTBUSY`); only other clients' scripts are killed.

use tokio::sync::oneshot;

use super::queue::CommandReply;
use super::Connection;
use crate::protocol::reply::Replies;
use crate::protocol::request::Request;

/// A command waiting to be sent past a busy script, with its place in
/// the reply order.
pub(super) struct UrgentCall {
    pub(super) request: Request,
    pub(super) reply: CommandReply,
    pub(super) suppress: bool,
}

impl Connection {
    /// Runs the call's command on an urgent connection to the master; its
    /// reply takes the request's place in the reply order.
    pub(super) async fn send_urgent(&mut self, call: UrgentCall) {
        let UrgentCall {
            request: req,
            reply,
            suppress,
        } = call;
        self.flush_batch().await;
        self.await_procedure().await;
        std::future::poll_fn(|cx| self.queue.poll_shared_answered(cx)).await;
        let (tx, rx) = oneshot::channel();
        let protocol = self.session.protocol;
        // topology: a script runs on the master.
        match self.ctx.router.master_for().await {
            Ok(node) => {
                let meter = self.meter.clone();
                tokio::spawn(async move {
                    let answer = node.urgent(&req, protocol).await.map(Replies::from);
                    // Held for the client like any backend reply, and taken
                    // off the meter once written.
                    if let Ok(replies) = &answer {
                        meter.add(replies.bytes.len());
                    }
                    let _ = tx.send(answer);
                });
            }
            Err(e) => {
                let _ = tx.send(Err(e.into()));
            }
        }
        self.queue
            .push_shared(rx, smallvec::smallvec![reply], suppress, self.read_at);
    }
}
