//! Errors of the lock table's inputs.

use thiserror::Error;

/// Why a byte string is not a valid key.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    #[error("empty key")]
    Empty,
    #[error("key of {0} bytes is longer than {max} bytes", max = crate::key::MAX_KEY_LEN)]
    TooLong(usize),
}
