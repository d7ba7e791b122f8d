//! `herald-bench overload` (issue 17 items 5 and 6): a 3-node Herald with
//! TLS on (as the playground starts it), then a 3-node etcd with TLS and
//! client certificates, each driven past what it can take, side by side.
//!
//! Per system, in this order, everything opened stays open to the end:
//! 1. idle connections spread over the three nodes, each proven open by one
//!    cheap read (Herald: a serializable `GetPresence`; etcd: a
//!    serializable `get`); each client keeps its library's default
//!    keep-alive (Herald pings every 2 s, etcd-client not at all);
//! 2. watch streams, 100 per connection (below hyper's and grpc-go's
//!    default stream caps), stream `i` on login number `i`'s user / key, so
//!    each fires once when phase 3 logs that user in;
//! 3. the closed-loop login rate (Herald `Login` with a TTL; etcd `put`
//!    with a lease, its nearest), every login a new user;
//! 4. the same logins open loop at twice that rate for a fixed time;
//! 5. the largest valid requests (Herald: a 4 KiB ext and a 128-byte uid,
//!    alone and as `Batch`es of 1000; etcd: puts of its 1.5 MiB limit).
//!
//! Throughout, every node's status is polled every 200 ms (term and
//! leader: an election under load is what item 5 forbids) and its RSS and
//! open file descriptors sampled. Afterwards every acknowledged write is
//! read back with linearizable reads. Refusals are tallied by phase, code
//! and message: a refusal should name the limit it enforces.

pub mod report;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use etcd_client::{ConnectOptions, GetOptions, KvClient, PutOptions, TlsOptions};
use futures::StreamExt;
use herald_client::proto::batch_call::Call;
use herald_client::proto::batch_reply::Reply;
use herald_client::proto::herald_client::HeraldClient;
use herald_client::proto::{BatchCall, BatchRequest, Consistency, LoginRequest};
use herald_client::{Client, ClientConfig, ClientError, ClientTls};
use prost::Message;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::etcd::EtcdCluster;
use crate::herald::HeraldCluster;
use crate::payload;
use crate::procfs;
use crate::report::{ETCD, HERALD};
use crate::stats::{Latencies, Summary};
use crate::target::{REQUEST_TIMEOUT, Target};
use report::{LeaderTracker, Outcome, PhaseResult, Readback, RefusalTally, SystemOverload};

/// Watch streams per connection.
const WATCHES_PER_CONNECTION: usize = 100;
/// Idle connections opened at once.
const OPEN_PARALLEL: usize = 100;
/// Calls in one maximal Herald `Batch` (the node's limit).
const BATCH_CALLS: usize = 1000;
/// Maximal calls that fit one `Batch` under the node's 4 MiB decode limit
/// (a maximal login is about 4250 bytes on the wire): every other batch is
/// this size, so big batches do reach Raft even while the 1000-call ones
/// are refused.
const BATCH_FITS: usize = 980;
/// How long one of the largest requests may take.
const LARGEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How often every node's status is polled.
const POLL_EVERY: Duration = Duration::from_millis(200);
/// How long a status poll may take before it counts as unanswered.
const POLL_TIMEOUT: Duration = Duration::from_millis(500);

/// The settled parameters of one overload run.
#[derive(Debug, Clone)]
pub struct OverloadPlan {
    /// Idle connections per system.
    pub idle: usize,
    /// Watch streams per system.
    pub watches: usize,
    /// The closed-loop measurement of the maximum login rate.
    pub measure: Duration,
    /// Logins in flight during that measurement.
    pub concurrency: usize,
    /// Client connections the logins go through.
    pub connections: usize,
    /// The open-loop overload at twice the measured rate.
    pub duration: Duration,
    /// The most open-loop requests in flight; past it the generator drops
    /// requests (counted as "not sent").
    pub max_in_flight: usize,
    /// How long the largest requests are sent.
    pub largest: Duration,
    /// Workers sending the largest requests.
    pub largest_workers: usize,
}

/// A system under overload: its clients, behind one enum so the phases are
/// the same code for both.
enum Side {
    Herald(HeraldSide),
    Etcd(EtcdSide),
}

struct HeraldSide {
    endpoints: Vec<String>,
    tls: Option<ClientTls>,
    writers: Vec<Client>,
    reader: Client,
    /// One raw channel per node for the maximal `Batch`es.
    raw: Vec<HeraldClient<Channel>>,
}

struct EtcdSide {
    endpoints: Vec<String>,
    tls: Option<TlsOptions>,
    writers: Vec<KvClient>,
    /// Put `n` goes with lease `n % len`.
    leases: Vec<i64>,
}

/// etcd leases the puts share. Not one for all: with auth on, etcd 3.4
/// checks the put permission of every key already on a put's lease
/// (`checkLeasePuts`), so one shared lease makes each put cost the number
/// of puts before it (484 puts/s where a pool does far more).
const ETCD_LEASES: usize = 1000;

