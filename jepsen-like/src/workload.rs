//! Client workloads. Each worker is one logical process: it runs one
//! operation at a time and records it in the history, `invoke` before the
//! request and `ok`/`fail`/`info` after, using the client's own verdict on
//! whether a failed write may have been applied.
//!
//! - `register`: logins carrying `ext.v = n` (unique n) and linearizable
//!   reads of a few uids;
//! - `pool`: lease / renew / release / list on a pool of 3 accounts, with
//!   lease retries by the same request id after an unknown outcome; some
//!   leases are automatic logins (`LeaseAndLogin`: the login must be let
//!   in whenever the lease is granted); each
//!   lease request is for its own viewer, so a listing's holder names the
//!   request, and renew and release present the lease secret;
//! - `session`: two terminals per session, progress with a shared,
//!   increasing `seq`, handoffs between them in every mode (push, binding,
//!   pull, pull-bound, and the two-step offer and accept), each naming the
//!   epoch its terminal last saw, and reads;
//! - `ttl`: TTL logins through the client library's owner routing. Live
//!   users heartbeat every [`TTL_HEARTBEAT_EVERY`] and now and then read
//!   their own presence (they must never be expired while heartbeats are
//!   acknowledged); silent users log in and never heartbeat (they must go
//!   offline within the TTL plus [`TTL_GRACE_MS`]).
//! - `link`: selections and purchases of [`LINK_ITEMS`] items of a linked
//!   catalog, each with a fresh request id, retried with the same id after
//!   an unknown outcome (it must count once); reads of an item's counts and
//!   ranked linked lookups (by selections) of every item.
//! - `share`: media sharing among [`SHARE_USERS`] users with fixed
//!   friendships (some pairs never friends) and [`SHARE_SERVERS`] small
//!   storage servers. Each owner shares media with a fresh request id
//!   (retried with the same id after an unknown outcome), commits an actual
//!   size at most the reserved one, deletes, asks for access as friends and
//!   non-friends, and reads every server's used bytes and capacity. One
//!   more server, [`SHARE_BEATEN`], is kept up by heartbeats that now and
//!   then stop for longer than its TTL.

use std::collections::BTreeMap;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use herald_client::proto::{self, Consistency};
use herald_client::{Client, ClientConfig, ClientError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::history::{EventType, Recorder};

/// Register keys (uids).
pub const REGISTER_KEYS: usize = 4;
/// Accounts in the pool.
pub const POOL_SIZE: u32 = 3;
/// Sessions in the session workload.
pub const SESSIONS: usize = 2;
/// Lease TTL: longer than any run, so expiry stays out of the model; yet
/// far shorter than the clock-jump fault's 3 h, so a cluster time that
/// followed the jump would expire them, which `lease_time` reports.
const LEASE_TTL_MS: u64 = 3_600_000;

/// How long a two-step handoff offer stands: the most the cluster allows,
/// so an offer never expires between its offer and its accept in a run.
const OFFER_TTL_MS: u64 = 600_000;

/// The `ttl` workload's login TTL.
pub const TTL_MS: u64 = 4_000;
/// How often a live `ttl` user heartbeats.
pub const TTL_HEARTBEAT_EVERY: Duration = Duration::from_millis(500);
/// How long past its TTL a silent user may stay online: one more TTL (an
/// owner that inherits a user on a ring change gives it a full TTL), and
/// time for a fault to heal (an election, a restarted node catching up)
/// before the expiry can be committed.
pub const TTL_GRACE_MS: u64 = TTL_MS + 10_000;
/// Live users in the `ttl` workload.
pub const TTL_LIVE_USERS: usize = 8;
/// Silent users in the `ttl` workload.
pub const TTL_SILENT_USERS: usize = 2;
/// Items in the `link` workload's shop catalog.
pub const LINK_ITEMS: usize = 4;

/// Users of the `share` workload; the first [`SHARE_OWNERS`] share media.
pub const SHARE_USERS: usize = 6;
/// Users of the `share` workload that own shares (one worker each).
pub const SHARE_OWNERS: usize = 4;
/// The `share` workload's friendships, made in setup and never ended
/// (mutual: either order is the same friendship). Every other pair is never
/// friends, e.g. 0 and 3, and 4 with anyone but 5.
pub const SHARE_FRIENDS: [(usize, usize); 6] = [(0, 1), (0, 2), (1, 2), (1, 3), (2, 3), (4, 5)];
/// The `share` workload's storage servers and their capacities in bytes:
/// small, so admission is often refused `STORAGE_FULL`.
pub const SHARE_SERVERS: [(&str, u64); 3] = [("st-a", 1200), ("st-b", 800), ("st-c", 500)];
/// The `share` workload's heartbeat-kept storage server and its capacity:
/// up only while its beats (every [`SHARE_BEAT_EVERY`], TTL
/// [`SHARE_BEAT_TTL_MS`]) reach its owner node; now and then it falls
/// silent for longer than the TTL, so its owner expires it.
pub const SHARE_BEATEN: (&str, u64) = ("st-d", 600);
/// The heartbeat TTL of [`SHARE_BEATEN`].
pub const SHARE_BEAT_TTL_MS: u64 = 1_500;
/// How often [`SHARE_BEATEN`] beats while it is not silent.
const SHARE_BEAT_EVERY: Duration = Duration::from_millis(300);
/// Reservation deadline of `share` uploads: short, so some reservations
/// (the abandoned ones) expire during the run.
pub const SHARE_TTL_MS: u64 = 3_000;
/// Shares a `share` worker tries to hold at once before it favours deletes.
const SHARE_HELD_MAX: usize = 5;

/// The client type of `ttl` logins.
const TTL_CLIENT: &str = "mobile";

/// A workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Workload {
    /// Presence register.
    Register,
    /// Account pool.
    Pool,
    /// Session progress.
    Session,
    /// TTL presence: heartbeating and silent users.
    Ttl,
    /// Linked catalogs: counted selections and purchases, ranked lookups.
    Link,
    /// Media sharing: admission against storage capacity, friend-checked
    /// access, idempotent share requests.
    Share,
}

impl FromStr for Workload {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "register" => Ok(Workload::Register),
            "pool" => Ok(Workload::Pool),
            "session" => Ok(Workload::Session),
            "ttl" => Ok(Workload::Ttl),
            "link" => Ok(Workload::Link),
            "share" => Ok(Workload::Share),
            _ => bail!("unknown workload {s:?} (register, pool, session, ttl, link, share)"),
        }
    }
}

