//! The [`Client`] handle: one lazy channel per endpoint (with a
//! [`Coalescer`] over it, see `batch.rs`), fail-over between them, and the
//! plumbing every call shares (routing, attempts, retries). The calls
//! themselves, one method per RPC, live in a file per domain: `presence`,
//! `sessions`, `pools`, `admin` and `auth`.

use std::collections::HashMap;
use std::error::Error as _;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::batch::Coalescer;
use crate::endpoint::{ChannelSettings, ClientTls, Transport, lazy_channel};
use crate::proto::{self, Consistency};
use crate::retry::{Backoff, Effect, Outcome, classify};
use crate::watch::{self, WatchStream};
use crate::{ClientError, ClusterStatus, MemberStatus};
use tokio::time::Instant;
use tonic::Status;

mod admin;
mod auth;
mod link;
mod pools;
mod presence;
mod sessions;
mod share;

/// Timeouts and retry limits of a [`Client`].
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// How long one attempt may take before its outcome is unknown.
    pub request_timeout: Duration,
    /// How long dialing an endpoint may take; a node that does not accept
    /// within this is skipped.
    pub connect_timeout: Duration,
    /// How long one call may take in all, retries and backoff included.
    pub deadline: Duration,
    /// How many attempts one call may make, over all endpoints.
    pub max_attempts: u32,
    /// The wait between attempts.
    pub backoff: Backoff,
    /// HTTP/2 ping interval; a connection that misses pings for twice this is
    /// dropped, which is what ends a watch on a paused node.
    pub keep_alive_interval: Duration,
    /// Route per-user calls first: heartbeats and gets to the uid's owner on
    /// the consistent-hash ring (it keeps the heartbeats), logins, logouts
    /// and permission changes to the Raft leader (which commits them; via
    /// the owner they would take one more hop). Off = plain fail-over order.
    pub route_by_owner: bool,
    /// Coalesce per-user calls (login, logout, permission change, heartbeat,
    /// get) issued together to the same node into one `Batch` round trip;
    /// each is still served and answered on its own (see `batch.rs`). Off =
    /// one unary RPC per call.
    pub coalesce: bool,
    /// TLS: the cluster's CA, and a client certificate to present. `None`
    /// dials plaintext (a node in insecure mode).
    pub tls: Option<ClientTls>,
    /// A bearer token (`heraldctl token create`) sent with every request,
    /// for callers without a client certificate. Never printed.
    pub token: Option<String>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            deadline: Duration::from_secs(15),
            max_attempts: 10,
            backoff: Backoff::default(),
            keep_alive_interval: Duration::from_secs(2),
            route_by_owner: true,
            coalesce: true,
            tls: None,
            token: None,
        }
    }
}

impl ClientConfig {
    /// The defaults with another per-attempt timeout; the overall deadline
    /// becomes three times it, so a call survives a couple of dead nodes.
    pub fn with_request_timeout(timeout: Duration) -> Self {
        ClientConfig {
            request_timeout: timeout,
            deadline: timeout.saturating_mul(3),
            ..ClientConfig::default()
        }
    }
}

/// A handle to a Herald cluster: cheap to clone, safe to share between tasks.
///
/// Every node answers every call and forwards writes to the Raft leader, so
/// the client does not track leaders: it sends each call to its *preferred*
/// endpoint and moves the preference to the next endpoint when that one
/// fails. A call is retried (bounded attempts, exponential backoff, overall
/// deadline) only when that cannot apply a write twice: after failures that
/// certainly happened before execution, or for reads and idempotent writes.
/// Otherwise the call ends with [`ClientError::Unknown`].
///
/// Must be created inside a tokio runtime (tonic spawns each channel's
/// worker task).
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

struct Shared {
    endpoints: Vec<Target>,
    /// Index into `endpoints` of the one calls go to first. Moved on with a
    /// compare-and-swap, so that many calls failing on the same node move it
    /// once, not once each.
    preferred: AtomicUsize,
    config: ClientConfig,
    settings: ChannelSettings,
    /// Channels to nodes outside `endpoints` (members' client addresses met
    /// in `cluster_status`). A std mutex: it is never held across an await.
    others: Mutex<HashMap<String, Conn>>,
    /// The ownership ring as last fetched, for routing per-user calls.
    routing: Mutex<Routing>,
}