/// What a held-open connection is; dropped at the end of the run.
enum Held {
    Herald(#[allow(dead_code)] Client),
    Etcd(#[allow(dead_code)] Box<etcd_client::Client>),
}

/// Shared bookkeeping of one system's run.
struct RunState {
    started: Instant,
    phase: Mutex<&'static str>,
    tally: Mutex<RefusalTally>,
    next_key: AtomicU64,
    acked: Mutex<Vec<u64>>,
    next_big: AtomicU64,
    acked_big: Mutex<Vec<u64>>,
    watch_events: AtomicU64,
    watches_failed: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RunState {
    fn new() -> RunState {
        RunState {
            started: Instant::now(),
            phase: Mutex::new("start"),
            tally: Mutex::new(RefusalTally::default()),
            next_key: AtomicU64::new(0),
            acked: Mutex::new(Vec::new()),
            next_big: AtomicU64::new(0),
            acked_big: Mutex::new(Vec::new()),
            watch_events: AtomicU64::new(0),
            watches_failed: AtomicU64::new(0),
        }
    }

    fn set_phase(&self, phase: &'static str) {
        *lock(&self.phase) = phase;
    }

    fn phase(&self) -> &'static str {
        *lock(&self.phase)
    }

    fn record(&self, phase: &str, outcome: &Outcome) {
        lock(&self.tally).record(phase, outcome);
    }
}

fn herald_outcome(e: &ClientError) -> Outcome {
    use tonic::Code;
    if e.is_indeterminate() || matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled) {
        Outcome::Indeterminate {
            message: e.to_string(),
        }
    } else {
        Outcome::Refused {
            code: format!("{:?}", e.code()),
            message: e.message().to_string(),
        }
    }
}

fn status_outcome(s: &tonic::Status) -> Outcome {
    use tonic::Code;
    let not_applied = s.metadata().get(herald_client::NOT_APPLIED).is_some();
    let unsure = matches!(
        s.code(),
        Code::Unknown | Code::DeadlineExceeded | Code::Cancelled | Code::Unavailable
    );
    if unsure && !not_applied {
        Outcome::Indeterminate {
            message: format!("{:?}: {}", s.code(), s.message()),
        }
    } else {
        Outcome::Refused {
            code: format!("{:?}", s.code()),
            message: s.message().to_string(),
        }
    }
}

fn etcd_outcome(e: &etcd_client::Error) -> Outcome {
    use tonic::Code;
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            // "too many requests" is etcd refusing before proposing
            // (applied index too far behind), whatever code carries it.
            let unsure = (matches!(
                s.code(),
                Code::Unknown | Code::DeadlineExceeded | Code::Cancelled
            ) || s.message().contains("timed out"))
                && !s.message().contains("too many requests");
            if unsure {
                Outcome::Indeterminate {
                    message: format!("{:?}: {}", s.code(), s.message()),
                }
            } else {
                Outcome::Refused {
                    code: format!("{:?}", s.code()),
                    message: s.message().to_string(),
                }
            }
        }
        etcd_client::Error::TransportError(t) => Outcome::Refused {
            code: "transport".into(),
            message: format!("{t}: {}", source_chain(t)),
        },
        other => Outcome::Refused {
            code: "client".into(),
            message: other.to_string(),
        },
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.join(": ")
}

/// A connection or request that never got an answer in `limit`.
fn timed_out(what: &str, limit: Duration) -> Outcome {
    Outcome::Indeterminate {
        message: format!("{what}: no answer in {limit:?}"),
    }
}

impl Side {
    async fn herald(cluster: &HeraldCluster, plan: &OverloadPlan) -> Result<Side> {
        let leader = cluster.settled_leader(Duration::from_secs(15)).await?;
        let endpoints = cluster.endpoints();
        let tls = cluster.client_tls();
        let writers = match Target::herald(
            &endpoints,
            cluster.index_of(leader),
            plan.connections,
            true,
            tls.clone(),
        )? {
            Target::Herald(clients) => clients,
            Target::Etcd(_) => unreachable!("Target::herald makes Herald clients"),
        };
        let reader = Client::with_config(
            endpoints.clone(),
            ClientConfig {
                tls: tls.clone(),
                ..ClientConfig::with_request_timeout(Duration::from_secs(10))
            },
        )?;
        let pem = match cluster.certs() {
            Some(certs) => {
                let read = |p: PathBuf| {
                    std::fs::read(&p).with_context(|| format!("reading {}", p.display()))
                };
                let (cert, key) = certs.client("root");
                Some((read(certs.ca())?, read(cert)?, read(key)?))
            }
            None => None,
        };
        let mut raw = Vec::new();
        for endpoint in &endpoints {
            raw.push(raw_herald(endpoint, pem.as_ref()).await?);
        }
        Ok(Side::Herald(HeraldSide {
            endpoints,
            tls,
            writers,
            reader,
            raw,
        }))
    }

    async fn etcd(cluster: &EtcdCluster, plan: &OverloadPlan) -> Result<Side> {
        let leader = cluster.leader_index(Duration::from_secs(10)).await?;
        let endpoints = cluster.endpoints();
        let tls = cluster.tls_options()?;
        let mut writers = Vec::new();
        for c in 0..plan.connections.max(1) {
            let endpoint = &endpoints[(leader + c) % endpoints.len()];
            // The client's timeout fits a 1.5 MiB put; logins get their
            // REQUEST_TIMEOUT from a timer around each call.
            let client = etcd_connect(endpoint, tls.as_ref(), LARGEST_TIMEOUT).await?;
            writers.push(client.kv_client());
        }
        let mut client = etcd_connect(&endpoints[leader], tls.as_ref(), REQUEST_TIMEOUT).await?;
        let ttl = i64::try_from(payload::LEASED_TTL_MS / 1000).unwrap_or(3600);
        let mut leases = Vec::with_capacity(ETCD_LEASES);
        for _ in 0..ETCD_LEASES {
            let lease = client
                .lease_grant(ttl, None)
                .await
                .context("etcd: lease grant")?
                .id();
            leases.push(lease);
        }
        Ok(Side::Etcd(EtcdSide {
            endpoints,
            tls,
            writers,
            leases,
        }))
    }

