//! The node's signing key: loaded from `node.key_file`, created there on first start.

use anyhow::Context;
use std::path::Path;
use tollgate_shared::event::SessionSigner;

pub fn load_or_create(path: Option<&Path>) -> anyhow::Result<SessionSigner> {
    let Some(path) = path else {
        tracing::warn!("node.key_file is not set: this node signs sessions with a key that changes at every start");
        return SessionSigner::generate().map(|(signer, _)| signer).map_err(anyhow::Error::msg);
    };
    let (der, created) = tollgate_shared::keys::load_or_create(path, || SessionSigner::generate().map(|(_, der)| der))
        .map_err(anyhow::Error::msg)?;
    let signer = SessionSigner::from_pkcs8(&der)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("node key {}", path.display()))?;
    if created {
        tracing::info!(path = %path.display(), public_key = %signer.public_hex(), "created node signing key");
    }
    Ok(signer)
}
