//! The node's signing key: loaded from `node.key_file`, created there on first start.

use anyhow::Context;
use std::path::Path;
use tollgate_shared::event::SessionSigner;

pub fn load_or_create(path: Option<&Path>) -> anyhow::Result<SessionSigner> {
    let Some(path) = path else {
        tracing::warn!("node.key_file is not set: this node signs sessions with a key that changes at every start");
        return SessionSigner::generate().map(|(signer, _)| signer).map_err(anyhow::Error::msg);
    };
    match std::fs::read(path) {
        Ok(der) => SessionSigner::from_pkcs8(&der)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("node key {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (signer, der) = SessionSigner::generate().map_err(anyhow::Error::msg)?;
            write_private(path, &der).with_context(|| format!("writing node key {}", path.display()))?;
            tracing::info!(path = %path.display(), public_key = %signer.public_hex(), "created node signing key");
            Ok(signer)
        }
        Err(e) => Err(e).with_context(|| format!("reading node key {}", path.display())),
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}
