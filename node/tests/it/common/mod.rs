//! The node's test clusters: real `herald-node` processes on loopback (as
//! `herald_harness` runs them), each with its own config and data dir in a
//! temporary directory, secure like production, plus the raw gRPC and HTTPS
//! callers the tests use. Processes are SIGKILLed on drop, so a failing test
//! leaves nothing behind.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use ::herald_client::proto::admin_client::AdminClient;
use ::herald_client::proto::herald_client::HeraldClient;
use ::herald_client::proto::{
    InitRequest, InitResponse, Member, MembersRequest, NodeStatus, StatusRequest,
};
use herald_certs::{Ca, LocalCerts, Validity};
use herald_harness::{NodeProcess, free_addr};
use herald_node::config::{AuthConfig, Config, Listen, MemberConfig, RaftTimings, TlsConfig};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// The founding administrator of every test cluster.
pub const ROOT: &str = "root";

/// How long any wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(60);

/// A local cluster of node processes, secure like a production one: TLS on
/// every port, mutual TLS between nodes, `root` the administrator whose
/// client certificate the harness's clients present.
pub struct TestCluster {
    dir: tempfile::TempDir,
    /// The cluster's certificates (CA key beside them).
    pub certs: LocalCerts,
    /// Nodes by id.
    pub nodes: BTreeMap<u64, NodeProcess>,
    timings: RaftTimings,
    env: Vec<(String, String)>,
}

pub fn timings() -> RaftTimings {
    // Looser than the defaults (50 / 150-250 ms): several test clusters run
    // at once on two cores, often beside a compiler, and tight timings make
    // their elections thrash.
    RaftTimings {
        heartbeat_ms: 100,
        election_timeout_min_ms: 400,
        election_timeout_max_ms: 800,
        ..RaftTimings::default()
    }
}

/// A TLS channel to `addr` presenting `user`'s client certificate (`None`:
/// no certificate).
pub fn channel_as(certs: &LocalCerts, addr: &str, user: Option<&str>) -> Channel {
    channel_with_timeout(certs, addr, user, Duration::from_secs(10))
}

/// [`channel_as`] with another per-request timeout.
pub fn channel_with_timeout(
    certs: &LocalCerts,
    addr: &str,
    user: Option<&str>,
    timeout: Duration,
) -> Channel {
    let ca = std::fs::read(certs.ca()).expect("ca.crt");
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some(user) = user {
        let (cert, key) = certs.client(user);
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert).expect("client cert"),
            std::fs::read(key).expect("client key"),
        ));
    }
    tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .expect("endpoint")
        .tls_config(tls)
        .expect("tls")
        .connect_timeout(Duration::from_millis(500))
        .timeout(timeout)
        .connect_lazy()
}

/// The client library's TLS settings for `user`'s certificate.
pub fn client_tls(certs: &LocalCerts, user: &str) -> herald_client::ClientTls {
    let (cert, key) = certs.client(user);
    herald_client::ClientTls::from_files(&certs.ca(), Some((&cert, &key))).expect("client tls")
}

impl TestCluster {
    /// Starts `n` founding nodes and waits for a leader.
    pub async fn start(n: u64) -> TestCluster {
        Self::start_with(n, timings()).await
    }

    /// Starts `n` founding nodes with the given Raft timings.
    pub async fn start_with(n: u64, timings: RaftTimings) -> TestCluster {
        Self::start_full(n, timings, &[], |_| {}).await
    }

    /// Starts `n` founding nodes, letting `tweak` adjust each config.
    pub async fn start_custom(
        n: u64,
        timings: RaftTimings,
        tweak: impl Fn(&mut Config),
    ) -> TestCluster {
        Self::start_full(n, timings, &[], tweak).await
    }

    /// Starts `n` founding nodes whose processes get `env` on top of the
    /// usual environment.
    pub async fn start_with_env(n: u64, timings: RaftTimings, env: &[(&str, &str)]) -> TestCluster {
        Self::start_full(n, timings, env, |_| {}).await
    }

    /// Starts `n` founding nodes with extra process `env`, letting `tweak`
    /// adjust each config, runs `cluster init` and waits for a leader.
    pub async fn start_full(
        n: u64,
        timings: RaftTimings,
        env: &[(&str, &str)],
        tweak: impl Fn(&mut Config),
    ) -> TestCluster {
        let c = Self::spawn_founders(n, timings, env, tweak);
        c.init(1).await;
        c.wait_leader().await;
        c
    }

