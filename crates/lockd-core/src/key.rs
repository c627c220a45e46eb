//! Lock keys: binary strings of 1 to [`MAX_KEY_LEN`] bytes.
//!
//! A held lock should cost bytes, not kilobytes, and most keys are short (MediaWiki sends
//! 31-byte keys), so a key of up to 31 bytes is stored inline in 32 bytes; a longer one
//! behind a thin pointer. The length byte doubles as the enum's niche (a key is never
//! empty), which keeps `Key` at 32 bytes either way.

use std::num::NonZeroU8;

use crate::error::KeyError;

/// Longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 1024;

const INLINE: usize = 31;

/// An owned lock key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key(Repr);

#[derive(Clone, PartialEq, Eq, Hash)]
enum Repr {
    Inline {
        len: NonZeroU8,
        bytes: [u8; INLINE],
    },
    // Box<Box<..>> keeps the pointer thin so the enum stays 32 bytes.
    #[allow(clippy::box_collection, clippy::redundant_allocation)]
    Heap(Box<Box<[u8]>>),
}

impl Key {
    /// Makes a key, refusing an empty one or one longer than [`MAX_KEY_LEN`].
    pub fn new(bytes: &[u8]) -> Result<Key, KeyError> {
        match bytes.len() {
            0 => Err(KeyError::Empty),
            n if n > MAX_KEY_LEN => Err(KeyError::TooLong(n)),
            n if n <= INLINE => {
                let mut buf = [0u8; INLINE];
                buf[..n].copy_from_slice(bytes);
                // n is 1..=31 here, so the conversion cannot fail.
                let len = NonZeroU8::new(n as u8).ok_or(KeyError::Empty)?;
                Ok(Key(Repr::Inline { len, bytes: buf }))
            }
            _ => Ok(Key(Repr::Heap(Box::new(bytes.into())))),
        }
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => &bytes[..len.get() as usize],
            Repr::Heap(b) => b,
        }
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.as_bytes())
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        let bytes: Vec<u8> = serde::Deserialize::deserialize(d)?;
        Key::new(&bytes).map_err(serde::de::Error::custom)
    }
}

impl AsRef<[u8]> for Key {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({:?})", String::from_utf8_lossy(self.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_32_bytes() {
        assert_eq!(std::mem::size_of::<Key>(), 32);
    }

    #[test]
    fn round_trips_inline_and_heap() {
        for n in [1usize, 30, 31, 32, 100, MAX_KEY_LEN] {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 7) as u8).collect();
            let k = Key::new(&bytes).unwrap();
            assert_eq!(k.as_bytes(), &bytes[..]);
            assert_eq!(k, Key::new(&bytes).unwrap());
        }
    }

    #[test]
    fn rejects_empty_and_too_long() {
        assert_eq!(Key::new(b""), Err(KeyError::Empty));
        assert_eq!(
            Key::new(&vec![b'a'; MAX_KEY_LEN + 1]),
            Err(KeyError::TooLong(MAX_KEY_LEN + 1))
        );
    }

    #[test]
    fn keys_differing_in_length_only_differ() {
        assert_ne!(Key::new(b"a").unwrap(), Key::new(b"a\0").unwrap());
    }
}
