//! The reply queue: one slot per request (or per batch of requests sent
//! together), in the order the requests came.
//!
//! Invariant: replies leave in request order, always. A slot is written only
//! when it and every slot before it are complete. Frames a dedicated
//! connection sends unasked (pub/sub messages) go in front of the first slot
//! still waiting on that connection, which is exactly where the backend put
//! them in its own stream.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;

use crate::backend::mux::BatchReply;
use crate::backend::BackendError;
use crate::protocol::reply::Value;

/// What happens to a slot's backend replies on their way to the client.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplyPlan {
    /// Written as they came.
    Forward,
    /// INFO: keygate's own section is appended to the text.
    AppendProxyInfo(String),
    /// The backend's reply is replaced by this one (EXEC of a poisoned transaction).
    Replace(Bytes),
}

#[derive(Debug)]
enum SlotState {
    /// Complete and final.
    Ready(Bytes),
    /// Waiting on a multiplexed connection.
    Shared(oneshot::Receiver<BatchReply>),
    /// Waiting on the client's dedicated connection for `remaining` frames.
    Dedicated {
        remaining: u32,
        acc: BytesMut,
        blocking: bool,
    },
    /// The backend answered; the plan is not applied yet.
    Answered(BatchReply),
}

/// One position in the reply order.
#[derive(Debug)]
struct Slot {
    state: SlotState,
    plan: ReplyPlan,
    /// How many replies the client expects from this slot.
    replies: u32,
    /// CLIENT REPLY OFF/SKIP: the reply is dropped.
    suppress: bool,
}

/// Ordered replies of one client.
#[derive(Debug, Default)]
pub struct ReplyQueue {
    slots: VecDeque<Slot>,
}

impl ReplyQueue {
    /// Slots not yet written.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when every reply has been written.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// A reply keygate made itself.
    pub fn push_ready(&mut self, reply: Bytes, suppress: bool) {
        self.slots.push_back(Slot {
            state: SlotState::Ready(reply),
            plan: ReplyPlan::Forward,
            replies: 1,
            suppress,
        });
    }

    /// A batch of `replies` requests sent on a multiplexed connection.
    pub fn push_shared(
        &mut self,
        rx: oneshot::Receiver<BatchReply>,
        replies: u32,
        plan: ReplyPlan,
        suppress: bool,
    ) {
        self.slots.push_back(Slot {
            state: SlotState::Shared(rx),
            plan,
            replies,
            suppress,
        });
    }

    /// A request sent on the dedicated connection, answered by `frames` frames.
    pub fn push_dedicated(&mut self, frames: u32, blocking: bool, plan: ReplyPlan, suppress: bool) {
        self.slots.push_back(Slot {
            state: SlotState::Dedicated {
                remaining: frames,
                acc: BytesMut::new(),
                blocking,
            },
            plan,
            replies: 1,
            suppress,
        });
    }

    fn first_waiting_dedicated(&self) -> Option<usize> {
        self.slots.iter().position(
            |s| matches!(s.state, SlotState::Dedicated { remaining, .. } if remaining > 0),
        )
    }

    /// Whether a dedicated-connection reply is awaited.
    pub fn awaits_dedicated(&self) -> bool {
        self.first_waiting_dedicated().is_some()
    }

    /// Whether the first awaited dedicated reply belongs to a blocking
    /// command (which waits as long as the client asked, with no proxy timer).
    pub fn first_dedicated_is_blocking(&self) -> bool {
        self.first_waiting_dedicated()
            .and_then(|i| self.slots.get(i))
            .is_some_and(|s| matches!(s.state, SlotState::Dedicated { blocking: true, .. }))
    }

    /// A reply frame read from the dedicated connection.
    pub fn dedicated_reply(&mut self, frame: Bytes) {
        match self.first_waiting_dedicated() {
            Some(i) => {
                if let Some(Slot {
                    state: SlotState::Dedicated { remaining, acc, .. },
                    ..
                }) = self.slots.get_mut(i)
                {
                    acc.extend_from_slice(&frame);
                    *remaining -= 1;
                }
            }
            None => self.dedicated_push(frame),
        }
    }

