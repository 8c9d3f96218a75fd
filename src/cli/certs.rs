//! `wdml certs`: the run's certificates, for processes started by hand (the LAN
//! guide, compose). `wdml run` makes its own, per run, and needs none of this.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use wdml_transport::Identity;
use wdml_transport::pki::{self, Authority};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory to write into: ca.pem, ca.key, coordinator.pem/.key, observer.pem/.key
    /// and node-<id>.pem/.key. Files already there are kept, so running it again with
    /// more nodes adds their certificates under the same CA.
    #[arg(long, env = "WDML_TLS_DIR")]
    out: PathBuf,
    /// How many nodes (ids 0 to N-1) get a certificate.
    #[arg(long)]
    nodes: u32,
    /// Days the certificates stay valid.
    #[arg(long, default_value_t = 30)]
    days: u32,
    /// Give the files to this user (uid:gid) once written, e.g. for a container that
    /// runs as another user. Needs the right to chown.
    #[arg(long, env = "WDML_CERTS_OWNER")]
    owner: Option<String>,
    /// Also give each identity a folder of its own, DIR/coordinator/, DIR/node-<id>/, …,
    /// holding ca.pem and that identity's certificate and key and nothing else: the
    /// folder to copy to that machine or mount into that container.
    #[arg(long)]
    deploy: Option<PathBuf>,
}

pub fn main(args: Args) -> Result<ExitCode> {
    if args.nodes == 0 || args.nodes > crate::scenario::MAX_NODES {
        bail!("--nodes must be between 1 and {}", crate::scenario::MAX_NODES);
    }
    if args.days == 0 || args.days > 3650 {
        bail!("--days must be between 1 and 3650");
    }
    let validity = Duration::from_secs(u64::from(args.days) * 86_400);
    let authority = match (args.out.join("ca.pem").exists(), args.out.join("ca.key").exists()) {
        (true, true) => Authority::load(&args.out)?,
        (false, false) => Authority::generate(validity)?,
        (true, false) => bail!(
            "{} has ca.pem but no ca.key: more certificates cannot be issued under that CA \
             (give an empty directory for a new one)",
            args.out.display()
        ),
        (false, true) => bail!("{} has ca.key but no ca.pem", args.out.display()),
    };
    let mut identities = vec![Identity::Coordinator, Identity::Observer];
    identities.extend((0..args.nodes).map(Identity::Node));
    let written = pki::write_dir(&args.out, &authority, &identities, validity, true)?;
    let folders = match &args.deploy {
        Some(into) => pki::deploy(&args.out, into, &identities)?,
        None => Vec::new(),
    };
    if let Some(owner) = &args.owner {
        chown_all(&args.out, owner)?;
        for folder in &folders {
            chown_all(folder, owner)?;
        }
    }
    let total = 2 + 2 * identities.len();
    println!(
        "{} files written to {} ({} already there, kept); new certificates valid for {} days",
        written.len(),
        args.out.display(),
        total.saturating_sub(written.len()),
        args.days
    );
    println!("every machine needs ca.pem; the coordinator coordinator.pem and .key; node k node-k.pem and .key;");
    println!("keep ca.key off the devices (it issues certificates).");
    if let Some(into) = &args.deploy {
        println!(
            "{} folders in {}, one per identity, each with only what that identity needs",
            folders.len(),
            into.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(unix)]
fn chown_all(dir: &std::path::Path, owner: &str) -> Result<()> {
    let (uid, gid) = owner
        .split_once(':')
        .and_then(|(u, g)| Some((u.parse::<u32>().ok()?, g.parse::<u32>().ok()?)))
        .with_context(|| format!("--owner {owner:?} must be uid:gid, e.g. 1000:1000"))?;
    for path in
        std::iter::once(dir.to_path_buf()).chain(std::fs::read_dir(dir)?.filter_map(|e| e.ok()).map(|e| e.path()))
    {
        std::os::unix::fs::chown(&path, Some(uid), Some(gid))
            .with_context(|| format!("cannot give {} to {owner}", path.display()))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn chown_all(_dir: &std::path::Path, _owner: &str) -> Result<()> {
    bail!("--owner is only supported on Unix")
}
