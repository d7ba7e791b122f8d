//! `heraldctl playground`: a local cluster in one command, like
//! `tiup playground`. The process handling lives in
//! [`herald_harness::cluster`]; this is the part that talks to the user.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use herald_cli::context::Context;
use herald_config::local::ROOT_USER;
use herald_harness::{LocalCluster, Options, locate_node_binary};

/// How long the nodes get to agree on a leader.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the nodes get to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(clap::Args)]
pub struct Args {
    /// How many nodes
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=99))]
    nodes: u32,
    /// Directory for configs, data and logs (default: .playground/<unix time>);
    /// must be absent or empty
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Node i listens on peer base+i, client base+100+i, HTTP base+200+i,
    /// time sync base+300+i
    #[arg(long, default_value_t = 7100)]
    base_port: u16,
    /// The herald-node binary (default: next to heraldctl, rebuilt first
    /// when run by cargo)
    #[arg(long)]
    node_bin: Option<PathBuf>,
    /// Keep the directory after exit
    #[arg(long)]
    keep: bool,
    /// Plaintext on every port, no certificates and no authentication
    /// (the default is TLS everywhere, with `root` as administrator)
    #[arg(long)]
    insecure: bool,
    /// Start the nodes in testing mode (test hooks such as SetClockOffset on)
    #[arg(long)]
    testing: bool,
}

pub async fn run(args: Args) -> Result<()> {
    let node_bin = locate_node_binary(args.node_bin, |cmd| println!("building the node: {cmd}"))?;
    let dir = match args.dir {
        Some(dir) => dir,
        None => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            std::env::current_dir()
                .context("finding the current directory")?
                .join(".playground")
                .join(now.to_string())
        }
    };
    let options = Options {
        nodes: args.nodes,
        dir,
        base_port: args.base_port,
        node_bin,
        insecure: args.insecure,
        testing: args.testing,
    };
    let mut cluster = LocalCluster::start(&options).await?;
    println!(
        "started {} node(s) from {} in {}",
        args.nodes,
        options.node_bin.display(),
        cluster.dir().display()
    );

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);

    // 1. Wait for a leader every node agrees on, unless the user gives up.
    let waited = tokio::select! {
        r = cluster.wait_for_leader(STARTUP_TIMEOUT, |picture| println!("waiting for a leader: {picture}")) => Some(r),
        _ = &mut ctrl_c => None,
        _ = sigterm.recv() => None,
    };
    let leader = match waited {
        None => return shut_down(cluster, args.keep, "interrupted during startup").await,
        Some(Ok(leader)) => leader,
        Some(Err(e)) => return fail(cluster, e.to_string()).await,
    };
    let context = context_of(&cluster);
    let context_path = match context.save() {
        Ok(path) => Some(path),
        Err(e) => {
            eprintln!("warning: heraldctl will not find this playground by itself: {e:#}");
            None
        }
    };
    print_banner(&cluster, leader, args.base_port, context_path.as_deref());

    // 2. Run until the user stops us. A node dying now is reported but not
    // fatal: killing one to watch the cluster fail over is a fair use of a
    // playground. Only when every node is gone is there nothing left to run.
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut alive = cluster.nodes().len();
    loop {
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = sigterm.recv() => break,
            _ = tick.tick() => {
                while let Some((id, status)) = cluster.exited_node() {
                    alive -= 1;
                    eprintln!("node{id} exited ({status}); {alive} node(s) still running. Last lines of its log:");
                    eprintln!("{}", cluster.log_tail(id, 10));
                }
                if alive == 0 {
                    return fail(cluster, "every node exited".into()).await;
                }
            }
        }
    }
    context.remove_if_mine();
    shut_down(cluster, args.keep, "stopping").await
}

/// What heraldctl needs to reach this playground.
fn context_of(cluster: &LocalCluster) -> Context {
    let certs = cluster.certs();
    Context {
        dir: cluster.dir().to_owned(),
        endpoints: cluster.client_endpoints(),
        cacert: certs.map(|c| c.ca()),
        cert: certs.map(|c| c.client(ROOT_USER).0),
        key: certs.map(|c| c.client(ROOT_USER).1),
    }
}

