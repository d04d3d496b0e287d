//! The signing secret and the admin token: given, or generated once into the data directory.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use tally_api::signature::SigningSecret;

/// A secret and where it came from, for the start-up message.
#[derive(Debug)]
pub struct Loaded<T> {
    pub value: T,
    /// The file it was read from or generated into; `None` when given on the command line.
    pub path: Option<PathBuf>,
}

/// The callback signing secret: `given` as text, else the hex in `<data-dir>/signing-secret`,
/// generated (mode 0600) on first start.
pub fn signing_secret(
    data_dir: &Path,
    given: Option<&str>,
) -> anyhow::Result<Loaded<SigningSecret>> {
    if let Some(text) = given {
        anyhow::ensure!(!text.is_empty(), "the signing secret must not be empty");
        return Ok(Loaded {
            value: SigningSecret::from_text(text),
            path: None,
        });
    }
    let path = data_dir.join("signing-secret");
    let hex = read_or_generate(&path)?;
    let value = SigningSecret::from_hex(hex.trim())
        .with_context(|| format!("{} is not a hex secret", path.display()))?;
    Ok(Loaded {
        value,
        path: Some(path),
    })
}

/// The admin bearer token: `given`, else `<data-dir>/admin-token`, generated on first start.
pub fn admin_token(data_dir: &Path, given: Option<&str>) -> anyhow::Result<Loaded<String>> {
    if let Some(token) = given {
        anyhow::ensure!(!token.is_empty(), "the admin token must not be empty");
        return Ok(Loaded {
            value: token.to_owned(),
            path: None,
        });
    }
    let path = data_dir.join("admin-token");
    let value = read_or_generate(&path)?.trim().to_owned();
    Ok(Loaded {
        value,
        path: Some(path),
    })
}

/// This node's id: `given`, else `<data-dir>/node-id`, generated on first start. A node restarted
/// on its data directory keeps its id, and with it its partitions.
pub fn node_id(data_dir: &Path, given: Option<&str>) -> anyhow::Result<String> {
    let id = match given {
        Some(id) => id.to_owned(),
        None => {
            let path = data_dir.join("node-id");
            let random = read_or_generate(&path)?;
            let random = random.trim();
            if random.starts_with("node-") {
                random.to_owned()
            } else {
                format!("node-{}", &random[..random.len().min(12)])
            }
        }
    };
    let valid = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    anyhow::ensure!(
        valid,
        "invalid node id {id:?}: 1 to 64 letters, digits, '.', '_' or '-'"
    );
    Ok(id)
}

/// The file's contents, or 32 fresh random bytes as hex written to it with mode 0600.
fn read_or_generate(path: &Path) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => return Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let hex = SigningSecret::generate()
        .context("cannot read random bytes")?
        .to_hex();
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(hex.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(hex)
}
