//! Faults and their schedules.
//!
//! Each fault is applied, held for a while, and healed; the history gets a
//! nemesis `invoke` when it starts and an `ok` (with what exactly was done)
//! when it is healed, which is what the plots shade.
//!
//! | name            | what it does |
//! |-----------------|--------------|
//! | `isolate-leader`| cuts every link to and from the current leader |
//! | `split`         | random minority / majority halves |
//! | `bridge`        | two halves that only one node connects |
//! | `one-way`       | the leader's outgoing links only (it hears, nobody hears it) |
//! | `flapping`      | a new random split or a heal every 0.3–0.8 s |
//! | `delay`         | 50–200 ms on every link |
//! | `kill-one`      | SIGKILL one node (the leader half the time), restart it |
//! | `pause`         | SIGSTOP one node (the leader half the time), SIGCONT |
//! | `kill-all`      | SIGKILL every node, restart them all |
//! | `clock`         | skew nodes' cluster clocks by up to ±5 s, jump the leader's |
//! | `clock-jump`    | jump the leader's clock 3 h forward (any node's without a leader); entry time must not follow |
//! | `membership`    | add the spare node (learner, then voter); next time remove it |
//! | `crash-lose-unsynced` | SIGKILL one node (a third of the time all), drop every write it had not fsynced, restart |
//! | `disk-eio`      | one node's fsyncs (or writes and fsyncs) fail with EIO: it must exit non-zero, the others keep a leader |
//! | `disk-full`     | one node's disk answers ENOSPC and shows no free space: it must refuse writes or exit non-zero, the others keep a leader |
//! | `bitflip`       | stop one node, flip a bit in a log record in the middle of its log: it must refuse to start; then wipe it and replace it |
//! | `wipe-and-replace` | stop one node, empty its data dir, start it, replace it (remove, add as learner, promote) |
//! | `snapshot-storm`| cut a follower off until the leader has purged its log past it (runs with `snapshot_every` 20 and no log kept), heal: it must catch up from a snapshot |
//!
//! The first three need the [`faultfs`](crate::faultfs) mounts; without
//! FUSE they are skipped, and the history says why. A failed expectation
//! of a disk fault (a corrupted node that starts, a failed disk that does
//! not stop its node, a cluster without a leader while one disk is bad) is
//! a `disk` anomaly and makes the run invalid.
//!
//! Cut links are either stalled (bytes held, TCP survives) or dropped
//! (connections reset), chosen at random per fault.

use std::str::FromStr;
use std::time::Duration;

use anyhow::{Result, bail};
use herald_client::{Client, ClientConfig};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::checker::Anomaly;
use crate::cluster::Cluster;
use crate::history::{EventType, NEMESIS, Recorder};
use crate::proxy::LinkMode;

/// The shortest hold of a link cut: long enough for a node's own judgement
/// of its peers to turn into an expiry (the ring's down-after, 1.5 s, then
/// one TTL of the `ttl` workload, 4 s), so a cluster that lets each node
/// decide ownership alone shows it (issue 23 item 9).
pub const LINK_CUT_HOLD: Duration = Duration::from_secs(7);

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// Cut the leader off.
    IsolateLeader,
    /// Minority / majority.
    Split,
    /// Two halves joined by one node.
    Bridge,
    /// The leader cannot send.
    OneWay,
    /// The links between two followers cut, both still reaching the leader
    /// (a partial partition: each sees the other down, the leader sees
    /// both up).
    LinkCut,
    /// Random splits and heals in quick succession.
    Flapping,
    /// Slow links.
    Delay,
    /// SIGKILL and restart one node.
    Kill,
    /// SIGSTOP / SIGCONT one node.
    Pause,
    /// SIGKILL every node and restart them.
    KillAll,
    /// Clock skew and jumps.
    Clock,
    /// One clock (the leader's) jumps hours forward.
    ClockJump,
    /// Add or remove a node.
    Membership,
    /// SIGKILL and lose what was not fsynced.
    CrashLoseUnsynced,
    /// fsync / writes fail with EIO.
    DiskEio,
    /// ENOSPC.
    DiskFull,
    /// A flipped bit in a stopped node's log, then the replace flow.
    Bitflip,
    /// A lost disk, then the replace flow.
    WipeReplace,
    /// A follower that needs a snapshot to catch up.
    SnapshotStorm,
    /// Two faults at once: a random split, and while it holds one node is
    /// killed and restarted (it comes back into the partition).
    PartitionKill,
}

