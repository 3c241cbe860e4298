//! `cargo xtask certs`: write the development PKI to a directory.
//!
//! Layout of `--out DIR`:
//!
//! ```text
//! ca.pem  ca-key.pem                     the CA every party trusts
//! aggregator.pem  aggregator-key.pem     server certificate for localhost and 127.0.0.1
//! nodes/<name>.pem  nodes/<name>-key.pem  one client certificate per node (CN = name)
//! ```
//!
//! Private keys are written mode 0600. An existing CA is reused, and then only the missing
//! certificates are issued; a new CA reissues everything. The certificates come from
//! `common::pki`, which does no IO: this module is the part that touches files.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use common::pki::{self, CertPair};

/// Names the aggregator's server certificate is valid for.
const AGGREGATOR_NAMES: &[&str] = &["localhost", "127.0.0.1"];

#[derive(clap::Args)]
pub struct Args {
    /// Directory to write the PKI to [default: data/pki in the workspace root, as `up` uses].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Issue a client certificate for this node (repeat for several).
    #[arg(long = "node", value_name = "NAME")]
    nodes: Vec<String>,
}

/// Paths of a PKI on disk, as the binaries' `--ca/--cert/--key` flags take them.
pub struct Pki {
    pub ca: PathBuf,
    pub aggregator_cert: PathBuf,
    pub aggregator_key: PathBuf,
    pub dir: PathBuf,
}

impl Pki {
    fn at(dir: &Path) -> Pki {
        Pki {
            ca: dir.join("ca.pem"),
            aggregator_cert: dir.join("aggregator.pem"),
            aggregator_key: dir.join("aggregator-key.pem"),
            dir: dir.to_path_buf(),
        }
    }

    /// The certificate and key of `node`.
    pub fn node(&self, node: &str) -> (PathBuf, PathBuf) {
        let nodes = self.dir.join("nodes");
        (
            nodes.join(format!("{node}.pem")),
            nodes.join(format!("{node}-key.pem")),
        )
    }
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| crate::cmd::repo_root().join("data/pki"));
    ensure(&out, &args.nodes)?;
    Ok(())
}

/// Make sure `dir` holds a CA, an aggregator certificate and a certificate for each of
/// `nodes`, issuing only what is missing.
pub fn ensure(dir: &Path, nodes: &[String]) -> anyhow::Result<Pki> {
    for node in nodes {
        check_node_name(node)?;
    }
    let pki = Pki::at(dir);
    let ca_key_path = dir.join("ca-key.pem");
    fs::create_dir_all(dir.join("nodes"))
        .with_context(|| format!("could not create {}", dir.join("nodes").display()))?;

    let (ca, new_ca) = if pki.ca.exists() {
        println!("xtask: certs: reusing CA {}", pki.ca.display());
        let cert_pem = read(&pki.ca)?;
        let key_pem = read(&ca_key_path)
            .context("ca.pem exists but its key does not; delete ca.pem to start a new CA")?;
        (CertPair { cert_pem, key_pem }, false)
    } else {
        println!("xtask: certs: creating CA {}", pki.ca.display());
        let ca = pki::new_ca("Auto-DevOps dev CA")?;
        write_pair(&ca, &pki.ca, &ca_key_path)?;
        (ca, true)
    };

    // Certificates signed by a CA we just replaced would not verify: reissue them all.
    let missing = |cert: &Path, key: &Path| new_ca || !cert.exists() || !key.exists();

    if missing(&pki.aggregator_cert, &pki.aggregator_key) {
        println!(
            "xtask: certs: issuing aggregator certificate for {} -> {}",
            AGGREGATOR_NAMES.join(", "),
            pki.aggregator_cert.display()
        );
        let pair = pki::issue_aggregator(&ca, AGGREGATOR_NAMES)?;
        write_pair(&pair, &pki.aggregator_cert, &pki.aggregator_key)?;
    }
    for node in nodes {
        let (cert, key) = pki.node(node);
        if missing(&cert, &key) {
            println!(
                "xtask: certs: issuing node certificate for {node} -> {}",
                cert.display()
            );
            let pair = pki::issue_node(&ca, node)
                .with_context(|| format!("could not issue a certificate for node {node:?}"))?;
            write_pair(&pair, &cert, &key)?;
        } else {
            println!(
                "xtask: certs: node certificate for {node} exists ({})",
                cert.display()
            );
        }
    }
    Ok(pki)
}

/// Node names become file names and certificate common names.
fn check_node_name(node: &str) -> anyhow::Result<()> {
    let ok = !node.is_empty()
        && !node.starts_with(['.', '-'])
        && node
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if !ok {
        bail!("bad node name {node:?}: use letters, digits, '.', '-' and '_'");
    }
    Ok(())
}

fn read(path: &Path) -> anyhow::Result<String> {
    fs::read_to_string(path).with_context(|| format!("could not read {}", path.display()))
}

/// Write the key first (mode 0600) and the certificate second, so that a certificate on
/// disk always has its key next to it.
fn write_pair(pair: &CertPair, cert: &Path, key: &Path) -> anyhow::Result<()> {
    write_file(key, &pair.key_pem, 0o600)?;
    write_file(cert, &pair.cert_pem, 0o644)
}

fn write_file(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("could not open {} for writing", path.display()))?;
    // `mode` only applies when the file is created: tighten an existing one too.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .with_context(|| format!("could not set the mode of {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("could not write {}", path.display()))?;
    Ok(())
}