/// What the workloads need from the cluster before they start.
#[derive(Debug, Clone, Default)]
pub struct Setup {
    /// The pool's id.
    pub pool_id: u64,
    /// Sessions and their two terminals.
    pub sessions: Vec<(u64, [proto::Terminal; 2])>,
}

/// The client settings of workers: short timeouts so faults show up as
/// `info`/`fail` quickly instead of stalling the workload, and no routing by
/// uid owner: each worker sticks to its own node (then fails over), so reads
/// on followers and forwarded writes are what gets tested.
/// `tls` is the cluster's ([`crate::cluster::Cluster::client_tls`]).
pub fn worker_client_config(tls: Option<herald_client::ClientTls>) -> ClientConfig {
    ClientConfig {
        tls,
        request_timeout: Duration::from_millis(1000),
        connect_timeout: Duration::from_millis(500),
        deadline: Duration::from_millis(2500),
        max_attempts: 3,
        route_by_owner: false,
        ..ClientConfig::default()
    }
}

/// A client that prefers endpoint `home` and fails over to the others.
pub fn client_preferring(
    endpoints: &[String],
    tls: Option<herald_client::ClientTls>,
    home: usize,
) -> Result<Client> {
    let mut rotated = endpoints.to_vec();
    rotated.rotate_left(home % endpoints.len().max(1));
    Ok(Client::with_config(rotated, worker_client_config(tls))?)
}

fn luhn_imei(body: u64) -> String {
    let digits: Vec<u32> = format!("{body:014}")
        .chars()
        .filter_map(|c| c.to_digit(10))
        .collect();
    let sum: u32 = digits
        .iter()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    format!("{body:014}{}", (10 - sum % 10) % 10)
}

fn terminals(s: usize) -> [proto::Terminal; 2] {
    [
        proto::Terminal {
            kind: proto::TerminalKind::Imei.into(),
            id: luhn_imei(35_000_000_000_000 + s as u64),
        },
        proto::Terminal {
            kind: proto::TerminalKind::Mac.into(),
            id: format!("02:00:00:00:00:{s:02x}"),
        },
    ]
}

/// Retries a setup call until it succeeds or `timeout` passes.
async fn retry<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(anyhow!("{what}: {e}"));
            }
            // Nothing to await but the cluster settling.
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Creates the pool and the sessions the chosen workloads use.
pub async fn setup(client: &Client, workloads: &[Workload]) -> Result<Setup> {
    let mut setup = Setup::default();
    let t = Duration::from_secs(20);
    if workloads.contains(&Workload::Pool) {
        let platform = retry("CreatePlatform", t, || {
            client.create_platform(proto::CreatePlatformRequest {
                name: "jepsen".into(),
                units: vec![proto::UnitSpec {
                    name: "quiz".into(),
                    ..Default::default()
                }],
            })
        })
        .await?;
        let unit_id = platform
            .units
            .first()
            .map(|u| u.unit_id)
            .ok_or_else(|| anyhow!("CreatePlatform returned no unit"))?;
        let pool = retry("CreatePool", t, || {
            client.create_pool(proto::CreatePoolRequest {
                unit_id,
                name: "jepsen".into(),
                provision: POOL_SIZE,
                max_size: POOL_SIZE,
                default_ttl_ms: LEASE_TTL_MS,
            })
        })
        .await?;
        setup.pool_id = pool.pool_id;
    }
    if workloads.contains(&Workload::Session) {
        for s in 0..SESSIONS {
            let terms = terminals(s);
            let session = retry("ConnectSession", t, || {
                client.connect_session(proto::ConnectRequest {
                    terminal: Some(terms[0].clone()),
                    app_url: "https://apps.example/quiz".into(),
                    capabilities: vec!["video".into()],
                })
            })
            .await?;
            // Bound to each other, for binding and pull-bound handoffs.
            retry("Bind", t, || {
                client.bind(terms[0].clone(), terms[1].clone())
            })
            .await?;
            setup.sessions.push((session.session_id, terms));
        }
    }
    if workloads.contains(&Workload::Link) {
        link_setup(client, t).await?;
    }
    if workloads.contains(&Workload::Share) {
        share_setup(client, t).await?;
    }
    Ok(setup)
}

