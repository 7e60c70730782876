//! Which database names and passwords are accepted, and how strings are
//! quoted into URLs and shell words.

use crate::PgError;

/// Only plain identifiers, so that a name goes into SQL, psql's `-d` and
/// URLs without escaping.
pub(crate) fn validate_name(name: &str) -> Result<(), PgError> {
    // Longer names would be silently truncated by PostgreSQL (NAMEDATALEN).
    let valid = (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(PgError::InvalidName {
            name: name.to_owned(),
        })
    }
}

/// Refuses up front what would otherwise fail later, in initdb or at login.
pub(crate) fn validate_password(password: &str) -> Result<(), PgError> {
    let reason = if password.is_empty() {
        "it is empty, and PostgreSQL never accepts an empty password"
    } else if password.contains(['\n', '\r', '\0']) {
        "it contains a line break or NUL, which initdb's password file cannot hold"
    } else {
        return Ok(());
    };
    Err(PgError::InvalidPassword { reason })
}

pub(crate) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DEFAULT_PASSWORD;

    #[test]
    fn names_are_restricted_to_plain_identifiers() {
        for ok in ["postgres", "consumer_test_1", "a", &"x".repeat(63)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Upper",
            "with-dash",
            "a b",
            "x\"y",
            "host=evil",
            &"x".repeat(64),
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords_are_percent_encoded_in_urls() {
        assert_eq!(percent_encode("p@ss:w/rd%"), "p%40ss%3Aw%2Frd%25");
        assert_eq!(percent_encode(DEFAULT_PASSWORD), DEFAULT_PASSWORD);
    }

    #[test]
    fn shell_quoting_survives_single_quotes() {
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
    }

    #[test]
    fn bad_passwords_are_rejected() {
        assert!(validate_password("").is_err());
        assert!(validate_password("a\nb").is_err());
        assert!(validate_password(DEFAULT_PASSWORD).is_ok());
    }
}
