//! `herald-node --config node.toml`: runs one Herald node until SIGINT/SIGTERM.

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
#[command(name = "herald-node", version, about = "Run one Herald node")]
struct Args {
    /// The node's TOML config (see cluster-configs/).
    #[arg(long, short)]
    config: PathBuf,
    /// Log format.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    herald_node::telemetry::init_logging(&args.log_format);
    let config = match herald_node::config::Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("Error: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = herald_node::server::run(config, shutdown_signal()).await {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
