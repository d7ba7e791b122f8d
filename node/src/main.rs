//! `herald-node --config node.toml`: runs one Herald node until SIGINT/SIGTERM.

use std::path::PathBuf;

use clap::Parser;

/// mimalloc instead of glibc malloc: a write allocates many short-lived
/// buffers (gRPC frames, bincode, log entries), and malloc/free was a fifth
/// of the node's CPU in the write-path profile (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "herald-node", version, about = "Run one Herald node")]
struct Args {
    /// The node's TOML config (see cluster-configs/).
    #[arg(long, short)]
    config: PathBuf,
    /// Log format: text or json (default: the config's
    /// `telemetry.log_format`, else text).
    #[arg(long)]
    log_format: Option<herald_node::telemetry::LogFormat>,
    /// Testing mode: turns on the test hooks (`Admin.SetClockOffset`, the
    /// config's `[testing]` faults and `clock.initial_offset_ms`). For the
    /// chaos suite and tests only; never in production.
    #[arg(long)]
    testing: bool,
}

/// One thread for the client APIs: three nodes and their clients share a
/// couple of cores, and a single-threaded runtime saves the cross-thread
/// wake-ups that topped the write-path profile (herald-bench, same machine, 4 s windows,
/// twice each: write-c64 7295/7612 -> 10092/10307 ops/s, read-c64
/// 15140/15492 -> 18230/19718). Blocking work (fsync, snapshot encode and
/// install) runs on the blocking pool, and a snapshot holds the state lock
/// only for a pointer copy, so nothing here stalls the one thread for long.
/// Raft itself runs on threads of its own (`raft::runtime`), so a full
/// client queue cannot delay its heartbeats into an election.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let config = match herald_node::config::Config::load_with(&args.config, args.testing) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("Error: {e}");
            std::process::exit(2);
        }
    };
    let format = args
        .log_format
        .or(config.telemetry.log_format)
        .unwrap_or_default();
    if let Err(e) = herald_node::telemetry::init(format, &config.telemetry, config.id) {
        eprintln!("Error: telemetry: {e:#}");
        std::process::exit(2);
    }
    if let Err(e) = herald_node::server::run(config, shutdown_signal(), return_freed_memory).await {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}

/// Hands the memory freed while starting back to the OS. Loading a snapshot
/// reads the whole file (~240 MB for a million users) and frees it once
/// decoded; mimalloc keeps freed memory for reuse and returned it only
/// some 10 s later, so a restarted node showed 725-879 MiB RSS instead of
/// its ~500 MiB (herald-bench memory test, RSS every 500 ms after the
/// restart; with this call 491-502 MiB from the first sample).
fn return_freed_memory() {
    // SAFETY: mi_collect takes no pointers; it only releases mimalloc's
    // free pages, and may be called at any time from any thread.
    unsafe { libmimalloc_sys::mi_collect(true) };
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