    /// Starts `n` founding nodes and does not run `cluster init`.
    pub async fn start_uninitialized(n: u64) -> TestCluster {
        Self::spawn_founders(n, timings(), &[], |_| {})
    }

    /// `cluster init` on node `id`, retried while founders are starting.
    pub async fn init(&self, id: u64) -> InitResponse {
        self.wait_for("cluster init", || async {
            match self.admin(id).init(InitRequest {}).await {
                Ok(r) => Some(r.into_inner()),
                Err(s) if s.code() == tonic::Code::Unavailable => None,
                Err(s) => panic!("cluster init on node {id}: {s}"),
            }
        })
        .await
    }

    /// Every member's recorded incarnation, as node `id` sees them (waits
    /// until each of `ids` has one).
    pub async fn incarnations(&self, id: u64, ids: &[u64]) -> BTreeMap<u64, String> {
        self.wait_for("the members' incarnations to be recorded", || async {
            let r = self
                .admin(id)
                .members(MembersRequest {})
                .await
                .ok()?
                .into_inner();
            let got: BTreeMap<u64, String> = r
                .members
                .into_iter()
                .filter(|m| !m.incarnation.is_empty())
                .map(|m| (m.id, m.incarnation))
                .collect();
            ids.iter().all(|i| got.contains_key(i)).then_some(got)
        })
        .await
    }

    /// Certificates, configs and processes of `n` founding nodes.
    fn spawn_founders(
        n: u64,
        timings: RaftTimings,
        env: &[(&str, &str)],
        tweak: impl Fn(&mut Config),
    ) -> TestCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs =
            herald_certs::local_cluster(&dir.path().join("certs"), &[], &[ROOT], Validity::days(2))
                .expect("certificates");
        let mut c = TestCluster {
            dir,
            certs,
            nodes: BTreeMap::new(),
            timings,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let configs: Vec<Config> = (1..=n).map(|id| c.make_config(id)).collect();
        let members: Vec<MemberConfig> = configs.iter().map(MemberConfig::of).collect();
        for mut cfg in configs {
            cfg.initial_members = members.clone();
            tweak(&mut cfg);
            c.spawn(cfg);
        }
        c
    }

    /// The CA, to issue more certificates.
    pub fn ca(&self) -> Ca {
        Ca::load(&self.certs.dir, &self.certs.dir.join(herald_certs::CA_KEY)).expect("CA")
    }

    /// Node `id`'s certificate, made on first use.
    fn node_cert(&self, id: u64) -> TlsConfig {
        let (cert, key) = self.certs.node(id);
        if !cert.exists() {
            self.ca()
                .issue_node(
                    id,
                    &["127.0.0.1".into(), "localhost".into()],
                    Validity::days(2),
                )
                .expect("node certificate")
                .save(&self.certs.dir, &herald_certs::node_stem(id))
                .expect("save node certificate");
        }
        TlsConfig {
            ca_file: self.certs.ca(),
            cert_file: cert,
            key_file: key,
        }
    }

    /// Makes a client certificate for `user` (if not made yet).
    pub fn client_cert(&self, user: &str) {
        if !self.certs.client(user).0.exists() {
            self.ca()
                .issue_client(user, Validity::days(2))
                .expect("client certificate")
                .save(&self.certs.dir, &herald_certs::client_stem(user))
                .expect("save client certificate");
        }
    }

    fn make_config(&self, id: u64) -> Config {
        let listen = Listen {
            peer: free_addr(),
            client: free_addr(),
            http: free_addr(),
            time_sync: Some(free_addr()),
        };
        let mut config = Config::new(
            id,
            id as u32,
            self.dir.path().join(format!("node{id}")),
            listen,
        );
        config.tls = Some(self.node_cert(id));
        config.auth = AuthConfig {
            root_users: vec![ROOT.into()],
            root_token_sha256: Vec::new(),
        };
        config.raft = self.timings.clone();
        config
    }

    fn spawn(&mut self, config: Config) {
        let id = config.id;
        let mut node = NodeProcess::new(
            std::path::Path::new(env!("CARGO_BIN_EXE_herald-node")),
            config,
            self.dir.path(),
        )
        .expect("write config")
        .env("RUST_LOG", "info,openraft=warn");
        for (k, v) in &self.env {
            node = node.env(k, v);
        }
        node.start().expect("spawn herald-node");
        self.nodes.insert(id, node);
    }

