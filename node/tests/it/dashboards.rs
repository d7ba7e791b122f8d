//! The Grafana dashboards against a real Prometheus scraping a real cluster.
//!
//! Starts three `herald-node` processes, drives a short load that touches
//! every kind of metric (presence, sessions with a handoff and a fenced
//! write, pools with grants and a denial, HTTP lookups, bad requests), checks
//! each node's `/metrics` with `promtool check metrics` and the shipped
//! scrape config with `promtool check config`, then starts Prometheus
//! (loopback, temporary data dir, 1 s scrapes) and asks its HTTP API for
//! every PromQL expression of every panel in `grafana/dashboards/*.json`.
//! The test fails when an expression is invalid or, by the deadline, still
//! returns no series.
//!
//! Needs `prometheus` and `promtool` (Debian's `prometheus` package): the
//! test runs `.ci/install-prometheus` when they are missing, and fails if
//! that cannot install them.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::TestCluster;
use ::herald_client::proto::*;
use serde_json::Value;

/// What Grafana would put for its variables: every node, and a rate window
/// that holds several 1 s scrapes.
const VARIABLES: &[(&str, &str)] = &[
    ("${instance}", ".*"),
    ("$instance", ".*"),
    ("$__rate_interval", "10s"),
    ("$__interval", "2s"),
    ("$__range", "5m"),
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A binary from PATH, or a failure naming the install script.
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A Prometheus tool, installed by the project's own script when missing
/// (so `cargo test` stays the one command a newcomer runs).
fn tool(name: &str) -> PathBuf {
    if let Some(p) = find_tool(name) {
        return p;
    }
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/install-prometheus");
        eprintln!("`{name}` not found: running {}", script.display());
        let _ = Command::new("bash").arg(&script).status();
    });
    find_tool(name).unwrap_or_else(|| {
        panic!(
            "`{name}` not found and .ci/install-prometheus could not install it (it installs \
             Debian's prometheus package, which has prometheus and promtool; it needs apt and root)"
        )
    })
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every panel expression of one dashboard, with its panel title.
fn expressions(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push((title.clone(), e.to_string()));
                }
            }
            walk(&p["panels"], out); // rows hold their panels
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    // A `label_values(metric, label)` variable needs `metric` to exist.
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let q = v["query"]["query"].as_str().or(v["query"].as_str());
        if let Some(inner) = q.and_then(|q| q.strip_prefix("label_values(")) {
            let metric = inner.split(',').next().unwrap_or("").trim();
            out.push((format!("variable {}", v["name"]), metric.to_string()));
        }
    }
    out
}

fn substitute(expr: &str) -> String {
    VARIABLES
        .iter()
        .fold(expr.to_string(), |e, (var, val)| e.replace(var, val))
}

