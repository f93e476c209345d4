//! Secrets users hold: passwords (Argon2id), TOTP codes, recovery codes, and the opaque tokens
//! identity issues (refresh, email verification, password reset).

pub mod opaque;
pub mod passwords;
pub mod recovery;
pub mod totp;
