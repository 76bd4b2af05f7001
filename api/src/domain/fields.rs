//! One type per validated field; each `parse` returns the message a client sees.

use chrono::{DateTime, Utc};

fn has_control_chars(value: &str) -> bool {
    value.chars().any(char::is_control)
}

fn bounded_text(value: &str, max_chars: usize) -> Result<String, String> {
    let trimmed = value.trim();
    let chars = trimmed.chars().count();
    if chars == 0 {
        return Err("must not be empty".into());
    }
    if chars > max_chars {
        return Err(format!("must be at most {max_chars} characters"));
    }
    if has_control_chars(trimmed) {
        return Err("must not contain control characters".into());
    }
    Ok(trimmed.to_owned())
}

#[derive(Debug, Clone, PartialEq)]
pub struct EventTitle(String);

impl EventTitle {
    pub const MAX_CHARS: usize = 200;

    pub fn parse(value: &str) -> Result<Self, String> {
        bounded_text(value, Self::MAX_CHARS).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PersonName(String);

impl PersonName {
    pub const MAX_CHARS: usize = 100;

    pub fn parse(value: &str) -> Result<Self, String> {
        bounded_text(value, Self::MAX_CHARS).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An address of the form local@domain.tld, lower-cased so that one person's
/// differently cased spellings are one rsvp.
#[derive(Debug, Clone, PartialEq)]
pub struct Email(String);

impl Email {
    pub const MAX_CHARS: usize = 254;

    pub fn parse(value: &str) -> Result<Self, String> {
        const INVALID: &str = "must be an email address like name@example.com";
        let email = value.trim().to_lowercase();
        if email.is_empty() || email.len() > Self::MAX_CHARS {
            return Err(format!("must be an email address of 3 to {} characters", Self::MAX_CHARS));
        }
        let Some((local, domain)) = email.split_once('@') else {
            return Err(INVALID.into());
        };
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..")
            && local.chars().all(|c| c.is_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c));
        let labels: Vec<&str> = domain.split('.').collect();
        let domain_ok = labels.len() >= 2
            && labels.iter().all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_alphanumeric() || c == '-')
            });
        if local_ok && domain_ok {
            Ok(Self(email))
        } else {
            Err(INVALID.into())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Guests a going rsvp brings besides the person: 0 to 10.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Guests(i16);

impl Guests {
    pub const MAX: i64 = 10;

    pub fn parse(value: i64) -> Result<Self, String> {
        match i16::try_from(value) {
            Ok(guests) if (0..=Self::MAX).contains(&value) => Ok(Self(guests)),
            _ => Err(format!("must be between 0 and {}", Self::MAX)),
        }
    }

    pub fn value(self) -> i16 {
        self.0
    }
}

/// Seats of an event: at least 1, at most a million.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Capacity(i32);

impl Capacity {
    pub const MAX: i64 = 1_000_000;

    pub fn parse(value: i64) -> Result<Self, String> {
        match i32::try_from(value) {
            Ok(capacity) if (1..=Self::MAX).contains(&value) => Ok(Self(capacity)),
            _ => Err(format!("must be between 1 and {}", Self::MAX)),
        }
    }

    pub fn value(self) -> i32 {
        self.0
    }
}

/// An RFC 3339 timestamp that is still in the future.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StartsAt(DateTime<Utc>);

impl StartsAt {
    pub fn parse(value: &str, now: DateTime<Utc>) -> Result<Self, String> {
        let parsed = DateTime::parse_from_rfc3339(value.trim())
            .map_err(|_| "must be an RFC 3339 timestamp such as 2030-01-31T18:00:00Z".to_owned())?
            .with_timezone(&Utc);
        if parsed <= now {
            return Err("must be in the future".into());
        }
        Ok(Self(parsed))
    }

    pub fn value(self) -> DateTime<Utc> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_trimmed_and_bounded() {
        assert_eq!(PersonName::parse("  Ada  ").unwrap().as_str(), "Ada");
        assert!(PersonName::parse("   ").is_err());
        assert!(PersonName::parse(&"x".repeat(101)).is_err());
        assert!(PersonName::parse(&"é".repeat(100)).is_ok());
        assert!(EventTitle::parse("a\u{0}b").is_err());
    }

    #[test]
    fn emails_are_lower_cased_and_checked() {
        assert_eq!(Email::parse(" Ada@Example.COM ").unwrap().as_str(), "ada@example.com");
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a b@example.com",
            "ada@@example.com",
            "ada@-example.com",
            ".ada@example.com",
            "ada..l@example.com",
            "ada@example..com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(Email::parse(&format!("{}@example.com", "a".repeat(65))).is_err());
    }

    #[test]
    fn guests_and_capacity_have_ranges() {
        assert_eq!(Guests::parse(10).unwrap().value(), 10);
        assert!(Guests::parse(11).is_err());
        assert!(Guests::parse(-1).is_err());
        assert!(Guests::parse(i64::MAX).is_err());
        assert!(Capacity::parse(0).is_err());
        assert_eq!(Capacity::parse(1).unwrap().value(), 1);
    }

    #[test]
    fn start_time_must_be_rfc3339_and_future() {
        let now = Utc::now();
        assert!(StartsAt::parse("2999-01-01T00:00:00+02:00", now).is_ok());
        assert!(StartsAt::parse("2000-01-01T00:00:00Z", now).is_err());
        assert!(StartsAt::parse("tomorrow", now).is_err());
    }
}
