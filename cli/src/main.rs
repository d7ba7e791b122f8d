//! heraldctl: Herald's command-line client and local playground, shaped like
//! etcdctl (`--endpoints`, `-w table|json`, errors on stderr, non-zero exit).

mod args;
mod cmd;
mod output;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use herald_client::{Client, ClientConfig};

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
    /// Client gRPC endpoints, comma-separated
    #[arg(long, global = true, env = "HERALD_ENDPOINTS", value_delimiter = ',', default_value = DEFAULT_ENDPOINTS)]
    endpoints: Vec<String>,
    /// Output format
    #[arg(short = 'w', long = "write-out", global = true, value_enum, default_value_t = Format::Table)]
    write_out: Format,
    /// Timeout of one request attempt; with fail-over a command may take up
    /// to three times this
    #[arg(long, global = true, default_value = "5s", value_parser = args::duration)]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
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

async fn run(cli: Cli) -> anyhow::Result<()> {
    let ctx = || -> anyhow::Result<Ctx> {
        let client = Client::with_config(
            cli.endpoints.clone(),
            ClientConfig::with_request_timeout(cli.timeout),
        )?;
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

    #[test]
    fn endpoints_default_to_the_playground() {
        let cli = Cli::try_parse_from(["heraldctl", "cluster", "status"]).expect("parses");
        if std::env::var_os("HERALD_ENDPOINTS").is_none() {
            assert_eq!(
                cli.endpoints,
                ["127.0.0.1:7201", "127.0.0.1:7202", "127.0.0.1:7203"]
            );
        }
        assert_eq!(cli.timeout, Duration::from_secs(5));
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
        assert_eq!(cli.endpoints, ["a:1", "b:2"]);
        assert_eq!(cli.write_out, Format::Json);
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
