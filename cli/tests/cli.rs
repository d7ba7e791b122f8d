//! heraldctl against a running cluster, as a user drives it: start
//! `heraldctl playground` (secure, as the README's first command starts
//! it), run commands that find it by themselves, check their output and exit
//! codes, then stop the playground with SIGTERM and check it cleans up.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn heraldctl() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_heraldctl"))
}

/// `herald-node` is built by the same workspace build, next to heraldctl.
fn node_bin() -> PathBuf {
    let p = heraldctl().with_file_name("herald-node");
    assert!(
        p.is_file(),
        "{} missing: build the workspace first",
        p.display()
    );
    p
}

struct Playground {
    child: Child,
    dir: PathBuf,
    endpoints: String,
    /// The playground context heraldctl finds it by (`HERALD_CONTEXT`).
    context: PathBuf,
}

/// The variables a user's shell might carry that would change what
/// heraldctl connects to: cleared, so the test sees only what it sets.
const CONNECTION_ENV: [&str; 6] = [
    "HERALD_ENDPOINTS",
    "HERALD_CACERT",
    "HERALD_CERT",
    "HERALD_KEY",
    "HERALD_TOKEN",
    "HERALD_LEASE_SECRET",
];

impl Drop for Playground {
    /// SIGTERM first, so the playground stops its nodes (they run in their
    /// own process group and would outlive a SIGKILLed playground), then
    /// SIGKILL if it does not exit.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: a signal to our own unreaped child.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            for _ in 0..100 {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_playground(tmp: &tempfile::TempDir) -> Playground {
    // A base port unlikely to collide with a developer's own playground.
    let base = 20_000 + (std::process::id() % 400) * 100;
    let dir = tmp.path().join("pg");
    let context = tmp.path().join("context.json");
    let mut child = Command::new(heraldctl())
        .env("HERALD_CONTEXT", &context)
        .args([
            "playground",
            "--nodes",
            "3",
            "--base-port",
            &base.to_string(),
        ])
        .arg("--node-bin")
        .arg(node_bin())
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn playground");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("playground: {line}");
            let _ = tx.send(line);
        }
    });
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("playground did not come up within 60s");
        if line.contains("Herald playground is up") {
            break;
        }
    }
    let endpoints = (1..=3)
        .map(|i| format!("127.0.0.1:{}", base + 100 + i))
        .collect::<Vec<_>>()
        .join(",");
    Playground {
        child,
        dir,
        endpoints,
        context,
    }
}

/// heraldctl with nothing but the playground's context: how a user runs it
/// next to `heraldctl playground`.
fn run(pg: &Playground, args: &[&str]) -> Output {
    run_env(pg, &[], args)
}

