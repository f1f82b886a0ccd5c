//! Password hashing: Argon2id with a random salt, stored as a PHC string
//! (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`).

use std::sync::OnceLock;

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{self, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

use super::DbError;

/// Hashes `password` with Argon2id (the crate's default parameters: 19 MiB, 2 passes, 1 lane)
/// and a fresh random salt.
pub fn hash(password: &[u8]) -> Result<String, DbError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password, &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| DbError::Password(e.to_string()))
}

/// Checks `password` against a stored PHC string, with the parameters recorded in it. The
/// comparison of the hash outputs is constant-time. An empty password never matches; a
/// malformed stored hash is an error, not a mismatch, so that it shows up in the logs.
pub fn verify(password: &[u8], phc: &str) -> Result<bool, DbError> {
    let parsed = PasswordHash::new(phc)
        .map_err(|e| DbError::Password(format!("malformed stored hash: {e}")))?;
    if password.is_empty() {
        return Ok(false);
    }
    match Argon2::default().verify_password(password, &parsed) {
        Ok(()) => Ok(true),
        Err(password_hash::Error::Password) => Ok(false),
        Err(e) => Err(DbError::Password(e.to_string())),
    }
}

/// A hash of no real password, to verify against when the user does not exist, so that an
/// unknown username costs as much time as a wrong password. Computed once per process.
pub fn dummy_hash() -> Result<&'static str, DbError> {
    static DUMMY: OnceLock<String> = OnceLock::new();
    if let Some(hash) = DUMMY.get() {
        return Ok(hash);
    }
    let computed = hash(b"mqttd: no such user")?;
    Ok(DUMMY.get_or_init(|| computed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_then_verify() {
        let phc = hash(b"correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(verify(b"correct horse", &phc).unwrap());
        assert!(!verify(b"battery staple", &phc).unwrap());
    }

    #[test]
    fn salts_differ() {
        assert_ne!(hash(b"pw").unwrap(), hash(b"pw").unwrap());
    }

    #[test]
    fn empty_password_never_matches() {
        let phc = hash(b"").unwrap();
        assert!(!verify(b"", &phc).unwrap());
    }

    #[test]
    fn malformed_hash_is_an_error() {
        let err = verify(b"pw", "not a phc string").unwrap_err();
        assert!(matches!(err, DbError::Password(_)), "{err}");
    }

    #[test]
    fn dummy_hash_is_stable_and_matches_nothing_obvious() {
        let dummy = dummy_hash().unwrap();
        assert_eq!(dummy, dummy_hash().unwrap());
        assert!(dummy.starts_with("$argon2id$"));
        assert!(!verify(b"", dummy).unwrap());
        assert!(!verify(b"password", dummy).unwrap());
    }
}
