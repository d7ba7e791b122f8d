//! Coalescing: per-user calls to the same node that are issued together
//! travel in one `Herald.Batch` round trip.
//!
//! Why: most of what a node spends on a small write is per request, not per
//! byte: an HTTP/2 stream, headers and trailers both ways, a task and
//! tonic's service stack. Calls that would each pay that can share one
//! request instead (TiKV's clients batch commands for the same reason).
//! The node serves every call of a batch with the handler of its unary RPC
//! and answers each on its own (`node/src/api/batch.rs`).
//!
//! How: each connection has one [`Coalescer`]. A call that finds no batch
//! forming opens one and yields to the runtime once, so that calls issued in
//! the same turn (typically the other callers woken by the replies that just
//! came in) join it; then it sends what joined:
//! - one call alone goes as its own unary RPC, exactly as without
//!   coalescing, so a lone caller pays nothing;
//! - two or more go as one `Batch`, sent from a task of its own, so that a
//!   caller giving up (its timeout, a dropped future) does not take the
//!   others' calls with it.
//!
//! Each caller gets what its unary RPC would have given it: the same
//! response, the leader hint as [`LEADER_HINT`] metadata, a failed call's
//! status rebuilt (code, message, reason, the [`NOT_APPLIED`] mark), and a failure of
//! the whole batch (dial, reset, timeout) as that very status. So the retry
//! rules of `retry.rs` decide exactly as they do for unary calls.

use std::sync::{Mutex, PoisonError};

use crate::endpoint::Transport;
use tokio::sync::oneshot;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use crate::proto::batch_call::Call;
use crate::proto::batch_reply::Reply;
use crate::proto::{self, BatchCall, BatchReply, BatchRequest};
use crate::{LEADER_HINT, NOT_APPLIED};

/// The most calls one batch carries; the node takes up to 1000.
pub(crate) const MAX_CALLS: usize = 256;

/// The metadata key tonic's `Request::set_timeout` writes.
const GRPC_TIMEOUT: &str = "grpc-timeout";

/// A caller's end of a forming batch.
type Waiter = oneshot::Sender<Result<BatchReply, Status>>;

/// One connection's coalescer. Cheap to share (behind an `Arc` in the
/// client's connection); a std mutex, never held across an await.
pub(crate) struct Coalescer {
    channel: Transport,
    /// Off: every call goes as its own unary RPC.
    enabled: bool,
    slot: Mutex<Slot>,
}

/// What the coalescer's mutex guards.
#[derive(Default)]
struct Slot {
    forming: Option<Forming>,
    /// Numbers batches, so a caller knows whether the batch it opened is
    /// still the one forming.
    last_id: u64,
}

