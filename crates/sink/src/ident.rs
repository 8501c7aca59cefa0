//! Validated SQL identifiers (table and column names).
//!
//! Names come from configuration and from the stream's schema, so they are untrusted. Instead of
//! escaping arbitrary text we accept only a conservative alphabet that every target database
//! takes verbatim, and we still quote every use, so a name can never change the meaning of a
//! statement (or collide with a keyword such as `order`).

use std::fmt;

/// The longest identifier accepted, in bytes. PostgreSQL truncates longer names to 63 bytes
/// (NAMEDATALEN - 1), which would silently make two different names the same.
pub const IDENT_BYTES_MAX: usize = 63;

/// Why a name is not a valid identifier.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentError {
    /// The name is empty.
    #[error("identifier is empty")]
    Empty,
    /// The name is longer than [`IDENT_BYTES_MAX`].
    #[error("identifier {name:?} is {bytes} bytes long; the limit is {IDENT_BYTES_MAX} bytes")]
    TooLong {
        /// The name, truncated to its first 80 characters for the message.
        name: String,
        /// Its length in bytes.
        bytes: usize,
    },
    /// The name contains a character outside `[A-Za-z0-9_]` or starts with a digit.
    #[error(
        "identifier {name:?} has the character {character:?} at byte {position}; names must \
         match [A-Za-z_][A-Za-z0-9_]*"
    )]
    InvalidCharacter {
        /// The name, truncated to its first 80 characters for the message.
        name: String,
        /// The offending character.
        character: char,
        /// Its byte offset.
        position: usize,
    },
}

impl IdentError {
    /// A stable code for the error.
    pub fn code(&self) -> &'static str {
        match self {
            IdentError::Empty => "sink.ident.empty",
            IdentError::TooLong { .. } => "sink.ident.too_long",
            IdentError::InvalidCharacter { .. } => "sink.ident.invalid_character",
        }
    }
}

/// A table or column name matching `[A-Za-z_][A-Za-z0-9_]*`, at most [`IDENT_BYTES_MAX`] bytes.
///
/// Case is kept as given. [`Ident::quoted`] is the only form that goes into SQL text.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ident(String);

impl Ident {
    /// Validates `name`.
    pub fn new(name: &str) -> Result<Ident, IdentError> {
        let shown = || name.chars().take(80).collect::<String>();
        if name.is_empty() {
            return Err(IdentError::Empty);
        }
        if name.len() > IDENT_BYTES_MAX {
            return Err(IdentError::TooLong {
                name: shown(),
                bytes: name.len(),
            });
        }
        for (position, character) in name.char_indices() {
            let allowed = character == '_'
                || character.is_ascii_alphabetic()
                || (position > 0 && character.is_ascii_digit());
            if !allowed {
                return Err(IdentError::InvalidCharacter {
                    name: shown(),
                    character,
                    position,
                });
            }
        }
        Ok(Ident(name.to_string()))
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name in double quotes, ready for SQL text. The alphabet contains no quote character,
    /// so no escaping is needed; quoting keeps keywords and case intact.
    pub fn quoted(&self) -> String {
        format!("\"{}\"", self.0)
    }

    /// `self` followed by `suffix`, validated again (the result may be too long).
    pub fn with_suffix(&self, suffix: &str) -> Result<Ident, IdentError> {
        Ident::new(&format!("{}{suffix}", self.0))
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl fmt::Debug for Ident {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "Ident({:?})", self.0)
    }
}

impl TryFrom<&str> for Ident {
    type Error = IdentError;
    fn try_from(name: &str) -> Result<Self, Self::Error> {
        Ident::new(name)
    }
}

impl TryFrom<String> for Ident {
    type Error = IdentError;
    fn try_from(name: String) -> Result<Self, Self::Error> {
        Ident::new(&name)
    }
}

impl<'de> serde::Deserialize<'de> for Ident {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Ident::new(&name).map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Ident {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_alphabet_and_quotes() {
        let ident = Ident::new("_Order_2").unwrap();
        assert_eq!(ident.quoted(), "\"_Order_2\"");
        assert_eq!(ident.as_str(), "_Order_2");
        assert!(Ident::new(&"a".repeat(IDENT_BYTES_MAX)).is_ok());
    }

    #[test]
    fn refuses_hostile_and_oversized_names() {
        assert_eq!(Ident::new(""), Err(IdentError::Empty));
        assert!(matches!(
            Ident::new(&"a".repeat(IDENT_BYTES_MAX + 1)),
            Err(IdentError::TooLong { bytes: 64, .. })
        ));
        for hostile in [
            "a\"; DROP TABLE x; --",
            "1abc",
            "a b",
            "a-b",
            "a.b",
            "é",
            "a\0",
            "\"",
            "`x`",
        ] {
            let error = Ident::new(hostile).unwrap_err();
            assert_eq!(error.code(), "sink.ident.invalid_character", "{hostile:?}");
        }
        // Multi-byte characters count in bytes, not characters.
        let error = Ident::new(&"é".repeat(32)).unwrap_err();
        assert_eq!(error.code(), "sink.ident.too_long");
    }

    #[test]
    fn suffix_is_validated() {
        let table = Ident::new(&"t".repeat(51)).unwrap();
        assert!(
            Ident::new(&"t".repeat(50))
                .unwrap()
                .with_suffix("_dead_letters")
                .is_ok()
        );
        assert_eq!(
            table.with_suffix("_dead_letters").unwrap_err().code(),
            "sink.ident.too_long"
        );
    }
}
