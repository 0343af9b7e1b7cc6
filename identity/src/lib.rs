//! Who may do what. Users and roles come from a YAML file (see
//! `configs/users.yaml`); API keys are stored there only as argon2id PHC hashes.
//!
//! An API key looks like `fml_<key id>_<secret>`: the key id (8 hex digits, not
//! secret) names which configured hash to check, so a request costs one argon2
//! verification, not one per user. Unknown key ids are checked against a dummy
//! hash so that timing does not reveal which ids exist.

mod directory;
mod keys;
mod permission;
mod throttle;

pub use directory::{Directory, DirectoryError, Principal, RoleName};
pub use keys::{
    GeneratedKey, KeyError, ParsedKey, check_hash, dummy_hash, generate_key, hash_secret, new_session_token,
    sha256_hex, verify_secret,
};
pub use permission::{ALL_PERMISSIONS, Permission};
pub use throttle::Throttle;
