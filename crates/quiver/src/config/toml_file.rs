//! Reading configuration files: one generic TOML loader, and the serde helpers that let an option
//! keep its Rust type (a `Duration`, ALPN bytes) while its file form stays human-friendly.
//!
//! This module knows no option by name. A configuration type becomes loadable by deriving
//! `Deserialize` on its builder (as [`ServerConfigBuilder`](crate::ServerConfigBuilder) does); protocol crates use
//! the same loader and helpers for their own builders, so every file in the project reads alike:
//! unknown keys are errors that name the file, line and key.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::ConfigError;

/// Reads and parses a TOML file into `T` (usually a builder that derives `Deserialize` with
/// `#[serde(default, deny_unknown_fields)]`).
///
/// # Errors
/// [`ConfigError::ReadFile`] when the file cannot be read; [`ConfigError::Toml`] with the path, line
/// and column for a syntax error, an unknown key or a value of the wrong type.
pub fn load<T: DeserializeOwned>(path: impl AsRef<Path>) -> Result<T, ConfigError> {
    let path = path.as_ref();
    let bytes = super::tls::read_file("configuration", path)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| ConfigError::Toml { path: path.to_path_buf(), message: "not UTF-8".into() })?;
    parse(path, &text)
}

/// Parses TOML text into `T`; `origin` names the text in errors (a path, or something like
/// `<command line>`).
///
/// # Errors
/// [`ConfigError::Toml`] as for [`load`].
pub fn parse<T: DeserializeOwned>(origin: impl AsRef<Path>, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text)
        .map_err(|err| ConfigError::Toml { path: origin.as_ref().to_path_buf(), message: err.to_string() })
}

/// `#[serde(with = "quiver::toml_file::millis")]`: a `Duration` written as integer milliseconds (name
/// the key with an `_ms` suffix so the unit is visible in the file).
pub mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    /// Reads integer milliseconds.
    ///
    /// # Errors
    /// The value is not a non-negative integer.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

/// `#[serde(deserialize_with = "quiver::toml_file::alpn")]`: ALPN identifiers written as strings
/// (`alpn = ["h3"]`) and held as the bytes that go on the wire.
///
/// # Errors
/// The value is not a list of strings.
pub fn alpn<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<Vec<u8>>, D::Error> {
    let names = <Vec<String> as serde::Deserialize>::deserialize(deserializer)?;
    Ok(names.into_iter().map(String::into_bytes).collect())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        #[serde(rename = "wait_ms", with = "millis")]
        wait: Duration,
        #[serde(deserialize_with = "alpn")]
        alpn: Vec<Vec<u8>>,
    }

    #[test]
    fn helpers_read_human_forms_and_errors_name_the_origin_and_key() {
        let sample: Sample = parse("sample.toml", "wait_ms = 1500\nalpn = [\"h3\", \"doq\"]\n").unwrap();
        assert_eq!(sample.wait, Duration::from_millis(1500));
        assert_eq!(sample.alpn, [b"h3".to_vec(), b"doq".to_vec()]);
        let err = parse::<Sample>("sample.toml", "wait_ms = 1\nalpn = []\nwiat_ms = 2\n").unwrap_err();
        let message = err.to_string();
        assert!(message.contains("sample.toml") && message.contains("wiat_ms"), "{message}");
    }

    #[test]
    fn an_unreadable_file_is_named() {
        let err = load::<Sample>("/nonexistent/quiver.toml").unwrap_err();
        assert!(err.to_string().contains("cannot read configuration /nonexistent/quiver.toml"), "{err}");
    }
}
