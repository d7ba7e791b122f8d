//! Issue 20's linked-catalog scenario (P-link): load N items into a linked
//! catalog pair, then measure count updates per second and the latency of a
//! top-20 linked lookup, on Herald and on etcd doing the nearest
//! equivalent.
//!
//! Herald: catalogs `album` and `shop` joined by the rule `camera`
//! (`album.camera_model` ↔ `shop.model`); one album item `a0` with
//! `camera_model=m0`, and N shop items `i00000000..` all with `model=m0`,
//! so a lookup from `a0` ranks the whole shop (the worst case: every item
//! is a candidate). Items are loaded with concurrent unary `PutItem` calls
//! (Herald has no batched form of it, and the client library coalesces
//! presence calls only). A count update is one `Count` (a selection, or a
//! purchase one time in ten) with a fresh request id; a lookup is one
//! linearizable `LinkedLookup` ranked by score, limit 20.
//!
//! etcd has no ranking and no increment, so the nearest equivalent is:
//! each item under `/link/shop/<id>` with its counts in the value; loading
//! in txns of 100 puts; a count update is a read-modify-write — a get of
//! the item, then a txn that puts the new counts and a `/link/req/<request
//! id>` marker only if the item's `mod_revision` is unchanged and the
//! marker does not exist yet (exactly once, like Herald's request ids;
//! retried from the get on a conflict); a lookup is a range read of the
//! whole prefix in pages of [`ETCD_PAGE`] keys at the first page's
//! revision (one consistent snapshot), then a client-side sort by score
//! and the first 20.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use etcd_client::{Compare, CompareOp, GetOptions, KvClient, Txn, TxnOp};
use herald_client::new_request_id;
use herald_client::proto::{self, Consistency};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::etcd::EtcdCluster;
use crate::herald::HeraldCluster;
use crate::procfs;
use crate::report::{ETCD, HERALD, LinkResult};
use crate::stats::{Latencies, Summary};
use crate::target::Target;

/// Items a lookup answers.
pub const TOP: usize = 20;
/// The catalog the items are in.
pub const SHOP: &str = "shop";
/// The catalog lookups start from.
pub const ALBUM: &str = "album";
/// The link rule between them.
pub const RULE: &str = "camera";
/// The one album item lookups start from.
pub const ALBUM_ITEM: &str = "a0";
/// The model every shop item has (and the album item's camera).
pub const MODEL: &str = "m0";
/// The shop's score weights: `selections * 1 + purchases * 5`.
pub const SELECTION_WEIGHT: u64 = 1;
/// See [`SELECTION_WEIGHT`].
pub const PURCHASE_WEIGHT: u64 = 5;
/// Count updates that are purchases, in percent (the rest are selections).
pub const PURCHASE_PERCENT: u64 = 10;
/// etcd's items prefix.
pub const ETCD_ITEMS: &str = "/link/shop/";
/// etcd's request-id markers prefix.
pub const ETCD_REQUESTS: &str = "/link/req/";
/// Keys per page of etcd's range read (about 40 bytes each in the answer,
/// well under the client's 4 MiB message limit).
pub const ETCD_PAGE: i64 = 10_000;
/// Puts per etcd txn while loading (etcd's default limit is 128).
pub const ETCD_LOAD_BATCH: u64 = 100;

/// The id of shop item number `n`: fixed width, so ids sort by number.
pub fn item_id(n: u64) -> String {
    format!("i{n:08}")
}

/// The etcd key of shop item number `n`.
pub fn etcd_item_key(n: u64) -> String {
    format!("{ETCD_ITEMS}{}", item_id(n))
}

/// An item's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Selections counted.
    pub selections: u64,
    /// Purchases counted.
    pub purchases: u64,
}

impl Counts {
    /// The shop's weighted score.
    pub fn score(&self) -> u64 {
        self.selections * SELECTION_WEIGHT + self.purchases * PURCHASE_WEIGHT
    }

    /// The counts after one more event.
    pub fn counted(self, purchase: bool) -> Counts {
        if purchase {
            Counts {
                purchases: self.purchases + 1,
                ..self
            }
        } else {
            Counts {
                selections: self.selections + 1,
                ..self
            }
        }
    }

    /// etcd's value: `<selections> <purchases> model=<model>` (the item's
    /// attribute is stored too, as on Herald).
    pub fn encode(&self) -> String {
        format!("{} {} model={MODEL}", self.selections, self.purchases)
    }