/// The ring over the voters and their client addresses, refreshed every
/// [`ROUTING_TTL`]. Nodes forward what lands elsewhere, so a stale ring only
/// costs a hop.
#[derive(Default)]
struct Routing {
    ring: Option<crate::ring::Ring>,
    addrs: HashMap<u64, String>,
    leader: Option<u64>,
    fetched: Option<Instant>,
}

/// Where a per-user call goes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    /// The uid's owner on the ring.
    Owner,
    /// The Raft leader.
    Leader,
}

/// Response metadata a node adds to a write it forwarded to the Raft
/// leader: the leader's id. The client routes its next writes there.
pub const LEADER_HINT: &str = "herald-leader";

/// Metadata key a node sets on a status when the request was certainly not
/// applied, so a caller may retry it elsewhere.
pub const NOT_APPLIED: &str = "x-herald-not-applied";

/// How long a fetched ring is used before it is fetched again.
const ROUTING_TTL: Duration = Duration::from_secs(10);

struct Target {
    uri: String,
    conn: Conn,
}

/// One node's connection: the tonic channel (lazy, reconnecting) and the
/// coalescer over it. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Conn {
    pub(crate) channel: Transport,
    pub(crate) batch: Arc<Coalescer>,
}

impl Conn {
    fn new(uri: &str, settings: &ChannelSettings, coalesce: bool) -> Result<Conn, ClientError> {
        let channel = lazy_channel(uri, settings)?;
        Ok(Conn {
            batch: Arc::new(Coalescer::new(channel.clone(), coalesce)),
            channel,
        })
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.endpoints())
            .field("config", &self.shared.config)
            .finish()
    }
}

impl Client {
    /// A client for `endpoints` (`host:port` or `http://host:port`) with the
    /// default [`ClientConfig`]. Nothing is dialed yet.
    pub fn new(endpoints: Vec<String>) -> Result<Client, ClientError> {
        Client::with_config(endpoints, ClientConfig::default())
    }