impl Fault {
    /// Every fault, in the smoke run's order.
    pub const ALL: [Fault; 20] = [
        Fault::IsolateLeader,
        Fault::Split,
        Fault::Bridge,
        Fault::OneWay,
        Fault::LinkCut,
        Fault::Flapping,
        Fault::Delay,
        Fault::Kill,
        Fault::Pause,
        Fault::Clock,
        Fault::ClockJump,
        Fault::Membership,
        Fault::KillAll,
        Fault::CrashLoseUnsynced,
        Fault::DiskEio,
        Fault::DiskFull,
        Fault::Bitflip,
        Fault::WipeReplace,
        Fault::SnapshotStorm,
        Fault::PartitionKill,
    ];

    /// The `disk` group.
    pub const DISK: [Fault; 6] = [
        Fault::CrashLoseUnsynced,
        Fault::DiskEio,
        Fault::DiskFull,
        Fault::Bitflip,
        Fault::WipeReplace,
        Fault::SnapshotStorm,
    ];

    /// The faults that need the faultfs mounts.
    pub const FUSE: [Fault; 3] = [Fault::CrashLoseUnsynced, Fault::DiskEio, Fault::DiskFull];

    /// Its name in histories and reports.
    pub fn name(self) -> &'static str {
        match self {
            Fault::IsolateLeader => "isolate-leader",
            Fault::Split => "split",
            Fault::Bridge => "bridge",
            Fault::OneWay => "one-way",
            Fault::LinkCut => "link-cut",
            Fault::Flapping => "flapping",
            Fault::Delay => "delay",
            Fault::Kill => "kill-one",
            Fault::Pause => "pause",
            Fault::KillAll => "kill-all",
            Fault::Clock => "clock",
            Fault::ClockJump => "clock-jump",
            Fault::Membership => "membership",
            Fault::CrashLoseUnsynced => "crash-lose-unsynced",
            Fault::DiskEio => "disk-eio",
            Fault::DiskFull => "disk-full",
            Fault::Bitflip => "bitflip",
            Fault::WipeReplace => "wipe-and-replace",
            Fault::SnapshotStorm => "snapshot-storm",
            Fault::PartitionKill => "partition-kill",
        }
    }
}

/// The faults a `--nemesis` name enables: `partition`, `kill`, `pause`,
/// `clock`, `membership`, `disk`, or a single fault's name.
pub fn parse_group(name: &str) -> Result<Vec<Fault>> {
    Ok(match name {
        "partition" => vec![
            Fault::IsolateLeader,
            Fault::Split,
            Fault::Bridge,
            Fault::OneWay,
            Fault::LinkCut,
            Fault::Flapping,
            Fault::Delay,
        ],
        "kill" => vec![Fault::Kill, Fault::KillAll, Fault::PartitionKill],
        "pause" => vec![Fault::Pause],
        "clock" => vec![Fault::Clock, Fault::ClockJump],
        "membership" => vec![Fault::Membership],
        "disk" => Fault::DISK.to_vec(),
        other => match Fault::ALL.iter().find(|f| f.name() == other) {
            Some(f) => vec![*f],
            None => bail!(
                "unknown nemesis {other:?} (partition, kill, pause, clock, membership, disk, or one of {})",
                Fault::ALL.map(Fault::name).join(", ")
            ),
        },
    })
}

impl FromStr for Fault {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        // "clock" is a fault and the group that adds "clock-jump" to it.
        if let Some(f) = Fault::ALL.iter().find(|f| f.name() == s) {
            return Ok(*f);
        }
        match parse_group(s)?.as_slice() {
            [one] => Ok(*one),
            _ => bail!("{s:?} names several faults"),
        }
    }
}