    /// The counts in an etcd value written by [`Counts::encode`].
    pub fn decode(value: &[u8]) -> Option<Counts> {
        let text = std::str::from_utf8(value).ok()?;
        let mut parts = text.split(' ');
        let selections = parts.next()?.parse().ok()?;
        let purchases = parts.next()?.parse().ok()?;
        Some(Counts {
            selections,
            purchases,
        })
    }
}

/// The best `k` items: by score, highest first; among equal scores the
/// smaller id (the item loaded first, as Herald breaks ties). A full sort,
/// as a client of a store without a ranking index would do it.
pub fn top_k(mut items: Vec<(Vec<u8>, Counts)>, k: usize) -> Vec<(Vec<u8>, Counts)> {
    items.sort_unstable_by(|a, b| b.1.score().cmp(&a.1.score()).then_with(|| a.0.cmp(&b.0)));
    items.truncate(k);
    items
}

/// Whether a count update with random draw `r` is a purchase.
pub fn is_purchase(r: u64) -> bool {
    (r >> 40) % 100 < PURCHASE_PERCENT
}

/// The key after every key that starts with `prefix` (etcd's range end).
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The settings of the scenario.
#[derive(Debug, Clone)]
pub struct LinkPlan {
    /// Shop items to load.
    pub items: u64,
    /// Time limit of the load; the rest runs on what got loaded.
    pub load_limit: Duration,
    /// Warm-up before each measured window.
    pub warmup: Duration,
    /// Each measured window.
    pub duration: Duration,
    /// Lookups measured at least, even past the window (etcd's lookups of
    /// a large catalog take seconds each).
    pub min_lookups: u64,
    /// Client connections.
    pub connections: usize,
    /// Count updates in flight.
    pub count_concurrency: usize,
    /// Lookups in flight.
    pub lookup_concurrency: usize,
    /// Seed of the item choices (the same for both systems).
    pub seed: u64,
}

/// Herald's PutItem calls in flight while loading.
const HERALD_LOAD_CONCURRENCY: usize = 256;
/// etcd's txns of [`ETCD_LOAD_BATCH`] puts in flight while loading.
const ETCD_LOAD_CONCURRENCY: usize = 16;

/// How [`load`] went.
struct Loaded {
    items: u64,
    errors: u64,
    first_error: Option<String>,
    seconds: f64,
}

