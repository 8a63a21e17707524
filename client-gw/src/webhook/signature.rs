//! Webhook authentication, always over the raw body as received and always
//! in constant time: GitHub's `sha256=<hex>` and Gitea's bare hex HMAC-SHA256
//! (checked by `hmac`'s own verify), GitLab's shared token (`subtle`).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Whether `signature_hex` is the HMAC-SHA256 of `body` under `secret`.
/// Malformed hex is simply not a valid signature.
pub fn hmac_sha256_hex_valid(secret: &[u8], body: &[u8], signature_hex: &str) -> bool {
    let Ok(signature) = hex::decode(signature_hex.trim()) else { return false };
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    mac.verify_slice(&signature).is_ok()
}

/// GitHub's `X-Hub-Signature-256: sha256=<hex>`.
pub fn github_valid(secret: &[u8], body: &[u8], header: &str) -> bool {
    header.strip_prefix("sha256=").is_some_and(|hex| hmac_sha256_hex_valid(secret, body, hex))
}

/// GitLab's `X-Gitlab-Token`: the secret itself. Only its length can leak
/// through timing, never its content.
pub fn token_valid(secret: &[u8], token: &str) -> bool {
    bool::from(secret.ct_eq(token.as_bytes()))
}

/// The hex HMAC-SHA256 of `body` (tests and tools that sign deliveries).
pub fn hmac_sha256_hex(secret: &[u8], body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GitHub's documented test vector ("Validating webhook deliveries").
    const SECRET: &[u8] = b"It's a Secret to Everybody";
    const BODY: &[u8] = b"Hello, World!";
    const SIGNATURE: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    #[test]
    fn githubs_documented_vector_verifies() {
        assert!(github_valid(SECRET, BODY, SIGNATURE));
        assert_eq!(format!("sha256={}", hmac_sha256_hex(SECRET, BODY)), SIGNATURE);
    }

    #[test]
    fn any_change_of_secret_body_or_signature_fails() {
        assert!(!github_valid(b"It's a secret to everybody", BODY, SIGNATURE));
        assert!(!github_valid(SECRET, b"Hello, World?", SIGNATURE));
        let flipped = SIGNATURE.replace("757107", "757108");
        assert!(!github_valid(SECRET, BODY, &flipped));
        // Bare hex is Gitea's form, not GitHub's; sha1 is refused.
        assert!(!github_valid(SECRET, BODY, &SIGNATURE["sha256=".len()..]));
        assert!(hmac_sha256_hex_valid(SECRET, BODY, &SIGNATURE["sha256=".len()..]));
        assert!(!github_valid(SECRET, BODY, "sha1=01dc10d0c83e72ed246219cdd91669667fe2ca59"));
        // Truncated, empty or non-hex signatures.
        assert!(!github_valid(SECRET, BODY, &SIGNATURE[..SIGNATURE.len() - 2]));
        assert!(!github_valid(SECRET, BODY, "sha256="));
        assert!(!hmac_sha256_hex_valid(SECRET, BODY, "zz"));
    }

    #[test]
    fn gitlab_tokens_compare_exactly() {
        assert!(token_valid(b"s3cret", "s3cret"));
        assert!(!token_valid(b"s3cret", "s3cres"));
        assert!(!token_valid(b"s3cret", "s3cret "));
        assert!(!token_valid(b"s3cret", ""));
    }
}