/// The clock-jump fault's jump: 3 h.
const CLOCK_JUMP_MS: i64 = 3 * 3_600_000;

/// Applies faults to a cluster and remembers what to undo.
pub struct Nemesis {
    rng: StdRng,
    recorder: Recorder,
    spare: Option<u64>,
    spare_member: bool,
    spare_removed: bool,
    admin: Client,
    /// Why the FUSE faults are skipped (`None`: the mounts are there).
    no_fuse: Option<String>,
    /// Failed expectations of the disk faults.
    anomalies: Vec<Anomaly>,
    /// When the nemesis was made, for the progress lines.
    began: std::time::Instant,
}

impl Nemesis {
    /// A nemesis for `cluster`; `spare` is the node the membership fault adds.
    pub fn new(
        cluster: &Cluster,
        spare: Option<u64>,
        seed: u64,
        recorder: Recorder,
        no_fuse: Option<String>,
    ) -> Result<Nemesis> {
        let admin = Client::with_config(
            cluster.endpoints(),
            ClientConfig {
                tls: cluster.client_tls(),
                ..ClientConfig::with_request_timeout(Duration::from_secs(2))
            },
        )?;
        Ok(Nemesis {
            began: std::time::Instant::now(),
            rng: StdRng::seed_from_u64(seed),
            recorder,
            spare,
            spare_member: false,
            spare_removed: false,
            admin,
            no_fuse,
            anomalies: Vec::new(),
        })
    }

    /// The nodes faults may hit: the founders and the spare while it is a member.
    pub fn members(&self, cluster: &Cluster) -> Vec<u64> {
        let mut ids = cluster.founders().to_vec();
        if self.spare_member
            && let Some(s) = self.spare
        {
            ids.push(s);
        }
        ids
    }

    /// The spare, while it is a member.
    pub fn extra_members(&self) -> Vec<u64> {
        self.spare
            .filter(|_| self.spare_member)
            .into_iter()
            .collect()
    }

    fn cut_mode(&mut self) -> LinkMode {
        if self.rng.random_bool(0.5) {
            LinkMode::Stall
        } else {
            LinkMode::Drop
        }
    }

    async fn leader_or_any(&mut self, cluster: &mut Cluster) -> u64 {
        let members = self.members(cluster);
        match cluster.leader().await {
            Some(l) if members.contains(&l) => l,
            _ => members[self.rng.random_range(0..members.len())],
        }
    }

    async fn target(&mut self, cluster: &mut Cluster) -> u64 {
        if self.rng.random_bool(0.5) {
            self.leader_or_any(cluster).await
        } else {
            let members = self.members(cluster);
            members[self.rng.random_range(0..members.len())]
        }
    }

    fn random_split(&mut self, cluster: &Cluster) -> Vec<Vec<u64>> {
        let mut ids = self.members(cluster);
        ids.shuffle(&mut self.rng);
        let minority = (ids.len() - 1) / 2;
        let rest = ids.split_off(minority.max(1));
        vec![ids, rest]
    }

    /// Applies `fault`, holds it for `hold`, heals it; records both ends.
    pub async fn run(&mut self, cluster: &mut Cluster, fault: Fault, hold: Duration) -> Result<()> {
        let name = fault.name();
        let rec = self.recorder.clone();
        rec.record(
            NEMESIS,
            EventType::Invoke,
            "nemesis",
            name,
            "",
            json!(""),
            None,
        );
        let began = self.began.elapsed();
        let detail = self.apply(cluster, fault, hold).await;
        let detail = match detail {
            Ok(d) => d,
            Err(e) => format!("failed: {e:#}"),
        };
        // Progress, and what a failed CI run left behind: each fault's
        // outcome as it ends.
        eprintln!("[{:>6.1}s] {name}: {detail}", began.as_secs_f64());
        rec.record(
            NEMESIS,
            EventType::Ok,
            "nemesis",
            name,
            "",
            json!(detail),
            None,
        );
        Ok(())
    }

