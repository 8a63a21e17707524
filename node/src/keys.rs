//! Identity keys on disk. A replica or gateway is its ed25519 libp2p keypair,
//! stored in libp2p's protobuf encoding (`Keypair::to_protobuf_encoding`),
//! readable by its owner only (mode 0600 on Unix). A key file is never
//! overwritten unless the caller asks, and a key of another type is refused
//! with a clear error: signatures, `PeerId`s and the membership assume ed25519.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use libp2p_identity::Keypair;

/// An encoded ed25519 private key is 68 bytes; anything much larger is not one.
const KEY_FILE_BYTES_MAX: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading key {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("writing key {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} already exists; refusing to overwrite a key")]
    Exists { path: PathBuf },
    #[error("{path} is not a libp2p private key: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("{path} holds a {kind} key; pbft-ci identities are ed25519 keys")]
    NotEd25519 { path: PathBuf, kind: &'static str },
}

/// A fresh ed25519 identity.
pub fn generate() -> Keypair {
    Keypair::generate_ed25519()
}

/// Reads an ed25519 key written by [`save`] (or any libp2p tool that writes
/// the protobuf encoding).
pub fn load(path: &Path) -> Result<Keypair, KeyError> {
    let read_err = |source| KeyError::Read { path: path.to_owned(), source };
    let malformed = |reason: String| KeyError::Malformed { path: path.to_owned(), reason };
    let len = std::fs::metadata(path).map_err(read_err)?.len();
    if len > KEY_FILE_BYTES_MAX {
        return Err(malformed(format!("{len} bytes, a key file holds under {KEY_FILE_BYTES_MAX}")));
    }
    let bytes = std::fs::read(path).map_err(read_err)?;
    // The key type is field 1 of the protobuf; read it first, so that another
    // type is named as such rather than reported as a decoding failure.
    if let [0x08, t, ..] = bytes.as_slice() {
        let kind = match t {
            0 => Some("RSA"),
            2 => Some("secp256k1"),
            3 => Some("ECDSA"),
            _ => None,
        };
        if let Some(kind) = kind {
            return Err(KeyError::NotEd25519 { path: path.to_owned(), kind });
        }
    }
    let key = Keypair::from_protobuf_encoding(&bytes).map_err(|e| malformed(e.to_string()))?;
    if key.clone().try_into_ed25519().is_err() {
        return Err(KeyError::NotEd25519 { path: path.to_owned(), kind: "non-ed25519" });
    }
    Ok(key)
}

/// Writes `key` to `path`, readable by its owner only. Refuses an existing
/// file unless `overwrite`; an overwrite goes through a temporary file and a
/// rename, so `path` always holds either the old key or the new one.
pub fn save(path: &Path, key: &Keypair, overwrite: bool) -> Result<(), KeyError> {
    let encoded = key.to_protobuf_encoding().expect("ed25519 keys encode");
    let write_err = |p: &Path, source| KeyError::Write { path: p.to_owned(), source };
    if !overwrite {
        let mut file = create_private(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => KeyError::Exists { path: path.to_owned() },
            _ => write_err(path, e),
        })?;
        return file.write_all(&encoded).and_then(|_| file.sync_all()).map_err(|e| write_err(path, e));
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let result = create_private(&tmp)
        .and_then(|mut f| f.write_all(&encoded).and_then(|_| f.sync_all()))
        .and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(write_err(path, e));
    }
    Ok(())
}

fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_key_loads_back_with_the_same_peer_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let key = generate();
        save(&path, &key, false).unwrap();
        let back = load(&path).unwrap();
        assert_eq!(back.public().to_peer_id(), key.public().to_peer_id());
        assert_eq!(std::fs::read(&path).unwrap(), key.to_protobuf_encoding().unwrap());
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        save(&path, &generate(), false).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        save(&path, &generate(), true).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn an_existing_key_is_not_overwritten_unless_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let first = generate();
        save(&path, &first, false).unwrap();
        let err = save(&path, &generate(), false).unwrap_err();
        assert!(matches!(err, KeyError::Exists { .. }), "{err}");
        assert_eq!(load(&path).unwrap().public(), first.public());
        let second = generate();
        save(&path, &second, true).unwrap();
        assert_eq!(load(&path).unwrap().public(), second.public());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
    }

    #[test]
    fn a_key_of_another_type_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secp.key");
        // PrivateKey { Type = Secp256k1, Data = 32 bytes }.
        let mut bytes = vec![0x08, 0x02, 0x12, 0x20];
        bytes.extend_from_slice(&[7; 32]);
        std::fs::write(&path, bytes).unwrap();
        let err = load(&path).unwrap_err();
        assert!(matches!(err, KeyError::NotEd25519 { kind: "secp256k1", .. }), "{err}");
        assert!(err.to_string().contains("ed25519"));
    }

    #[test]
    fn garbage_missing_and_huge_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.key");
        std::fs::write(&path, b"not a key").unwrap();
        assert!(matches!(load(&path), Err(KeyError::Malformed { .. })));
        std::fs::write(&path, vec![0u8; 10_000]).unwrap();
        assert!(matches!(load(&path), Err(KeyError::Malformed { .. })));
        assert!(matches!(load(&dir.path().join("absent")), Err(KeyError::Read { .. })));
    }
}