/// The batch that calls are joining.
struct Forming {
    id: u64,
    calls: Vec<BatchCall>,
    waiters: Vec<Waiter>,
    /// The first call's `grpc-timeout`, sent with the batch.
    timeout: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl Coalescer {
    /// A coalescer over `channel`; with `enabled` false it only passes
    /// calls on as unary RPCs.
    pub(crate) fn new(channel: Transport, enabled: bool) -> Self {
        Coalescer {
            channel,
            enabled,
            slot: Mutex::default(),
        }
    }

    /// `Herald.Login`, coalesced.
    pub(crate) async fn login(
        &self,
        r: Request<proto::LoginRequest>,
    ) -> Result<Response<proto::PresenceWriteResponse>, Status> {
        self.typed(r, Call::Login, "Login", presence_write).await
    }

    /// `Herald.Logout`, coalesced.
    pub(crate) async fn logout(
        &self,
        r: Request<proto::LogoutRequest>,
    ) -> Result<Response<proto::PresenceWriteResponse>, Status> {
        self.typed(r, Call::Logout, "Logout", presence_write).await
    }

    /// `Herald.ChangePermission`, coalesced.
    pub(crate) async fn change_permission(
        &self,
        r: Request<proto::PermissionRequest>,
    ) -> Result<Response<proto::PresenceWriteResponse>, Status> {
        self.typed(
            r,
            Call::ChangePermission,
            "ChangePermission",
            presence_write,
        )
        .await
    }

    /// `Herald.Heartbeat`, coalesced.
    pub(crate) async fn heartbeat(
        &self,
        r: Request<proto::HeartbeatRequest>,
    ) -> Result<Response<proto::HeartbeatResponse>, Status> {
        self.typed(r, Call::Heartbeat, "Heartbeat", |r| match r {
            Reply::Heartbeat(h) => Some(h),
            _ => None,
        })
        .await
    }

    /// `Herald.GetPresence`, coalesced.
    pub(crate) async fn get_presence(
        &self,
        r: Request<proto::GetPresenceRequest>,
    ) -> Result<Response<proto::GetPresenceResponse>, Status> {
        self.typed(r, Call::GetPresence, "GetPresence", |r| match r {
            Reply::GetPresence(g) => Some(g),
            _ => None,
        })
        .await
    }

    /// One call of kind `kind`, answered as its unary RPC `method` would.
    async fn typed<T, R>(
        &self,
        r: Request<T>,
        kind: fn(T) -> Call,
        method: &str,
        pick: fn(Reply) -> Option<R>,
    ) -> Result<Response<R>, Status> {
        let reply = self.call(r, kind).await?;
        answer(reply, method, pick)
    }

    /// Joins (or opens) the forming batch with one call and waits for its
    /// reply.
    async fn call<T>(&self, r: Request<T>, kind: fn(T) -> Call) -> Result<BatchReply, Status> {
        let timeout = r.metadata().get(GRPC_TIMEOUT).cloned();
        let call = BatchCall {
            call: Some(kind(r.into_inner())),
        };
        if !self.enabled {
            return unary(self.channel.clone(), call, timeout).await;
        }
        let (tx, rx) = oneshot::channel();
        let opened = {
            let mut slot = lock(&self.slot);
            match slot.forming.as_mut() {
                Some(f) if f.calls.len() < MAX_CALLS => {
                    f.calls.push(call);
                    f.waiters.push(tx);
                    None
                }
                _ => {
                    // None forming, or a full one: send that now, open ours.
                    if let Some(full) = slot.forming.take() {
                        self.send(full);
                    }
                    slot.last_id += 1;
                    let id = slot.last_id;
                    slot.forming = Some(Forming {
                        id,
                        calls: vec![call],
                        waiters: vec![tx],
                        timeout,
                    });
                    Some(id)
                }
            }
        };
        if let Some(id) = opened {
            // Let the calls issued in this turn join, then send. If this
            // caller is dropped meanwhile, the guard sends the others.
            let mut guard = Opened {
                owner: self,
                id,
                taken: false,
            };
            tokio::task::yield_now().await;
            let mine = guard.take();
            guard.taken = true;
            if let Some(mut f) = mine {
                if f.calls.len() == 1 {
                    // Alone: the unary RPC, on this task.
                    let call = f.calls.pop().expect("one call");
                    return unary(self.channel.clone(), call, f.timeout).await;
                }
                self.send(f);
            }
        }
        rx.await
            .unwrap_or_else(|_| Err(Status::unknown("the batch carrying this call was lost")))
    }

    /// Sends a batch of two or more calls from a task of its own.
    fn send(&self, f: Forming) {
        tokio::spawn(deliver(self.channel.clone(), f));
    }
}

/// The batch a caller opened, until it takes it to send. Dropped instead
/// (the caller gave up during its yield), it must not strand the calls
/// that joined: it sends them without the opener's own call, which, like
/// a unary call dropped before it left, is never sent.
struct Opened<'a> {
    owner: &'a Coalescer,
    id: u64,
    /// The opener took its batch (or found it sent): nothing left to do.
    taken: bool,
}