    async fn apply(
        &mut self,
        cluster: &mut Cluster,
        fault: Fault,
        hold: Duration,
    ) -> Result<String> {
        let detail = match fault {
            Fault::IsolateLeader => {
                let leader = self.leader_or_any(cluster).await;
                let others: Vec<u64> = self
                    .members(cluster)
                    .into_iter()
                    .filter(|&i| i != leader)
                    .collect();
                let mode = self.cut_mode();
                cluster.partition(&[vec![leader], others], mode);
                tokio::time::sleep(hold).await;
                cluster.heal_network();
                format!("isolated leader {leader} ({mode:?})")
            }
            Fault::Split => {
                let groups = self.random_split(cluster);
                let mode = self.cut_mode();
                cluster.partition(&groups, mode);
                tokio::time::sleep(hold).await;
                cluster.heal_network();
                format!("split {groups:?} ({mode:?})")
            }
            Fault::Bridge => {
                let mut ids = self.members(cluster);
                ids.shuffle(&mut self.rng);
                let bridge = ids[ids.len() / 2];
                let a: Vec<u64> = ids[..ids.len() / 2].to_vec();
                let b: Vec<u64> = ids[ids.len() / 2 + 1..].to_vec();
                let mode = self.cut_mode();
                cluster.partition(&[a.clone(), b.clone()], mode);
                tokio::time::sleep(hold).await;
                cluster.heal_network();
                format!("{a:?} | {bridge} | {b:?} ({mode:?})")
            }
            Fault::LinkCut => {
                let leader = self.leader_or_any(cluster).await;
                let mut followers: Vec<u64> = self
                    .members(cluster)
                    .into_iter()
                    .filter(|&i| i != leader)
                    .collect();
                followers.shuffle(&mut self.rng);
                match followers[..] {
                    [a, b, ..] => {
                        let mode = self.cut_mode();
                        cluster.set_link(a, b, mode);
                        cluster.set_link(b, a, mode);
                        let hold = hold.max(LINK_CUT_HOLD);
                        tokio::time::sleep(hold).await;
                        cluster.heal_network();
                        format!(
                            "cut {a} <-> {b}, both still reach leader {leader} ({mode:?}, {hold:?})"
                        )
                    }
                    _ => "skipped: fewer than two followers".into(),
                }
            }
            Fault::OneWay => {
                let leader = self.leader_or_any(cluster).await;
                let mode = self.cut_mode();
                for to in self.members(cluster) {
                    if to != leader {
                        cluster.set_link(leader, to, mode);
                    }
                }
                tokio::time::sleep(hold).await;
                cluster.heal_network();
                format!("links from leader {leader} cut ({mode:?})")
            }
            Fault::Flapping => {
                let until = tokio::time::Instant::now() + hold;
                let mut flips = 0;
                while tokio::time::Instant::now() < until {
                    cluster.heal_network();
                    if self.rng.random_bool(0.7) {
                        let groups = self.random_split(cluster);
                        let mode = self.cut_mode();
                        cluster.partition(&groups, mode);
                    }
                    flips += 1;
                    let wait = Duration::from_millis(self.rng.random_range(300..800));
                    tokio::time::sleep(
                        wait.min(until.saturating_duration_since(tokio::time::Instant::now())),
                    )
                    .await;
                }
                cluster.heal_network();
                format!("{flips} flips")
            }
            Fault::Delay if let Some(why) = cluster.delay_unavailable() => {
                tokio::time::sleep(hold).await;
                format!("skipped: {why}")
            }
            Fault::Delay => {
                let ms = self.rng.random_range(50..200);
                for from in self.members(cluster) {
                    for to in self.members(cluster) {
                        cluster.set_link(from, to, LinkMode::Delay(Duration::from_millis(ms)));
                    }
                }
                tokio::time::sleep(hold).await;
                cluster.heal_network();
                format!("{ms} ms on every link")
            }
            Fault::Kill => {
                let id = self.target(cluster).await;
                cluster.kill(id).await;
                tokio::time::sleep(hold).await;
                cluster.spawn(id)?;
                format!("killed and restarted node {id}")
            }
            Fault::Pause => {
                let id = self.target(cluster).await;
                cluster.pause(id);
                tokio::time::sleep(hold).await;
                cluster.resume(id);
                format!("paused node {id}")
            }
            Fault::KillAll => {
                let ids = self.members(cluster);
                for &id in &ids {
                    cluster.kill(id).await;
                }
                tokio::time::sleep(hold.min(Duration::from_secs(1))).await;
                for &id in &ids {
                    cluster.spawn(id)?;
                }
                // The restart is the fault: hold until a leader is back.
                let _ = cluster
                    .wait_for_leader(&ids, hold.max(Duration::from_secs(10)))
                    .await;
                format!("killed and restarted nodes {ids:?}")
            }
            Fault::Clock => {
                let mut done = Vec::new();
                for id in self.members(cluster) {
                    let Some(addr) = cluster.node(id).map(|n| n.client_addr()) else {
                        continue;
                    };
                    let offset = self.rng.random_range(-5000..5000i64);
                    if self
                        .admin
                        .set_clock_offset_on(&addr, offset, false)
                        .await
                        .is_ok()
                    {
                        done.push(format!("{id}:{offset:+}ms"));
                    }
                }
                let leader = self.leader_or_any(cluster).await;
                if let Some(addr) = cluster.node(leader).map(|n| n.client_addr())
                    && self
                        .admin
                        .set_clock_offset_on(&addr, 3000, true)
                        .await
                        .is_ok()
                {
                    done.push(format!("leader {leader} jumped +3000ms"));
                }
                tokio::time::sleep(hold).await;
                for id in self.members(cluster) {
                    if let Some(addr) = cluster.node(id).map(|n| n.client_addr()) {
                        let _ = self.admin.set_clock_offset_on(&addr, 0, false).await;
                    }
                }
                format!("skew {}", done.join(", "))
            }
            Fault::ClockJump => {
                // Hours, far beyond any lease or TTL in the workloads: if
                // entry time followed this clock, every lease would expire
                // at once (issue 17 item 4; the pool checker's
                // lease-expired-early).
                let leader = self.leader_or_any(cluster).await;
                let jumped = match cluster.node(leader).map(|n| n.client_addr()) {
                    Some(addr) => ok_or(
                        self.admin
                            .set_clock_offset_on(&addr, CLOCK_JUMP_MS, true)
                            .await,
                    ),
                    None => "no such node".into(),
                };
                tokio::time::sleep(hold).await;
                // Followers may have synced to the jumped clock: all back.
                for id in self.members(cluster) {
                    if let Some(addr) = cluster.node(id).map(|n| n.client_addr()) {
                        let _ = self.admin.set_clock_offset_on(&addr, 0, false).await;
                    }
                }
                format!(
                    "node {leader}'s clock jumped +{} h: {jumped}",
                    CLOCK_JUMP_MS / 3_600_000
                )
            }
            Fault::Membership => self.membership(cluster, hold).await?,
            Fault::CrashLoseUnsynced | Fault::DiskEio | Fault::DiskFull
                if self.no_fuse.is_some() =>
            {
                tokio::time::sleep(hold).await;
                format!(
                    "skipped: FUSE is unavailable ({})",
                    self.no_fuse.as_deref().unwrap_or_default()
                )
            }
            Fault::CrashLoseUnsynced => self.crash_lose_unsynced(cluster, hold).await?,
            Fault::DiskEio => self.disk_error(cluster, hold, fault).await?,
            Fault::DiskFull => self.disk_error(cluster, hold, fault).await?,
            // A lost replica is replaced before the next is lost: two at once
            // are more than any three- or four-voter Raft cluster survives
            // without an unsafe recovery, so these wait for a whole cluster.
            Fault::Bitflip | Fault::WipeReplace if let Err(e) = self.whole(cluster).await => {
                format!("skipped: the cluster was not whole ({e:#})")
            }
            Fault::Bitflip => self.bitflip(cluster).await?,
            Fault::WipeReplace => {
                let id = self.target(cluster).await;
                cluster.kill(id).await;
                cluster.wipe(id)?;
                tokio::time::sleep(hold.min(Duration::from_secs(1))).await;
                let replaced = self.replace(cluster, id).await;
                format!("wiped node {id}; {replaced}")
            }
            Fault::SnapshotStorm => self.snapshot_storm(cluster, hold).await?,
            Fault::PartitionKill => {
                let groups = self.random_split(cluster);
                let mode = self.cut_mode();
                cluster.partition(&groups, mode);
                tokio::time::sleep(hold / 3).await;
                let id = self.target(cluster).await;
                cluster.kill(id).await;
                tokio::time::sleep(hold / 3).await;
                cluster.spawn(id)?;
                tokio::time::sleep(hold / 3).await;
                cluster.heal_network();
                format!("split {groups:?} ({mode:?}); node {id} killed and restarted inside it")
            }
        };
        Ok(detail)
    }