/// The Prometheus server, killed on drop.
struct Prometheus {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Prometheus scraping `targets` over TLS, trusting `ca` (the nodes'
/// `/metrics` is open: no client certificate needed).
fn start_prometheus(targets: &[String], ca: &std::path::Path) -> Prometheus {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  \
         - job_name: herald\n    scheme: https\n    tls_config:\n      ca_file: {}\n    \
         static_configs:\n      - targets: [{}]\n",
        ca.display(),
        list.join(", ")
    );
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(&config_path, config).expect("write prometheus.yml");
    let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
    let child = Command::new(tool("prometheus"))
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start prometheus");
    Prometheus {
        child,
        addr,
        _dir: dir,
    }
}

fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new(tool("promtool"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.unwrap_or("").as_bytes())
            .expect("promtool stdin");
    }
    let out = child.wait_with_output().expect("promtool output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn login(uid: &str, client: &str) -> LoginRequest {
    LoginRequest {
        uid: uid.into(),
        sid: 1,
        client_type: client.into(),
        accept_strangers: true,
        ext: HashMap::new(),
        ttl_ms: 0,
        connection_id: String::new(),
    }
}

/// A short load that moves every domain metric: writes through a follower
/// and the leader, a handoff and a fenced write, leases and a denial, a
/// storage server with an admitted and a refused upload, an HTTP lookup
/// and a few bad requests. Returns (leader, follower).
async fn load(c: &TestCluster) -> (u64, u64) {
    let leader = c.wait_leader().await;
    let follower = c
        .alive()
        .into_iter()
        .find(|id| *id != leader)
        .expect("follower");
    for (i, id) in [leader, follower].into_iter().enumerate() {
        let mut cl = c.client(id);
        for (j, kind) in ["pc", "mobile", "web", "tv"].into_iter().enumerate() {
            cl.login(login(&format!("user-{i}-{j}"), kind))
                .await
                .expect("login");
        }
        cl.change_permission(PermissionRequest {
            uid: format!("user-{i}-0"),
            sid: 1,
            accept_strangers: false,
            ext: HashMap::new(),
        })
        .await
        .expect("permission");
        cl.logout(LogoutRequest {
            uid: format!("user-{i}-3"),
            sid: 1,
            client_type: String::new(),
            ext: HashMap::new(),
            connection_id: String::new(),
        })
        .await
        .expect("logout");
        // Refused before proposing: InvalidArgument shows in the error panels.
        assert!(cl.login(login("", "pc")).await.is_err());
    }

    let mut cl = c.client(follower);
    let phone = Terminal {
        kind: TerminalKind::Imei as i32,
        id: "490154203237518".into(),
    };
    let tv = Terminal {
        kind: TerminalKind::Mac as i32,
        id: "00:1A:2B:3C:4D:5E".into(),
    };
    let s = cl
        .connect_session(ConnectRequest {
            terminal: Some(phone.clone()),
            app_url: "https://apps.example/quiz".into(),
            capabilities: vec!["video".into()],
        })
        .await
        .expect("connect")
        .into_inner()
        .session
        .expect("session");
    let h = cl
        .handoff(HandoffRequest {
            session_id: s.session_id,
            mode: HandoffMode::Push as i32,
            initiator: Some(phone.clone()),
            candidates: vec![Candidate {
                terminal: Some(tv),
                capabilities: vec!["video".into()],
            }],
            bound_capabilities: vec![],
            holder: None,
            epoch: s.epoch,
            app_url: String::new(),
        })
        .await
        .expect("handoff")
        .into_inner();
    assert!(h.accepted);
    let fenced = cl
        .progress(ProgressRequest {
            session_id: s.session_id,
            terminal: Some(phone),
            epoch: 1,
            seq: 1,
            progress: b"late".to_vec(),
        })
        .await
        .expect_err("the old terminal is fenced");
    assert!(fenced.message().contains("fenced"), "{fenced}");

    let p = cl
        .create_platform(CreatePlatformRequest {
            name: "tv".into(),
            units: vec![UnitSpec {
                name: "vote".into(),
                access_policy: AccessPolicy::HolderOnly as i32,
                ..Default::default()
            }],
        })
        .await
        .expect("platform")
        .into_inner()
        .platform
        .expect("platform");
    let pool = cl
        .create_pool(CreatePoolRequest {
            unit_id: p.units[0].unit_id,
            name: "guests".into(),
            provision: 2,
            max_size: 2,
            default_ttl_ms: 60_000,
        })
        .await
        .expect("pool")
        .into_inner()
        .pool
        .expect("pool");
    for user in ["v1", "v2", "v3"] {
        let r = cl
            .lease_account(LeaseRequest {
                pool_id: pool.pool_id,
                user: user.into(),
                ttl_ms: 0,
                request_id: format!("req-{user}"),
            })
            .await;
        assert_eq!(r.is_ok(), user != "v3", "{user}: {r:?}"); // the pool has two
    }

    // Media sharing: a storage server, an admitted upload and a refused one.
    let mut share =
        ::herald_client::proto::share_client::ShareClient::new(crate::common::channel_as(
            &c.certs,
            &c.client_addr(follower),
            Some(crate::common::ROOT),
        ));
    share
        .register_storage(RegisterStorageRequest {
            server_id: "s1".into(),
            address: "s1.media:9000".into(),
            capacity_bytes: 1000,
        })
        .await
        .expect("register storage");
    share
        .storage_heartbeat(StorageHeartbeatRequest {
            server_id: "s1".into(),
            up: true,
            ttl_ms: 0,
        })
        .await
        .expect("storage up");
    share
        .add_friend(FriendshipRequest {
            user: "alice".into(),
            friend: "bob".into(),
        })
        .await
        .expect("friends");
    for (size, admitted) in [(600, true), (600, false)] {
        let r = share
            .share_media(ShareMediaRequest {
                owner: "alice".into(),
                receivers: vec!["bob".into()],
                size_bytes: size,
                ttl_ms: 0,
                request_id: format!("dash-{admitted}"),
            })
            .await;
        assert_eq!(r.is_ok(), admitted, "{r:?}");
    }

    let (code, body) = c
        .get(follower, "/v1/presence?ids=user-0-0,user-1-1")
        .await
        .expect("http lookup");
    assert_eq!(code, 200, "{body}");
    (leader, follower)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_expression_returns_series_from_a_real_prometheus() {
    let started = std::time::Instant::now();
    // Fail first, and clearly, when the tools are missing.
    tool("prometheus");
    // promtool wants the CA file to exist: check a copy that names a real one.
    let shipped = std::fs::read_to_string(repo().join("grafana/prometheus.yml")).expect("read");
    assert!(
        shipped.contains("ca_file: ../certs/local-3/ca.crt"),
        "{shipped}"
    );
    let check_dir = tempfile::tempdir().expect("tempdir");
    let ca = herald_certs::Ca::create("check", herald_certs::Validity::days(1)).expect("ca");
    std::fs::write(check_dir.path().join("ca.crt"), ca.cert_pem()).expect("write");
    let copy = check_dir.path().join("prometheus.yml");
    std::fs::write(&copy, shipped.replace("../certs/local-3/ca.crt", "ca.crt")).expect("write");
    let (ok, out) = promtool(&["check", "config", &copy.display().to_string()], None);
    assert!(ok, "promtool check config grafana/prometheus.yml:\n{out}");

    let mut dashboards = Vec::new();
    for entry in std::fs::read_dir(repo().join("grafana/dashboards")).expect("grafana/dashboards") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).expect("read dashboard");
            let json: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
            dashboards.push((path, json));
        }
    }
    assert!(
        dashboards.len() >= 4,
        "expected the four dashboards, found {}",
        dashboards.len()
    );

    let c = TestCluster::start(3).await;
    let (leader, follower) = load(&c).await;
    // The load moved the counters it should have, by as much as it should:
    // the leader applied every write before answering it.
    let (_, on_leader) = c.get(leader, "/metrics").await.expect("leader /metrics");
    for (series, want) in [
        ("herald_presence_changes_total{kind=\"login\"}", 8.0),
        ("herald_presence_changes_total{kind=\"logout\"}", 2.0),
        ("herald_presence_changes_total{kind=\"permission\"}", 2.0),
        ("herald_session_handoffs_total{outcome=\"accepted\"}", 1.0),
        ("herald_session_fenced_writes_total", 1.0),
        ("herald_lease_grants_total", 2.0),
        ("herald_lease_denials_total{reason=\"exhausted\"}", 1.0),
        ("herald_raft_is_leader", 1.0),
        ("herald_presence_online_users{client_type=\"pc\"}", 2.0),
    ] {
        assert_eq!(
            crate::common::sample(&on_leader, series),
            Some(want),
            "{series}\n{on_leader}"
        );
    }
    let (_, on_follower) = c
        .get(follower, "/metrics")
        .await
        .expect("follower /metrics");
    let bad = "herald_api_requests_total{server=\"client\",method=\"/herald.v1.Herald/Login\",code=\"InvalidArgument\"}";
    assert_eq!(
        crate::common::sample(&on_follower, bad),
        Some(1.0),
        "{on_follower}"
    );
    assert_eq!(
        crate::common::sample(&on_follower, "herald_raft_is_leader"),
        Some(0.0)
    );
    let targets: Vec<String> = c.alive().iter().map(|id| c.http_addr(*id)).collect();
    for (t, id) in targets.iter().zip(c.alive()) {
        let (code, body) = c.get(id, "/metrics").await.expect("GET /metrics");
        assert_eq!(code, 200, "{t}/metrics: {body}");
        let (ok, out) = promtool(&["check", "metrics"], Some(&body));
        assert!(ok, "promtool check metrics on {t}/metrics:\n{out}\n{body}");
    }

    let prom = start_prometheus(&targets, &c.certs.ca());
    c.wait_for("prometheus to be ready", || async {
        let (code, _) = crate::common::http_get(&prom.addr, "/-/ready").await.ok()?;
        (code == 200).then_some(())
    })
    .await;

    let mut pending: Vec<(String, String, String)> = Vec::new();
    for (path, json) in &dashboards {
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let exprs = expressions(json);
        assert!(!exprs.is_empty(), "{name}: no panel expressions found");
        for (title, expr) in exprs {
            pending.push((name.clone(), title, substitute(&expr)));
        }
    }
    let total = pending.len();
    // Poll until every expression has series (rates need a few scrapes);
    // an invalid expression fails at once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    loop {
        let mut still_empty = Vec::new();
        for (dash, title, expr) in pending {
            let path = format!("/api/v1/query?query={}", url_encode(&expr));
            let (code, body) = crate::common::http_get(&prom.addr, &path)
                .await
                .expect("query prometheus");
            let v: Value = serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("{dash} / {title}: bad answer {code} ({e}): {body}"));
            assert_eq!(
                v["status"], "success",
                "{dash} / {title}: Prometheus rejected `{expr}`: {body}"
            );
            let series = v["data"]["result"].as_array().map_or(0, Vec::len);
            if series == 0 {
                still_empty.push((dash, title, expr));
            }
        }
        if still_empty.is_empty() {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            let list: Vec<String> = still_empty
                .iter()
                .map(|(d, t, e)| format!("  {d} / {t}: {e}"))
                .collect();
            panic!(
                "{} of {total} dashboard expressions returned no series:\n{}",
                list.len(),
                list.join("\n")
            );
        }
        pending = still_empty;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "{total} expressions from {} dashboards returned series; {:.1}s in all",
        dashboards.len(),
        started.elapsed().as_secs_f64()
    );
}