impl Opened<'_> {
    /// The batch, if it is still the one forming (a later caller sends a
    /// full one itself).
    fn take(&self) -> Option<Forming> {
        let mut slot = lock(&self.owner.slot);
        match slot.forming.as_ref() {
            Some(f) if f.id == self.id => slot.forming.take(),
            _ => None,
        }
    }
}

impl Drop for Opened<'_> {
    fn drop(&mut self) {
        if self.taken {
            return;
        }
        let Some(mut f) = self.take() else { return };
        // The opener's call is the first.
        f.calls.remove(0);
        f.waiters.remove(0);
        if !f.calls.is_empty() && tokio::runtime::Handle::try_current().is_ok() {
            self.owner.send(f);
        }
    }
}

/// Sends one batch and hands each reply (or the batch's failure) to its
/// caller.
async fn deliver(channel: Transport, f: Forming) {
    let Forming {
        calls,
        waiters,
        timeout,
        ..
    } = f;
    let count = calls.len();
    let mut req = Request::new(BatchRequest { calls });
    if let Some(t) = timeout {
        req.metadata_mut().insert(GRPC_TIMEOUT, t);
    }
    let replies = match crate::endpoint::herald(channel).batch(req).await {
        Ok(resp) => resp.into_inner().replies,
        Err(status) => {
            for w in waiters {
                let _ = w.send(Err(status.clone()));
            }
            return;
        }
    };
    if replies.len() != count {
        let s = Status::unknown(format!(
            "Batch: {} replies for {count} calls",
            replies.len()
        ));
        for w in waiters {
            let _ = w.send(Err(s.clone()));
        }
        return;
    }
    for (w, reply) in waiters.into_iter().zip(replies) {
        let _ = w.send(Ok(reply));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One call as its own unary RPC, its answer in a batch reply's shape.
async fn unary(
    channel: Transport,
    call: BatchCall,
    timeout: Option<MetadataValue<tonic::metadata::Ascii>>,
) -> Result<BatchReply, Status> {
    fn request<T>(msg: T, timeout: Option<MetadataValue<tonic::metadata::Ascii>>) -> Request<T> {
        let mut r = Request::new(msg);
        if let Some(t) = timeout {
            r.metadata_mut().insert(GRPC_TIMEOUT, t);
        }
        r
    }
    let mut c = crate::endpoint::herald(channel);
    match call.call {
        Some(Call::Login(m)) => c
            .login(request(m, timeout))
            .await
            .map(|r| batch_reply(r, Reply::PresenceWrite)),
        Some(Call::Logout(m)) => c
            .logout(request(m, timeout))
            .await
            .map(|r| batch_reply(r, Reply::PresenceWrite)),
        Some(Call::ChangePermission(m)) => c
            .change_permission(request(m, timeout))
            .await
            .map(|r| batch_reply(r, Reply::PresenceWrite)),
        Some(Call::Heartbeat(m)) => c
            .heartbeat(request(m, timeout))
            .await
            .map(|r| batch_reply(r, Reply::Heartbeat)),
        Some(Call::GetPresence(m)) => c
            .get_presence(request(m, timeout))
            .await
            .map(|r| batch_reply(r, Reply::GetPresence)),
        None => Err(Status::invalid_argument("no call given")),
    }
}

/// A unary response in a batch reply's shape, its leader hint kept: what a
/// node answers for one call of a `Batch`, and what a lone call's unary
/// answer becomes here.
pub fn batch_reply<T>(resp: Response<T>, kind: fn(T) -> Reply) -> BatchReply {
    let leader_hint = resp
        .metadata()
        .get(LEADER_HINT)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    BatchReply {
        reply: Some(kind(resp.into_inner())),
        leader_hint,
    }
}

/// The answer of a login, logout or permission change.
fn presence_write(r: Reply) -> Option<proto::PresenceWriteResponse> {
    match r {
        Reply::PresenceWrite(w) => Some(w),
        _ => None,
    }
}

/// A batch reply as the unary response (or status) it stands for.
fn answer<T>(
    reply: BatchReply,
    method: &str,
    pick: fn(Reply) -> Option<T>,
) -> Result<Response<T>, Status> {
    let hint = reply.leader_hint;
    let msg = match reply.reply {
        Some(Reply::Error(e)) => {
            let code = tonic::Code::from_i32(e.code);
            let mut s = if e.reason.is_empty() {
                Status::new(code, e.message)
            } else {
                crate::error::refusal_named(code, e.message, &e.reason)
            };
            if e.not_applied {
                s.metadata_mut()
                    .insert(NOT_APPLIED, MetadataValue::from_static("1"));
            }
            return Err(s);
        }
        Some(r) => pick(r),
        None => None,
    };
    let Some(msg) = msg else {
        // The node answered something else than this call asked: a bug,
        // and the call may have been applied.
        return Err(Status::unknown(format!(
            "Batch: the reply to a {method} call is of another kind"
        )));
    };
    let mut resp = Response::new(msg);
    if hint != 0 {
        resp.metadata_mut().insert(LEADER_HINT, hint.into());
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::{Outcome, classify};

    fn write_reply(leader_hint: u64) -> BatchReply {
        BatchReply {
            reply: Some(Reply::PresenceWrite(proto::PresenceWriteResponse {
                record: Some(proto::PresenceRecord {
                    uid: "alice".into(),
                    ..Default::default()
                }),
            })),
            leader_hint,
        }
    }

    #[test]
    fn a_reply_becomes_the_unary_response_with_its_leader_hint() {
        let resp = answer(write_reply(3), "Login", presence_write).expect("ok");
        assert_eq!(
            resp.metadata().get(LEADER_HINT).map(|v| v.to_str().ok()),
            Some(Some("3"))
        );
        assert_eq!(
            resp.into_inner().record.map(|r| r.uid).as_deref(),
            Some("alice")
        );
        let resp = answer(write_reply(0), "Login", presence_write).expect("ok");
        assert!(resp.metadata().get(LEADER_HINT).is_none());
    }

    #[test]
    fn a_failed_call_keeps_its_code_message_and_retry_verdict() {
        let failed = |code: tonic::Code, not_applied| BatchReply {
            reply: Some(Reply::Error(proto::CallError {
                code: code as i32,
                message: "no leader yet".into(),
                not_applied,
                reason: "NO_LEADER".into(),
            })),
            leader_hint: 0,
        };
        let s = answer(
            failed(tonic::Code::Unavailable, true),
            "Login",
            presence_write,
        )
        .expect_err("failed");
        assert_eq!(
            (s.code(), s.message()),
            (tonic::Code::Unavailable, "no leader yet")
        );
        assert!(s.metadata().get(NOT_APPLIED).is_some());
        assert_eq!(crate::reason_of(&s).as_deref(), Some("NO_LEADER"));
        assert_eq!(classify(&s), Outcome::NotExecuted);
        let s = answer(failed(tonic::Code::Unknown, false), "Login", presence_write)
            .expect_err("failed");
        assert!(s.metadata().get(NOT_APPLIED).is_none());
        assert_eq!(classify(&s), Outcome::Indeterminate);
        let s = answer(
            failed(tonic::Code::InvalidArgument, false),
            "Login",
            presence_write,
        )
        .expect_err("failed");
        assert_eq!(classify(&s), Outcome::Definite);
    }

    #[test]
    fn a_reply_of_another_kind_is_indeterminate() {
        let wrong = BatchReply {
            reply: Some(Reply::Heartbeat(proto::HeartbeatResponse { known: true })),
            leader_hint: 0,
        };
        let s = answer(wrong, "Login", presence_write).expect_err("wrong kind");
        assert_eq!(classify(&s), Outcome::Indeterminate);
        let empty = BatchReply::default();
        assert_eq!(
            classify(&answer(empty, "Login", presence_write).expect_err("empty")),
            Outcome::Indeterminate
        );
    }
}