/// [`run`] with extra environment variables (and none of the connection
/// variables of the test runner's own environment).
fn run_env(pg: &Playground, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(heraldctl());
    for var in CONNECTION_ENV {
        cmd.env_remove(var);
    }
    let out = cmd
        .env("HERALD_CONTEXT", &pg.context)
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("run heraldctl");
    println!(
        "$ heraldctl {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json(pg: &Playground, args: &[&str]) -> serde_json::Value {
    let mut full = vec!["-w", "json"];
    full.extend_from_slice(args);
    let out = run(pg, &full);
    assert!(out.status.success(), "heraldctl {args:?} failed");
    serde_json::from_slice(&out.stdout).expect("json output")
}

#[test]
fn heraldctl_drives_a_playground_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let mut pg = start_playground(&tmp);

    // Cluster status: three members answer and agree on a leader.
    let out = run(&pg, &["cluster", "status"]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("leader"), "{table}");
    assert_eq!(
        table.lines().filter(|l| l.contains("127.0.0.1:")).count(),
        3,
        "{table}"
    );
    // The playground founded the cluster (cluster init); a second init is
    // refused, and every member has a recorded incarnation.
    let out = run(&pg, &["cluster", "init"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already belongs to cluster"), "{err}");
    let members = json(&pg, &["cluster", "members"]);
    let members = members["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    for m in members {
        let inc = m["incarnation"].as_str().unwrap_or_default();
        assert!(inc.is_empty() || inc.len() == 32, "{m}");
    }

    // Presence through the CLI.
    let rec = json(
        &pg,
        &[
            "presence", "login", "alice", "--sid", "1001", "--client", "pc", "--ext", "city=hz",
        ],
    );
    assert_eq!(rec["online"], true);
    let got = json(&pg, &["presence", "get", "alice"]);
    assert_eq!(got["ext"]["city"], "hz");
    let out = run(&pg, &["presence", "batch", "alice", "bob"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("alice"));

    // One entry per connection (--connection): two phones of carol, one
    // logged out, the other still online; heartbeats name the connection.
    for phone in ["phone-1", "phone-2"] {
        let rec = json(
            &pg,
            &[
                "presence",
                "login",
                "carol",
                "--sid",
                "7",
                "--client",
                "mobile",
                "--connection",
                phone,
                "--ttl",
                "1h",
            ],
        );
        assert_eq!(rec["online"], true);
    }
    let rec = json(
        &pg,
        &[
            "presence",
            "logout",
            "carol",
            "--sid",
            "7",
            "--client",
            "mobile",
            "--connection",
            "phone-1",
        ],
    );
    let clients = rec["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 1, "{rec}");
    assert_eq!(clients[0]["connection_id"], "phone-2");
    let beat = |phone: &str| {
        json(
            &pg,
            &[
                "presence",
                "heartbeat",
                "carol",
                "--client",
                "mobile",
                "--connection",
                phone,
            ],
        )["known"]
            .clone()
    };
    assert_eq!(beat("phone-2"), true);
    assert_eq!(beat("phone-1"), false);
    let out = run(&pg, &["presence", "get", "carol"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("mobile/phone-2 (ttl 1h)"),
        "the table names the connection"
    );
    // --connection needs --client on logout; a bad id is refused naming it.
    let out = run(
        &pg,
        &[
            "presence",
            "logout",
            "carol",
            "--sid",
            "7",
            "--connection",
            "phone-2",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "clap refuses it");
    let out = run(
        &pg,
        &[
            "presence",
            "login",
            "carol",
            "--sid",
            "7",
            "--client",
            "mobile",
            "--connection",
            &"x".repeat(65),
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("connection_id: must be at most 64 bytes"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Sessions: connect, progress, log.
    let s = json(
        &pg,
        &[
            "session",
            "connect",
            "--terminal",
            "imei:490154203237518",
            "--app",
            "https://apps.example/q",
        ],
    );
    let id = s["session_id"].as_u64().expect("session id").to_string();
    json(
        &pg,
        &[
            "session",
            "progress",
            &id,
            "--terminal",
            "imei:490154203237518",
            "--epoch",
            "1",
            "--seq",
            "1",
            "--data",
            "q1",
        ],
    );
    let out = run(&pg, &["session", "log", &id]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("progress"));

    // Bindings, a pull through the binding (the epoch read first), the
    // sessions of a terminal, and the two-step offer/accept.
    json(
        &pg,
        &[
            "session",
            "bind",
            "imei:490154203237518",
            "mac:00:1a:2b:3c:4d:5e",
        ],
    );
    let b = json(&pg, &["session", "binding", "mac:00:1a:2b:3c:4d:5e"]);
    assert_eq!(b["bound"]["id"], "490154203237518");
    let h = json(
        &pg,
        &[
            "session",
            "handoff",
            &id,
            "--mode",
            "pull-bound",
            "--initiator",
            "mac:00:1a:2b:3c:4d:5e",
        ],
    );
    assert_eq!(h["accepted"], true);
    assert_eq!(h["session"]["epoch"], 2);
    let listed = json(
        &pg,
        &["session", "list", "--terminal", "mac:00:1a:2b:3c:4d:5e"],
    );
    assert_eq!(
        listed["sessions"][0]["session_id"].as_u64(),
        id.parse().ok()
    );
    let offered = json(
        &pg,
        &[
            "session",
            "offer",
            &id,
            "--initiator",
            "mac:00:1a:2b:3c:4d:5e",
            "--to",
            "imei:490154203237518",
        ],
    );
    let offer_id = offered["offer"]["offer_id"].as_u64().unwrap().to_string();
    let taken = json(
        &pg,
        &[
            "session",
            "accept",
            &id,
            "--offer",
            &offer_id,
            "--terminal",
            "imei:490154203237518",
        ],
    );
    assert_eq!(taken["session"]["epoch"], 3);
    json(&pg, &["session", "unbind", "imei:490154203237518"]);
    let b = json(&pg, &["session", "binding", "mac:00:1a:2b:3c:4d:5e"]);
    assert!(b["bound"].is_null(), "{b}");

    // Pools: platform, pool, lease, login with the leased password.
    let p = json(
        &pg,
        &[
            "pool",
            "platform-create",
            "tv",
            "--unit",
            "name=news,qos=gold,response-ms=200,policy=leased",
        ],
    );
    let unit = p["units"][0]["unit_id"].as_u64().unwrap().to_string();
    let pool = json(
        &pg,
        &[
            "pool",
            "create",
            "--unit",
            &unit,
            "--name",
            "guests",
            "--provision",
            "2",
            "--ttl",
            "1h",
        ],
    );
    let pool_id = pool["pool_id"].as_u64().unwrap().to_string();
    let lease = json(&pg, &["pool", "lease", &pool_id, "--user", "viewer-1"]);
    let account = lease["lease"]["account"].as_str().unwrap().to_string();
    let password = lease["password"].as_str().unwrap().to_string();
    let login = json(
        &pg,
        &[
            "pool",
            "login",
            "--unit",
            &unit,
            "--account",
            &account,
            "--password",
            &password,
            "--user",
            "viewer-1",
        ],
    );
    assert_eq!(login["ok"], true);
    // Automatic login: lease and log in in one call, with the unit's QoS.
    let auto = json(
        &pg,
        &["pool", "lease", &pool_id, "--user", "viewer-3", "--login"],
    );
    assert_eq!(auto["login"]["ok"], true, "{auto}");
    assert_eq!(auto["service"]["qos_class"], "gold", "{auto}");
    assert_eq!(auto["service"]["response_time_ms"], 200, "{auto}");

    // Lease secrets: `pool lease` prints one; renew, data-put, release and a
    // holder-only login need it (--secret or HERALD_LEASE_SECRET), and
    // listings show no request ids.
    let p = json(
        &pg,
        &[
            "pool",
            "platform-create",
            "vip",
            "--unit",
            "name=lounge,policy=holder-only",
        ],
    );
    let vip_unit = p["units"][0]["unit_id"].as_u64().unwrap().to_string();
    let vip_pool = json(
        &pg,
        &[
            "pool",
            "create",
            "--unit",
            &vip_unit,
            "--name",
            "vip",
            "--provision",
            "1",
            "--ttl",
            "1h",
        ],
    );
    let vip_pool = vip_pool["pool_id"].as_u64().unwrap().to_string();
    let out = run(
        &pg,
        &[
            "pool",
            "lease",
            &vip_pool,
            "--user",
            "viewer-2",
            "--request-id",
            "cli-request-1",
        ],
    );
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        table.contains("SECRET") && table.contains("cli-request-1"),
        "{table}"
    );
    let vip = json(
        &pg,
        &[
            "pool",
            "lease",
            &vip_pool,
            "--user",
            "viewer-2",
            "--request-id",
            "cli-request-1",
        ],
    );
    assert_eq!(vip["replayed"], true);
    let secret = vip["lease_secret"].as_str().unwrap().to_string();
    assert_eq!(secret.len(), 32, "{vip}");
    assert!(!table.contains(&secret), "a replay's secret is a fresh one");
    let vip_id = vip["lease"]["lease_id"].as_u64().unwrap().to_string();
    let vip_account = vip["lease"]["account"].as_str().unwrap().to_string();
    let vip_password = vip["password"].as_str().unwrap().to_string();
    let out = run(&pg, &["pool", "leases", &vip_pool]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && listing.contains("viewer-2") && !listing.contains("cli-request-1"),
        "{listing}"
    );
    let listed = json(&pg, &["pool", "leases", &vip_pool]);
    assert_eq!(listed["leases"][0]["request_id"], "");
    // No secret: a usage error, nothing sent.
    let out = run(&pg, &["pool", "renew", &vip_id, "--user", "viewer-2"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--secret"));
    // A wrong one: refused by the cluster.
    let out = run(
        &pg,
        &[
            "pool", "release", &vip_id, "--user", "viewer-2", "--secret", "guess",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("permission denied") && err.contains("lease_secret"),
        "{err}"
    );
    let login_args = [
        "pool",
        "login",
        "--unit",
        &vip_unit,
        "--account",
        &vip_account,
        "--password",
        &vip_password,
        "--user",
        "viewer-2",
    ];
    let out = run(&pg, &login_args);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("lease_secret required"));
    let with_secret = [("HERALD_LEASE_SECRET", secret.as_str())];
    let out = run_env(&pg, &with_secret, &login_args);
    assert!(out.status.success());
    let out = run_env(
        &pg,
        &with_secret,
        &[
            "pool", "data-put", &vip_id, "posts", "hi", "--user", "viewer-2",
        ],
    );
    assert!(out.status.success());
    let mut full = vec!["-w", "json"];
    full.extend_from_slice(&login_args);
    full.extend_from_slice(&["--secret", &secret]);
    let login = run(&pg, &full);
    let login: serde_json::Value = serde_json::from_slice(&login.stdout).unwrap();
    assert_eq!(login["data"]["posts"], "aGk=", "{login}");
    let data = json(
        &pg,
        &[
            "pool", "data-get", &vip_id, "--user", "viewer-2", "--secret", &secret,
        ],
    );
    assert_eq!(data["posts"], "aGk=", "{data}");

    // A viewer's own account (the password from the environment, hashed by
    // the node), its login, and the first access request of a content.
    let own = [("HERALD_ACCOUNT_PASSWORD", "correct horse")];
    let out = run_env(
        &pg,
        &own,
        &["pool", "register", "--unit", &vip_unit, "carol"],
    );
    assert!(out.status.success(), "{out:?}");
    let accounts = json(&pg, &["pool", "accounts", &vip_unit]);
    assert_eq!(accounts[0]["account"], "carol", "{accounts}");
    let own_login = json(
        &pg,
        &[
            "pool",
            "login",
            "--unit",
            &vip_unit,
            "--account",
            "carol",
            "--password",
            "correct horse",
            "--user",
            "carol",
        ],
    );
    assert_eq!(own_login["registered"], true, "{own_login}");
    json(
        &pg,
        &[
            "pool",
            "content-set",
            "--platform",
            &p["platform_id"].to_string(),
            "match",
            "--all",
        ],
    );
    let shown = json(
        &pg,
        &[
            "pool",
            "content",
            "--platform",
            &p["platform_id"].to_string(),
            "match",
        ],
    );
    assert_eq!(shown["mode"], "UNITS_ALL", "{shown}");
    assert_eq!(shown["units"][0]["available"], true, "{shown}");
    json(&pg, &["pool", "unregister", "--unit", &vip_unit, "carol"]);
    let renewed = json(
        &pg,
        &[
            "pool", "renew", &vip_id, "--user", "viewer-2", "--secret", &secret,
        ],
    );
    assert_eq!(renewed["holder"], "viewer-2");
    let out = run_env(
        &pg,
        &with_secret,
        &["pool", "release", &vip_id, "--user", "viewer-2"],
    );
    assert!(out.status.success());

    // Media sharing: a storage server, friends, an upload admitted by
    // capacity, one refused for room and one for a non-friend, commit,
    // access for a friend.
    json(
        &pg,
        &[
            "share",
            "storage-register",
            "s1",
            "--address",
            "s1.media:9000",
            "--capacity",
            "1000",
        ],
    );
    let beat = json(&pg, &["share", "storage-up", "s1", "--ttl", "30s"]);
    assert_eq!(beat["servers"][0]["heartbeat_ttl_ms"], 30_000, "{beat}");
    assert_eq!(beat["servers"][0]["up"], true, "{beat}");
    json(&pg, &["share", "storage-up", "s1"]);
    json(&pg, &["share", "friend-add", "alice", "bob"]);
    let created = json(
        &pg,
        &["share", "create", "alice", "--to", "bob", "--size", "600"],
    );
    assert_eq!(created["share"]["server_id"], "s1", "{created}");
    let share_id = created["share"]["share_id"].as_u64().unwrap().to_string();
    let owner_key = created["owner_key"].as_str().unwrap().to_string();
    let out = run(
        &pg,
        &["share", "create", "alice", "--to", "bob", "--size", "500"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("room for 500 bytes"), "{err}");
    let out = run(
        &pg,
        &["share", "create", "alice", "--to", "mallory", "--size", "1"],
    );
    assert_eq!(out.status.code(), Some(1));
    let committed = json(
        &pg,
        &[
            "share",
            "commit",
            &share_id,
            "--share-key",
            &owner_key,
            "--size",
            "400",
        ],
    );
    assert_eq!(committed["shares"][0]["state"], "committed", "{committed}");
    let access = json(&pg, &["share", "access", &share_id, "--user", "bob"]);
    assert_eq!(access["address"], "s1.media:9000", "{access}");
    let out = run(&pg, &["share", "access", &share_id, "--user", "mallory"]);
    assert_eq!(out.status.code(), Some(1));
    let listed = json(&pg, &["share", "storage-list"]);
    assert_eq!(listed["servers"][0]["committed_bytes"], 400, "{listed}");
    // Linked catalogs: an album and a shop linked by camera model, a
    // selection counted once per request id, a ranked lookup both ways.
    for (name, wp) in [("album", "0"), ("shop", "10")] {
        let out = run(
            &pg,
            &["link", "catalog-create", name, "--purchase-weight", wp],
        );
        assert!(out.status.success());
    }
    let out = run(
        &pg,
        &["link", "put", "album", "p1", "--attr", "camera_model=X100"],
    );
    assert!(out.status.success());
    for (id, model) in [("lens", "X100"), ("strap", "X100"), ("bag", "Q2")] {
        let attr = format!("model={model}");
        assert!(
            run(&pg, &["link", "put", "shop", id, "--attr", &attr])
                .status
                .success()
        );
    }
    let out = run(
        &pg,
        &[
            "link",
            "rule-add",
            "camera",
            "album.camera_model",
            "shop.model",
        ],
    );
    assert!(out.status.success());
    let first = json(
        &pg,
        &["link", "select", "shop", "strap", "--request-id", "r-1"],
    );
    assert_eq!(first["selections"], 1);
    assert_eq!(first["replayed"], false);
    let again = json(
        &pg,
        &["link", "select", "shop", "strap", "--request-id", "r-1"],
    );
    assert_eq!(
        (again["selections"].as_u64(), again["replayed"].as_bool()),
        (Some(1), Some(true))
    );
    let bought = json(&pg, &["link", "purchase", "shop", "lens"]);
    assert_eq!(bought["score"], 10);
    let found = json(&pg, &["link", "lookup", "album", "shop", "--item", "p1"]);
    let order: Vec<&str> = found["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["item"]["item_id"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["lens", "strap"]);
    let out = run(
        &pg,
        &[
            "link",
            "lookup",
            "shop",
            "album",
            "--value",
            "model=X100",
            "--by",
            "selections",
        ],
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("p1"));
    let listed = json(&pg, &["link", "list"]);
    assert_eq!(listed["rules"][0]["left"], "album.camera_model");
    let out = run(&pg, &["link", "catalog-delete", "shop"]);
    assert_eq!(out.status.code(), Some(1), "a linked catalog is kept");
    assert!(String::from_utf8_lossy(&out.stderr).contains("camera"));

    // Errors: to stderr, non-zero exit, the field named, nothing printed to stdout.
    let out = run(
        &pg,
        &[
            "presence",
            "login",
            &"x".repeat(200),
            "--sid",
            "1",
            "--client",
            "pc",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("Error:") && err.contains("uid"), "{err}");
    assert!(out.stdout.is_empty());
    let out = run(
        &pg,
        &[
            "session",
            "connect",
            "--terminal",
            "fax:123",
            "--app",
            "https://a",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "a bad terminal kind is a usage error"
    );
    let out = run(&pg, &["cluster", "promote", "99"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));

    // Admin: snapshot and leadership move.
    let out = run(&pg, &["cluster", "snapshot"]);
    assert!(out.status.success());
    let members = json(&pg, &["cluster", "members"]);
    let leader = members["leader_id"].as_u64().unwrap();
    let target = if leader == 1 { "2" } else { "1" };
    let out = run(&pg, &["cluster", "move-leader", target]);
    assert!(out.status.success());
    let members = json(&pg, &["cluster", "members"]);
    assert_eq!(members["leader_id"].as_u64().unwrap().to_string(), target);

    // Auth: the playground's context made us root; a caller with no
    // credential is refused; a user with a token gets what its role allows.
    let me = json(&pg, &["auth", "status"]);
    assert_eq!(
        (me["enabled"].clone(), me["principal"].clone()),
        (true.into(), "root".into())
    );
    let ca = pg.dir.join("certs/ca.crt").display().to_string();
    let anonymous = [
        ("HERALD_ENDPOINTS", pg.endpoints.as_str()),
        ("HERALD_CACERT", ca.as_str()),
    ];
    let out = run_env(&pg, &anonymous, &["presence", "get", "alice"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unauthenticated") && err.contains("credential"),
        "{err}"
    );
    // Plaintext against the TLS ports: refused, never a silent downgrade.
    let out = run_env(
        &pg,
        &[("HERALD_ENDPOINTS", pg.endpoints.as_str())],
        &["cluster", "members"],
    );
    assert_eq!(out.status.code(), Some(1));
    let out = run(&pg, &["user", "add", "pub1", "--roles", "publisher"]);
    assert!(out.status.success());
    let users = json(&pg, &["user", "list"]);
    assert_eq!(users[0]["name"], "pub1");
    assert_eq!(users[0]["roles"][0], "publisher");
    let token = json(&pg, &["token", "create", "--user", "pub1", "--ttl", "1h"]);
    let token = token["token"].as_str().unwrap().to_string();
    let with_token = [
        ("HERALD_ENDPOINTS", pg.endpoints.as_str()),
        ("HERALD_CACERT", ca.as_str()),
        ("HERALD_TOKEN", token.as_str()),
    ];
    let out = run_env(
        &pg,
        &with_token,
        &["presence", "login", "bob", "--sid", "2", "--client", "pc"],
    );
    assert!(out.status.success());
    let out = run_env(&pg, &with_token, &["presence", "get", "bob"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("permission denied") && err.contains("reader"),
        "{err}"
    );
    let tokens = json(&pg, &["token", "list"]);
    assert!(
        !tokens.to_string().contains(&token[4..]),
        "a listing shows no token"
    );
    let id = tokens[0]["token_id"].as_u64().unwrap().to_string();
    assert!(run(&pg, &["token", "revoke", &id]).status.success());
    let out = run_env(
        &pg,
        &with_token,
        &["presence", "login", "bob", "--sid", "2", "--client", "pc"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unauthenticated"));

    // Ctrl-C/SIGTERM stops every node and removes the directory.
    let pid = pg.child.id() as i32;
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = pg.child.wait().unwrap();
    assert!(status.success(), "playground exit: {status}");
    assert!(!pg.dir.exists(), "playground dir left behind");
    assert!(!pg.context.exists(), "playground context left behind");
}

/// `heraldctl cert`: a CA, a node and a client certificate, never
/// overwritten; a node certificate names its id.
#[test]
fn heraldctl_makes_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path().join("certs");
    let key = tmp.path().join("safe/ca.key");
    let cert = |args: &[&str]| {
        let out = Command::new(heraldctl())
            .args(["cert"])
            .args(args)
            .arg("--certs-dir")
            .arg(&certs)
            .arg("--ca-key")
            .arg(&key)
            .output()
            .expect("run heraldctl");
        println!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    assert!(cert(&["create-ca"]).status.success());
    assert!(certs.join("ca.crt").is_file() && key.is_file());
    let again = cert(&["create-ca"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert!(
        cert(&["create-node", "--id", "4", "--host", "node4.example"])
            .status
            .success()
    );
    assert!(certs.join("node4.crt").is_file() && certs.join("node4.key").is_file());
    assert!(cert(&["create-client", "ops"]).status.success());
    assert!(certs.join("client.ops.crt").is_file());
    let bad = cert(&["create-client", "bad name"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("user name"));
    let pem = std::fs::read_to_string(certs.join("node4.crt")).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
}
