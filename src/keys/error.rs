//! Errors of the key domain. Database errors are reduced to their kind:
//! the message a user sees never carries schema details or values.

use crate::db::DbError;

use super::format::KeyFormatError;
use super::hash::HashError;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Format(#[from] KeyFormatError),
    #[error("no owner with email {0}")]
    UnknownOwner(String),
    #[error("owner {0} is disabled")]
    OwnerDisabled(String),
    #[error("an owner with email {0} already exists")]
    DuplicateEmail(String),
    #[error("{0:?} is not an email address")]
    InvalidEmail(String),
    #[error("a key name must be 1 to 200 printable characters")]
    InvalidName,
    #[error("owner {owner} already has {limit} active or rotating keys (keys.max_keys_per_owner); revoke one first")]
    TooManyKeys { owner: String, limit: u32 },
    #[error("a key may live at most {max}; {asked} was asked for")]
    LifetimeTooLong { asked: String, max: String },
    #[error("the lifetime must be above zero")]
    LifetimeZero,
    #[error("the grace period must be between {min} and {max}; {asked} was asked for")]
    GraceOutOfBounds { asked: String, min: String, max: String },
    #[error("{0:?} is not a scope (letters, digits and : . _ - only, at most 64 characters)")]
    InvalidScope(String),
    #[error("{0:?} is not an IP address or CIDR range")]
    InvalidIp(String),
    #[error("a revocation needs a reason of 1 to 500 characters")]
    InvalidReason,
    #[error("no key with prefix {0}")]
    NotFound(String),
    #[error("key {prefix} is {status}; it cannot be {action}")]
    InvalidState {
        prefix: String,
        status: String,
        action: &'static str,
    },
    #[error("key {0} changed while this command ran; try again")]
    Conflict(String),
    #[error(transparent)]
    Hash(#[from] HashError),
    #[error("the system's random number generator failed: {0}")]
    Random(String),
    #[error("database error: {0}")]
    Db(String),
}

impl From<diesel::result::Error> for KeyError {
    fn from(e: diesel::result::Error) -> Self {
        KeyError::Db(crate::db::describe_error(&e).to_string())
    }
}

impl From<DbError> for KeyError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Query(q) => q.into(),
            other => KeyError::Db(other.to_string()),
        }
    }
}
