//! A value that must never reach a log: connection strings with passwords, tokens.

use std::{fmt, str::FromStr};

/// Holds a secret; its `Debug` prints `[redacted]`, so a settings struct holding one
/// can derive `Debug` and still be logged.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The secret itself, for the one call that needs it.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("[redacted]")
    }
}

impl<T: FromStr> FromStr for Secret<T> {
    type Err = T::Err;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        value.parse().map(Self)
    }
}

impl From<&str> for Secret<String> {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl From<String> for Secret<String> {
    fn from(value: String) -> Self {
        Self(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_value_and_expose_returns_it() {
        let url: Secret<String> = "postgres://user:hunter2@db/rsvp".parse().unwrap();
        assert_eq!(format!("{url:?}"), "[redacted]");
        assert!(!format!("{:?}", Some(&url)).contains("hunter2"));
        assert_eq!(url.expose(), "postgres://user:hunter2@db/rsvp");
    }
}
