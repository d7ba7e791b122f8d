//! heraldctl: Herald's command-line client and local playground, shaped like
//! etcdctl (`--endpoints`, `-w table|json`, errors on stderr, non-zero exit).

mod args;
mod cmd;
mod output;

use std::process::ExitCode;
use std::time::Duration;

use std::path::PathBuf;

use anyhow::bail;
use clap::{Parser, Subcommand};
use herald_cli::context::Context;
use herald_client::{Client, ClientConfig, ClientTls};

use crate::cmd::Ctx;
use crate::output::Format;

/// The playground's client ports with its default base port.
const DEFAULT_ENDPOINTS: &str = "127.0.0.1:7201,127.0.0.1:7202,127.0.0.1:7203";

#[derive(Parser)]
#[command(
    name = "heraldctl",
    version,
    about = "Use and administer a Herald cluster"
)]
struct Cli {
    #[command(flatten)]
    conn: ConnArgs,
    /// Output format
    #[arg(short = 'w', long = "write-out", global = true, value_enum, default_value_t = Format::Table)]
    write_out: Format,
    #[command(subcommand)]
    command: Command,
}

/// Where heraldctl connects and how it proves who it is.
#[derive(clap::Args)]
struct ConnArgs {
    /// Client gRPC endpoints, comma-separated (default: the running
    /// playground's, else 127.0.0.1:7201..7203)
    #[arg(long, global = true, env = "HERALD_ENDPOINTS", value_delimiter = ',')]
    endpoints: Option<Vec<String>>,
    /// The cluster's CA certificate: turns TLS on (default: the running
    /// playground's)
    #[arg(long, global = true, env = "HERALD_CACERT")]
    cacert: Option<PathBuf>,
    /// Client certificate to present (with --key)
    #[arg(long, global = true, env = "HERALD_CERT")]
    cert: Option<PathBuf>,
    /// The client certificate's key
    #[arg(long, global = true, env = "HERALD_KEY")]
    key: Option<PathBuf>,
    /// Bearer token (heraldctl token create), instead of a client certificate
    #[arg(long, global = true, env = "HERALD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Timeout of one request attempt; with fail-over a command may take up
    /// to three times this
    #[arg(long, global = true, default_value = "5s", value_parser = args::duration)]
    timeout: Duration,
}

