//! `oncekv cluster`: N `oncekv serve` processes on loopback, from this binary. Node
//! `nI` listens on `base_port + I - 1`, keeps its files in `DATA_DIR/nI/` (its log
//! in `node.log`, anything else it writes to stderr in `stderr.log`). Ctrl-C (or
//! SIGTERM) stops them all: each gets SIGINT's graceful stop via the terminal's
//! process group, and whatever is left after a grace period is killed. The nodes
//! share a cluster key (`docs/cluster.md`), kept in `DATA_DIR/cluster.key`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::TcpError;

/// Arguments of `oncekv cluster`.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// Number of nodes (n1..nN).
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    /// Directory holding one subdirectory per node.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Port of n1; nI listens on base_port + I - 1.
    #[arg(long, default_value_t = 7001)]
    pub base_port: u16,
    /// Host to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
}

/// The cluster's key: [`super::CLUSTER_KEY_VAR`] if set, else the one kept in
/// `DATA_DIR/cluster.key`, else a new random one written there (readable by the
/// owner only). Returns it and the file.
fn cluster_key(data_dir: &std::path::Path) -> Result<(String, PathBuf), TcpError> {
    let file = data_dir.join("cluster.key");
    if let Some(key) = super::cluster_key_from_env() {
        return Ok((key.to_string(), file));
    }
    if let Ok(text) = std::fs::read_to_string(&file)
        && !text.trim().is_empty()
    {
        return Ok((text.trim().to_string(), file));
    }
    let key: String = (0..16)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    std::io::Write::write_all(&mut opts.open(&file)?, format!("{key}\n").as_bytes())?;
    Ok((key, file))
}

/// How long nodes get to stop on their own before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Starts the nodes, prints `name addr pid` per node, waits for Ctrl-C, stops them.
#[allow(clippy::print_stdout)] // the CLI's output
pub async fn run(args: &ClusterArgs) -> Result<(), TcpError> {
    if args.nodes == 0 {
        return Err(TcpError::Args("--nodes must be at least 1".into()));
    }
    let exe = std::env::current_exe()?;
    let nodes: Vec<(String, String)> = (1..=args.nodes)
        .map(|i| {
            let port = u32::from(args.base_port) + i - 1;
            (format!("n{i}"), format!("{}:{port}", args.host))
        })
        .collect();
    let peers = nodes
        .iter()
        .map(|(n, a)| format!("{n}={a}"))
        .collect::<Vec<_>>()
        .join(",");
    std::fs::create_dir_all(&args.data_dir)?;
    let (key, key_file) = cluster_key(&args.data_dir)?;
    let mut children: Vec<(String, Child)> = Vec::new();
    // The nodes share this machine's cores.
    let workers = super::serve::workers_per_node(nodes.len()).to_string();
    for (name, addr) in &nodes {
        let dir = args.data_dir.join(name);
        std::fs::create_dir_all(&dir)?;
        let stderr = std::fs::File::create(dir.join("stderr.log"))?;
        let child = Command::new(&exe)
            .args(["serve", "--id", name, "--listen", addr, "--peers", &peers])
            .args(["--workers", &workers])
            .arg("--data-dir")
            .arg(&dir)
            .env(super::CLUSTER_KEY_VAR, &key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()?;
        println!(
            "{name} {addr} pid {} log {}",
            child.id().unwrap_or(0),
            dir.join("node.log").display()
        );
        children.push((name.clone(), child));
    }
    println!(
        "peers: {peers}\ncluster key: in {} (membership changes need it: \
         {}=$(cat {}) oncekv client ... add-node ...)\nCtrl-C stops the cluster.",
        key_file.display(),
        super::CLUSTER_KEY_VAR,
        key_file.display()
    );
    super::serve::stop_signal().await;
    println!("stopping {} nodes", children.len());
    for (_, child) in &children {
        if let Some(pid) = child.id() {
            // Ctrl-C reached them already through the process group; SIGTERM did not.
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
    for (name, mut child) in children {
        match tokio::time::timeout(STOP_GRACE, child.wait()).await {
            Ok(Ok(status)) => println!("{name} exited: {status}"),
            _ => {
                let _ = child.kill().await;
                println!("{name} killed");
            }
        }
    }
    Ok(())
}
