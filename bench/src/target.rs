//! The two systems under test behind one enum, so the load driver is the
//! same code for both. Each has `connections` independent clients; worker
//! `w` uses client `w % connections`. Client `c` starts on node
//! `(first + c) % 3`, where `first` is the leader when the run begins: both
//! systems then see the same share of requests arriving at the leader and
//! at followers (which forward writes to it).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use etcd_client::{ConnectOptions, KvClient, Txn, TxnOp};
use herald_client::proto::Consistency;
use herald_client::{Client, ClientConfig};

use crate::payload;

/// One operation of a workload, on key numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A presence login / a put of the same bytes.
    Write(u64),
    /// A linearizable single read.
    Read(u64),
    /// A linearizable read of several keys at once.
    BatchRead(Vec<u64>),
}

/// How long one attempt may take before a client gives up on a node.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// A system under test with its client connections.
pub enum Target {
    /// Herald: one [`Client`] per connection (it fails over by itself).
    Herald(Vec<Client>),
    /// etcd: one [`EtcdConnection`] per connection.
    Etcd(Vec<EtcdConnection>),
}

/// One etcd client connection, with fail-over done here the way
/// `herald_client` does it: stay on one endpoint, move to the next after an
/// error. (etcd-client's balanced channel would spread one client over all
/// endpoints, which is not what a Herald client does.)
pub struct EtcdConnection {
    clients: Vec<KvClient>,
    current: AtomicUsize,
}

impl EtcdConnection {
    /// The client of the endpoint this connection is on.
    pub fn kv(&self) -> KvClient {
        let index = self.current.load(Ordering::Relaxed) % self.clients.len();
        self.clients[index].clone()
    }
}

impl Target {
    /// Herald clients over `endpoints`, client `c` preferring endpoint
    /// `(first + c) % len`; `coalesce` as in [`ClientConfig::coalesce`].
    pub fn herald(
        endpoints: &[String],
        first: usize,
        connections: usize,
        coalesce: bool,
        tls: Option<herald_client::ClientTls>,
    ) -> Result<Target> {
        let clients = (0..connections.max(1))
            .map(|c| {
                let rotated = rotate(endpoints, first + c);
                let config = ClientConfig {
                    coalesce,
                    tls: tls.clone(),
                    ..ClientConfig::with_request_timeout(REQUEST_TIMEOUT)
                };
                Client::with_config(rotated, config).context("creating a Herald client")
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Target::Herald(clients))
    }

    /// etcd connections over `endpoints` (`host:port`), connection `c`
    /// starting on endpoint `(first + c) % len`.
    /// With `tls`, over `https` with those options.
    pub async fn etcd(
        endpoints: &[String],
        first: usize,
        connections: usize,
        tls: Option<etcd_client::TlsOptions>,
    ) -> Result<Target> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut conns = Vec::with_capacity(connections.max(1));
        for c in 0..connections.max(1) {
            let mut clients = Vec::with_capacity(endpoints.len());
            for endpoint in rotate(endpoints, first + c) {
                let mut options = ConnectOptions::new()
                    .with_timeout(REQUEST_TIMEOUT)
                    .with_connect_timeout(Duration::from_secs(1));
                if let Some(tls) = &tls {
                    options = options.with_tls(tls.clone());
                }
                let client =
                    etcd_client::Client::connect([format!("{scheme}://{endpoint}")], Some(options))
                        .await
                        .with_context(|| format!("connecting to etcd at {endpoint}"))?;
                clients.push(client.kv_client());
            }
            conns.push(EtcdConnection {
                clients,
                current: AtomicUsize::new(0),
            });
        }
        Ok(Target::Etcd(conns))
    }

    /// How many connections.
    pub fn connections(&self) -> usize {
        match self {
            Target::Herald(c) => c.len(),
            Target::Etcd(c) => c.len(),
        }
    }

    /// Runs `op` on connection `conn`.
    pub async fn execute(&self, conn: usize, op: &Op) -> Result<()> {
        match self {
            Target::Herald(clients) => {
                let client = &clients[conn % clients.len()];
                herald_execute(client, op).await
            }
            Target::Etcd(conns) => {
                let conn = &conns[conn % conns.len()];
                let index = conn.current.load(Ordering::Relaxed) % conn.clients.len();
                let result = etcd_execute(conn.clients[index].clone(), op).await;
                if result.is_err() {
                    let next = (index + 1) % conn.clients.len();
                    let _ = conn.current.compare_exchange(
                        index,
                        next,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
                result
            }
        }
    }
}

async fn herald_execute(client: &Client, op: &Op) -> Result<()> {
    match op {
        Op::Write(n) => {
            client.login(payload::login(*n)).await?;
        }
        Op::Read(n) => {
            client
                .get_presence(payload::uid(*n), Consistency::Linearizable)
                .await?;
        }
        Op::BatchRead(keys) => {
            let uids = keys.iter().map(|&n| payload::uid(n)).collect();
            let resp = client
                .batch_get_presence(uids, Consistency::Linearizable)
                .await?;
            if resp.records.len() != keys.len() {
                return Err(anyhow!(
                    "BatchGetPresence returned {} records for {} uids",
                    resp.records.len(),
                    keys.len()
                ));
            }
        }
    }
    Ok(())
}

async fn etcd_execute(mut kv: KvClient, op: &Op) -> Result<()> {
    match op {
        Op::Write(n) => {
            kv.put(payload::etcd_key(*n), payload::login_bytes(*n), None)
                .await?;
        }
        Op::Read(n) => {
            kv.get(payload::etcd_key(*n), None).await?;
        }
        Op::BatchRead(keys) => {
            // One linearizable round trip for all keys, like Herald's batch.
            let ops: Vec<TxnOp> = keys
                .iter()
                .map(|&n| TxnOp::get(payload::etcd_key(n), None))
                .collect();
            let resp = kv.txn(Txn::new().and_then(ops)).await?;
            if resp.op_responses().len() != keys.len() {
                return Err(anyhow!(
                    "txn returned {} responses for {} gets",
                    resp.op_responses().len(),
                    keys.len()
                ));
            }
        }
    }
    Ok(())
}

/// `items` rotated left by `by`.
fn rotate(items: &[String], by: usize) -> Vec<String> {
    let mut out = items.to_vec();
    if !out.is_empty() {
        let by = by % out.len();
        out.rotate_left(by);
    }
    out
}