#[derive(Subcommand)]
enum Command {
    /// Cluster status, membership and leadership
    #[command(subcommand)]
    Cluster(cmd::cluster::Cmd),
    /// User presence: login, logout, permission, heartbeat, lookups, watch
    #[command(subcommand)]
    Presence(cmd::presence::Cmd),
    /// Session progress, bindings, handoffs and work logs
    #[command(subcommand)]
    Session(cmd::session::Cmd),
    /// Platforms, units and pools of temporary accounts
    #[command(subcommand)]
    Pool(cmd::pool::Cmd),
    /// Media sharing: storage servers, friendships, uploads, access
    #[command(subcommand)]
    Share(cmd::share::Cmd),
    /// Linked catalogs: items, link rules, selections, purchases, ranked lookups
    #[command(subcommand)]
    Link(cmd::link::Cmd),
    /// Whether auth is enforced, and who you are
    #[command(subcommand)]
    Auth(cmd::auth::AuthCmd),
    /// Users and their roles
    #[command(subcommand)]
    User(cmd::auth::UserCmd),
    /// Grant and revoke roles (admin, publisher, reader, pools, sessions, share, link)
    #[command(subcommand)]
    Role(cmd::auth::RoleCmd),
    /// Bearer tokens for callers without a client certificate
    #[command(subcommand)]
    Token(cmd::auth::TokenCmd),
    /// Back up the cluster's state, and restore a backup into a new cluster
    #[command(subcommand)]
    Snapshot(cmd::snapshot::Cmd),
    /// Make a cluster's CA, node and client certificates (offline)
    #[command(subcommand)]
    Cert(cmd::cert::Cmd),
    /// Start a local cluster and keep it running until Ctrl-C
    Playground(cmd::playground::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Where to connect and with which credentials: what was given (flags or
/// environment), else all of the running playground's context, else the
/// default endpoints in plaintext.
fn connection(cli: &ConnArgs) -> anyhow::Result<(Vec<String>, ClientConfig)> {
    let given =
        cli.cacert.is_some() || cli.cert.is_some() || cli.key.is_some() || cli.token.is_some();
    let context = if cli.endpoints.is_none() && !given {
        Context::load()
    } else {
        None
    };
    connection_with(cli, context)
}

/// [`connection`] with the playground context already looked up.
fn connection_with(
    cli: &ConnArgs,
    context: Option<Context>,
) -> anyhow::Result<(Vec<String>, ClientConfig)> {
    let mut config = ClientConfig::with_request_timeout(cli.timeout);
    let endpoints = match (&cli.endpoints, &context) {
        (Some(e), _) => e.clone(),
        (None, Some(c)) => c.endpoints.clone(),
        (None, None) => DEFAULT_ENDPOINTS.split(',').map(String::from).collect(),
    };
    let (cacert, cert, key) = match &context {
        Some(c) => (c.cacert.clone(), c.cert.clone(), c.key.clone()),
        None => (cli.cacert.clone(), cli.cert.clone(), cli.key.clone()),
    };
    let identity = match (&cert, &key) {
        (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
        (None, None) => None,
        _ => bail!("--cert and --key go together (HERALD_CERT, HERALD_KEY)"),
    };
    config.tls = match &cacert {
        Some(ca) => Some(ClientTls::from_files(ca, identity)?),
        None if identity.is_some() => {
            bail!("--cert needs --cacert: the cluster's CA certificate (HERALD_CACERT)")
        }
        None => None,
    };
    config.token = cli.token.clone();
    Ok((endpoints, config))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let ctx = || -> anyhow::Result<Ctx> {
        let (endpoints, config) = connection(&cli.conn)?;
        let client = Client::with_config(endpoints, config)?;
        Ok(Ctx {
            client,
            format: cli.write_out,
        })
    };
    match cli.command {
        Command::Cluster(c) => cmd::cluster::run(c, &ctx()?).await,
        Command::Presence(c) => cmd::presence::run(c, &ctx()?).await,
        Command::Session(c) => cmd::session::run(c, &ctx()?).await,
        Command::Pool(c) => cmd::pool::run(c, &ctx()?).await,
        Command::Share(c) => cmd::share::run(c, &ctx()?).await,
        Command::Link(c) => cmd::link::run(c, &ctx()?).await,
        Command::Auth(c) => cmd::auth::auth(c, &ctx()?).await,
        Command::User(c) => cmd::auth::user(c, &ctx()?).await,
        Command::Role(c) => cmd::auth::role_cmd(c, &ctx()?).await,
        Command::Token(c) => cmd::auth::token(c, &ctx()?).await,
        Command::Snapshot(c) => cmd::snapshot::run(c, cli.write_out, ctx).await,
        Command::Cert(c) => cmd::cert::run(c),
        Command::Playground(args) => cmd::playground::run(args).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    /// A subcommand argument with a global one's id (`key`, `cert`, ...)
    /// makes clap panic when either is read; debug_assert does not see it.
    #[test]
    fn no_subcommand_reuses_a_global_flag() {
        fn walk(cmd: &clap::Command, globals: &[String], path: &str) {
            for arg in cmd.get_arguments().filter(|a| !a.is_global_set()) {
                let id = arg.get_id().as_str();
                assert!(
                    !globals.iter().any(|g| g == id),
                    "{path}: argument {id:?} shadows a global one"
                );
            }
            for sub in cmd.get_subcommands() {
                walk(sub, globals, &format!("{path} {}", sub.get_name()));
            }
        }
        let root = Cli::command();
        let globals: Vec<String> = root
            .get_arguments()
            .filter(|a| a.is_global_set())
            .map(|a| a.get_id().to_string())
            .collect();
        assert!(globals.contains(&"key".to_string()));
        for sub in root.get_subcommands() {
            walk(sub, &globals, sub.get_name());
        }
    }

    #[test]
    fn endpoints_default_to_the_playground() {
        let cli = Cli::try_parse_from(["heraldctl", "cluster", "status"]).expect("parses");
        if std::env::var_os("HERALD_ENDPOINTS").is_none() {
            let (endpoints, config) = connection_with(&cli.conn, None).expect("defaults");
            assert_eq!(
                endpoints,
                ["127.0.0.1:7201", "127.0.0.1:7202", "127.0.0.1:7203"]
            );
            assert!(config.tls.is_none());
            // A running playground's context gives endpoints and credentials.
            let dir = tempfile::tempdir().expect("tempdir");
            let ca = dir.path().join("ca.crt");
            std::fs::write(&ca, "not really a certificate").expect("write");
            let context = Context {
                dir: dir.path().to_owned(),
                endpoints: vec!["127.0.0.1:9201".into()],
                cacert: Some(ca),
                cert: None,
                key: None,
            };
            let (endpoints, config) = connection_with(&cli.conn, Some(context)).expect("context");
            assert_eq!(endpoints, ["127.0.0.1:9201"]);
            assert!(config.tls.is_some());
        }
        assert_eq!(cli.conn.timeout, Duration::from_secs(5));
        let cli = Cli::try_parse_from([
            "heraldctl",
            "--endpoints",
            "a:1,b:2",
            "-w",
            "json",
            "presence",
            "get",
            "alice",
        ])
        .expect("parses");
        assert_eq!(
            cli.conn.endpoints.as_deref(),
            Some(&["a:1".to_string(), "b:2".to_string()][..])
        );
        assert_eq!(cli.write_out, Format::Json);
        let cli = Cli::try_parse_from([
            "heraldctl",
            "--cert",
            "c.crt",
            "--key",
            "c.key",
            "cluster",
            "status",
        ])
        .expect("parses");
        let err = connection_with(&cli.conn, None).unwrap_err().to_string();
        assert!(err.contains("--cacert"), "{err}");
    }

    #[test]
    fn bad_terminal_kinds_are_usage_errors() {
        let err = Cli::try_parse_from([
            "heraldctl",
            "session",
            "connect",
            "--terminal",
            "phone:1",
            "--app",
            "x",
        ])
        .err()
        .expect("usage error");
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("unknown terminal kind"), "{err}");
    }

    #[test]
    fn progress_needs_exactly_one_payload() {
        let base = [
            "heraldctl",
            "session",
            "progress",
            "7",
            "--terminal",
            "mac:00:1a:2b:3c:4d:5e",
            "--epoch",
            "1",
            "--seq",
            "2",
        ];
        assert!(Cli::try_parse_from(base).is_err());
        assert!(Cli::try_parse_from([&base[..], &["--data", "x"]].concat()).is_ok());
        assert!(
            Cli::try_parse_from([&base[..], &["--data", "x", "--data-file", "f"]].concat())
                .is_err()
        );
    }

    #[test]
    fn handoff_arguments_map() {
        let cli = Cli::try_parse_from([
            "heraldctl",
            "session",
            "handoff",
            "7",
            "--mode",
            "push",
            "--initiator",
            "imei:490154203237518",
            "--to",
            "mac:00:1a:2b:3c:4d:5e=video",
            "--to",
            "msisdn:+8613800000000",
        ])
        .expect("parses");
        let Command::Session(cmd::session::Cmd::Handoff { candidates, .. }) = cli.command else {
            panic!("not a handoff");
        };
        assert_eq!(candidates.len(), 2);
        assert_eq!(candidates[0].capabilities, ["video"]);
    }
}
