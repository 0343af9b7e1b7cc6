//! API keys: generation, argon2id hashing and verification.

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("malformed argon2 hash: {0}")]
    MalformedHash(String),
    #[error("the hash is not argon2id")]
    NotArgon2id,
    #[error("hashing failed: {0}")]
    Hash(String),
}

/// A new key, shown once: the key itself and what goes into the config.
pub struct GeneratedKey {
    /// Give this to the user; it is not stored anywhere.
    pub key: String,
    pub key_id: String,
    /// The argon2id PHC string for `users.yaml`.
    pub hash: String,
}

/// A presented key split into its parts.
#[derive(Debug, PartialEq, Eq)]
pub struct ParsedKey<'a> {
    pub key_id: &'a str,
    pub secret: &'a str,
}

impl<'a> ParsedKey<'a> {
    /// `fml_<8 hex>_<64 hex>`; anything else is not a key.
    pub fn parse(key: &'a str) -> Option<Self> {
        let rest = key.strip_prefix("fml_")?;
        let (key_id, secret) = rest.split_once('_')?;
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        (hex(key_id, 8) && hex(secret, 64)).then_some(Self { key_id, secret })
    }
}

fn argon2() -> Argon2<'static> {
    // OWASP's argon2id baseline: 19 MiB, 2 passes, 1 lane.
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// 32 random bytes from the OS, as hex.
fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    OsRng.fill_bytes(&mut buf);
    hex::encode(buf)
}

/// A new session token (256 random bits).
pub fn new_session_token() -> String {
    format!("fms_{}", random_hex(32))
}

/// Hashes a secret with argon2id and a fresh salt.
pub fn hash_secret(secret: &str) -> Result<String, KeyError> {
    let salt = SaltString::generate(&mut OsRng);
    argon2().hash_password(secret.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| KeyError::Hash(e.to_string()))
}

/// A new random key (256-bit secret) and its hash.
pub fn generate_key() -> Result<GeneratedKey, KeyError> {
    let key_id = random_hex(4);
    let secret = random_hex(32);
    let hash = hash_secret(&secret)?;
    Ok(GeneratedKey { key: format!("fml_{key_id}_{secret}"), key_id, hash })
}

/// Checks that `phc` is an argon2id PHC string.
pub fn check_hash(phc: &str) -> Result<(), KeyError> {
    let parsed = PasswordHash::new(phc).map_err(|e| KeyError::MalformedHash(e.to_string()))?;
    if parsed.algorithm.as_str() != "argon2id" {
        return Err(KeyError::NotArgon2id);
    }
    Ok(())
}

/// Verifies `secret` against `phc` (constant time inside argon2). Slow on
/// purpose: call it from a blocking thread.
pub fn verify_secret(phc: &str, secret: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => argon2().verify_password(secret.as_bytes(), &h).is_ok(),
        Err(_) => false,
    }
}

/// A hash of a random secret nobody knows, with the same parameters: verifying
/// against it costs what a real verification costs.
pub fn dummy_hash() -> String {
    hash_secret(&random_hex(32)).unwrap_or_default()
}

/// SHA-256 as hex: for cache keys and stored session tokens (high-entropy
/// secrets, so a fast hash is enough there).
pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_verifies_and_a_wrong_one_does_not() {
        let k = generate_key().unwrap();
        let p = ParsedKey::parse(&k.key).unwrap();
        assert_eq!(p.key_id, k.key_id);
        check_hash(&k.hash).unwrap();
        assert!(k.hash.starts_with("$argon2id$"));
        assert!(verify_secret(&k.hash, p.secret));
        assert!(!verify_secret(&k.hash, &"0".repeat(64)));
        assert!(!verify_secret(&dummy_hash(), p.secret));
    }

    #[test]
    fn only_well_formed_keys_parse() {
        assert!(ParsedKey::parse("fml_0123abcd_".to_string().as_str()).is_none());
        assert!(ParsedKey::parse(&format!("fml_0123abcd_{}", "a".repeat(64))).is_some());
        assert!(ParsedKey::parse(&format!("fml_0123abcz_{}", "a".repeat(64))).is_none());
        assert!(ParsedKey::parse("Bearer x").is_none());
    }
}