    async fn membership(&mut self, cluster: &mut Cluster, hold: Duration) -> Result<String> {
        let Some(spare) = self.spare else {
            tokio::time::sleep(hold).await;
            return Ok("no spare node: nothing to do".into());
        };
        if self.spare_removed {
            // Ids are never reused: move leadership instead.
            let to = cluster.founders()[self.rng.random_range(0..cluster.founders().len())];
            let r = self.admin.transfer_leader(to).await;
            tokio::time::sleep(hold).await;
            return Ok(format!("transfer leadership to {to}: {}", ok_or(r)));
        }
        if !self.spare_member {
            cluster.spawn(spare)?;
            let Some(member) = cluster.member(spare) else {
                bail!("no spare node {spare}");
            };
            let added = self.admin.add_learner(member).await;
            let promoted = match &added {
                Ok(_) => ok_or(self.admin.promote(spare).await),
                Err(_) => "skipped".into(),
            };
            // Once the learner was proposed it may be in; treat it as a member.
            self.spare_member = true;
            tokio::time::sleep(hold).await;
            Ok(format!(
                "added node {spare}: learner {}, promote {promoted}",
                ok_or(added)
            ))
        } else {
            let removed = self.admin.remove(spare).await;
            let outcome = ok_or(removed);
            tokio::time::sleep(hold).await;
            cluster.kill(spare).await;
            self.spare_member = false;
            self.spare_removed = true;
            Ok(format!("removed node {spare}: {outcome}"))
        }
    }