/// Runs `op(worker, unit)` for every unit of `0..units` through
/// `concurrency` workers; `op` answers how many items its unit loaded. No
/// new unit starts after `limit`. Progress on stderr.
async fn load<F, Fut>(label: &str, units: u64, concurrency: usize, limit: Duration, op: F) -> Loaded
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<u64>> + Send,
{
    let started = Instant::now();
    let deadline = started + limit;
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let items = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for worker in 0..concurrency.max(1) {
        let (op, next, items) = (op.clone(), next.clone(), items.clone());
        tasks.push(tokio::spawn(async move {
            let mut errors = 0u64;
            let mut first_error = None;
            while Instant::now() < deadline {
                let unit = next.fetch_add(1, Ordering::Relaxed);
                if unit >= units {
                    break;
                }
                match op(worker, unit).await {
                    Ok(n) => {
                        items.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
            (errors, first_error)
        }));
    }
    let all = futures::future::join_all(tasks);
    tokio::pin!(all);
    let results = loop {
        tokio::select! {
            r = &mut all => break r,
            () = tokio::time::sleep(Duration::from_secs(10)) => {
                let n = items.load(Ordering::Relaxed);
                eprintln!(
                    "  {label}: {n} items, {:.0}/s",
                    n as f64 / started.elapsed().as_secs_f64().max(1e-9)
                );
            }
        }
    };
    let mut loaded = Loaded {
        items: items.load(Ordering::Relaxed),
        errors: 0,
        first_error: None,
        seconds: started.elapsed().as_secs_f64(),
    };
    for r in results {
        match r {
            Ok((e, first)) => {
                loaded.errors += e;
                loaded.first_error = loaded.first_error.or(first);
            }
            Err(e) => loaded.first_error = loaded.first_error.or(Some(format!("worker: {e}"))),
        }
    }
    loaded
}

/// What a closed loop measured.
struct Measured {
    summary: Summary,
    /// The sum of what the operations reported (etcd's txn conflicts).
    extra: u64,
    first_error: Option<String>,
}

/// `concurrency` workers, each calling `op(worker, random)` one at a time
/// for `warmup`, then measured for `duration` and until `min_samples`
/// operations were measured; the window is from the end of the warm-up to
/// the last measured completion.
async fn closed_loop<F, Fut>(
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    min_samples: u64,
    seed: u64,
    op: F,
) -> Measured
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<u64>> + Send,
{
    let measure_from = Instant::now() + warmup;
    let end = measure_from + duration;
    let op = Arc::new(op);
    let samples = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for worker in 0..concurrency.max(1) {
        let (op, samples) = (op.clone(), samples.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add(worker as u64));
            let mut latencies = Latencies::new();
            let (mut errors, mut extra, mut first_error) = (0u64, 0u64, None);
            let mut last = measure_from;
            loop {
                let sent = Instant::now();
                if sent >= end && samples.load(Ordering::Relaxed) >= min_samples {
                    break;
                }
                let result = op(worker, rng.random()).await;
                let done = Instant::now();
                let measured = sent >= measure_from;
                match result {
                    Ok(x) if measured => {
                        latencies.record(done - sent);
                        samples.fetch_add(1, Ordering::Relaxed);
                        extra += x;
                        last = last.max(done);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if measured {
                            errors += 1;
                        }
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
            (latencies, errors, extra, first_error, last)
        }));
    }
    let mut latencies = Latencies::new();
    let (mut errors, mut extra, mut first_error, mut last) = (0, 0, None, measure_from);
    for t in tasks {
        match t.await {
            Ok((l, e, x, f, at)) => {
                latencies.merge(&l);
                errors += e;
                extra += x;
                first_error = first_error.or(f);
                last = last.max(at);
            }
            Err(e) => first_error = first_error.or(Some(format!("worker: {e}"))),
        }
    }
    let window = (last - measure_from).max(duration);
    Measured {
        summary: Summary::new(&latencies, errors, window),
        extra,
        first_error,
    }
}

/// VmRSS of each named process, bytes.
fn rss(pids: &[(String, Option<u32>)]) -> BTreeMap<String, u64> {
    pids.iter()
        .filter_map(|(name, pid)| Some((name.clone(), procfs::status_bytes((*pid)?, "VmRSS")?)))
        .collect()
}

fn herald_pids(cluster: &HeraldCluster) -> Vec<(String, Option<u32>)> {
    cluster
        .ids()
        .into_iter()
        .map(|id| (format!("node{id}"), cluster.pid(id)))
        .collect()
}

fn etcd_pids(cluster: &EtcdCluster) -> Vec<(String, Option<u32>)> {
    cluster
        .pids()
        .into_iter()
        .enumerate()
        .map(|(i, pid)| (format!("etcd{i}"), Some(pid)))
        .collect()
}

/// Prints a measured window's line.
fn say(system: &str, what: &str, m: &Measured) {
    let s = &m.summary;
    eprintln!(
        "  {system} link {what:<14} {:>9.1} ops/s  p50 {:>8.2} ms  p99 {:>8.2} ms  ({} ops, {} errors)",
        s.throughput, s.p50_ms, s.p99_ms, s.ops, s.errors
    );
    if let Some(e) = &m.first_error {
        eprintln!("    first error: {e}");
    }
}

/// The scenario on a fresh Herald cluster.
pub async fn herald(cluster: &HeraldCluster, plan: &LinkPlan) -> Result<LinkResult> {
    let leader = cluster.leader(Duration::from_secs(10)).await?;
    let clients = match Target::herald(
        &cluster.endpoints(),
        cluster.index_of(leader),
        plan.connections,
        false,
        cluster.client_tls(),
    )? {
        Target::Herald(clients) => Arc::new(clients),
        Target::Etcd(_) => unreachable!("Target::herald makes Herald clients"),
    };
    let admin = &clients[0];
    for (name, sw, pw) in [(ALBUM, 1, 1), (SHOP, SELECTION_WEIGHT, PURCHASE_WEIGHT)] {
        admin
            .create_catalog(proto::Catalog {
                name: name.into(),
                selection_weight: u32::try_from(sw)?,
                purchase_weight: u32::try_from(pw)?,
                items: 0,
            })
            .await
            .with_context(|| format!("creating catalog {name}"))?;
    }
    admin
        .add_link_rule(proto::LinkRule {
            name: RULE.into(),
            left: Some(proto::LinkSide {
                catalog: ALBUM.into(),
                attr: "camera_model".into(),
            }),
            right: Some(proto::LinkSide {
                catalog: SHOP.into(),
                attr: "model".into(),
            }),
        })
        .await
        .context("adding the link rule")?;
    admin
        .put_item(herald_item(ALBUM, ALBUM_ITEM.into(), "camera_model"))
        .await
        .context("adding the album item")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = rss(&herald_pids(cluster));

    eprintln!(
        "  herald: loading {} shop items ({HERALD_LOAD_CONCURRENCY} PutItem in flight)",
        plan.items
    );
    let c = clients.clone();
    let loaded = load(
        "herald",
        plan.items,
        HERALD_LOAD_CONCURRENCY,
        plan.load_limit,
        move |w, n| {
            let c = c.clone();
            async move {
                c[w % c.len()]
                    .put_item(herald_item(SHOP, item_id(n), "model"))
                    .await?;
                Ok(1)
            }
        },
    )
    .await;
    eprintln!(
        "  herald: {} items in {:.1} s, {} errors",
        loaded.items, loaded.seconds, loaded.errors
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = rss(&herald_pids(cluster));
    let items = loaded.items.max(1);

    let c = clients.clone();
    let counts = closed_loop(
        plan.count_concurrency,
        plan.warmup,
        plan.duration,
        0,
        plan.seed,
        move |w, r| {
            let c = c.clone();
            async move {
                let kind = if is_purchase(r) {
                    proto::CountKind::Purchase
                } else {
                    proto::CountKind::Selection
                };
                c[w % c.len()]
                    .count(proto::CountRequest {
                        catalog: SHOP.into(),
                        item_id: item_id(r % items),
                        kind: kind as i32,
                        request_id: new_request_id(),
                    })
                    .await?;
                Ok(0)
            }
        },
    )
    .await;
    say(HERALD, "count updates", &counts);

    let c = clients.clone();
    let expect = usize::try_from(loaded.items).unwrap_or(usize::MAX).min(TOP);
    let lookups = closed_loop(
        plan.lookup_concurrency,
        plan.warmup,
        plan.duration,
        plan.min_lookups,
        plan.seed ^ 0x100c,
        move |w, _| {
            let c = c.clone();
            async move {
                let resp = c[w % c.len()].linked_lookup(herald_lookup()).await?;
                let ranks: Vec<u64> = resp.items.iter().map(|i| i.rank).collect();
                check_top(&ranks, expect)?;
                Ok(0)
            }
        },
    )
    .await;
    say(HERALD, "top-20 lookups", &lookups);
    let top = clients[0].linked_lookup(herald_lookup()).await?;

    Ok(LinkResult {
        system: HERALD.into(),
        target_items: plan.items,
        items: loaded.items,
        load_seconds: loaded.seconds,
        load_errors: loaded.errors,
        load_method: format!("unary PutItem, {HERALD_LOAD_CONCURRENCY} in flight"),
        rss_before,
        rss_after,
        count_concurrency: plan.count_concurrency,
        counts: counts.summary,
        count_conflicts: 0,
        lookup_concurrency: plan.lookup_concurrency,
        lookups: lookups.summary,
        top_score: top.items.first().map_or(0, |i| i.rank),
        first_error: loaded
            .first_error
            .or(counts.first_error)
            .or(lookups.first_error),
    })
}

fn herald_item(catalog: &str, id: String, attr: &str) -> proto::CatalogItem {
    proto::CatalogItem {
        catalog: catalog.into(),
        item_id: id,
        attrs: vec![proto::ItemAttr {
            key: attr.into(),
            value: MODEL.into(),
        }],
        ..Default::default()
    }
}

fn herald_lookup() -> proto::LinkedLookupRequest {
    proto::LinkedLookupRequest {
        from_catalog: ALBUM.into(),
        item_id: ALBUM_ITEM.into(),
        to_catalog: SHOP.into(),
        rank_by: proto::RankBy::Score as i32,
        limit: TOP as u32,
        consistency: Consistency::Linearizable as i32,
        ..Default::default()
    }
}

/// A lookup answered `expect` items, best first.
pub fn check_top(ranks: &[u64], expect: usize) -> Result<()> {
    if ranks.len() != expect {
        bail!("lookup answered {} items, expected {expect}", ranks.len());
    }
    if ranks.windows(2).any(|w| w[0] < w[1]) {
        bail!("lookup answered ranks out of order: {ranks:?}");
    }
    Ok(())
}

/// The scenario on a fresh etcd cluster.
pub async fn etcd(cluster: &EtcdCluster, plan: &LinkPlan) -> Result<LinkResult> {
    let leader = cluster.leader_index(Duration::from_secs(10)).await?;
    let kvs: Arc<Vec<KvClient>> = match Target::etcd(
        &cluster.endpoints(),
        leader,
        plan.connections,
        cluster.tls_options()?,
    )
    .await?
    {
        Target::Etcd(conns) => Arc::new(conns.iter().map(|c| c.kv()).collect()),
        Target::Herald(_) => unreachable!("Target::etcd makes etcd clients"),
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = rss(&etcd_pids(cluster));

    let n = plan.items;
    let units = n.div_ceil(ETCD_LOAD_BATCH);
    eprintln!(
        "  etcd: loading {n} items (txns of {ETCD_LOAD_BATCH} puts, {ETCD_LOAD_CONCURRENCY} in flight)"
    );
    let k = kvs.clone();
    let loaded = load(
        "etcd",
        units,
        ETCD_LOAD_CONCURRENCY,
        plan.load_limit,
        move |w, unit| {
            let mut kv = k[w % k.len()].clone();
            async move {
                let first = unit * ETCD_LOAD_BATCH;
                let last = (first + ETCD_LOAD_BATCH).min(n);
                let value = Counts::default().encode();
                let ops: Vec<TxnOp> = (first..last)
                    .map(|i| TxnOp::put(etcd_item_key(i), value.clone(), None))
                    .collect();
                kv.txn(Txn::new().and_then(ops)).await?;
                Ok(last - first)
            }
        },
    )
    .await;
    eprintln!(
        "  etcd: {} items in {:.1} s, {} errors",
        loaded.items, loaded.seconds, loaded.errors
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = rss(&etcd_pids(cluster));
    // Under a time limit the loaded items are the first ones, give or take
    // the txns in flight when it struck (count updates then may miss).
    let items = loaded.items.max(1);

    let k = kvs.clone();
    let counts = closed_loop(
        plan.count_concurrency,
        plan.warmup,
        plan.duration,
        0,
        plan.seed,
        move |w, r| {
            let kv = k[w % k.len()].clone();
            async move { etcd_count(kv, r % items, is_purchase(r), &new_request_id()).await }
        },
    )
    .await;
    say(ETCD, "count updates", &counts);

    let k = kvs.clone();
    let expect = usize::try_from(loaded.items).unwrap_or(usize::MAX).min(TOP);
    let lookups = closed_loop(
        plan.lookup_concurrency,
        plan.warmup,
        plan.duration,
        plan.min_lookups,
        plan.seed ^ 0x100c,
        move |w, _| {
            let kv = k[w % k.len()].clone();
            async move {
                let top = etcd_lookup(kv).await?;
                let ranks: Vec<u64> = top.iter().map(|(_, c)| c.score()).collect();
                check_top(&ranks, expect)?;
                Ok(0)
            }
        },
    )
    .await;
    say(ETCD, "top-20 lookups", &lookups);
    let top = etcd_lookup(kvs[0].clone()).await?;

    Ok(LinkResult {
        system: ETCD.into(),
        target_items: plan.items,
        items: loaded.items,
        load_seconds: loaded.seconds,
        load_errors: loaded.errors,
        load_method: format!("txns of {ETCD_LOAD_BATCH} puts, {ETCD_LOAD_CONCURRENCY} in flight"),
        rss_before,
        rss_after,
        count_concurrency: plan.count_concurrency,
        counts: counts.summary,
        count_conflicts: counts.extra,
        lookup_concurrency: plan.lookup_concurrency,
        lookups: lookups.summary,
        top_score: top.first().map_or(0, |(_, c)| c.score()),
        first_error: loaded
            .first_error
            .or(counts.first_error)
            .or(lookups.first_error),
    })
}

/// One count update on etcd, exactly once per request id: get the item,
/// then put its new counts and the request marker if neither changed;
/// again from the get on a conflict. Answers the conflicts it met.
async fn etcd_count(mut kv: KvClient, n: u64, purchase: bool, request_id: &str) -> Result<u64> {
    let key = etcd_item_key(n);
    let marker = format!("{ETCD_REQUESTS}{request_id}");
    let mut conflicts = 0;
    loop {
        let got = kv.get(key.as_str(), None).await?;
        let current = got
            .kvs()
            .first()
            .ok_or_else(|| anyhow!("etcd: no item {key}"))?;
        let counts = Counts::decode(current.value())
            .ok_or_else(|| anyhow!("etcd: {key} holds no counts"))?;
        let txn = Txn::new()
            .when([
                Compare::mod_revision(key.as_str(), CompareOp::Equal, current.mod_revision()),
                Compare::version(marker.as_str(), CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::put(key.as_str(), counts.counted(purchase).encode(), None),
                TxnOp::put(marker.as_str(), key.as_str(), None),
            ]);
        if kv.txn(txn).await?.succeeded() {
            return Ok(conflicts);
        }
        let replay = kv.get(marker.as_str(), None).await?;
        if !replay.kvs().is_empty() {
            // Counted by an earlier attempt: nothing more to do.
            return Ok(conflicts);
        }
        conflicts += 1;
    }
}

/// The top 20 on etcd: the whole items prefix in pages at one revision,
/// sorted client-side.
async fn etcd_lookup(mut kv: KvClient) -> Result<Vec<(Vec<u8>, Counts)>> {
    let end = prefix_end(ETCD_ITEMS);
    let mut start = ETCD_ITEMS.as_bytes().to_vec();
    let mut revision = 0;
    let mut items = Vec::new();
    loop {
        let mut options = GetOptions::new()
            .with_range(end.clone())
            .with_limit(ETCD_PAGE);
        if revision > 0 {
            options = options.with_revision(revision);
        }
        let page = kv.get(start.clone(), Some(options)).await?;
        if revision == 0 {
            revision = page.header().map_or(0, |h| h.revision());
        }
        for kv in page.kvs() {
            let counts = Counts::decode(kv.value())
                .ok_or_else(|| anyhow!("etcd: {:?} holds no counts", kv.key_str()))?;
            items.push((kv.key().to_vec(), counts));
        }
        match page.kvs().last() {
            Some(last) if page.more() => {
                start = last.key().to_vec();
                start.push(0);
            }
            _ => break,
        }
    }
    Ok(top_k(items, TOP))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_round_trip_through_etcd_values() {
        let c = Counts {
            selections: 12,
            purchases: 3,
        };
        assert_eq!(c.encode(), "12 3 model=m0");
        assert_eq!(Counts::decode(c.encode().as_bytes()), Some(c));
        assert_eq!(Counts::decode(b"x 3"), None);
        assert_eq!(Counts::decode(b"7"), None);
        assert_eq!(c.score(), 12 + 3 * PURCHASE_WEIGHT);
        assert_eq!(c.counted(true).purchases, 4);
        assert_eq!(c.counted(false).selections, 13);
    }

    #[test]
    fn top_k_ranks_by_score_then_first_id() {
        let c = |s, p| Counts {
            selections: s,
            purchases: p,
        };
        let items = vec![
            (b"i3".to_vec(), c(1, 0)),
            (b"i1".to_vec(), c(5, 0)),
            (b"i2".to_vec(), c(0, 1)),
            (b"i0".to_vec(), c(2, 0)),
        ];
        let top = top_k(items, 3);
        let ids: Vec<&[u8]> = top.iter().map(|(k, _)| k.as_slice()).collect();
        // i1 and i2 both score 5: the smaller id first.
        assert_eq!(ids, [&b"i1"[..], b"i2", b"i0"]);
    }

    #[test]
    fn ids_sort_by_number_and_prefix_end_bounds_the_prefix() {
        assert!(item_id(9) < item_id(10));
        assert_eq!(etcd_item_key(7), "/link/shop/i00000007");
        let end = prefix_end(ETCD_ITEMS);
        assert_eq!(end, b"/link/shop0");
        assert!(etcd_item_key(u64::from(u32::MAX)).as_bytes() < end.as_slice());
        assert!(format!("{ETCD_REQUESTS}x").as_bytes() < ETCD_ITEMS.as_bytes());
    }

    #[test]
    fn check_top_wants_the_count_and_the_order() {
        assert!(check_top(&[5, 5, 3], 3).is_ok());
        assert!(check_top(&[5, 6], 2).is_err());
        assert!(check_top(&[5], 2).is_err());
    }

    #[test]
    fn about_one_count_in_ten_is_a_purchase() {
        let mut rng = StdRng::seed_from_u64(1);
        let purchases = (0..10_000).filter(|_| is_purchase(rng.random())).count();
        assert!((800..1200).contains(&purchases), "{purchases}");
    }
}
