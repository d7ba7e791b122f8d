//! `Herald.Batch`: several per-user calls in one round trip.
//!
//! The client library coalesces calls to the same node that are issued
//! together into one `Batch` (`client/src/batch.rs`); what a batch saves is
//! the per-request HTTP/2 and tonic work (headers, a stream and a task per
//! call), which is most of a node's CPU per write. It changes how calls
//! travel, never what they do: each call is served by the handler of its
//! own unary RPC, concurrently with the others, and answered on its own. A
//! write is still one Raft entry, acknowledged after commit; one call's
//! failure is only its own.
//!
//! One piece of work is shared: the batch's linearizable gets wait for one
//! ReadIndex, taken after the batch arrived and so after each of them was
//! issued, which is all linearizability asks of it.
//!
//! Each call is counted under its own method in `herald_api_requests_total`
//! (the `Batch` envelope is counted too, by the layer), so the dashboards
//! read the same whether or not clients coalesce.
//!
//! Each call is also authorized as its own method would be (the guard let
//! the envelope in for any authenticated caller): a call the caller may not
//! make is answered `PERMISSION_DENIED`, marked not applied, and the others
//! are still served.

use std::time::Instant;

use super::status::refuse;
use ::herald_client::batch_reply;
use ::herald_client::proto::batch_call::Call;
use ::herald_client::proto::batch_reply::Reply;
use ::herald_client::proto::herald_server::Herald as HeraldApi;
use ::herald_client::proto::*;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared, join_all};
use tonic::Code;
use tonic::{Request, Status};

use super::client::HeraldService;
use crate::node::NOT_APPLIED;
use crate::security::{Principal, policy};
use crate::state::MAX_BATCH;

/// The unary method each kind of call stands for (its metrics label).
const LOGIN: &str = "/herald.v1.Herald/Login";
const LOGOUT: &str = "/herald.v1.Herald/Logout";
const CHANGE_PERMISSION: &str = "/herald.v1.Herald/ChangePermission";
const HEARTBEAT: &str = "/herald.v1.Herald/Heartbeat";
const GET_PRESENCE: &str = "/herald.v1.Herald/GetPresence";
const BATCH: &str = "/herald.v1.Herald/Batch";

/// The one ReadIndex a batch's linearizable gets share.
type Barrier<'a> = Shared<BoxFuture<'a, Result<(), Status>>>;

impl HeraldService {
    /// Serves every call of `req`; refuses the whole batch (nothing served)
    /// only when it is empty or too large.
    pub(super) async fn serve_batch(
        &self,
        principal: Principal,
        req: BatchRequest,
    ) -> Result<BatchResponse, Status> {
        let calls = req.calls;
        if calls.is_empty() || calls.len() > MAX_BATCH {
            return Err(refuse(
                Code::InvalidArgument,
                format!("calls: must be 1..={MAX_BATCH} calls, got {}", calls.len()),
            ));
        }
        let linearizable = Consistency::Linearizable as i32;
        let barrier: Option<Barrier<'_>> = calls
            .iter()
            .any(|c| matches!(&c.call, Some(Call::GetPresence(g)) if g.consistency == linearizable))
            .then(|| {
                async { self.node().linearize().await.map_err(Status::from) }
                    .boxed()
                    .shared()
            });
        let replies = join_all(
            calls
                .into_iter()
                .enumerate()
                .map(|(i, c)| self.serve_call(i, c, &principal, barrier.clone())),
        )
        .await;
        Ok(BatchResponse { replies })
    }

    async fn serve_call(
        &self,
        index: usize,
        call: BatchCall,
        principal: &Principal,
        barrier: Option<Barrier<'_>>,
    ) -> BatchReply {
        let started = Instant::now();
        let path = match &call.call {
            Some(Call::Login(_)) => LOGIN,
            Some(Call::Logout(_)) => LOGOUT,
            Some(Call::ChangePermission(_)) => CHANGE_PERMISSION,
            Some(Call::Heartbeat(_)) => HEARTBEAT,
            Some(Call::GetPresence(_)) => GET_PRESENCE,
            None => BATCH,
        };
        if let Some(needs) = policy::permission_of(path).filter(|_| path != BATCH)
            && let Err(refusal) = self.node().guard().authorize(principal, needs, path)
        {
            let mut s = super::status::refusal_status(&refusal);
            s.metadata_mut().insert(
                NOT_APPLIED,
                tonic::metadata::MetadataValue::from_static("1"),
            );
            return self.answer(path, started, Err(s));
        }
        // Each call's request carries the caller, as a unary one would.
        fn request<T>(msg: T, principal: &Principal) -> Request<T> {
            let mut r = Request::new(msg);
            r.extensions_mut().insert(principal.clone());
            r
        }
        let (path, result) = match call.call {
            Some(Call::Login(r)) => (
                LOGIN,
                self.login(request(r, principal))
                    .await
                    .map(|r| batch_reply(r, Reply::PresenceWrite)),
            ),
            Some(Call::Logout(r)) => (
                LOGOUT,
                self.logout(request(r, principal))
                    .await
                    .map(|r| batch_reply(r, Reply::PresenceWrite)),
            ),
            Some(Call::ChangePermission(r)) => (
                CHANGE_PERMISSION,
                self.change_permission(request(r, principal))
                    .await
                    .map(|r| batch_reply(r, Reply::PresenceWrite)),
            ),
            Some(Call::Heartbeat(r)) => (
                HEARTBEAT,
                self.heartbeat(request(r, principal))
                    .await
                    .map(|r| batch_reply(r, Reply::Heartbeat)),
            ),
            Some(Call::GetPresence(mut r)) => (GET_PRESENCE, {
                let shared = match barrier {
                    Some(b) if r.consistency == Consistency::Linearizable as i32 => {
                        // Read locally once the shared ReadIndex is applied.
                        r.consistency = Consistency::Serializable as i32;
                        b.await
                    }
                    _ => Ok(()),
                };
                match shared {
                    Ok(()) => self
                        .get_presence(request(r, principal))
                        .await
                        .map(|r| batch_reply(r, Reply::GetPresence)),
                    Err(s) => Err(s),
                }
            }),
            None => (
                BATCH,
                Err(refuse(
                    Code::InvalidArgument,
                    format!("calls[{index}]: no call given"),
                )),
            ),
        };
        self.answer(path, started, result)
    }

    /// Counts one call under its method and turns its result into a reply.
    fn answer(
        &self,
        path: &str,
        started: Instant,
        result: Result<BatchReply, Status>,
    ) -> BatchReply {
        let code = result.as_ref().err().map(|s| format!("{:?}", s.code()));
        self.accounting()
            .record(path, code.as_deref(), started.elapsed().as_secs_f64());
        result.unwrap_or_else(|s| BatchReply {
            reply: Some(Reply::Error(CallError {
                code: s.code() as i32,
                message: s.message().to_string(),
                not_applied: s.metadata().get(NOT_APPLIED).is_some(),
                reason: ::herald_client::reason_of(&s).unwrap_or_default(),
            })),
            leader_hint: 0,
        })
    }
}