    fn name(&self) -> &'static str {
        match self {
            Side::Herald(_) => HERALD,
            Side::Etcd(_) => ETCD,
        }
    }

    /// Opens idle connection `i` (to node `i % 3`) and proves it with one
    /// read.
    async fn open_idle(&self, i: usize) -> Result<Held, Outcome> {
        let limit = Duration::from_secs(10);
        match self {
            Side::Herald(h) => {
                let endpoint = h.endpoints[i % h.endpoints.len()].clone();
                let client = Client::with_config(vec![endpoint], single_node(h.tls.clone()))
                    .map_err(|e| herald_outcome(&e))?;
                client
                    .get_presence("idle-probe", Consistency::Serializable)
                    .await
                    .map_err(|e| herald_outcome(&e))?;
                Ok(Held::Herald(client))
            }
            Side::Etcd(e) => {
                let endpoint = &e.endpoints[i % e.endpoints.len()];
                let client =
                    tokio::time::timeout(limit, etcd_connect_raw(endpoint, e.tls.as_ref(), limit))
                        .await
                        .map_err(|_| timed_out("connect", limit))?
                        .map_err(|e| etcd_outcome(&e))?;
                client
                    .kv_client()
                    .get("/idle-probe", Some(GetOptions::new().with_serializable()))
                    .await
                    .map_err(|e| etcd_outcome(&e))?;
                Ok(Held::Etcd(Box::new(client)))
            }
        }
    }

    /// Opens watch connection `g` with `streams` watch streams on keys
    /// `first..first + streams`, each read by its own task.
    async fn open_watches(
        &self,
        g: usize,
        first: u64,
        streams: usize,
        run: &Arc<RunState>,
        tasks: &mut Vec<JoinHandle<()>>,
    ) -> Result<Held, Outcome> {
        match self {
            Side::Herald(h) => {
                let endpoint = h.endpoints[g % h.endpoints.len()].clone();
                let client = Client::with_config(vec![endpoint], single_node(h.tls.clone()))
                    .map_err(|e| herald_outcome(&e))?;
                for s in 0..streams as u64 {
                    let mut stream = client.watch(vec![payload::leased_uid(first + s)], 0);
                    let run = run.clone();
                    tasks.push(tokio::spawn(async move {
                        while let Some(item) = stream.next().await {
                            match item {
                                Ok(_) => {
                                    run.watch_events.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(e) => {
                                    run.record(run.phase(), &herald_outcome(&e));
                                    break;
                                }
                            }
                        }
                        run.watches_failed.fetch_add(1, Ordering::Relaxed);
                    }));
                }
                Ok(Held::Herald(client))
            }
            Side::Etcd(e) => {
                let endpoint = &e.endpoints[g % e.endpoints.len()];
                let limit = Duration::from_secs(10);
                let client = etcd_connect_raw(endpoint, e.tls.as_ref(), limit)
                    .await
                    .map_err(|e| etcd_outcome(&e))?;
                for s in 0..streams as u64 {
                    let mut watch_client = client.watch_client();
                    let key = payload::leased_key(first + s);
                    let opened = tokio::time::timeout(limit, watch_client.watch(key, None)).await;
                    let mut stream = match opened {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(err)) => {
                            let outcome = etcd_outcome(&err);
                            run.record("watch", &outcome);
                            run.watches_failed.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        Err(_) => {
                            run.record("watch", &timed_out("watch", limit));
                            run.watches_failed.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    };
                    let run = run.clone();
                    tasks.push(tokio::spawn(async move {
                        loop {
                            match stream.message().await {
                                Ok(Some(resp)) => {
                                    if resp.canceled() {
                                        run.record(
                                            run.phase(),
                                            &Outcome::Refused {
                                                code: "watch canceled".into(),
                                                message: resp.cancel_reason().to_string(),
                                            },
                                        );
                                        break;
                                    }
                                    let n = resp.events().len() as u64;
                                    run.watch_events.fetch_add(n, Ordering::Relaxed);
                                }
                                Ok(None) => break,
                                Err(e) => {
                                    run.record(run.phase(), &etcd_outcome(&e));
                                    break;
                                }
                            }
                        }
                        run.watches_failed.fetch_add(1, Ordering::Relaxed);
                    }));
                }
                Ok(Held::Etcd(Box::new(client)))
            }
        }
    }

    /// Login number `n` (etcd: the put with the lease) on writer `w`.
    async fn login(&self, w: usize, n: u64) -> Outcome {
        match self {
            Side::Herald(h) => {
                let client = &h.writers[w % h.writers.len()];
                match client.login(payload::leased_login(n)).await {
                    Ok(_) => Outcome::Ok,
                    Err(e) => herald_outcome(&e),
                }
            }
            Side::Etcd(e) => {
                let mut kv = e.writers[w % e.writers.len()].clone();
                let lease = e.leases[(n % e.leases.len() as u64) as usize];
                let options = PutOptions::new().with_lease(lease);
                let put = kv.put(
                    payload::leased_key(n),
                    payload::login_bytes(n),
                    Some(options),
                );
                match tokio::time::timeout(REQUEST_TIMEOUT, put).await {
                    Ok(Ok(_)) => Outcome::Ok,
                    Ok(Err(err)) => etcd_outcome(&err),
                    Err(_) => timed_out("put", REQUEST_TIMEOUT),
                }
            }
        }
    }

    /// One of the largest requests from worker `w`; returns the outcome of
    /// each write it carried with its number.
    async fn largest(&self, w: usize, round: u64, run: &RunState) -> Vec<(u64, Outcome)> {
        match self {
            Side::Herald(h) if w.is_multiple_of(4) => {
                let size = if round.is_multiple_of(2) {
                    BATCH_CALLS
                } else {
                    BATCH_FITS
                } as u64;
                let first = run.next_big.fetch_add(size, Ordering::Relaxed);
                let calls = (0..size)
                    .map(|k| BatchCall {
                        call: Some(Call::Login(payload::big_login(first + k))),
                    })
                    .collect();
                let mut raw = h.raw[w % h.raw.len()].clone();
                let mut request = tonic::Request::new(BatchRequest { calls });
                request.set_timeout(LARGEST_TIMEOUT);
                match raw.batch(request).await {
                    Ok(resp) => {
                        let replies = resp.into_inner().replies;
                        (0..size)
                            .map(|k| {
                                let outcome =
                                    match replies.get(k as usize).and_then(|r| r.reply.as_ref()) {
                                        Some(Reply::PresenceWrite(_)) => Outcome::Ok,
                                        Some(Reply::Error(e)) => call_error_outcome(e),
                                        Some(_) => Outcome::Refused {
                                            code: "reply".into(),
                                            message: "a login answered with another reply kind"
                                                .into(),
                                        },
                                        None => Outcome::Refused {
                                            code: "reply".into(),
                                            message: "no reply for this call".into(),
                                        },
                                    };
                                (first + k, outcome)
                            })
                            .collect()
                    }
                    Err(status) => {
                        let outcome = status_outcome(&status);
                        (0..size).map(|k| (first + k, outcome.clone())).collect()
                    }
                }
            }
            Side::Herald(h) => {
                let n = run.next_big.fetch_add(1, Ordering::Relaxed);
                let client = &h.writers[w % h.writers.len()];
                let outcome = match client.login(payload::big_login(n)).await {
                    Ok(_) => Outcome::Ok,
                    Err(e) => herald_outcome(&e),
                };
                vec![(n, outcome)]
            }
            Side::Etcd(e) => {
                let n = run.next_big.fetch_add(1, Ordering::Relaxed);
                let mut kv = e.writers[w % e.writers.len()].clone();
                let put = kv.put(payload::big_key(n), payload::big_value(n), None);
                let limit = LARGEST_TIMEOUT;
                let outcome = match tokio::time::timeout(limit, put).await {
                    Ok(Ok(_)) => Outcome::Ok,
                    Ok(Err(err)) => etcd_outcome(&err),
                    Err(_) => timed_out("put", limit),
                };
                vec![(n, outcome)]
            }
        }
    }

    /// Every acknowledged write, read back linearizably.
    async fn read_back(&self, acked: &[u64], acked_big: &[u64]) -> Readback {
        let mut out = Readback {
            acknowledged: (acked.len() + acked_big.len()) as u64,
            ..Readback::default()
        };
        let lost = |out: &mut Readback, what: String| {
            out.lost += 1;
            if out.examples.len() < 10 {
                out.examples.push(what);
            }
        };
        match self {
            Side::Herald(h) => {
                for (keys, chunk, big) in [(acked, 500, false), (acked_big, 100, true)] {
                    for part in keys.chunks(chunk) {
                        let uids: Vec<String> = part
                            .iter()
                            .map(|&n| {
                                if big {
                                    payload::big_uid(n)
                                } else {
                                    payload::leased_uid(n)
                                }
                            })
                            .collect();
                        let resp = match h
                            .reader
                            .batch_get_presence(uids, Consistency::Linearizable)
                            .await
                        {
                            Ok(resp) => resp,
                            Err(e) => {
                                out.read_errors += part.len() as u64;
                                if out.examples.len() < 10 {
                                    out.examples.push(format!("read failed: {e}"));
                                }
                                continue;
                            }
                        };
                        for (k, &n) in part.iter().enumerate() {
                            let want = if big {
                                payload::big_login(n)
                            } else {
                                payload::leased_login(n)
                            };
                            match resp.records.get(k) {
                                Some(r)
                                    if r.online
                                        && r.sid == want.sid
                                        && r.ext == want.ext
                                        && r.clients
                                            .iter()
                                            .any(|c| c.client_type == want.client_type) =>
                                {
                                    out.found += 1
                                }
                                Some(r) => lost(
                                    &mut out,
                                    format!(
                                        "{}: online {} sid {} (want {}) revision {}",
                                        want.uid, r.online, r.sid, want.sid, r.revision
                                    ),
                                ),
                                None => lost(&mut out, format!("{}: no record returned", want.uid)),
                            }
                        }
                    }
                }
            }
            Side::Etcd(e) => {
                let endpoint = &e.endpoints[0];
                let client =
                    match etcd_connect(endpoint, e.tls.as_ref(), Duration::from_secs(30)).await {
                        Ok(c) => c,
                        Err(err) => {
                            out.read_errors = out.acknowledged;
                            out.examples
                                .push(format!("connect for read-back failed: {err:#}"));
                            return out;
                        }
                    };
                let mut kv = client.kv_client();
                for (prefix, keys_only, keys, big) in [
                    ("/ovl/", false, acked, false),
                    ("/big/", true, acked_big, true),
                ] {
                    let stored = match range_all(&mut kv, prefix, keys_only).await {
                        Ok(s) => s,
                        Err(err) => {
                            out.read_errors += keys.len() as u64;
                            out.examples.push(format!("range {prefix} failed: {err:#}"));
                            continue;
                        }
                    };
                    for &n in keys {
                        let key = if big {
                            payload::big_key(n)
                        } else {
                            payload::leased_key(n)
                        };
                        match stored.get(key.as_bytes()) {
                            // Compared decoded: the ext map encodes in hash order.
                            Some(v)
                                if keys_only
                                    || LoginRequest::decode(v.as_slice()).ok()
                                        == Some(payload::login(n)) =>
                            {
                                out.found += 1
                            }
                            Some(_) => lost(&mut out, format!("{key}: value differs")),
                            None => lost(&mut out, format!("{key}: missing")),
                        }
                    }
                }
            }
        }
        out
    }

    /// (node name, term, leader) of every node; `None` where a node did not
    /// answer in [`POLL_TIMEOUT`].
    async fn statuses(&self, pollers: &Pollers) -> Vec<(String, Option<(u64, u64)>)> {
        match (self, pollers) {
            (Side::Herald(h), Pollers::Herald(client)) => {
                let polls = h.endpoints.iter().map(|endpoint| async move {
                    let status =
                        tokio::time::timeout(POLL_TIMEOUT, client.status_of(endpoint)).await;
                    match status {
                        Ok(Ok(s)) => (format!("node{}", s.id), Some((s.term, s.leader_id))),
                        _ => (endpoint.clone(), None),
                    }
                });
                futures::future::join_all(polls).await
            }
            (Side::Etcd(_), Pollers::Etcd(clients)) => {
                let polls = clients.iter().enumerate().map(|(i, client)| async move {
                    let mut m = client.maintenance_client();
                    let status = tokio::time::timeout(POLL_TIMEOUT, m.status()).await;
                    match status {
                        Ok(Ok(s)) => (format!("etcd{i}"), Some((s.raft_term(), s.leader()))),
                        _ => (format!("etcd{i}"), None),
                    }
                });
                futures::future::join_all(polls).await
            }
            _ => Vec::new(),
        }
    }

    async fn pollers(&self) -> Result<Pollers> {
        Ok(match self {
            Side::Herald(h) => Pollers::Herald(Client::with_config(
                h.endpoints.clone(),
                ClientConfig {
                    tls: h.tls.clone(),
                    max_attempts: 1,
                    ..ClientConfig::with_request_timeout(POLL_TIMEOUT)
                },
            )?),
            Side::Etcd(e) => {
                let mut clients = Vec::new();
                for endpoint in &e.endpoints {
                    clients.push(etcd_connect(endpoint, e.tls.as_ref(), POLL_TIMEOUT).await?);
                }
                Pollers::Etcd(clients)
            }
        })
    }
}

/// The status pollers' own connections, apart from the load's.
enum Pollers {
    Herald(Client),
    Etcd(Vec<etcd_client::Client>),
}

fn call_error_outcome(e: &herald_client::proto::CallError) -> Outcome {
    let code = tonic::Code::from(e.code);
    let unsure = matches!(
        code,
        tonic::Code::Unknown | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
    );
    if unsure && !e.not_applied {
        Outcome::Indeterminate {
            message: format!("{code:?}: {}", e.message),
        }
    } else {
        Outcome::Refused {
            code: format!("{code:?}"),
            message: e.message.clone(),
        }
    }
}

/// A client config that talks to its one node only: no owner routing, no
/// coalescing, one attempt.
fn single_node(tls: Option<ClientTls>) -> ClientConfig {
    ClientConfig {
        tls,
        route_by_owner: false,
        coalesce: false,
        max_attempts: 1,
        connect_timeout: Duration::from_secs(10),
        ..ClientConfig::with_request_timeout(Duration::from_secs(10))
    }
}

/// A plain tonic channel to one node for the maximal `Batch` (64 MiB
/// messages both ways, like the node's own decode limit).
async fn raw_herald(
    endpoint: &str,
    pem: Option<&(Vec<u8>, Vec<u8>, Vec<u8>)>,
) -> Result<HeraldClient<Channel>> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let scheme = if pem.is_some() { "https" } else { "http" };
    let mut ep = Endpoint::from_shared(format!("{scheme}://{endpoint}"))
        .context("raw channel endpoint")?
        .connect_timeout(Duration::from_secs(5));
    if let Some((ca, cert, key)) = pem {
        ep = ep
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(ca))
                    .identity(Identity::from_pem(cert, key)),
            )
            .context("raw channel TLS")?;
    }
    let channel = ep.connect_lazy();
    Ok(HeraldClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

async fn etcd_connect_raw(
    endpoint: &str,
    tls: Option<&TlsOptions>,
    timeout: Duration,
) -> Result<etcd_client::Client, etcd_client::Error> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut options = ConnectOptions::new()
        .with_timeout(timeout)
        .with_connect_timeout(timeout);
    if let Some(tls) = tls {
        options = options.with_tls(tls.clone());
    }
    etcd_client::Client::connect([format!("{scheme}://{endpoint}")], Some(options)).await
}