    /// Adds node `id` with an empty initial membership (to join as a learner).
    pub fn spawn_joiner(&mut self, id: u64) -> &NodeProcess {
        let cfg = self.make_config(id);
        self.spawn(cfg);
        &self.nodes[&id]
    }

    /// A client library handle over every node (fail-over between them),
    /// as `root`.
    pub fn client_lib(&self) -> herald_client::Client {
        self.client_lib_with(herald_client::ClientConfig::default())
    }

    /// [`TestCluster::client_lib`] with other settings (TLS as `root`
    /// unless `config` brings its own).
    pub fn client_lib_with(
        &self,
        mut config: herald_client::ClientConfig,
    ) -> herald_client::Client {
        let eps = self.nodes.keys().map(|id| self.client_addr(*id)).collect();
        if config.tls.is_none() {
            config.tls = Some(client_tls(&self.certs, ROOT));
        }
        herald_client::Client::with_config(eps, config).expect("client")
    }

    /// SIGKILLs a node (its data dir stays).
    pub fn kill(&mut self, id: u64) {
        self.nodes.get_mut(&id).expect("node").kill();
    }

    /// Waits (up to [`WAIT`]) for node `id`'s process to exit on its own
    /// and returns how it ended; the node then counts as not alive.
    pub async fn wait_exit(&mut self, id: u64) -> std::process::ExitStatus {
        let node = self.nodes.get_mut(&id).expect("node");
        assert!(node.pid().is_some(), "node {id} was not running");
        match node.wait_exit(WAIT).await {
            Some(status) => status,
            None => panic!("node {id} did not exit\n{}", self.log_tails()),
        }
    }

    /// Everything node `id` has logged so far.
    pub fn log_text(&self, id: u64) -> String {
        self.nodes[&id].log_text()
    }