    /// A client for `endpoints` with the given timeouts and retry limits.
    pub fn with_config(
        endpoints: Vec<String>,
        config: ClientConfig,
    ) -> Result<Client, ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::InvalidArgument(
                "endpoints: at least one is required".into(),
            ));
        }
        let authorization = match &config.token {
            Some(token) => {
                let mut v = format!("Bearer {token}")
                    .parse::<tonic::codegen::http::HeaderValue>()
                    .map_err(|_| {
                        ClientError::InvalidArgument(
                            "token: must be printable ASCII (as heraldctl token create prints it)"
                                .into(),
                        )
                    })?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        let settings = ChannelSettings {
            connect_timeout: config.connect_timeout,
            keep_alive_interval: config.keep_alive_interval,
            tls: config.tls.clone(),
            authorization,
        };
        let endpoints = endpoints
            .iter()
            .map(|raw| {
                let uri = settings.parse(raw)?;
                let conn = Conn::new(&uri, &settings, config.coalesce)?;
                Ok(Target { uri, conn })
            })
            .collect::<Result<Vec<_>, ClientError>>()?;
        Ok(Client {
            shared: Arc::new(Shared {
                endpoints,
                preferred: AtomicUsize::new(0),
                config,
                settings,
                others: Mutex::new(HashMap::new()),
                routing: Mutex::new(Routing::default()),
            }),
        })
    }

    /// The endpoints as normalized URIs, in the order given.
    pub fn endpoints(&self) -> Vec<&str> {
        self.shared
            .endpoints
            .iter()
            .map(|t| t.uri.as_str())
            .collect()
    }

    /// The timeouts and retry limits in force.
    pub fn config(&self) -> &ClientConfig {
        &self.shared.config
    }

    /// The client address a per-user call for `uid` should try first, from
    /// the members (ring over the voters, and the leader) fetched at most
    /// every [`ROUTING_TTL`], or again after the leader was found gone.
    async fn route_endpoint(&self, uid: &str, via: Via) -> Option<String> {
        let stale = {
            let mut r = self.routing();
            let stale = r.fetched.is_none_or(|t| t.elapsed() >= ROUTING_TTL);
            if stale {
                // Claimed now, so concurrent calls do not all refetch.
                r.fetched = Some(Instant::now());
            }
            stale
        };
        if stale && let Ok(m) = self.members().await {
            let voters: Vec<u64> = m.members.iter().filter(|m| m.voter).map(|m| m.id).collect();
            let mut r = self.routing();
            r.ring = Some(crate::ring::Ring::new(voters, crate::ring::DEFAULT_VNODES));
            r.leader = (m.leader_id != 0).then_some(m.leader_id);
            r.addrs = m
                .members
                .iter()
                .map(|m| (m.id, m.client_addr.clone()))
                .collect();
        }
        let r = self.routing();
        let node = match via {
            Via::Owner => r.ring.as_ref()?.owner(uid)?,
            Via::Leader => r.leader?,
        };
        r.addrs.get(&node).cloned()
    }

    fn routing(&self) -> std::sync::MutexGuard<'_, Routing> {
        self.shared
            .routing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Routes writes to node `id`, which a node named as the leader. Fetches
    /// the members again when `id` is not among those known.
    fn leader_is(&self, id: u64) {
        let mut r = self.routing();
        if r.leader == Some(id) {
            return;
        }
        if r.addrs.contains_key(&id) {
            r.leader = Some(id);
        } else {
            r.fetched = None;
        }
    }

    /// Forgets the leader after a call to it failed, and has the next routed
    /// call fetch the members again.
    fn leader_gone(&self) {
        let mut r = self.routing();
        r.leader = None;
        r.fetched = None;
    }

    /// A per-user call: first to its node (see [`Via`]), then, if that node cannot
    /// take it (certainly not executed, or a retryable outcome), the usual
    /// fail-over over the endpoints.
    async fn routed<Req, Resp, F, Fut>(
        &self,
        uid: &str,
        method: &'static str,
        effect: Effect,
        req: Req,
        rpc: F,
    ) -> Result<Resp, ClientError>
    where
        Req: Clone,
        F: Fn(Conn, tonic::Request<Req>) -> Fut + Clone,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        // Raft writes to the leader; reads and heartbeats to the owner.
        let via = if effect == Effect::Write {
            Via::Leader
        } else {
            Via::Owner
        };
        // A node that forwarded a write names the leader: route there next.
        let rpc = {
            let me = self;
            move |ch: Conn, r: tonic::Request<Req>| {
                let call = rpc(ch, r);
                async move {
                    let resp = call.await?;
                    if via == Via::Leader
                        && let Some(id) = resp
                            .metadata()
                            .get(LEADER_HINT)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse().ok())
                    {
                        me.leader_is(id);
                    }
                    Ok(resp)
                }
            }
        };
        if self.shared.config.route_by_owner
            && let Some(endpoint) = self.route_endpoint(uid, via).await
        {
            match self
                .call_on(&endpoint, method, effect, req.clone(), rpc.clone())
                .await
            {
                Ok(resp) => return Ok(resp),
                Err(e) => {
                    let lost = matches!(e, ClientError::Unavailable(_)) || e.is_indeterminate();
                    if via == Via::Leader && lost {
                        self.leader_gone();
                    }
                    // Try the others only if it did not run, or may run twice.
                    if !(matches!(e, ClientError::Unavailable(_))
                        || (e.is_indeterminate() && effect != Effect::Write))
                    {
                        return Err(e);
                    }
                }
            }
        }
        self.call(method, effect, req, rpc).await
    }

    pub(crate) async fn call<Req, Resp, F, Fut>(
        &self,
        method: &'static str,
        effect: Effect,
        req: Req,
        rpc: F,
    ) -> Result<Resp, ClientError>
    where
        Req: Clone,
        F: Fn(Conn, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let config = &self.shared.config;
        let started = Instant::now();
        let deadline = started + config.deadline;
        let mut attempts = 0;
        let mut maybe_applied = false;
        let mut last_error = String::from("no attempt was made");
        while attempts < config.max_attempts.max(1) {
            if attempts > 0 {
                let delay = config.backoff.jittered(attempts - 1);
                if Instant::now() + delay >= deadline {
                    break;
                }
                tokio::time::sleep(delay).await;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            attempts += 1;
            let index = self.preferred();
            let target = &self.shared.endpoints[index];
            let (outcome, detail) = match attempt(
                &target.conn,
                config.request_timeout.min(remaining),
                req.clone(),
                &rpc,
            )
            .await
            {
                Ok(resp) => return Ok(resp),
                Err(Failed::Status(status)) => match classify(&status) {
                    // A retry refused while an earlier attempt went
                    // unanswered proves nothing about that attempt: it may
                    // still be in flight (a stalled link, an old leader's
                    // queue) and apply after this refusal, when its request
                    // id finds no lease to replay yet. The chaos soak saw a
                    // lease refused POOL_EXHAUSTED granted 2.5 s later.
                    Outcome::Definite if maybe_applied => {
                        return Err(ClientError::Unknown(
                            format!(
                                "{method}: an earlier attempt went unanswered ({last_error}) and \
                                 may still be applied; this retry was refused: {}",
                                describe(&status)
                            )
                            .into(),
                        ));
                    }
                    Outcome::Definite => return Err(ClientError::from(status)),
                    outcome => (outcome, describe(&status)),
                },
                Err(Failed::TimedOut(after)) => (
                    Outcome::Indeterminate,
                    format!("no answer within {after:?}"),
                ),
            };
            tracing::debug!(method, endpoint = %target.uri, attempts, ?outcome, %detail, "attempt failed");
            last_error = format!("{}: {detail}", target.uri);
            self.move_preference_from(index);
            if outcome == Outcome::Indeterminate {
                match effect {
                    Effect::Write => {
                        return Err(ClientError::Unknown(format!(
                            "{method} via {last_error}; the write may or may not have been applied"
                        ).into()));
                    }
                    Effect::IdempotentWrite => maybe_applied = true,
                    Effect::Read => {}
                }
            }
        }
        let summary = format!(
            "{method}: gave up after {attempts} attempt(s) in {:?}; last error from {last_error}",
            started.elapsed()
        );
        if maybe_applied {
            Err(ClientError::Unknown(
                format!("{summary}; the write may or may not have been applied").into(),
            ))
        } else {
            Err(ClientError::Unavailable(summary.into()))
        }
    }

    /// Runs one RPC once against one given endpoint.
    async fn call_on<Req, Resp, F, Fut>(
        &self,
        endpoint: &str,
        method: &'static str,
        effect: Effect,
        req: Req,
        rpc: F,
    ) -> Result<Resp, ClientError>
    where
        F: Fn(Conn, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let (uri, conn) = self.conn_for(endpoint)?;
        let detail = match attempt(&conn, self.shared.config.request_timeout, req, &rpc).await {
            Ok(resp) => return Ok(resp),
            Err(Failed::Status(status)) => match classify(&status) {
                Outcome::Definite => return Err(ClientError::from(status)),
                Outcome::NotExecuted => {
                    return Err(ClientError::Unavailable(
                        format!("{method} via {uri}: {}", describe(&status)).into(),
                    ));
                }
                Outcome::Indeterminate => describe(&status),
            },
            Err(Failed::TimedOut(after)) => format!("no answer within {after:?}"),
        };
        if effect == Effect::Read {
            Err(ClientError::Unavailable(
                format!("{method} via {uri}: {detail}").into(),
            ))
        } else {
            Err(ClientError::Unknown(
                format!("{method} via {uri}: {detail}; the write may or may not have been applied")
                    .into(),
            ))
        }
    }

    /// The index of the endpoint calls go to first.
    pub(crate) fn preferred(&self) -> usize {
        self.shared.preferred.load(Ordering::Relaxed) % self.shared.endpoints.len()
    }

    /// The channel of endpoint `index`, and its URI for messages.
    pub(crate) fn target(&self, index: usize) -> (&str, Transport) {
        let target = &self.shared.endpoints[index % self.shared.endpoints.len()];
        (&target.uri, target.conn.channel.clone())
    }

    /// After endpoint `failed` failed, prefer the next one, unless another
    /// call has moved the preference already.
    pub(crate) fn move_preference_from(&self, failed: usize) {
        let next = (failed + 1) % self.shared.endpoints.len();
        let _ = self.shared.preferred.compare_exchange(
            failed,
            next,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    fn conn_for(&self, endpoint: &str) -> Result<(String, Conn), ClientError> {
        let uri = self.shared.settings.parse(endpoint)?;
        if let Some(target) = self.shared.endpoints.iter().find(|t| t.uri == uri) {
            return Ok((uri, target.conn.clone()));
        }
        let mut others = self
            .shared
            .others
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(conn) = others.get(&uri) {
            return Ok((uri, conn.clone()));
        }
        let conn = Conn::new(&uri, &self.shared.settings, self.shared.config.coalesce)?;
        others.insert(uri.clone(), conn.clone());
        Ok((uri, conn))
    }
}

/// Why one attempt produced no response.
enum Failed {
    Status(Status),
    TimedOut(Duration),
}

/// One attempt with a timeout. The timeout is also sent as `grpc-timeout`, so
/// the server can give up on work nobody waits for.
async fn attempt<Req, Resp, F, Fut>(
    conn: &Conn,
    timeout: Duration,
    req: Req,
    rpc: &F,
) -> Result<Resp, Failed>
where
    F: Fn(Conn, tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let mut request = tonic::Request::new(req);
    request.set_timeout(timeout);
    match tokio::time::timeout(timeout, rpc(conn.clone(), request)).await {
        Ok(Ok(resp)) => Ok(resp.into_inner()),
        Ok(Err(status)) => Err(Failed::Status(status)),
        Err(_) => Err(Failed::TimedOut(timeout)),
    }
}

/// `code: message`, followed by the transport error chain when the status
/// was made locally ("tcp connect error: Connection refused (os error 111)").
pub(crate) fn describe(status: &Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    let mut source = status.source();
    while let Some(err) = source {
        let part = err.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = err.source();
    }
    text
}

/// A field a successful response must carry; its absence is a server bug.
fn required<T>(field: Option<T>, method: &str, name: &str) -> Result<T, ClientError> {
    field.ok_or_else(|| {
        ClientError::Other(Status::internal(format!(
            "{method}: response has no {name}"
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rejects_empty_and_bad_endpoint_lists() {
        assert!(matches!(
            Client::new(vec![]),
            Err(ClientError::InvalidArgument(_))
        ));
        assert!(matches!(
            Client::new(vec!["127.0.0.1:7201".into(), "nope".into()]),
            Err(ClientError::InvalidArgument(_))
        ));
    }

    #[tokio::test]
    async fn preference_moves_once_per_failure() {
        let client = Client::new(vec![
            "127.0.0.1:1".into(),
            "127.0.0.1:2".into(),
            "127.0.0.1:3".into(),
        ])
        .expect("valid endpoints");
        assert_eq!(client.preferred(), 0);
        client.move_preference_from(0);
        client.move_preference_from(0); // a second call that failed on node 0 too
        assert_eq!(client.preferred(), 1);
        client.move_preference_from(1);
        client.move_preference_from(2);
        assert_eq!(client.preferred(), 0);
    }

    #[tokio::test]
    async fn dead_endpoints_give_unavailable_for_reads_and_writes() {
        // Port 1 on loopback refuses connections: nothing can execute.
        let config = ClientConfig {
            deadline: Duration::from_secs(2),
            max_attempts: 3,
            ..ClientConfig::default()
        };
        let client = Client::with_config(vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()], config)
            .expect("valid endpoints");
        let err = client
            .get_presence("alice", Consistency::Linearizable)
            .await
            .expect_err("no server");
        assert!(matches!(err, ClientError::Unavailable(_)), "{err:?}");
        let err = client
            .logout(proto::LogoutRequest {
                uid: "alice".into(),
                ..Default::default()
            })
            .await
            .expect_err("no server");
        assert!(matches!(err, ClientError::Unavailable(_)), "{err:?}");
        assert!(!err.is_indeterminate());
        let err = client
            .status_of("127.0.0.1:3")
            .await
            .expect_err("no server");
        assert!(matches!(err, ClientError::Unavailable(_)), "{err:?}");
    }

    /// A node that accepts connections and never answers (a paused process):
    /// the request went out, so a write's outcome is unknown.
    #[tokio::test]
    async fn silent_nodes_make_writes_indeterminate() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let config = ClientConfig {
            request_timeout: Duration::from_millis(200),
            deadline: Duration::from_secs(2),
            max_attempts: 3,
            ..ClientConfig::default()
        };
        let client = Client::with_config(vec![addr.to_string()], config).expect("valid endpoint");

        let err = client
            .logout(proto::LogoutRequest {
                uid: "alice".into(),
                ..Default::default()
            })
            .await
            .expect_err("no answer");
        assert!(err.is_indeterminate(), "{err:?}");

        // An idempotent write is retried, but stays indeterminate in the end.
        let err = client
            .heartbeat("alice", "pc")
            .await
            .expect_err("no answer");
        assert!(err.is_indeterminate(), "{err:?}");

        // A read that never got an answer changed nothing.
        let err = client
            .get_presence("alice", Consistency::Serializable)
            .await
            .expect_err("no answer");
        assert!(matches!(err, ClientError::Unavailable(_)), "{err:?}");
    }
}