    /// Failed expectations of the disk faults so far.
    pub fn anomalies(&self) -> &[Anomaly] {
        &self.anomalies
    }

    fn anomaly(&mut self, fault: Fault, node: u64, message: String) {
        self.anomalies.push(Anomaly {
            kind: "disk".into(),
            workload: fault.name().into(),
            key: format!("node{node}"),
            message,
            ops: Vec::new(),
        });
    }

    /// The members other than `id`.
    fn others(&self, cluster: &Cluster, id: u64) -> Vec<u64> {
        self.members(cluster)
            .into_iter()
            .filter(|&i| i != id)
            .collect()
    }

    async fn crash_lose_unsynced(
        &mut self,
        cluster: &mut Cluster,
        hold: Duration,
    ) -> Result<String> {
        let ids = if self.rng.random_bool(1.0 / 3.0) {
            self.members(cluster)
        } else {
            vec![self.target(cluster).await]
        };
        let mut dropped = Vec::new();
        for &id in &ids {
            cluster.kill(id).await;
        }
        // Every writer is dead: now the unsynced writes go.
        for &id in &ids {
            if let Some(disk) = cluster.disk(id) {
                let r = disk.crash()?;
                dropped.push(format!("{id}: {} files, {} pages back", r.files, r.pages));
            }
        }
        tokio::time::sleep(hold.min(Duration::from_secs(2))).await;
        for &id in &ids {
            cluster.spawn(id)?;
        }
        if ids.len() > 1 {
            let _ = cluster
                .wait_for_leader(&ids, hold.max(Duration::from_secs(10)))
                .await;
        }
        Ok(format!(
            "crashed nodes {ids:?}, unsynced writes dropped ({})",
            dropped.join("; ")
        ))
    }

