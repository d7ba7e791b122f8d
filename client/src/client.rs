//! The [`Client`] handle: one lazy channel per endpoint (with a
//! [`Coalescer`] over it, see `batch.rs`), fail-over between them, and one
//! method per RPC of the `Herald` and `Admin` services.

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

    // ------------------------------------------------------------ presence

    /// Logs a client of a user in (P-publish `UserLogin`); returns the record
    /// after the change. Not retried once it may have been applied: replaying
    /// an old login after other writers changed the record would bring its
    /// old values back (the chaos suite caught exactly that).
    pub async fn login(
        &self,
        req: proto::LoginRequest,
    ) -> Result<proto::PresenceRecord, ClientError> {
        let uid = req.uid.clone();
        let resp = self
            .routed(&uid, "Login", Effect::Write, req, |ch, r| async move {
                ch.batch.login(r).await
            })
            .await?;
        required(resp.record, "Login", "record")
    }

    /// Logs one client (or, with an empty `client_type`, every client) of a
    /// user out. Not idempotent: a lost answer gives [`ClientError::Unknown`].
    pub async fn logout(
        &self,
        req: proto::LogoutRequest,
    ) -> Result<proto::PresenceRecord, ClientError> {
        let uid = req.uid.clone();
        let resp = self
            .routed(&uid, "Logout", Effect::Write, req, |ch, r| async move {
                ch.batch.logout(r).await
            })
            .await?;
        required(resp.record, "Logout", "record")
    }

    /// Changes whether a user accepts sessions from strangers (and replaces
    /// `ext` when it is non-empty). Not retried once it may have been applied
    /// (same reason as [`Client::login`]).
    pub async fn change_permission(
        &self,
        req: proto::PermissionRequest,
    ) -> Result<proto::PresenceRecord, ClientError> {
        let uid = req.uid.clone();
        let resp = self
            .routed(
                &uid,
                "ChangePermission",
                Effect::Write,
                req,
                |ch, r| async move { ch.batch.change_permission(r).await },
            )
            .await?;
        required(resp.record, "ChangePermission", "record")
    }

    /// Keeps a TTL login alive. Returns `false` when the client is not logged
    /// in (it expired or never logged in): log in again.
    pub async fn heartbeat(
        &self,
        uid: impl Into<String>,
        client_type: impl Into<String>,
    ) -> Result<bool, ClientError> {
        let req = proto::HeartbeatRequest {
            uid: uid.into(),
            client_type: client_type.into(),
        };
        let uid = req.uid.clone();
        let resp = self
            .routed(
                &uid,
                "Heartbeat",
                Effect::IdempotentWrite,
                req,
                |ch, r| async move { ch.batch.heartbeat(r).await },
            )
            .await?;
        Ok(resp.known)
    }

    /// One user's presence; `None` when the user was never seen.
    pub async fn get_presence(
        &self,
        uid: impl Into<String>,
        consistency: Consistency,
    ) -> Result<Option<proto::PresenceRecord>, ClientError> {
        let req = proto::GetPresenceRequest {
            uid: uid.into(),
            consistency: consistency.into(),
        };
        let uid = req.uid.clone();
        let resp = self
            .routed(&uid, "GetPresence", Effect::Read, req, |ch, r| async move {
                ch.batch.get_presence(r).await
            })
            .await?;
        Ok(resp.record)
    }

    /// Presence of up to 1000 users, one record per uid in request order
    /// (unknown users come back offline with revision 0), and the revision
    /// the state was read at.
    pub async fn batch_get_presence(
        &self,
        uids: Vec<String>,
        consistency: Consistency,
    ) -> Result<proto::BatchGetPresenceResponse, ClientError> {
        // A node answers at most ~3 MiB at once (`truncated`); ask again
        // for the uids it did not answer yet.
        let mut all = proto::BatchGetPresenceResponse::default();
        let mut rest = &uids[..];
        loop {
            let req = proto::BatchGetPresenceRequest {
                uids: rest.to_vec(),
                consistency: consistency.into(),
            };
            let page = self
                .call("BatchGetPresence", Effect::Read, req, |ch, r| async move {
                    crate::endpoint::herald(ch.channel)
                        .batch_get_presence(r)
                        .await
                })
                .await?;
            if all.records.is_empty() {
                // The oldest read: every record is at least this fresh.
                all.revision = page.revision;
            }
            let answered = page.records.len();
            all.records.extend(page.records);
            if !page.truncated || answered == 0 || answered >= rest.len() {
                return Ok(all);
            }
            rest = &rest[answered..];
        }
    }

    /// Presence changes of `uids` (empty = every user) from `start_revision`
    /// on (0 = from now), in revision order.
    ///
    /// The stream survives node failures: when it breaks it is reopened on
    /// another endpoint from where it stopped, with no gap and no duplicate.
    /// It ends after a definite error (e.g. the revision was compacted) or
    /// when reconnecting fails `max_attempts` times in a row. See
    /// [`WatchStream`].
    pub fn watch(&self, uids: Vec<String>, start_revision: u64) -> WatchStream {
        watch::watch(self.clone(), uids, start_revision)
    }

    // ------------------------------------------------------------ sessions

    /// Opens a session of `app_url` on a terminal (P-handoff); returns it
    /// with its id. Not idempotent.
    pub async fn connect_session(
        &self,
        req: proto::ConnectRequest,
    ) -> Result<proto::Session, ClientError> {
        let resp = self
            .call("ConnectSession", Effect::Write, req, |ch, r| async move {
                crate::endpoint::herald(ch.channel).connect_session(r).await
            })
            .await?;
        required(resp.session, "ConnectSession", "session")
    }

    /// Records progress; the sequence number must move forward and the epoch
    /// must be the current one. Not idempotent: after [`ClientError::Unknown`]
    /// read the session to learn whether `seq` was taken.
    pub async fn progress(
        &self,
        req: proto::ProgressRequest,
    ) -> Result<proto::Session, ClientError> {
        let resp = self
            .call("Progress", Effect::Write, req, |ch, r| async move {
                crate::endpoint::herald(ch.channel).progress(r).await
            })
            .await?;
        required(resp.session, "Progress", "session")
    }

    /// Binds two terminals, so that a `BINDING` handoff finds the second from
    /// the first.
    pub async fn bind(
        &self,
        first: proto::Terminal,
        second: proto::Terminal,
    ) -> Result<(), ClientError> {
        let req = proto::BindRequest {
            first: Some(first),
            second: Some(second),
        };
        self.call("Bind", Effect::Write, req, |ch, r| async move {
            crate::endpoint::herald(ch.channel).bind(r).await
        })
        .await?;
        Ok(())
    }

    /// Moves a session to the first compatible candidate. A refusal (no
    /// candidate fits) is an answer, not an error: `accepted` is false and
    /// `refused` lists who did not fit.
    pub async fn handoff(
        &self,
        req: proto::HandoffRequest,
    ) -> Result<proto::HandoffResponse, ClientError> {
        self.call("Handoff", Effect::Write, req, |ch, r| async move {
            crate::endpoint::herald(ch.channel).handoff(r).await
        })
        .await
    }

    /// One session; [`ClientError::NotFound`] when it does not exist.
    pub async fn get_session(
        &self,
        session_id: u64,
        consistency: Consistency,
    ) -> Result<proto::Session, ClientError> {
        let req = proto::GetSessionRequest {
            session_id,
            consistency: consistency.into(),
        };
        let resp = self
            .call("GetSession", Effect::Read, req, |ch, r| async move {
                crate::endpoint::herald(ch.channel).get_session(r).await
            })
            .await?;
        resp.session
            .ok_or_else(|| ClientError::NotFound(format!("session {session_id}").into()))
    }

    /// A session's work log: every event, oldest first (all pages).
    pub async fn session_log(
        &self,
        session_id: u64,
        consistency: Consistency,
    ) -> Result<Vec<proto::WorkLogEntry>, ClientError> {
        let mut entries = Vec::new();
        let mut page_token = String::new();
        loop {
            let req = proto::SessionLogRequest {
                session_id,
                consistency: consistency.into(),
                page_size: 0,
                page_token,
            };
            let page = self
                .call("SessionLog", Effect::Read, req, |ch, r| async move {
                    crate::endpoint::herald(ch.channel).session_log(r).await
                })
                .await?;
            entries.extend(page.entries);
            if page.next_page_token.is_empty() {
                return Ok(entries);
            }
            page_token = page.next_page_token;
        }
    }

    // ------------------------------------------------------------ account pools

    /// Creates an interactive-application platform and its units (P-iptv);
    /// the cluster assigns the ids. Not idempotent.
    pub async fn create_platform(
        &self,
        req: proto::CreatePlatformRequest,
    ) -> Result<proto::Platform, ClientError> {
        let resp = self
            .call("CreatePlatform", Effect::Write, req, |ch, r| async move {
                crate::endpoint::herald(ch.channel).create_platform(r).await
            })
            .await?;
        required(resp.platform, "CreatePlatform", "platform")
    }

    /// Deletes a session and its work log.
    pub async fn delete_session(&self, session_id: u64) -> Result<(), ClientError> {
        let req = proto::DeleteSessionRequest { session_id };
        self.call("DeleteSession", Effect::Write, req, |ch, r| async move {
            crate::endpoint::herald(ch.channel).delete_session(r).await
        })
        .await?;
        Ok(())
    }

    /// Deletes a pool and its accounts; `force` ends its active leases
    /// first (without it a pool with leases is refused).
    pub async fn delete_pool(&self, pool_id: u64, force: bool) -> Result<(), ClientError> {
        let req = proto::DeletePoolRequest { pool_id, force };
        self.call("DeletePool", Effect::Write, req, |ch, r| async move {
            crate::endpoint::herald(ch.channel).delete_pool(r).await
        })
        .await?;
        Ok(())
    }

    /// Deletes a platform and its units (refused while they have pools).
    pub async fn delete_platform(&self, platform_id: u64) -> Result<(), ClientError> {
        let req = proto::DeletePlatformRequest { platform_id };
        self.call("DeletePlatform", Effect::Write, req, |ch, r| async move {
            crate::endpoint::herald(ch.channel).delete_platform(r).await
        })
        .await?;
        Ok(())
    }

    /// Creates a pool of temporary accounts for a unit. Not idempotent.
    pub async fn create_pool(
        &self,
        req: proto::CreatePoolRequest,
    ) -> Result<proto::Pool, ClientError> {
        let resp = self
            .call("CreatePool", Effect::Write, req, |ch, r| async move {
                crate::endpoint::herald(ch.channel).create_pool(r).await
            })
            .await?;
        required(resp.pool, "CreatePool", "pool")
    }

    /// Leases a temporary account. The answer holds the account's password
    /// and the `lease_secret` that renew, release, account data and
    /// holder-only logins require; both are shown only here, so keep them.
    ///
    /// With a `request_id` (see [`new_request_id`](crate::new_request_id))
    /// the call is idempotent and retried after any failure; a replay returns
    /// the same lease with `replayed` set and a fresh password and secret,
    /// while those of earlier answers keep working (a lease keeps at most 4
    /// answers; one more replay is [`ClientError::ResourceExhausted`]).
    /// Without one a lost answer is [`ClientError::Unknown`].
    pub async fn lease_account(
        &self,
        req: proto::LeaseRequest,
    ) -> Result<proto::LeaseResponse, ClientError> {
        let effect = if req.request_id.is_empty() {
            Effect::Write
        } else {
            Effect::IdempotentWrite
        };
        self.call("LeaseAccount", effect, req, |ch, r| async move {
            crate::endpoint::herald(ch.channel).lease_account(r).await
        })
        .await
    }

    /// Extends a lease held by `user`; `req.lease_secret` must be one
    /// [`lease_account`](Client::lease_account) returned for it. Not
    /// idempotent.
    pub async fn renew_lease(&self, req: proto::RenewRequest) -> Result<proto::Lease, ClientError> {
        let resp = self
            .call("RenewLease", Effect::Write, req, |ch, r| async move {
                crate::endpoint::herald(ch.channel).renew_lease(r).await
            })
            .await?;
        required(resp.lease, "RenewLease", "lease")
    }

    /// Gives a leased account back (with its `lease_secret`, as for
    /// [`renew_lease`](Client::renew_lease)); its data is cleared and its
    /// passwords and secrets stop working. Not idempotent.
    pub async fn release_lease(&self, req: proto::ReleaseRequest) -> Result<(), ClientError> {
        self.call("ReleaseLease", Effect::Write, req, |ch, r| async move {
            crate::endpoint::herald(ch.channel).release_lease(r).await
        })
        .await?;
        Ok(())
    }

    /// Stores data (chat history, posts) with a leased account for the
    /// length of the lease (with its `lease_secret`, as for
    /// [`renew_lease`](Client::renew_lease)).
    pub async fn put_account_data(
        &self,
        req: proto::PutAccountDataRequest,
    ) -> Result<(), ClientError> {
        self.call("PutAccountData", Effect::Write, req, |ch, r| async move {
            crate::endpoint::herald(ch.channel)
                .put_account_data(r)
                .await
        })
        .await?;
        Ok(())
    }

    /// The pools of a unit (0 = every pool) and the platforms.
    pub async fn list_pools(
        &self,
        unit_id: u64,
        consistency: Consistency,
    ) -> Result<proto::ListPoolsResponse, ClientError> {
        let mut all = proto::ListPoolsResponse::default();
        let mut page_token = String::new();
        loop {
            let req = proto::ListPoolsRequest {
                unit_id,
                consistency: consistency.into(),
                page_size: 0,
                page_token,
            };
            let page = self
                .call("ListPools", Effect::Read, req, |ch, r| async move {
                    crate::endpoint::herald(ch.channel).list_pools(r).await
                })
                .await?;
            all.pools.extend(page.pools);
            all.platforms.extend(page.platforms);
            if page.next_page_token.is_empty() {
                return Ok(all);
            }
            page_token = page.next_page_token;
        }
    }

    /// The live leases of a pool: holders, accounts and times, never request
    /// ids or secrets.
    pub async fn list_leases(
        &self,
        pool_id: u64,
        consistency: Consistency,
    ) -> Result<Vec<proto::Lease>, ClientError> {
        let mut leases = Vec::new();
        let mut page_token = String::new();
        loop {
            let req = proto::ListLeasesRequest {
                pool_id,
                consistency: consistency.into(),
                page_size: 0,
                page_token,
            };
            let page = self
                .call("ListLeases", Effect::Read, req, |ch, r| async move {
                    crate::endpoint::herald(ch.channel).list_leases(r).await
                })
                .await?;
            leases.extend(page.leases);
            if page.next_page_token.is_empty() {
                return Ok(leases);
            }
            page_token = page.next_page_token;
        }
    }

    /// Checks an account and password against a unit's access policy
    /// (holder-only units also want the `lease_secret`). A refusal is an
    /// answer (`ok` false, with a `reason`), not an error.
    pub async fn account_login(
        &self,
        req: proto::AccountLoginRequest,
    ) -> Result<proto::AccountLoginResponse, ClientError> {
        self.call("AccountLogin", Effect::Read, req, |ch, r| async move {
            crate::endpoint::herald(ch.channel).account_login(r).await
        })
        .await
    }

    // ------------------------------------------------------------ admin

    /// `Admin.Status` of the node at `endpoint`, which need not be one of the
    /// client's endpoints. One attempt, no fail-over: the point is to ask
    /// that node.
    pub async fn status_of(&self, endpoint: &str) -> Result<proto::NodeStatus, ClientError> {
        let resp = self
            .call_on(
                endpoint,
                "Status",
                Effect::Read,
                proto::StatusRequest {},
                |ch, r| async move { crate::endpoint::admin(ch.channel).status(r).await },
            )
            .await?;
        required(resp.status, "Status", "status")
    }

    /// The cluster's members as any node sees them, and the leader it knows.
    pub async fn members(&self) -> Result<proto::MembersResponse, ClientError> {
        self.call(
            "Members",
            Effect::Read,
            proto::MembersRequest {},
            |ch, r| async move { crate::endpoint::admin(ch.channel).members(r).await },
        )
        .await
    }

    /// The members (from any node), then the status of every member asked
    /// at its own client address, concurrently. A member that does not
    /// answer is reported with its error, not turned into a failure of the
    /// whole call.
    pub async fn cluster_status(&self) -> Result<ClusterStatus, ClientError> {
        let members = self.members().await?;
        let statuses = futures::future::join_all(
            members
                .members
                .iter()
                .map(|m| self.status_of(&m.client_addr)),
        )
        .await;
        Ok(ClusterStatus {
            leader_id: members.leader_id,
            members: members
                .members
                .into_iter()
                .zip(statuses)
                .map(|(member, status)| MemberStatus { member, status })
                .collect(),
        })
    }

    /// Adds a node as a non-voting learner; it catches up from the leader.
    pub async fn add_learner(
        &self,
        member: proto::Member,
    ) -> Result<proto::AdminResponse, ClientError> {
        let req = proto::AddLearnerRequest {
            member: Some(member),
        };
        self.call("AddLearner", Effect::Write, req, |ch, r| async move {
            crate::endpoint::admin(ch.channel).add_learner(r).await
        })
        .await
    }

    /// Makes a learner a voter.
    pub async fn promote(&self, id: u64) -> Result<proto::AdminResponse, ClientError> {
        self.call(
            "Promote",
            Effect::Write,
            proto::PromoteRequest { id },
            |ch, r| async move { crate::endpoint::admin(ch.channel).promote(r).await },
        )
        .await
    }

    /// Removes a node from the cluster (voter or learner).
    pub async fn remove(&self, id: u64) -> Result<proto::AdminResponse, ClientError> {
        self.call(
            "Remove",
            Effect::Write,
            proto::RemoveRequest { id },
            |ch, r| async move { crate::endpoint::admin(ch.channel).remove(r).await },
        )
        .await
    }

    /// Sets the voter set in one joint-consensus change.
    pub async fn change_membership(
        &self,
        voters: Vec<u64>,
    ) -> Result<proto::AdminResponse, ClientError> {
        let req = proto::ChangeMembershipRequest { voters };
        self.call("ChangeMembership", Effect::Write, req, |ch, r| async move {
            crate::endpoint::admin(ch.channel)
                .change_membership(r)
                .await
        })
        .await
    }

    /// Asks the leader to hand leadership to node `to`.
    pub async fn transfer_leader(&self, to: u64) -> Result<proto::AdminResponse, ClientError> {
        let req = proto::TransferLeaderRequest { to };
        self.call("TransferLeader", Effect::Write, req, |ch, r| async move {
            crate::endpoint::admin(ch.channel).transfer_leader(r).await
        })
        .await
    }

    /// Builds a snapshot on whichever node answers (then that node purges
    /// its log up to it).
    pub async fn snapshot(&self) -> Result<proto::AdminResponse, ClientError> {
        self.call(
            "Snapshot",
            Effect::Write,
            proto::SnapshotRequest {},
            |ch, r| async move { crate::endpoint::admin(ch.channel).snapshot(r).await },
        )
        .await
    }

    /// Founds the cluster on the node at `endpoint` (see `InitRequest` in
    /// the proto): once, on a founding node. One attempt; `Unavailable`
    /// while a founding node cannot be reached yet.
    pub async fn init_on(&self, endpoint: &str) -> Result<proto::InitResponse, ClientError> {
        self.call_on(
            endpoint,
            "Init",
            Effect::Write,
            proto::InitRequest {},
            |ch, r| async move { crate::endpoint::admin(ch.channel).init(r).await },
        )
        .await
    }

    /// Builds a snapshot on the node at `endpoint`. One attempt.
    pub async fn snapshot_on(&self, endpoint: &str) -> Result<proto::AdminResponse, ClientError> {
        self.call_on(
            endpoint,
            "Snapshot",
            Effect::Write,
            proto::SnapshotRequest {},
            |ch, r| async move { crate::endpoint::admin(ch.channel).snapshot(r).await },
        )
        .await
    }

    /// Sets (or, with `relative`, shifts) the cluster-clock offset of the
    /// node at `endpoint`: the test and chaos hook for clock skew. One attempt.
    pub async fn set_clock_offset_on(
        &self,
        endpoint: &str,
        offset_ms: i64,
        relative: bool,
    ) -> Result<proto::AdminResponse, ClientError> {
        self.call_on(
            endpoint,
            "SetClockOffset",
            Effect::Write,
            proto::SetClockOffsetRequest {
                offset_ms,
                relative,
            },
            |ch, r| async move { crate::endpoint::admin(ch.channel).set_clock_offset(r).await },
        )
        .await
    }

    // ------------------------------------------------------------ auth

    /// Who the cluster takes this client for, its roles, and whether auth
    /// is enforced (asked of any node).
    pub async fn auth_status(&self) -> Result<proto::AuthStatusResponse, ClientError> {
        self.call(
            "Auth.Status",
            Effect::Read,
            proto::AuthStatusRequest {},
            |ch, r| async move { crate::endpoint::auth(ch.channel).status(r).await },
        )
        .await
    }

    /// Turns auth enforcement on (`true`) or off for the whole cluster.
    /// Idempotent.
    pub async fn auth_set_enabled(&self, on: bool) -> Result<proto::AuthResponse, ClientError> {
        if on {
            self.call(
                "Auth.Enable",
                Effect::IdempotentWrite,
                proto::AuthEnableRequest {},
                |ch, r| async move { crate::endpoint::auth(ch.channel).enable(r).await },
            )
            .await
        } else {
            self.call(
                "Auth.Disable",
                Effect::IdempotentWrite,
                proto::AuthDisableRequest {},
                |ch, r| async move { crate::endpoint::auth(ch.channel).disable(r).await },
            )
            .await
        }
    }

    /// Adds a user with roles.
    pub async fn user_add(
        &self,
        name: &str,
        roles: Vec<proto::Role>,
    ) -> Result<proto::AuthResponse, ClientError> {
        let req = proto::UserAddRequest {
            name: name.to_string(),
            roles: roles.into_iter().map(|r| r as i32).collect(),
        };
        self.call("Auth.UserAdd", Effect::Write, req, |ch, r| async move {
            crate::endpoint::auth(ch.channel).user_add(r).await
        })
        .await
    }

    /// Removes a user and revokes its tokens.
    pub async fn user_remove(&self, name: &str) -> Result<proto::AuthResponse, ClientError> {
        let req = proto::UserRemoveRequest {
            name: name.to_string(),
        };
        self.call("Auth.UserRemove", Effect::Write, req, |ch, r| async move {
            crate::endpoint::auth(ch.channel).user_remove(r).await
        })
        .await
    }

    /// Every user and its roles.
    pub async fn user_list(&self) -> Result<Vec<proto::User>, ClientError> {
        let resp = self
            .call(
                "Auth.UserList",
                Effect::Read,
                proto::UserListRequest {},
                |ch, r| async move { crate::endpoint::auth(ch.channel).user_list(r).await },
            )
            .await?;
        Ok(resp.users)
    }

    /// Grants (`grant`) or revokes a role.
    pub async fn role_change(
        &self,
        user: &str,
        role: proto::Role,
        grant: bool,
    ) -> Result<proto::AuthResponse, ClientError> {
        let req = proto::RoleChangeRequest {
            user: user.to_string(),
            role: role as i32,
        };
        if grant {
            self.call(
                "Auth.RoleGrant",
                Effect::IdempotentWrite,
                req,
                |ch, r| async move { crate::endpoint::auth(ch.channel).role_grant(r).await },
            )
            .await
        } else {
            self.call("Auth.RoleRevoke", Effect::Write, req, |ch, r| async move {
                crate::endpoint::auth(ch.channel).role_revoke(r).await
            })
            .await
        }
    }

    /// Makes a bearer token for `user` (shown once in the response).
    pub async fn token_create(
        &self,
        user: &str,
        ttl: Duration,
    ) -> Result<proto::TokenCreateResponse, ClientError> {
        let req = proto::TokenCreateRequest {
            user: user.to_string(),
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        };
        self.call("Auth.TokenCreate", Effect::Write, req, |ch, r| async move {
            crate::endpoint::auth(ch.channel).token_create(r).await
        })
        .await
    }

    /// Revokes a token by id.
    pub async fn token_revoke(&self, token_id: u64) -> Result<proto::AuthResponse, ClientError> {
        let req = proto::TokenRevokeRequest { token_id };
        self.call("Auth.TokenRevoke", Effect::Write, req, |ch, r| async move {
            crate::endpoint::auth(ch.channel).token_revoke(r).await
        })
        .await
    }

    /// The live tokens of `user` ("" = everyone's); never the tokens themselves.
    pub async fn token_list(&self, user: &str) -> Result<Vec<proto::TokenInfo>, ClientError> {
        let req = proto::TokenListRequest {
            user: user.to_string(),
        };
        let resp = self
            .call("Auth.TokenList", Effect::Read, req, |ch, r| async move {
                crate::endpoint::auth(ch.channel).token_list(r).await
            })
            .await?;
        Ok(resp.tokens)
    }

    // ------------------------------------------------------------ plumbing

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