async fn etcd_connect(
    endpoint: &str,
    tls: Option<&TlsOptions>,
    timeout: Duration,
) -> Result<etcd_client::Client> {
    etcd_connect_raw(endpoint, tls, timeout)
        .await
        .with_context(|| format!("connecting to etcd at {endpoint}"))
}

/// Every key under `prefix` with its value (or an empty one with
/// `keys_only`), in pages of a few hundred KiB.
async fn range_all(
    kv: &mut KvClient,
    prefix: &str,
    keys_only: bool,
) -> Result<HashMap<Vec<u8>, Vec<u8>>> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let mut from = prefix.as_bytes().to_vec();
    let mut out = HashMap::new();
    loop {
        let mut options = GetOptions::new().with_range(end.clone()).with_limit(2000);
        if keys_only {
            options = options.with_keys_only();
        }
        // A cluster still working off the overload may time a read out:
        // retry a page a few times before giving up on it.
        let mut attempt = 0;
        let resp = loop {
            match kv.get(from.clone(), Some(options.clone())).await {
                Ok(resp) => break resp,
                Err(e) if attempt < 6 => {
                    attempt += 1;
                    eprintln!("  etcd: read-back page failed ({e}); retrying in 5 s");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        for kv in resp.kvs() {
            out.insert(kv.key().to_vec(), kv.value().to_vec());
        }
        match resp.kvs().last() {
            Some(last) if resp.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => break,
        }
    }
    Ok(out)
}

/// What the sampler saw.
#[derive(Default)]
struct Sampled {
    leader: LeaderTracker,
    status_timeouts: u64,
    max_rss: BTreeMap<String, u64>,
    max_fds: BTreeMap<String, u64>,
}

/// Polls every node's status every [`POLL_EVERY`] and samples RSS (every
/// poll) and open fds (every fifth) until `stop`.
fn spawn_sampler(
    side: Arc<Side>,
    pollers: Pollers,
    pids: Vec<(String, u32)>,
    run: Arc<RunState>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Sampled> {
    tokio::spawn(async move {
        let mut s = Sampled::default();
        let mut tick = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let next = Instant::now() + POLL_EVERY;
            let secs = run.started.elapsed().as_secs_f64();
            let phase = run.phase();
            for (node, status) in side.statuses(&pollers).await {
                match status {
                    Some((term, leader)) => s.leader.observe(secs, phase, &node, term, leader),
                    None => s.status_timeouts += 1,
                }
            }
            for (node, pid) in &pids {
                if let Some(rss) = procfs::status_bytes(*pid, "VmRSS") {
                    let max = s.max_rss.entry(node.clone()).or_default();
                    *max = (*max).max(rss);
                }
                if tick.is_multiple_of(5)
                    && let Some(fds) = procfs::open_fds(*pid)
                {
                    let max = s.max_fds.entry(node.clone()).or_default();
                    *max = (*max).max(fds as u64);
                }
            }
            tick += 1;
            tokio::time::sleep_until(next).await;
        }
        s
    })
}

/// Closed loop: `concurrency` workers, one login at a time each, for
/// `duration`.
async fn closed_loop(
    side: &Arc<Side>,
    run: &Arc<RunState>,
    concurrency: usize,
    duration: Duration,
) -> PhaseResult {
    let start = Instant::now();
    let end = start + duration;
    let mut tasks = Vec::new();
    for w in 0..concurrency.max(1) {
        let side = side.clone();
        let run = run.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Latencies::new();
            let (mut ok, mut refused, mut unsure) = (0u64, 0u64, 0u64);
            while Instant::now() < end {
                let n = run.next_key.fetch_add(1, Ordering::Relaxed);
                let sent = Instant::now();
                let outcome = side.login(w, n).await;
                match &outcome {
                    Outcome::Ok => {
                        lat.record(sent.elapsed());
                        ok += 1;
                        lock(&run.acked).push(n);
                    }
                    Outcome::Refused { .. } => refused += 1,
                    Outcome::Indeterminate { .. } => unsure += 1,
                }
                run.record("max", &outcome);
                if outcome != Outcome::Ok {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            (lat, ok, refused, unsure)
        }));
    }
    let mut result = PhaseResult::default();
    let mut lat = Latencies::new();
    for t in tasks {
        if let Ok((l, ok, refused, unsure)) = t.await {
            lat.merge(&l);
            result.ok += ok;
            result.refused += refused;
            result.indeterminate += unsure;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    result.offered = result.ok + result.refused + result.indeterminate;
    result.seconds = seconds;
    result.latency = Summary::new(&lat, result.refused, Duration::from_secs_f64(seconds));
    result
}

/// Open loop: `rate` logins a second for `duration`, each sent at its
/// scheduled time whatever happened to the others (at most
/// `max_in_flight` at once); latency counts from the scheduled time.
async fn open_loop(
    side: &Arc<Side>,
    run: &Arc<RunState>,
    rate: f64,
    duration: Duration,
    max_in_flight: usize,
) -> PhaseResult {
    struct Shared {
        lat: Mutex<Latencies>,
        ok: AtomicU64,
        refused: AtomicU64,
        unsure: AtomicU64,
        in_flight: AtomicU64,
    }
    let shared = Arc::new(Shared {
        lat: Mutex::new(Latencies::new()),
        ok: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        unsure: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
    });
    let start = Instant::now();
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let (mut issued, mut not_sent) = (0u64, 0u64);
    let mut tasks = Vec::new();
    while issued < total {
        let due = ((start.elapsed().as_secs_f64() * rate) as u64).min(total);
        while issued < due {
            let scheduled = start + Duration::from_secs_f64(issued as f64 / rate);
            let w = issued as usize;
            issued += 1;
            if shared.in_flight.load(Ordering::Relaxed) >= max_in_flight as u64 {
                not_sent += 1;
                continue;
            }
            shared.in_flight.fetch_add(1, Ordering::Relaxed);
            let (side, run, shared) = (side.clone(), run.clone(), shared.clone());
            tasks.push(tokio::spawn(async move {
                let n = run.next_key.fetch_add(1, Ordering::Relaxed);
                let outcome = side.login(w, n).await;
                match &outcome {
                    Outcome::Ok => {
                        lock(&shared.lat).record(scheduled.elapsed());
                        shared.ok.fetch_add(1, Ordering::Relaxed);
                        lock(&run.acked).push(n);
                    }
                    Outcome::Refused { .. } => {
                        shared.refused.fetch_add(1, Ordering::Relaxed);
                    }
                    Outcome::Indeterminate { .. } => {
                        shared.unsure.fetch_add(1, Ordering::Relaxed);
                    }
                }
                run.record("open-loop", &outcome);
                shared.in_flight.fetch_sub(1, Ordering::Relaxed);
            }));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let seconds = start.elapsed().as_secs_f64();
    for t in tasks {
        let _ = t.await;
    }
    let lat = lock(&shared.lat).clone();
    let refused = shared.refused.load(Ordering::Relaxed);
    PhaseResult {
        offered: total,
        not_sent,
        ok: shared.ok.load(Ordering::Relaxed),
        refused,
        indeterminate: shared.unsure.load(Ordering::Relaxed),
        seconds,
        latency: Summary::new(&lat, refused, Duration::from_secs_f64(seconds)),
    }
}

/// The largest requests from `workers` workers for `duration`.
async fn largest(
    side: &Arc<Side>,
    run: &Arc<RunState>,
    workers: usize,
    duration: Duration,
) -> PhaseResult {
    let start = Instant::now();
    let end = start + duration;
    let mut tasks = Vec::new();
    for w in 0..workers.max(1) {
        let (side, run) = (side.clone(), run.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Latencies::new();
            let mut r = PhaseResult::default();
            let mut round = 0u64;
            while Instant::now() < end {
                let sent = Instant::now();
                let outcomes = side.largest(w, round, &run).await;
                round += 1;
                let all_ok = outcomes.iter().all(|(_, o)| *o == Outcome::Ok);
                if all_ok {
                    lat.record(sent.elapsed());
                }
                for (n, outcome) in outcomes {
                    r.offered += 1;
                    match &outcome {
                        Outcome::Ok => {
                            r.ok += 1;
                            lock(&run.acked_big).push(n);
                        }
                        Outcome::Refused { .. } => r.refused += 1,
                        Outcome::Indeterminate { .. } => r.indeterminate += 1,
                    }
                    run.record("largest", &outcome);
                }
                if !all_ok {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            (lat, r)
        }));
    }
    let mut result = PhaseResult::default();
    let mut lat = Latencies::new();
    for t in tasks {
        if let Ok((l, r)) = t.await {
            lat.merge(&l);
            result.offered += r.offered;
            result.ok += r.ok;
            result.refused += r.refused;
            result.indeterminate += r.indeterminate;
        }
    }
    result.seconds = start.elapsed().as_secs_f64();
    result.latency = Summary::new(
        &lat,
        result.refused,
        Duration::from_secs_f64(result.seconds),
    );
    result
}

/// Runs every phase against one started system; `pids` names its
/// processes for the RSS and fd samples.
async fn overload_one(
    side: Side,
    pids: Vec<(String, u32)>,
    plan: &OverloadPlan,
) -> Result<SystemOverload> {
    let name = side.name();
    let side = Arc::new(side);
    let run = Arc::new(RunState::new());
    let mut out = SystemOverload {
        system: name.into(),
        idle_asked: plan.idle as u64,
        watches_asked: plan.watches as u64,
        ..SystemOverload::default()
    };
    for (node, pid) in &pids {
        procfs::reset_peak_rss(*pid);
        if let Some(l) = procfs::open_files_limit(*pid) {
            out.nofile_limit.insert(node.clone(), l);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = spawn_sampler(
        side.clone(),
        side.pollers().await?,
        pids.clone(),
        run.clone(),
        stop.clone(),
    );
    // Let the sampler take the settled term and leader first.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // (a) idle connections.
    run.set_phase("idle");
    let started = Instant::now();
    let opened: Vec<Result<Held, Outcome>> = futures::stream::iter(0..plan.idle)
        .map(|i| {
            let side = side.clone();
            async move { side.open_idle(i).await }
        })
        .buffer_unordered(OPEN_PARALLEL)
        .collect()
        .await;
    let mut held = Vec::with_capacity(opened.len());
    for o in opened {
        match o {
            Ok(h) => held.push(h),
            Err(outcome) => run.record("idle", &outcome),
        }
    }
    out.idle_open = held.len() as u64;
    out.idle_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "  {name}: {} of {} idle connections open in {:.1} s",
        out.idle_open, plan.idle, out.idle_seconds
    );

    // (b) watch streams.
    run.set_phase("watch");
    let mut watch_tasks = Vec::new();
    let groups = plan.watches.div_ceil(WATCHES_PER_CONNECTION);
    for g in 0..groups {
        let first = g * WATCHES_PER_CONNECTION;
        let streams = WATCHES_PER_CONNECTION.min(plan.watches - first);
        match side
            .open_watches(g, first as u64, streams, &run, &mut watch_tasks)
            .await
        {
            Ok(h) => held.push(h),
            Err(outcome) => {
                for _ in 0..streams {
                    run.record("watch", &outcome);
                }
                run.watches_failed
                    .fetch_add(streams as u64, Ordering::Relaxed);
            }
        }
    }
    // Herald's streams open lazily in their tasks: give them a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    eprintln!(
        "  {name}: {} watch streams asked, {} failed so far",
        plan.watches,
        run.watches_failed.load(Ordering::Relaxed)
    );

    // (c) the maximum rate, closed loop, then twice it, open loop.
    run.set_phase("max");
    out.max_phase = closed_loop(&side, &run, plan.concurrency, plan.measure).await;
    out.max_rate = out.max_phase.ok as f64 / out.max_phase.seconds.max(1e-9);
    out.offered_rate = (2.0 * out.max_rate).max(1.0);
    eprintln!(
        "  {name}: max {:.0} logins/s closed loop ({} in flight); now {:.0}/s open loop for {:?}",
        out.max_rate, plan.concurrency, out.offered_rate, plan.duration
    );
    run.set_phase("open-loop");
    out.open_loop = open_loop(
        &side,
        &run,
        out.offered_rate,
        plan.duration,
        plan.max_in_flight,
    )
    .await;
    eprintln!(
        "  {name}: open loop {} ok, {} refused, {} no answer, {} not sent; p50 {:.1} ms p99 {:.1} ms",
        out.open_loop.ok,
        out.open_loop.refused,
        out.open_loop.indeterminate,
        out.open_loop.not_sent,
        out.open_loop.latency.p50_ms,
        out.open_loop.latency.p99_ms
    );

    // (d) the largest valid requests.
    run.set_phase("largest");
    out.largest_kind = match &*side {
        Side::Herald(_) => format!(
            "Login, 128-byte uid + 4 KiB ext: alone, or (1 worker in 4) Batches of \
             {BATCH_CALLS} and {BATCH_FITS} in turn"
        ),
        Side::Etcd(_) => format!(
            "put of {} KiB (limit {} KiB)",
            (payload::ETCD_MAX_REQUEST_BYTES - 512) / 1024,
            payload::ETCD_MAX_REQUEST_BYTES / 1024
        ),
    };
    out.largest = largest(&side, &run, plan.largest_workers, plan.largest).await;
    eprintln!(
        "  {name}: largest requests: {} writes ok, {} refused, {} no answer",
        out.largest.ok, out.largest.refused, out.largest.indeterminate
    );

    // After: let things settle, keep sampling through the read-back.
    run.set_phase("after");
    tokio::time::sleep(Duration::from_secs(2)).await;
    out.watches_open = plan.watches as u64
        - run
            .watches_failed
            .load(Ordering::Relaxed)
            .min(plan.watches as u64);
    out.watch_events = run.watch_events.load(Ordering::Relaxed);
    run.set_phase("read-back");
    let acked = lock(&run.acked).clone();
    let acked_big = lock(&run.acked_big).clone();
    let unique: HashSet<u64> = acked.iter().copied().collect();
    if unique.len() != acked.len() {
        out.notes
            .push("a login number was acknowledged twice (generator bug)".into());
    }
    eprintln!(
        "  {name}: reading back {} acknowledged writes",
        acked.len() + acked_big.len()
    );
    out.readback = side.read_back(&acked, &acked_big).await;
    stop.store(true, Ordering::Relaxed);
    let sampled = sampler.await.context("sampler task failed")?;
    for t in &watch_tasks {
        t.abort();
    }
    drop(held);
    out.leader = sampled.leader;
    out.status_timeouts = sampled.status_timeouts;
    out.max_rss = sampled.max_rss;
    out.max_fds = sampled.max_fds;
    for (node, pid) in &pids {
        if let Some(hwm) = procfs::status_bytes(*pid, "VmHWM") {
            let max = out.max_rss.entry(node.clone()).or_default();
            *max = (*max).max(hwm);
        }
    }
    out.refusals = lock(&run.tally).refusals();
    Ok(out)
}

/// Where the clusters run.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The herald-node binary.
    pub node_bin: PathBuf,
    /// The etcd binary, unless etcd is skipped.
    pub etcd_bin: Option<PathBuf>,
    /// Data dirs and logs go under here.
    pub work: PathBuf,
    /// Base port of the Herald cluster.
    pub herald_base_port: u16,
    /// First client port of the etcd cluster.
    pub etcd_base_port: u16,
}

/// Herald, then etcd (when given): each started fresh with TLS, overloaded,
/// stopped. Returns one [`SystemOverload`] per system.
pub async fn run(plan: &OverloadPlan, setup: &Setup) -> Result<Vec<SystemOverload>> {
    let mut out = Vec::new();
    eprintln!(
        "== herald+tls: 3 nodes, clients on 127.0.0.1:{}..",
        setup.herald_base_port + 101
    );
    let mut cluster = HeraldCluster::start(
        &setup.node_bin,
        &setup.work.join("herald"),
        setup.herald_base_port,
        3,
        true,
    )
    .await?;
    let result = async {
        let side = Side::herald(&cluster, plan).await?;
        let pids = cluster
            .ids()
            .into_iter()
            .filter_map(|id| Some((format!("node{id}"), cluster.pid(id)?)))
            .collect();
        overload_one(side, pids, plan).await
    }
    .await;
    let exited: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|&id| cluster.pid(id).is_none())
        .collect();
    cluster.stop().await;
    match result {
        Ok(mut s) => {
            for id in exited {
                s.notes.push(format!(
                    "node{id} was not running at the end; log tail:\n{}",
                    cluster.log_tail(id, 10)
                ));
            }
            out.push(s);
        }
        Err(e) => {
            for id in cluster.ids() {
                eprintln!("--- node{id} log tail ---\n{}", cluster.log_tail(id, 10));
            }
            return Err(e);
        }
    }
    if let Some(bin) = &setup.etcd_bin {
        eprintln!(
            "== etcd+tls: 3 members on 127.0.0.1:{}..",
            setup.etcd_base_port
        );
        let mut cluster =
            EtcdCluster::start(bin, &setup.work.join("etcd"), setup.etcd_base_port, 3, true)
                .await?;
        let result = async {
            let side = Side::etcd(&cluster, plan).await?;
            let pids = cluster
                .pids()
                .into_iter()
                .enumerate()
                .map(|(i, pid)| (format!("etcd{i}"), pid))
                .collect();
            overload_one(side, pids, plan).await
        }
        .await;
        let alive = cluster.pids().len();
        cluster.stop().await;
        match result {
            Ok(mut s) => {
                if alive < 3 {
                    s.notes
                        .push(format!("only {alive} of 3 etcd members running at the end"));
                }
                out.push(s);
            }
            Err(e) => {
                for i in 0..3 {
                    eprintln!("--- etcd{i} log tail ---\n{}", cluster.log_tail(i, 10));
                }
                return Err(anyhow!("etcd: {e:#}"));
            }
        }
    }
    Ok(out)
}