/// Stops the nodes and removes the directory unless asked to keep it.
async fn shut_down(mut cluster: LocalCluster, keep: bool, why: &str) -> Result<()> {
    println!("\n{why}: sending SIGTERM to the nodes...");
    let killed = cluster.stop(STOP_GRACE).await;
    if !killed.is_empty() {
        let ids: Vec<String> = killed.iter().map(|id| format!("node{id}")).collect();
        println!("killed after {STOP_GRACE:?}: {}", ids.join(", "));
    }
    if keep {
        println!("kept {}", cluster.dir().display());
    } else {
        std::fs::remove_dir_all(cluster.dir())
            .with_context(|| format!("removing {}", cluster.dir().display()))?;
        println!("removed {}", cluster.dir().display());
    }
    Ok(())
}

/// Shows the log tails, stops the rest, keeps the directory for a post-mortem.
async fn fail(mut cluster: LocalCluster, why: String) -> Result<()> {
    for node in cluster.nodes() {
        let id = node.id();
        eprintln!("--- last lines of {} ---", node.log_path.display());
        eprintln!("{}", cluster.log_tail(id, 20));
    }
    cluster.stop(STOP_GRACE).await;
    bail!("{why}; logs and data kept in {}", cluster.dir().display())
}

fn print_banner(
    cluster: &LocalCluster,
    leader: u64,
    base_port: u16,
    context_path: Option<&std::path::Path>,
) {
    let mut table =
        crate::output::Table::new(&["NODE", "CLIENT GRPC", "HTTP", "PEER", "DATA DIR", "LOG"]);
    for node in cluster.nodes() {
        let c = &node.config;
        let name = if c.id == leader {
            format!("node{} (leader)", c.id)
        } else {
            format!("node{}", c.id)
        };
        table.row(vec![
            name,
            c.listen.client.to_string(),
            format!(
                "{}://{}",
                if c.insecure { "http" } else { "https" },
                c.listen.http
            ),
            c.listen.peer.to_string(),
            c.data_dir.display().to_string(),
            node.log_path.display().to_string(),
        ]);
    }
    println!(
        "\nHerald playground is up: {} node(s), leader node{leader}",
        cluster.nodes().len()
    );
    table.print();

    match cluster.certs() {
        Some(certs) => {
            let (cert, key) = certs.client(ROOT_USER);
            println!(
                "\nSecure: TLS on every port, mutual TLS between nodes, auth on; you are {ROOT_USER:?}, \
                 the founding administrator."
            );
            match context_path {
                Some(p) => println!(
                    "heraldctl finds this playground by itself while it runs ({}).",
                    p.display()
                ),
                None => println!("Tell heraldctl where it is:"),
            }
            println!("From elsewhere (another heraldctl, a gRPC client, curl):");
            println!(
                "  export HERALD_ENDPOINTS={}",
                cluster.client_endpoints().join(",")
            );
            println!(
                "  export HERALD_CACERT={} HERALD_CERT={} HERALD_KEY={}",
                certs.ca().display(),
                cert.display(),
                key.display()
            );
        }
        None => println!("\nINSECURE: plaintext on every port and no authentication (--insecure)."),
    }

    let exe = heraldctl_path();
    let endpoints = if base_port == 7100 || context_path.is_some() {
        String::new()
    } else {
        format!(" --endpoints {}", cluster.client_endpoints().join(","))
    };
    let http = cluster
        .nodes()
        .first()
        .map(|n| n.config.listen.http.to_string())
        .unwrap_or_default();
    println!("\nTry:");
    for example in [
        "cluster status",
        "presence login alice --sid 1001 --client pc --ttl 30s",
        "presence batch alice bob",
        "presence watch",
        "session connect --terminal imei:490154203237518 --app https://apps.example/quiz",
        "pool platform-create tv --unit 'name=news,qos=gold,response-ms=200,policy=leased'",
    ] {
        println!("  {exe}{endpoints} {example}");
    }
    match cluster.certs() {
        Some(certs) => {
            let (cert, key) = certs.client(ROOT_USER);
            println!(
                "  curl --cacert {} --cert {} --key {} 'https://{http}/v1/presence?ids=alice,bob'",
                certs.ca().display(),
                cert.display(),
                key.display()
            );
            println!("  {exe} auth status");
        }
        None => println!("  curl 'http://{http}/v1/presence?ids=alice,bob'"),
    }
    println!("\nPress Ctrl-C to stop the cluster.");
}

/// How to call this heraldctl from the current directory: a relative path
/// when it is below it (`target/release/heraldctl`), else the full path.
fn heraldctl_path() -> String {
    let Ok(exe) = std::env::current_exe() else {
        return "heraldctl".into();
    };
    let relative = std::env::current_dir()
        .ok()
        .and_then(|cwd| exe.strip_prefix(cwd).ok().map(PathBuf::from));
    relative.unwrap_or(exe).display().to_string()
}