    /// A frame the dedicated connection sent unasked (a pub/sub message).
    pub fn dedicated_push(&mut self, frame: Bytes) {
        let slot = Slot {
            state: SlotState::Ready(frame),
            plan: ReplyPlan::Forward,
            replies: 1,
            suppress: false,
        };
        match self.first_waiting_dedicated() {
            Some(i) => self.slots.insert(i, slot),
            None => self.slots.push_back(slot),
        }
    }

    /// The dedicated connection failed: every reply awaited on it is this error.
    pub fn fail_dedicated(&mut self, err: &BackendError) {
        for slot in self.slots.iter_mut() {
            if matches!(slot.state, SlotState::Dedicated { remaining, .. } if remaining > 0) {
                slot.state = SlotState::Answered(Err(err.clone()));
            }
        }
    }

    /// Whether the front slot waits on a multiplexed connection.
    pub fn front_is_shared(&self) -> bool {
        matches!(
            self.slots.front(),
            Some(Slot {
                state: SlotState::Shared(_),
                ..
            })
        )
    }

    /// Waits until the front slot's shared reply arrives (pending forever if
    /// the front slot is not a shared one; guard with [`Self::front_is_shared`]).
    pub async fn front_answered(&mut self) {
        let Some(slot) = self.slots.front_mut() else {
            return std::future::pending().await;
        };
        if let SlotState::Shared(rx) = &mut slot.state {
            let result = rx.await.unwrap_or_else(|_| {
                Err(BackendError::ConnectionLost {
                    addr: "backend".into(),
                })
            });
            slot.state = SlotState::Answered(result);
        } else {
            std::future::pending::<()>().await
        }
    }

    /// Moves every complete slot at the front to `out`, in order.
    pub fn drain_ready(&mut self, out: &mut BytesMut) {
        while let Some(slot) = self.slots.front_mut() {
            let result = match &mut slot.state {
                SlotState::Ready(b) => Ok(std::mem::take(b)),
                SlotState::Shared(rx) => match rx.try_recv() {
                    Ok(r) => r,
                    Err(oneshot::error::TryRecvError::Empty) => return,
                    Err(oneshot::error::TryRecvError::Closed) => {
                        Err(BackendError::ConnectionLost {
                            addr: "backend".into(),
                        })
                    }
                },
                SlotState::Dedicated { remaining, acc, .. } => {
                    if *remaining > 0 {
                        return;
                    }
                    Ok(std::mem::take(acc).freeze())
                }
                SlotState::Answered(r) => std::mem::replace(r, Ok(Bytes::new())),
            };
            let Some(slot) = self.slots.pop_front() else {
                return;
            };
            if slot.suppress {
                continue;
            }
            match result {
                Ok(bytes) => apply_plan(&slot.plan, bytes, out),
                Err(err) => {
                    let line = err.client_message();
                    for _ in 0..slot.replies {
                        out.extend_from_slice(b"-");
                        out.extend_from_slice(line.as_bytes());
                        out.extend_from_slice(b"\r\n");
                    }
                }
            }
        }
    }
}

/// Applies a reply plan to a complete backend reply.
fn apply_plan(plan: &ReplyPlan, bytes: Bytes, out: &mut BytesMut) {
    match plan {
        ReplyPlan::Forward => out.extend_from_slice(&bytes),
        ReplyPlan::Replace(with) => out.extend_from_slice(with),
        ReplyPlan::AppendProxyInfo(section) => match Value::parse(&bytes) {
            Ok(Value::Bulk(text)) => {
                let mut joined = BytesMut::from(&text[..]);
                joined.extend_from_slice(section.as_bytes());
                Value::Bulk(joined.freeze()).encode(out);
            }
            Ok(Value::Verbatim(format, text)) => {
                let mut joined = BytesMut::from(&text[..]);
                joined.extend_from_slice(section.as_bytes());
                Value::Verbatim(format, joined.freeze()).encode(out);
            }
            _ => out.extend_from_slice(&bytes),
        },
    }
}