/// Already there counts as made: a setup call retried after an unknown
/// outcome finds its own earlier write.
fn made<T>(r: Result<T, ClientError>) -> Result<(), ClientError> {
    match r {
        Ok(_) | Err(ClientError::AlreadyExists(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

fn link_item_id(i: usize) -> String {
    format!("item-{i}")
}

/// The `link` workload's catalogs: `src` with one item and `shop` with
/// [`LINK_ITEMS`], all with `k=v`, linked by `k`.
async fn link_setup(client: &Client, t: Duration) -> Result<()> {
    for name in ["src", "shop"] {
        retry("CreateCatalog", t, || async move {
            made(
                client
                    .create_catalog(proto::Catalog {
                        name: name.into(),
                        selection_weight: 1,
                        purchase_weight: 1,
                        items: 0,
                    })
                    .await,
            )
        })
        .await?;
    }
    let kv = vec![proto::ItemAttr {
        key: "k".into(),
        value: "v".into(),
    }];
    let items = std::iter::once(("src", "s".to_string()))
        .chain((0..LINK_ITEMS).map(|i| ("shop", link_item_id(i))));
    for (catalog, id) in items {
        retry("PutItem", t, || {
            client.put_item(proto::CatalogItem {
                catalog: catalog.into(),
                item_id: id.clone(),
                attrs: kv.clone(),
                ..Default::default()
            })
        })
        .await?;
    }
    retry("AddLinkRule", t, || async move {
        made(
            client
                .add_link_rule(proto::LinkRule {
                    name: "k".into(),
                    left: Some(proto::LinkSide {
                        catalog: "src".into(),
                        attr: "k".into(),
                    }),
                    right: Some(proto::LinkSide {
                        catalog: "shop".into(),
                        attr: "k".into(),
                    }),
                })
                .await,
        )
    })
    .await?;
    Ok(())
}

fn counts_value(item: Option<&proto::CatalogItem>) -> Value {
    match item {
        Some(i) => json!({"selections": i.selections, "purchases": i.purchases}),
        None => json!({}),
    }
}

async fn link_read(ctx: &Context, client: &Client, p: u64, item: &str, fin: bool) -> bool {
    op(
        &ctx.recorder,
        p,
        "link",
        "read",
        item,
        json!({ "final": fin }),
        client.get_item("shop", item, Consistency::Linearizable),
        |i| counts_value(Some(i)),
    )
    .await
    .is_ok()
}

/// One `link` client: counts (retrying an unknown one with the same
/// request id until it is known), reads and lookups.
async fn link_worker(ctx: Context, p: u64, home: usize) {
    let Ok(client) = client_preferring(&ctx.endpoints, ctx.tls.clone(), home) else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(ctx.seed ^ (p << 32) ^ 0x11_4c);
    let mut n = 0u64;
    // A count whose outcome is unknown: (item, kind, rid).
    let mut pending: Option<(String, &'static str, String)> = None;
    while !stopped(&ctx.stop) {
        let roll = rng.random_range(0..100);
        if pending.is_some() || roll < 60 {
            let (item, kind, rid) = pending.take().unwrap_or_else(|| {
                n += 1;
                let kind = if rng.random_bool(0.7) {
                    "selection"
                } else {
                    "purchase"
                };
                (
                    link_item_id(rng.random_range(0..LINK_ITEMS)),
                    kind,
                    format!("p{p}-{n}"),
                )
            });
            let req = proto::CountRequest {
                catalog: "shop".into(),
                item_id: item.clone(),
                kind: if kind == "selection" {
                    proto::CountKind::Selection
                } else {
                    proto::CountKind::Purchase
                } as i32,
                request_id: rid.clone(),
            };
            let r = op(
                &ctx.recorder,
                p,
                "link",
                "count",
                &item,
                json!({"rid": rid, "kind": kind}),
                client.count(req),
                |r| {
                    let mut v = counts_value(r.item.as_ref());
                    v["replayed"] = json!(r.replayed);
                    v
                },
            )
            .await;
            if matches!(&r, Err(e) if e.is_indeterminate()) {
                pending = Some((item, kind, rid));
            }
        } else if roll < 80 {
            let item = link_item_id(rng.random_range(0..LINK_ITEMS));
            let _ = link_read(&ctx, &client, p, &item, false).await;
        } else {
            let req = proto::LinkedLookupRequest {
                from_catalog: "src".into(),
                item_id: "s".into(),
                to_catalog: "shop".into(),
                rank_by: proto::RankBy::Selections as i32,
                limit: LINK_ITEMS as u32,
                consistency: Consistency::Linearizable as i32,
                ..Default::default()
            };
            let _ = op(
                &ctx.recorder,
                p,
                "link",
                "lookup",
                "lookup",
                json!({}),
                client.linked_lookup(req),
                |r| {
                    let items: Vec<Value> = r
                        .items
                        .iter()
                        .map(|ri| {
                            let id = ri.item.as_ref().map(|i| i.item_id.clone());
                            json!([ri.rank, id.unwrap_or_default()])
                        })
                        .collect();
                    json!({ "items": items })
                },
            )
            .await;
        }
        think(&mut rng).await;
    }
}

fn share_user(i: usize) -> String {
    format!("sh-u{i}")
}

/// True when users `a` and `b` are friends in the `share` workload.
fn share_friends(a: usize, b: usize) -> bool {
    SHARE_FRIENDS
        .iter()
        .any(|&(x, y)| (x, y) == (a, b) || (y, x) == (a, b))
}

/// The `share` workload's storage servers (marked up until marked down, so
/// only capacity refuses an admission; [`SHARE_BEATEN`] is brought up by
/// its beats) and friendships.
async fn share_setup(client: &Client, t: Duration) -> Result<()> {
    for (id, capacity) in SHARE_SERVERS.into_iter().chain([SHARE_BEATEN]) {
        retry("RegisterStorage", t, || async move {
            made(
                client
                    .register_storage(proto::RegisterStorageRequest {
                        server_id: id.into(),
                        address: format!("{id}.storage.test:443"),
                        capacity_bytes: capacity,
                    })
                    .await,
            )
        })
        .await?;
        if id == SHARE_BEATEN.0 {
            continue;
        }
        retry("StorageHeartbeat", t, || {
            client.storage_heartbeat(proto::StorageHeartbeatRequest {
                server_id: id.into(),
                up: true,
                ttl_ms: 0,
            })
        })
        .await?;
    }
    for (a, b) in SHARE_FRIENDS {
        let (a, b) = (share_user(a), share_user(b));
        retry("AddFriend", t, || client.set_friendship(&a, &b, true)).await?;
    }
    Ok(())
}

/// Writes what [`share_setup`] made (and the cluster acknowledged) into the
/// history, so the checker reads the capacities and friendships from the
/// history rather than from this file.
fn share_record_setup(ctx: &Context) {
    let p = ctx.process();
    let rec = &ctx.recorder;
    let fact = |f: &str, key: &str, input: Value| {
        rec.record(p, EventType::Invoke, "share", f, key, input, None);
        rec.record(p, EventType::Ok, "share", f, key, json!({}), None);
    };
    for (id, capacity) in SHARE_SERVERS.into_iter().chain([SHARE_BEATEN]) {
        fact(
            "register-storage",
            id,
            json!({"server": id, "capacity": capacity}),
        );
    }
    for (a, b) in SHARE_FRIENDS {
        let (a, b) = (share_user(a), share_user(b));
        fact(
            "befriend",
            &format!("{a}|{b}"),
            json!({"user": a, "friend": b}),
        );
    }
}

fn share_value(s: &proto::MediaShare) -> Value {
    json!({
        "share_id": s.share_id,
        "owner": s.owner,
        "server": s.server_id,
        "size": s.size_bytes,
        "state": s.state().as_str_name(),
    })
}

/// A linearizable `ListStorage`, recorded: every server's capacity and
/// reserved and committed bytes.
async fn share_read(ctx: &Context, client: &Client, p: u64, fin: bool) -> bool {
    op(
        &ctx.recorder,
        p,
        "share",
        "storage",
        "storage",
        json!({ "final": fin }),
        client.list_storage(Consistency::Linearizable),
        |r| {
            let servers: Vec<Value> = r
                .servers
                .iter()
                .map(|s| {
                    json!({
                        "server": s.server_id,
                        "capacity": s.capacity_bytes,
                        "reserved": s.reserved_bytes,
                        "committed": s.committed_bytes,
                        "shares": s.shares,
                        "up": s.up,
                        "up_since": s.up_since_ms,
                    })
                })
                .collect();
            json!({ "servers": servers, "cluster_time_ms": r.cluster_time_ms })
        },
    )
    .await
    .is_ok()
}

/// [`SHARE_BEATEN`]'s heartbeats, recorded (`storage-beat`: whether the
/// answer says up, and since when): a beat every [`SHARE_BEAT_EVERY`] for
/// 4 to 8 s, then silent for twice the TTL, so its owner expires it and
/// the next beat brings it up again.
async fn share_beater(ctx: Context, p: u64, home: usize) {
    let Ok(client) = client_preferring(&ctx.endpoints, ctx.tls.clone(), home) else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(ctx.seed ^ (p << 32) ^ 0xbea7);
    let (server, _) = SHARE_BEATEN;
    let mut beating_until = tokio::time::Instant::now();
    while !stopped(&ctx.stop) {
        let now = tokio::time::Instant::now();
        if now >= beating_until {
            beating_until = now + Duration::from_millis(rng.random_range(4_000..8_000));
            // Silent: its owner must expire it (none of this is checked
            // as a wait: the next beat shows whether it did).
            tokio::time::sleep(Duration::from_millis(2 * SHARE_BEAT_TTL_MS)).await;
            continue;
        }
        let call = client.storage_heartbeat(proto::StorageHeartbeatRequest {
            server_id: server.into(),
            up: true,
            ttl_ms: SHARE_BEAT_TTL_MS,
        });
        let input = json!({"server": server, "ttl_ms": SHARE_BEAT_TTL_MS});
        let _ = op(
            &ctx.recorder,
            p,
            "share",
            "storage-beat",
            server,
            input,
            call,
            |s| json!({"up": s.up, "up_since": s.up_since_ms}),
        )
        .await;
        tokio::time::sleep(SHARE_BEAT_EVERY).await;
    }
}

/// A share this worker holds: what commit, delete and access need.
#[derive(Clone, Debug)]
struct MyShare {
    share_id: u64,
    owner_key: String,
    reserved: u64,
    /// The committed size, once a commit is acknowledged.
    committed: Option<u64>,
    /// A commit whose outcome is unknown: retried with this size.
    committing: Option<u64>,
}

/// A share request whose outcome is unknown: retried as it was.
struct PendingShare {
    rid: String,
    receivers: Vec<String>,
    size: u64,
}

/// One `share` owner: shares (retrying an unknown request with the same
/// request id, size and receivers), commits, deletes, asks for access as
/// a friend or not, and reads the storage servers.
async fn share_worker(ctx: Context, p: u64, home: usize, me: usize) {
    let Ok(client) = client_preferring(&ctx.endpoints, ctx.tls.clone(), home) else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(ctx.seed ^ (p << 32) ^ 0x5a_a7e);
    let owner = share_user(me);
    let rec = &ctx.recorder;
    let friends: Vec<usize> = (0..SHARE_USERS).filter(|&u| share_friends(me, u)).collect();
    let strangers: Vec<usize> = (0..SHARE_USERS)
        .filter(|&u| u != me && !share_friends(me, u))
        .collect();
    let mut held: Vec<MyShare> = Vec::new();
    let mut pending: Option<PendingShare> = None;
    let mut n = 0u64;
    while !stopped(&ctx.stop) {
        let roll = rng.random_range(0..100);
        let want_share = held.len() < SHARE_HELD_MAX && roll < 30;
        if pending.is_some() || want_share {
            let req = pending.take().unwrap_or_else(|| {
                n += 1;
                let mut receivers: Vec<String> = friends
                    .iter()
                    .filter(|_| rng.random_bool(0.6))
                    .map(|&u| share_user(u))
                    .collect();
                if receivers.is_empty() {
                    receivers.push(share_user(friends[rng.random_range(0..friends.len())]));
                }
                // Now and then a stranger among the receivers: NOT_FRIEND.
                if rng.random_range(0..10) == 0 {
                    receivers.push(share_user(strangers[rng.random_range(0..strangers.len())]));
                }
                PendingShare {
                    rid: format!("{owner}-{n}-{:x}", ctx.seed),
                    receivers,
                    size: rng.random_range(100..=500),
                }
            });
            let call = client.share_media(proto::ShareMediaRequest {
                owner: owner.clone(),
                receivers: req.receivers.clone(),
                size_bytes: req.size,
                ttl_ms: SHARE_TTL_MS,
                request_id: req.rid.clone(),
            });
            let input = json!({
                "rid": req.rid,
                "owner": owner,
                "receivers": req.receivers,
                "size": req.size,
                "ttl_ms": SHARE_TTL_MS,
            });
            let r = op(rec, p, "share", "share", &owner, input, call, |r| {
                let mut v = r.share.as_ref().map(share_value).unwrap_or(json!({}));
                v["replayed"] = json!(r.replayed);
                v
            })
            .await;
            match r {
                Ok(resp) => {
                    let Some(share) = resp.share else { continue };
                    // Some reservations are abandoned: they must expire.
                    let known = held.iter().any(|h| h.share_id == share.share_id);
                    if !known && rng.random_range(0..6) != 0 {
                        held.push(MyShare {
                            share_id: share.share_id,
                            owner_key: resp.owner_key,
                            reserved: share.size_bytes,
                            committed: None,
                            committing: None,
                        });
                    }
                }
                Err(e) if e.is_indeterminate() => pending = Some(req),
                Err(_) => {}
            }
        } else if roll < 50 && held.iter().any(|h| h.committed.is_none()) {
            let open: Vec<usize> = (0..held.len())
                .filter(|&i| held[i].committed.is_none())
                .collect();
            let i = open[rng.random_range(0..open.len())];
            let h = &mut held[i];
            let size = h
                .committing
                .unwrap_or_else(|| rng.random_range(1..=h.reserved));
            let call = client.commit_share(proto::CommitShareRequest {
                share_id: h.share_id,
                owner_key: h.owner_key.clone(),
                size_bytes: size,
            });
            let key = h.share_id.to_string();
            let input = json!({"share_id": h.share_id, "size": size});
            match op(rec, p, "share", "commit", &key, input, call, share_value).await {
                Ok(s) => {
                    h.committed = Some(s.size_bytes);
                    h.committing = None;
                }
                Err(e) if e.is_indeterminate() => h.committing = Some(size),
                // Its reservation expired (SHARE_ENDED), or it is gone.
                Err(_) => {
                    held.remove(i);
                }
            }
        } else if (roll < 62 || held.len() >= SHARE_HELD_MAX) && !held.is_empty() {
            let i = rng.random_range(0..held.len());
            let h = &held[i];
            let key = h.share_id.to_string();
            let input = json!({"share_id": h.share_id});
            let call = client.delete_share(h.share_id, &h.owner_key);
            // Unknown: deleted again later (an ended share is refused,
            // which ends it here too).
            if !matches!(
                op(rec, p, "share", "delete", &key, input, call, |_| json!({})).await,
                Err(e) if e.is_indeterminate()
            ) {
                held.remove(i);
            }
        } else if roll < 80 && held.iter().any(|h| h.committed.is_some()) {
            let done: Vec<&MyShare> = held.iter().filter(|h| h.committed.is_some()).collect();
            let h = done[rng.random_range(0..done.len())];
            // Half the asks from strangers, who must be refused NOT_FRIEND.
            let user = match rng.random_range(0..6) {
                0..=2 => strangers[rng.random_range(0..strangers.len())],
                3 => me,
                _ => friends[rng.random_range(0..friends.len())],
            };
            let user = share_user(user);
            let call = client.access_share(proto::AccessShareRequest {
                share_id: h.share_id,
                user: user.clone(),
                ttl_ms: 60_000,
            });
            let key = h.share_id.to_string();
            let input = json!({"share_id": h.share_id, "user": user, "owner": owner});
            let _ = op(rec, p, "share", "access", &key, input, call, |r| {
                r.share.as_ref().map(share_value).unwrap_or(json!({}))
            })
            .await;
        } else {
            let _ = share_read(&ctx, &client, p, false).await;
        }
        think(&mut rng).await;
    }
}

/// Everything a worker shares.
#[derive(Clone)]
pub struct Context {
    /// The history.
    pub recorder: Recorder,
    /// The founders' client addresses.
    pub endpoints: Vec<String>,
    /// How workers reach them (the cluster's CA and the `root` certificate).
    pub tls: Option<herald_client::ClientTls>,
    /// Becomes true when workers must stop.
    pub stop: watch::Receiver<bool>,
    /// The run's seed.
    pub seed: u64,
    /// Ids for new processes.
    pub next_process: Arc<AtomicU64>,
}

impl Context {
    /// A fresh process id (1, 2, ...; 0 is the nemesis).
    pub fn process(&self) -> u64 {
        self.next_process.fetch_add(1, Ordering::Relaxed)
    }
}

/// Records one operation around `call`.
// The event's fields, the call and how to render its result: all needed.
#[allow(clippy::too_many_arguments)]
async fn op<T, Fut>(
    rec: &Recorder,
    process: u64,
    workload: &str,
    f: &str,
    key: &str,
    input: Value,
    call: Fut,
    output: impl FnOnce(&T) -> Value,
) -> Result<T, ClientError>
where
    Fut: Future<Output = Result<T, ClientError>>,
{
    rec.record(process, EventType::Invoke, workload, f, key, input, None);
    let result = call.await;
    match &result {
        Ok(v) => rec.record(process, EventType::Ok, workload, f, key, output(v), None),
        Err(e) if e.is_indeterminate() => rec.record(
            process,
            EventType::Info,
            workload,
            f,
            key,
            Value::Null,
            Some(e.to_string()),
        ),
        Err(e) => rec.record(
            process,
            EventType::Fail,
            workload,
            f,
            key,
            json!({ "code": format!("{:?}", e.code()), "reason": e.reason_name() }),
            Some(e.to_string()),
        ),
    }
    result
}

fn stopped(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow()
}

/// A short random pause between operations, so a 2-core machine keeps up.
async fn think(rng: &mut StdRng) {
    tokio::time::sleep(Duration::from_millis(rng.random_range(5..25))).await;
}

/// Starts the workers of `workloads`.
pub fn spawn(workloads: &[Workload], setup: &Setup, ctx: &Context, tasks: &mut JoinSet<()>) {
    let n = ctx.endpoints.len();
    for w in workloads {
        match w {
            Workload::Register => {
                for i in 0..5 {
                    tasks.spawn(register_worker(ctx.clone(), ctx.process(), i % n));
                }
            }
            Workload::Pool => {
                for i in 0..4 {
                    tasks.spawn(pool_worker(
                        ctx.clone(),
                        ctx.process(),
                        i % n,
                        setup.pool_id,
                    ));
                }
            }
            Workload::Session => {
                for (s, (session_id, terms)) in setup.sessions.iter().enumerate() {
                    let seq = Arc::new(AtomicU64::new(0));
                    for t in 0..2u64 {
                        tasks.spawn(session_worker(
                            ctx.clone(),
                            ctx.process(),
                            (2 * s + t as usize) % n,
                            *session_id,
                            terms.clone(),
                            t,
                            seq.clone(),
                        ));
                    }
                }
            }
            Workload::Link => {
                for i in 0..4 {
                    tasks.spawn(link_worker(ctx.clone(), ctx.process(), i % n));
                }
            }
            Workload::Share => {
                share_record_setup(ctx);
                for me in 0..SHARE_OWNERS {
                    tasks.spawn(share_worker(ctx.clone(), ctx.process(), me % n, me));
                }
                tasks.spawn(share_beater(ctx.clone(), ctx.process(), SHARE_OWNERS % n));
            }
            Workload::Ttl => {
                for i in 0..TTL_LIVE_USERS {
                    tasks.spawn(ttl_worker(ctx.clone(), ctx.process(), i % n, i, true));
                }
                for i in 0..TTL_SILENT_USERS {
                    tasks.spawn(ttl_worker(ctx.clone(), ctx.process(), i % n, i, false));
                }
            }
        }
    }
}

/// One `ttl` user. Unlike the other workers it routes by owner, as an
/// application using the client library does: the heartbeat goes to the
/// uid's owner first. A live user heartbeats, reads its own presence every
/// fourth turn, and logs in again when told it is not known (or not seen
/// online); a silent user logs in, reads until it is offline, and starts
/// over.
async fn ttl_worker(ctx: Context, process: u64, home: usize, i: usize, live: bool) {
    let mut endpoints = ctx.endpoints.clone();
    let turn_by = home % endpoints.len().max(1);
    endpoints.rotate_left(turn_by);
    let config = ClientConfig {
        route_by_owner: true,
        ..worker_client_config(ctx.tls.clone())
    };
    let Ok(client) = Client::with_config(endpoints, config) else {
        return;
    };
    let uid = if live {
        format!("ttl-live-{i}")
    } else {
        format!("ttl-silent-{i}")
    };
    // Every other user logs in on a named connection (its heartbeats and
    // reads follow that connection's entry), the rest on the client type's
    // one entry, so both forms go through the faults.
    let conn = if i % 2 == 1 {
        format!("conn-{i}")
    } else {
        String::new()
    };
    let online = |r: &Option<proto::PresenceRecord>| {
        r.as_ref().is_some_and(|r| {
            r.clients
                .iter()
                .any(|c| c.client_type == TTL_CLIENT && c.connection_id == conn)
        })
    };
    let rec = &ctx.recorder;
    let mut logged_in = false;
    let mut turn = 0u64;
    while !stopped(&ctx.stop) {
        turn += 1;
        if !logged_in {
            let req = proto::LoginRequest {
                uid: uid.clone(),
                sid: 1,
                client_type: TTL_CLIENT.into(),
                ttl_ms: TTL_MS,
                connection_id: conn.clone(),
                ..Default::default()
            };
            let input = json!({"ttl_ms": TTL_MS, "live": live, "connection": conn});
            let r = op(
                rec,
                process,
                "ttl",
                "login",
                &uid,
                input,
                client.login(req),
                |_| json!({}),
            );
            logged_in = r.await.is_ok();
        } else if live && !turn.is_multiple_of(4) {
            let call = client.heartbeat_connection(uid.clone(), TTL_CLIENT, conn.clone());
            let r = op(
                rec,
                process,
                "ttl",
                "heartbeat",
                &uid,
                json!({}),
                call,
                |k| json!({ "known": *k }),
            );
            if let Ok(false) = r.await {
                logged_in = false;
            }
        } else {
            let call = client.get_presence(uid.clone(), Consistency::Linearizable);
            let r = op(
                rec,
                process,
                "ttl",
                "read",
                &uid,
                json!({}),
                call,
                |r| json!({ "online": online(r) }),
            );
            if let Ok(r) = r.await
                && !online(&r)
            {
                logged_in = false;
            }
        }
        let pause = if live {
            TTL_HEARTBEAT_EVERY
        } else {
            Duration::from_millis(300)
        };
        tokio::time::sleep(pause).await;
    }
}

fn register_key(k: usize) -> String {
    format!("reg-{k}")
}

fn record_value(r: &Option<proto::PresenceRecord>) -> Value {
    match r {
        Some(r) => json!({
            "v": r.ext.get("v").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0),
            "revision": r.revision,
        }),
        None => json!({"v": 0, "revision": 0}),
    }
}

/// A linearizable read of register `key`, recorded; returns the value seen.
pub async fn register_read(
    rec: &Recorder,
    client: &Client,
    p: u64,
    key: &str,
    fin: bool,
) -> Result<u64, ClientError> {
    op(
        rec,
        p,
        "register",
        "read",
        key,
        json!({ "final": fin }),
        client.get_presence(key, Consistency::Linearizable),
        record_value,
    )
    .await
    .map(|r| {
        r.and_then(|r| r.ext.get("v").and_then(|v| v.parse().ok()))
            .unwrap_or(0)
    })
}

/// A login writing `ext.v = v` to register `key`, recorded.
pub async fn register_write(
    rec: &Recorder,
    client: &Client,
    p: u64,
    key: &str,
    v: u64,
) -> Result<(), ClientError> {
    let req = proto::LoginRequest {
        uid: key.to_string(),
        sid: 1,
        client_type: "pc".into(),
        ext: BTreeMap::from([("v".to_string(), v.to_string())])
            .into_iter()
            .collect(),
        ..Default::default()
    };
    op(
        rec,
        p,
        "register",
        "write",
        key,
        json!({ "v": v }),
        client.login(req),
        |r| record_value(&Some(r.clone())),
    )
    .await
    .map(|_| ())
}

async fn register_worker(ctx: Context, p: u64, home: usize) {
    let Ok(client) = client_preferring(&ctx.endpoints, ctx.tls.clone(), home) else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(ctx.seed ^ (p << 32));
    let mut counter = 0u64;
    while !stopped(&ctx.stop) {
        let key = register_key(rng.random_range(0..REGISTER_KEYS));
        if rng.random_bool(0.5) {
            counter += 1;
            let v = p * 1_000_000 + counter;
            let _ = register_write(&ctx.recorder, &client, p, &key, v).await;
        } else {
            let _ = register_read(&ctx.recorder, &client, p, &key, false).await;
        }
        think(&mut rng).await;
    }
}

fn lease_value(r: &proto::LeaseResponse) -> Value {
    match &r.lease {
        Some(l) => json!({"account": l.account, "lease_id": l.lease_id, "replayed": r.replayed}),
        None => json!({}),
    }
}

/// A lease-and-login answer as its lease and whether the login was let in.
fn split_login(r: proto::LeaseAndLoginResponse) -> (proto::LeaseResponse, bool) {
    let ok = r.login.is_some_and(|l| l.ok);
    (r.lease.unwrap_or_default(), ok)
}

/// A listing as the checker reads it: holder and account of each lease (the
/// cluster shows no request ids; the holder names the request, see
/// [`viewer_of`]).
fn leases_value(leases: &[proto::Lease]) -> Value {
    let leases: Vec<Value> = leases
        .iter()
        .map(|l| json!({"holder": l.holder, "account": l.account, "lease_id": l.lease_id}))
        .collect();
    json!({ "leases": leases })
}

/// The viewer a lease request is for: one per request id, so a listing's
/// holder tells the checker which request holds the account.
fn viewer_of(rid: &str) -> String {
    format!("viewer-{rid}")
}

/// A lease this process holds: what renew and release need.
#[derive(Clone)]
struct Held {
    lease_id: u64,
    rid: String,
    user: String,
    /// The latest answer's secret; every answer's works until the lease ends.
    secret: String,
}

async fn pool_list(ctx: &Context, client: &Client, p: u64, pool_id: u64, fin: bool) -> bool {
    op(
        &ctx.recorder,
        p,
        "pool",
        "list",
        &pool_id.to_string(),
        json!({ "final": fin }),
        client.list_leases(pool_id, Consistency::Linearizable),
        |l| leases_value(l),
    )
    .await
    .is_ok()
}

async fn pool_worker(ctx: Context, p: u64, home: usize, pool_id: u64) {
    let Ok(client) = client_preferring(&ctx.endpoints, ctx.tls.clone(), home) else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(ctx.seed ^ (p << 32));
    let key = pool_id.to_string();
    let rec = &ctx.recorder;
    let mut held: Option<Held> = None;
    let mut pending: Option<String> = None;
    let mut counter = 0u64;
    while !stopped(&ctx.stop) {
        match held.clone() {
            None if rng.random_bool(0.8) => {
                let rid = pending.take().unwrap_or_else(|| {
                    counter += 1;
                    format!("{p}-{counter}-{:x}", ctx.seed)
                });
                let user = viewer_of(&rid);
                let req = proto::LeaseRequest {
                    pool_id,
                    user: user.clone(),
                    ttl_ms: LEASE_TTL_MS,
                    request_id: rid.clone(),
                };
                // Now and then the automatic login (P-iptv): the same
                // lease, logged in to the pool's unit in the same call.
                let login = rng.random_bool(0.3);
                let input = json!({"rid": rid, "user": user, "pool_size": POOL_SIZE, "ttl_ms": LEASE_TTL_MS, "login": login});
                let leased = if login {
                    op(
                        rec,
                        p,
                        "pool",
                        "lease",
                        &key,
                        input,
                        async { Ok(split_login(client.lease_and_login(req).await?)) },
                        |(r, ok)| {
                            let mut v = lease_value(r);
                            v["login_ok"] = json!(ok);
                            v
                        },
                    )
                    .await
                    .map(|(r, _)| r)
                } else {
                    op(
                        rec,
                        p,
                        "pool",
                        "lease",
                        &key,
                        input,
                        client.lease_account(req),
                        lease_value,
                    )
                    .await
                };
                match leased {
                    Ok(r) => {
                        held = r.lease.map(|l| Held {
                            lease_id: l.lease_id,
                            rid,
                            user,
                            secret: r.lease_secret,
                        })
                    }
                    // Unknown: retry with the same id, which returns the
                    // lease if the first attempt got one.
                    Err(e) if e.is_indeterminate() => pending = Some(rid),
                    Err(_) => {}
                }
            }
            None => {
                pool_list(&ctx, &client, p, pool_id, false).await;
            }
            Some(Held {
                lease_id,
                rid,
                user,
                secret,
            }) => {
                let roll = rng.random_range(0..10);
                if roll < 4 {
                    let req = proto::RenewRequest {
                        lease_id,
                        user,
                        ttl_ms: LEASE_TTL_MS,
                        lease_secret: secret,
                    };
                    let r = op(
                        rec,
                        p,
                        "pool",
                        "renew",
                        &key,
                        json!({"rid": rid, "ttl_ms": LEASE_TTL_MS}),
                        client.renew_lease(req),
                        |l| json!({"account": l.account}),
                    )
                    .await;
                    if matches!(r, Err(ClientError::FailedPrecondition(_))) {
                        held = None;
                    }
                } else if roll < 8 {
                    let req = proto::ReleaseRequest {
                        lease_id,
                        user,
                        lease_secret: secret,
                    };
                    let r = op(
                        rec,
                        p,
                        "pool",
                        "release",
                        &key,
                        json!({"rid": rid}),
                        client.release_lease(req),
                        |_| json!({}),
                    )
                    .await;
                    // After an unknown outcome, release again: a second
                    // release of an ended lease is refused, which is fine.
                    if matches!(r, Ok(()) | Err(ClientError::FailedPrecondition(_))) {
                        held = None;
                    }
                } else {
                    pool_list(&ctx, &client, p, pool_id, false).await;
                }
            }
        }
        think(&mut rng).await;
    }
}

fn session_value(s: &proto::Session, terms: &[proto::Terminal; 2]) -> Value {
    let t = u64::from(s.terminal.as_ref().is_some_and(|t| t.id == terms[1].id));
    json!({"epoch": s.epoch, "terminal": t, "seq": s.seq})
}

/// A handoff's answer: the session after it, and whether it was accepted.
fn handoff_value(h: &proto::HandoffResponse, terms: &[proto::Terminal; 2]) -> Value {
    let mut v = h
        .session
        .as_ref()
        .map(|s| session_value(s, terms))
        .unwrap_or(json!({}));
    v["accepted"] = json!(h.accepted);
    v
}

async fn session_read(
    ctx: &Context,
    client: &Client,
    p: u64,
    session_id: u64,
    terms: &[proto::Terminal; 2],
    fin: bool,
) -> Option<u64> {
    op(
        &ctx.recorder,
        p,
        "session",
        "get",
        &session_id.to_string(),
        json!({ "final": fin }),
        client.get_session(session_id, Consistency::Linearizable),
        |s| session_value(s, terms),
    )
    .await
    .ok()
    .map(|s| s.epoch)
}

async fn session_worker(
    ctx: Context,
    p: u64,
    home: usize,
    session_id: u64,
    terms: [proto::Terminal; 2],
    me: u64,
    seq: Arc<AtomicU64>,
) {
    let Ok(client) = client_preferring(&ctx.endpoints, ctx.tls.clone(), home) else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(ctx.seed ^ (p << 32));
    let key = session_id.to_string();
    let rec = &ctx.recorder;
    let mine = terms[me as usize].clone();
    let other = terms[1 - me as usize].clone();
    let mut epoch = 1u64;
    while !stopped(&ctx.stop) {
        let roll = rng.random_range(0..10);
        if roll < 6 {
            let n = seq.fetch_add(1, Ordering::Relaxed) + 1;
            let req = proto::ProgressRequest {
                session_id,
                terminal: Some(mine.clone()),
                epoch,
                seq: n,
                progress: n.to_be_bytes().to_vec(),
            };
            let input = json!({"terminal": me, "epoch": epoch, "seq": n});
            let r = op(
                rec,
                p,
                "session",
                "progress",
                &key,
                input,
                client.progress(req),
                |s| session_value(s, &terms),
            )
            .await;
            if let Err(e) = r
                && e.reason() == Some(proto::ErrorReason::Fenced)
                && let Some(e) = session_read(&ctx, &client, p, session_id, &terms, false).await
            {
                epoch = e;
            }
        } else if roll < 8 {
            // Every direction: this terminal pushes the session, sends it
            // through its binding, pulls it naming the other, or pulls it
            // through its binding. `epoch` is what this worker last saw, so
            // a stale one is refused FENCED, which the checker verifies.
            let r = if rng.random_range(0..5) == 0 {
                offer_and_accept(&ctx, &client, p, session_id, &terms, me, epoch).await
            } else {
                let video = |t: &proto::Terminal| proto::Candidate {
                    terminal: Some(t.clone()),
                    capabilities: vec!["video".into()],
                };
                let (mode, from, req) = match rng.random_range(0..4) {
                    0 => (
                        "push",
                        me,
                        proto::HandoffRequest {
                            mode: proto::HandoffMode::Push.into(),
                            candidates: vec![video(&other)],
                            ..Default::default()
                        },
                    ),
                    1 => (
                        "binding",
                        me,
                        proto::HandoffRequest {
                            mode: proto::HandoffMode::Binding.into(),
                            bound_capabilities: vec!["video".into()],
                            ..Default::default()
                        },
                    ),
                    2 => (
                        "pull",
                        1 - me,
                        proto::HandoffRequest {
                            mode: proto::HandoffMode::Pull.into(),
                            holder: Some(other.clone()),
                            candidates: vec![video(&mine)],
                            ..Default::default()
                        },
                    ),
                    _ => (
                        "pull_bound",
                        1 - me,
                        proto::HandoffRequest {
                            mode: proto::HandoffMode::PullBound.into(),
                            candidates: vec![video(&mine)],
                            ..Default::default()
                        },
                    ),
                };
                let req = proto::HandoffRequest {
                    session_id,
                    initiator: Some(mine.clone()),
                    epoch,
                    ..req
                };
                let input = json!({"from": from, "to": 1 - from, "epoch": epoch, "mode": mode});
                op(
                    rec,
                    p,
                    "session",
                    "handoff",
                    &key,
                    input,
                    client.handoff(req),
                    |h| handoff_value(h, &terms),
                )
                .await
            };
            match r {
                Ok(h) if h.accepted => epoch = h.session.map_or(epoch, |s| s.epoch),
                // Only sometimes: a worker that always caught up would
                // never send a stale handoff.
                Err(e)
                    if e.reason() == Some(proto::ErrorReason::Fenced)
                        && rng.random_range(0..2) == 0 =>
                {
                    if let Some(e) = session_read(&ctx, &client, p, session_id, &terms, false).await
                    {
                        epoch = e;
                    }
                }
                _ => {}
            }
        } else if let Some(e) = session_read(&ctx, &client, p, session_id, &terms, false).await {
            epoch = e;
        }
        think(&mut rng).await;
    }
}

/// The two-step handoff: terminal `me` offers the session to the other at
/// the epoch it saw, and the other accepts, confirming its capabilities.
/// Only the accept is recorded, as a handoff from `me` at the offer's
/// epoch: an offer outlived by a handoff must end with it, so its accept is
/// refused, which is the fencing the checker verifies. A refused offer
/// (fenced, not the holder) is returned as the handoff's refusal.
async fn offer_and_accept(
    ctx: &Context,
    client: &Client,
    p: u64,
    session_id: u64,
    terms: &[proto::Terminal; 2],
    me: u64,
    epoch: u64,
) -> Result<proto::HandoffResponse, ClientError> {
    let other = &terms[1 - me as usize];
    let offered = client
        .offer_handoff(proto::OfferHandoffRequest {
            session_id,
            initiator: Some(terms[me as usize].clone()),
            epoch,
            to: Some(other.clone()),
            ttl_ms: OFFER_TTL_MS,
        })
        .await?;
    let offer_id = offered.offer.map_or(0, |o| o.offer_id);
    let req = proto::AcceptHandoffRequest {
        session_id,
        offer_id,
        terminal: Some(other.clone()),
        capabilities: vec!["video".into()],
    };
    let input = json!({"from": me, "to": 1 - me, "epoch": epoch, "mode": "offer"});
    op(
        &ctx.recorder,
        p,
        "session",
        "handoff",
        &session_id.to_string(),
        input,
        client.accept_handoff(req),
        |h| handoff_value(h, terms),
    )
    .await
}

/// After healing: one successful linearizable read of every key, retried
/// until `timeout`. Returns the keys that could not be read.
pub async fn final_reads(
    workloads: &[Workload],
    setup: &Setup,
    ctx: &Context,
    timeout: Duration,
) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + timeout;
    let p = ctx.process();
    let Ok(client) = client_preferring(&ctx.endpoints, ctx.tls.clone(), 0) else {
        return vec!["client".into()];
    };
    let mut missing = Vec::new();
    let mut keys: Vec<(Workload, String)> = Vec::new();
    for w in workloads {
        match w {
            Workload::Register => {
                keys.extend((0..REGISTER_KEYS).map(|k| (*w, register_key(k))));
            }
            Workload::Pool => keys.push((*w, setup.pool_id.to_string())),
            Workload::Session => {
                keys.extend(setup.sessions.iter().map(|(id, _)| (*w, id.to_string())));
            }
            Workload::Link => keys.extend((0..LINK_ITEMS).map(|i| (*w, link_item_id(i)))),
            Workload::Share => keys.push((*w, "storage".into())),
            // Checked from the workers' own reads and heartbeats.
            Workload::Ttl => {}
        }
    }
    for (w, key) in keys {
        loop {
            let done = match w {
                Workload::Register => register_read(&ctx.recorder, &client, p, &key, true)
                    .await
                    .is_ok(),
                Workload::Pool => pool_list(ctx, &client, p, setup.pool_id, true).await,
                Workload::Session => {
                    let id: u64 = key.parse().unwrap_or(0);
                    let terms = setup
                        .sessions
                        .iter()
                        .find(|(s, _)| *s == id)
                        .map(|(_, t)| t.clone())
                        .unwrap_or_else(|| terminals(0));
                    session_read(ctx, &client, p, id, &terms, true)
                        .await
                        .is_some()
                }
                Workload::Link => link_read(ctx, &client, p, &key, true).await,
                Workload::Share => share_read(ctx, &client, p, true).await,
                Workload::Ttl => true, // no keys
            };
            if done {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                missing.push(key);
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imeis_pass_the_luhn_check() {
        // The example IMEI from the node's tests.
        assert_eq!(luhn_imei(49_015_420_323_751), "490154203237518");
        assert_eq!(luhn_imei(35_000_000_000_000).len(), 15);
    }
}