    /// `disk-eio` and `disk-full` on one node.
    async fn disk_error(
        &mut self,
        cluster: &mut Cluster,
        hold: Duration,
        fault: Fault,
    ) -> Result<String> {
        use crate::faultfs::DiskFault;
        let id = self.target(cluster).await;
        let Some(disk) = cluster.disk(id) else {
            bail!("node {id} has no faultfs mount");
        };
        let mode = match fault {
            Fault::DiskFull => DiskFault::NoSpace,
            _ if self.rng.random_bool(0.5) => DiskFault::FsyncEio,
            _ => DiskFault::WriteEio,
        };
        disk.set(mode);
        // The workloads keep every member writing: a failed disk shows in
        // one group commit. EIO must stop the node; a full disk may instead
        // raise the free-space alarm and keep it up, refusing writes.
        let wait = hold.max(Duration::from_secs(10));
        let exit = cluster.wait_exit(id, wait).await;
        let others = self.others(cluster, id);
        // A leader among the others: naming the stopped node is not one.
        let leader = cluster
            .wait_for_leader_among(&others, Duration::from_secs(15))
            .await;
        let mut outcome = match exit {
            Some(s) if s.success() => {
                self.anomaly(
                    fault,
                    id,
                    format!("{mode:?}: the node exited with status 0"),
                );
                "exited 0".to_string()
            }
            Some(s) => format!("stopped ({s})"),
            None if mode == DiskFault::NoSpace => format!("still up after {wait:?}"),
            None => {
                self.anomaly(
                    fault,
                    id,
                    format!("{mode:?}: the node was still running {wait:?} later"),
                );
                format!("STILL RUNNING after {wait:?}")
            }
        };
        match leader {
            Ok(l) => outcome.push_str(&format!("; the others kept leader {l}")),
            Err(e) => {
                self.anomaly(
                    fault,
                    id,
                    format!("{mode:?} on one node, the others without a leader: {e:#}"),
                );
                outcome.push_str("; the others had NO LEADER");
            }
        }
        disk.set(DiskFault::Healthy);
        if exit.is_some() {
            // The disk's state after the error is unknown: only the synced
            // writes are trusted.
            disk.crash()?;
            cluster.spawn(id)?;
        }
        Ok(format!("{mode:?} on node {id}: {outcome}"))
    }

    async fn bitflip(&mut self, cluster: &mut Cluster) -> Result<String> {
        let id = self.target(cluster).await;
        cluster.kill(id).await;
        let Some(flipped) = cluster.flip_record(id)? else {
            cluster.spawn(id)?;
            return Ok(format!(
                "node {id}: no segment with three records; restarted untouched"
            ));
        };
        cluster.spawn(id)?;
        let wait = Duration::from_secs(20);
        let outcome = match cluster.wait_exit(id, wait).await {
            Some(s) if !s.success() => format!("refused to start ({s})"),
            Some(s) => {
                self.anomaly(
                    Fault::Bitflip,
                    id,
                    format!("{flipped}: the node exited with {s}"),
                );
                format!("exited {s}")
            }
            None => {
                self.anomaly(
                    Fault::Bitflip,
                    id,
                    format!("{flipped}: the node was still running {wait:?} later"),
                );
                cluster.kill(id).await;
                "STARTED".to_string()
            }
        };
        cluster.wipe(id)?;
        let replaced = self.replace(cluster, id).await;
        Ok(format!(
            "node {id}: {flipped}; {outcome}; wiped; {replaced}"
        ))
    }

    /// Waits until every member follows one leader among them.
    async fn whole(&mut self, cluster: &mut Cluster) -> Result<u64> {
        let members = self.members(cluster);
        cluster
            .wait_for_leader_among(&members, Duration::from_secs(30))
            .await
    }