    /// Node `id`'s data dir.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.nodes[&id].config.data_dir.clone()
    }

    /// Empties a killed node's data dir, as a lost disk would.
    pub fn wipe(&mut self, id: u64) {
        assert!(!self.alive().contains(&id), "wipe node {id}: kill it first");
        self.nodes
            .get_mut(&id)
            .expect("node")
            .wipe()
            .expect("wipe the data dir");
    }

    /// The membership record of node `id`, for `AddLearner`.
    pub fn member(&self, id: u64) -> Member {
        self.nodes[&id].member()
    }

    /// Stops node `id` the way a supervisor does (SIGTERM, then SIGKILL
    /// after `grace`); returns whether it had to be killed.
    pub async fn stop(&mut self, id: u64, grace: Duration) -> bool {
        self.nodes.get_mut(&id).expect("node").stop(grace).await
    }

    /// Starts a killed node again on its old data dir.
    pub fn restart(&mut self, id: u64) {
        self.nodes
            .get_mut(&id)
            .expect("node")
            .start()
            .expect("restart herald-node");
    }

    /// Ids of nodes whose process is running.
    pub fn alive(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.pid().is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// The client gRPC address of a node.
    pub fn client_addr(&self, id: u64) -> String {
        self.nodes[&id].config.listen.client.to_string()
    }

    /// The HTTP address of a node.
    pub fn http_addr(&self, id: u64) -> String {
        self.nodes[&id].config.listen.http.to_string()
    }

    /// A Herald client bound to one node, as `root`.
    pub fn client(&self, id: u64) -> HeraldClient<Channel> {
        HeraldClient::new(channel_as(&self.certs, &self.client_addr(id), Some(ROOT)))
    }

    /// An admin client bound to one node, as `root`.
    pub fn admin(&self, id: u64) -> AdminClient<Channel> {
        AdminClient::new(channel_as(&self.certs, &self.client_addr(id), Some(ROOT)))
    }

    /// GET `path` on node `id`'s HTTP port over TLS, as `root`.
    pub async fn get(&self, id: u64, path: &str) -> std::io::Result<(u16, String)> {
        https_get(&self.certs, &self.http_addr(id), path, Some(ROOT), &[]).await
    }

    /// POST a JSON `body` to `path` on node `id`'s HTTP port over TLS, as
    /// `root`.
    pub async fn post(&self, id: u64, path: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
        https_request(
            &self.certs,
            &self.http_addr(id),
            "POST",
            path,
            Some(ROOT),
            &[("content-type", "application/json")],
            body,
        )
        .await
    }

    /// A node's own status, if it answers.
    pub async fn status(&self, id: u64) -> Option<NodeStatus> {
        let mut a = self.admin(id);
        let mut req = tonic::Request::new(StatusRequest {});
        req.set_timeout(Duration::from_secs(1));
        a.status(req).await.ok()?.into_inner().status
    }

    /// Waits until every running node names the same leader, which is
    /// itself running, and returns it.
    pub async fn wait_leader(&self) -> u64 {
        self.wait_for("a leader all running nodes agree on", || async {
            let alive = self.alive();
            let named = futures::future::join_all(alive.iter().map(|&id| self.status(id))).await;
            herald_harness::agreed_leader(named.into_iter().map(|s| s.map(|s| s.leader_id)))
                .filter(|l| alive.contains(l))
        })
        .await
    }

    /// Waits until every running node has applied at least `index`.
    pub async fn wait_applied(&self, index: u64) {
        self.wait_for(&format!("every running node to apply {index}"), || async {
            for id in self.alive() {
                if self.status(id).await?.applied_index < index {
                    return None;
                }
            }
            Some(())
        })
        .await
    }

    /// Member ids and voter flags as node `id` sees them.
    pub async fn members(&self, id: u64) -> BTreeMap<u64, bool> {
        let mut a = self.admin(id);
        let r = a
            .members(MembersRequest {})
            .await
            .expect("members")
            .into_inner();
        r.members.into_iter().map(|m| (m.id, m.voter)).collect()
    }

    /// Polls `probe` until it yields, failing the test after [`WAIT`] with
    /// the tail of every node's log.
    pub async fn wait_for<T, F, Fut>(&self, what: &str, mut probe: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(v) = probe().await {
                return v;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("timed out waiting for {what}\n{}", self.log_tails());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines of every node's log, for failure messages.
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for (id, n) in &self.nodes {
            out.push_str(&format!("--- node {id} ---\n{}\n", n.log_tail(15)));
        }
        out
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        // The processes go before the directory they write in.
        self.nodes.clear();
    }
}

/// GET over plain HTTP/1.1 (Prometheus, fakes); returns status and body.
pub async fn http_get(host: &str, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(host).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    Ok(parse_response(&buf))
}

/// GET over HTTP/1.1 in TLS, trusting the cluster's CA and presenting
/// `user`'s client certificate (if any) and `headers`.
pub async fn https_get(
    certs: &LocalCerts,
    host: &str,
    path: &str,
    user: Option<&str>,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    https_request(certs, host, "GET", path, user, headers, &[]).await
}

/// One HTTP/1.1 request in TLS (`method`, `path`, `headers`, `body`),
/// trusting the cluster's CA and presenting `user`'s client certificate
/// (if any); returns status and body.
pub async fn https_request(
    certs: &LocalCerts,
    host: &str,
    method: &str,
    path: &str,
    user: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tls_connect(certs, host, user).await?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method != "GET" {
        req.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    s.write_all(&bytes).await?;
    let mut buf = Vec::new();
    // A TLS peer that closes without close_notify is fine for these tests.
    let _ = s.read_to_end(&mut buf).await;
    Ok(parse_response(&buf))
}

/// A TLS connection to `host` (an HTTP listener), trusting the cluster's
/// CA and presenting `user`'s client certificate (if any).
pub async fn tls_connect(
    certs: &LocalCerts,
    host: &str,
    user: Option<&str>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls_pki_types::pem::PemObject;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(certs.ca()).expect("ca") {
        roots.add(c.expect("ca cert")).expect("add ca");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match user {
        Some(user) => {
            let (cert, key) = certs.client(user);
            let chain = rustls_pki_types::CertificateDer::pem_file_iter(cert)
                .expect("cert")
                .collect::<Result<Vec<_>, _>>()
                .expect("cert");
            let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key).expect("key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(host).await?;
    let ip = host.rsplit_once(':').map_or(host, |(ip, _)| ip).to_string();
    let name = rustls_pki_types::ServerName::try_from(ip).expect("server name");
    connector.connect(name, tcp).await
}

fn parse_response(buf: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (code, body)
}

pub fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The value of one sample (`name` or `name{labels}`) in Prometheus text.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}
