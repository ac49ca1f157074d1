//! Ed25519 key files (PKCS#8 DER): a node's, signing the end of each session, and the control
//! plane's, signing control messages. Read from their file, or created there (mode 0600) on
//! first use.

use std::path::Path;

/// The key's PKCS#8 bytes, and whether this call created it. `generate` makes a fresh key.
pub fn load_or_create(
    path: &Path,
    generate: impl FnOnce() -> Result<Vec<u8>, String>,
) -> Result<(Vec<u8>, bool), String> {
    match std::fs::read(path) {
        Ok(der) => Ok((der, false)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let der = generate()?;
            write_private(path, &der).map_err(|e| format!("writing key {}: {e}", path.display()))?;
            Ok((der, true))
        }
        Err(e) => Err(format!("reading key {}: {e}", path.display())),
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