    /// The replace flow on a wiped node `id` (stopped): start it, remove
    /// its old member, add it as a learner, promote it.
    async fn replace(&mut self, cluster: &mut Cluster, id: u64) -> String {
        if let Err(e) = cluster.spawn(id) {
            return format!("restart failed: {e:#}");
        }
        let Some(member) = cluster.member(id) else {
            return format!("no node {id}");
        };
        let removed = ok_or(self.admin.remove(id).await);
        let added = ok_or(self.admin.add_learner(member).await);
        let promoted = ok_or(self.admin.promote(id).await);
        let members = self.members(cluster);
        let agreed = match cluster
            .wait_for_leader(&members, Duration::from_secs(30))
            .await
        {
            Ok(l) => format!("all follow {l}"),
            Err(_) => "no agreed leader after 30s".into(),
        };
        format!("replace: remove {removed}, add learner {added}, promote {promoted}, {agreed}")
    }

    async fn snapshot_storm(&mut self, cluster: &mut Cluster, hold: Duration) -> Result<String> {
        let Some(leader) = cluster.leader().await else {
            tokio::time::sleep(hold).await;
            return Ok("no leader: nothing to do".into());
        };
        let others = self.others(cluster, leader);
        let follower = others[self.rng.random_range(0..others.len())];
        let behind = cluster
            .statuses()
            .await
            .get(&follower)
            .map(|s| s.last_log_index)
            .unwrap_or(0);
        let rest: Vec<u64> = self.others(cluster, follower);
        cluster.partition(&[vec![follower], rest], LinkMode::Drop);
        // Until the leader purged past the follower's log (sampling: the
        // nodes publish no events).
        let until = tokio::time::Instant::now() + hold.max(Duration::from_secs(20));
        let mut purged = 0;
        while tokio::time::Instant::now() < until {
            purged = cluster
                .statuses()
                .await
                .get(&leader)
                .map(|s| s.purged_index)
                .unwrap_or(0);
            if purged > behind {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        cluster.heal_network();
        if purged <= behind {
            return Ok(format!(
                "follower {follower} cut off at {behind}; leader {leader} never purged past it"
            ));
        }
        let caught_up = tokio::time::Instant::now() + Duration::from_secs(30);
        let snapshot = loop {
            let s = cluster
                .statuses()
                .await
                .get(&follower)
                .map(|s| s.snapshot_index);
            if let Some(i) = s.filter(|&i| i >= purged) {
                break Some(i);
            }
            if tokio::time::Instant::now() >= caught_up {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        Ok(match snapshot {
            Some(i) => format!(
                "follower {follower} cut off at {behind}, leader {leader} purged to {purged}; healed, it installed snapshot {i}"
            ),
            None => format!(
                "follower {follower} cut off at {behind}, leader {leader} purged to {purged}; healed, no snapshot past {purged} within 30s"
            ),
        })
    }

    /// Undoes every fault: links pass, paused nodes resume, dead members
    /// restart, clocks go back to zero offset.
    pub async fn heal_all(&mut self, cluster: &mut Cluster) -> Result<()> {
        cluster.heal_network();
        for id in self.members(cluster) {
            if let Some(disk) = cluster.disk(id) {
                disk.set(crate::faultfs::DiskFault::Healthy);
            }
        }
        cluster.revive(&self.extra_members())?;
        for id in self.members(cluster) {
            if let Some(addr) = cluster.node(id).map(|n| n.client_addr()) {
                let _ = self.admin.set_clock_offset_on(&addr, 0, false).await;
            }
        }
        Ok(())
    }
}

fn ok_or<T>(r: Result<T, herald_client::ClientError>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_and_names_parse() {
        assert_eq!(parse_group("partition").expect("group").len(), 7);
        assert_eq!("kill-all".parse::<Fault>().expect("one"), Fault::KillAll);
        assert!("kill".parse::<Fault>().is_err(), "a group, not one fault");
        assert!(parse_group("meteor").is_err());
        assert_eq!(parse_group("disk").expect("group").len(), 6);
        assert_eq!(
            parse_group("clock").expect("group"),
            [Fault::Clock, Fault::ClockJump]
        );
        for f in Fault::ALL {
            assert_eq!(f.name().parse::<Fault>().expect("round trip"), f);
        }
    }
}
