//! `heraldctl cert ...`: a cluster's CA and the certificates it issues,
//! like `cockroach cert`. Works offline; nothing here talks to a node.
//!
//! Files go to `--certs-dir` with fixed names (`ca.crt`, `node<id>.crt`,
//! `client.<user>.crt` and their `.key`s), keys are `0600`, and nothing is
//! ever overwritten. Keep the CA key (`--ca-key`) somewhere safer than the
//! certificates directory on a real cluster.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Subcommand;
use herald_certs::{Ca, Validity, client_stem, node_stem};

#[derive(clap::Args)]
pub struct Where {
    /// Directory of the certificates (created if absent)
    #[arg(long, default_value = "certs")]
    certs_dir: PathBuf,
    /// The CA's private key (default: <certs-dir>/ca.key)
    #[arg(long)]
    ca_key: Option<PathBuf>,
    /// Days the certificate is valid
    #[arg(long, default_value_t = 365)]
    days: u32,
}

impl Where {
    fn ca_key(&self) -> PathBuf {
        self.ca_key
            .clone()
            .unwrap_or_else(|| self.certs_dir.join(herald_certs::CA_KEY))
    }

    fn load_ca(&self) -> Result<Ca> {
        Ca::load(&self.certs_dir, &self.ca_key()).with_context(|| {
            format!(
                "loading the CA from {} (make one with heraldctl cert create-ca)",
                self.certs_dir.display()
            )
        })
    }
}

// The verbs are create-ca/create-node/create-client, as `cockroach cert` has them.
#[allow(clippy::enum_variant_names)]
#[derive(Subcommand)]
pub enum Cmd {
    /// Make the cluster's certificate authority (ca.crt and its key)
    CreateCa {
        #[command(flatten)]
        at: Where,
    },
    /// Make a node's certificate: it names the node id (only node
    /// certificates may speak on the peer port) and the hosts it is dialed at
    CreateNode {
        #[command(flatten)]
        at: Where,
        /// The node's Raft id
        #[arg(long)]
        id: u64,
        /// A DNS name or IP address clients and peers dial the node at
        /// (repeat for several; default localhost, 127.0.0.1, ::1)
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
    /// Make a client certificate for a user (its common name is the user)
    CreateClient {
        #[command(flatten)]
        at: Where,
        /// The user, as `heraldctl user add` names it (e.g. root)
        user: String,
    },
}

fn mkdir(dir: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

pub fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::CreateCa { at } => {
            mkdir(&at.certs_dir)?;
            let key = at.ca_key();
            if let Some(parent) = key.parent().filter(|p| !p.as_os_str().is_empty()) {
                mkdir(parent)?;
            }
            let ca = Ca::create("Herald CA", Validity::days(at.days))?;
            ca.save(&at.certs_dir, &key)?;
            println!(
                "wrote {} and {} (keep the key safe: it signs every certificate of the cluster)",
                at.certs_dir.join(herald_certs::CA_CERT).display(),
                key.display()
            );
        }
        Cmd::CreateNode { at, id, mut hosts } => {
            if hosts.is_empty() {
                hosts = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
            }
            let ca = at.load_ca()?;
            let issued = ca.issue_node(id, &hosts, Validity::days(at.days))?;
            let (cert, key) = issued.save(&at.certs_dir, &node_stem(id))?;
            println!(
                "wrote {} and {} (node {id}, hosts {})",
                cert.display(),
                key.display(),
                hosts.join(", ")
            );
        }
        Cmd::CreateClient { at, user } => {
            let ca = at.load_ca()?;
            let issued = ca.issue_client(&user, Validity::days(at.days))?;
            let (cert, key) = issued.save(&at.certs_dir, &client_stem(&user))?;
            println!(
                "wrote {} and {} (user {user:?})",
                cert.display(),
                key.display()
            );
        }
    }
    Ok(())
}
