//! The client side of TTL governance and value limits: after a request is
//! confined to its namespace, the service's TTL policy may rewrite it (a
//! default TTL added, an over-long TTL clamped) or add follow-ups
//! (`PEXPIRE key ms NX`) that ride right behind it, on the same connection
//! and inside the same transaction, with their replies hidden.
//!
//! Invariant: the client sees exactly one reply per command it sent; the
//! follow-ups are counted in the command's `frames` and dropped on the way
//! back (inside MULTI both their `+QUEUED` and their EXEC elements).

use std::sync::Arc;
use std::time::SystemTime;

use super::Connection;
use crate::command::{CommandSpec, Flags};
use crate::metrics::ErrorKind;
use crate::policy::service::Service;
use crate::protocol::request::Request;

impl Connection {
    /// Applies `max_value_bytes` and the TTL policy: the request to send and
    /// its follow-ups, or `None` when the command was refused here.
    pub(super) async fn govern(
        &mut self,
        service: &Arc<Service>,
        spec: &'static CommandSpec,
        req: Request,
        suppress: bool,
    ) -> Option<(Request, Vec<Request>)> {
        if let Some(limit) = service.max_value_bytes {
            if spec.flags.contains(Flags::WRITE) {
                if let Some(len) = req.args().skip(1).map(<[u8]>::len).find(|&l| l > limit) {
                    let msg = format!(
                        "ERR keygate: value of {len} bytes is over service '{}''s max_value_bytes of {limit}",
                        service.name
                    );
                    self.reject(spec.name, ErrorKind::Policy, &msg, suppress)
                        .await;
                    return None;
                }
            }
        }
        if service.ttl.leaves_alone(spec) {
            return Some((req, Vec::new()));
        }
        match service.ttl.govern(spec, &req, SystemTime::now()) {
            Ok(governed) => {
                if governed.clamped {
                    self.recorder.ttl_clamped(Some(service.index));
                }
                Some((governed.request, governed.follow_ups))
            }
            Err(refusal) => {
                self.recorder.ttl_refused(Some(service.index));
                self.reject(spec.name, ErrorKind::Policy, &refusal.to_string(), suppress)
                    .await;
                None
            }
        }
    }
}
