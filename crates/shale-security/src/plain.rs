//! SASL PLAIN (RFC 4616) as Kafka's broker checks it: `[authzid] NUL authcid NUL password`,
//! the authorization id empty or equal to the user, the password compared in constant time
//! against credentials from the broker's configuration.

use aws_lc_rs::digest;
use std::collections::HashMap;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlainError {
    /// Kafka's messages, which clients show their users.
    #[error("Authentication failed: invalid SASL/PLAIN request: expected 3 tokens")]
    Malformed,
    #[error("Authentication failed: username not specified")]
    NoUser,
    #[error("Authentication failed: password not specified")]
    NoPassword,
    #[error(
        "Authentication failed: Client requested an authorization id that is different from username"
    )]
    AuthzId,
    #[error("Authentication failed: Invalid username or password")]
    BadCredentials,
}

/// The users PLAIN accepts, with their passwords kept as SHA-256 digests: equal digests are
/// compared in constant time, so neither a password's content nor its length leaks through
/// timing (comparing the passwords themselves would leak the length).
#[derive(Clone, Default)]
pub struct PlainUsers {
    users: HashMap<String, digest::Digest>,
}

impl std::fmt::Debug for PlainUsers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.users.keys().collect();
        names.sort();
        f.debug_struct("PlainUsers").field("users", &names).finish()
    }
}

impl PlainUsers {
    pub fn new<'a>(users: impl IntoIterator<Item = (&'a str, &'a str)>) -> PlainUsers {
        PlainUsers {
            users: users
                .into_iter()
                .map(|(u, p)| (u.to_string(), digest::digest(&digest::SHA256, p.as_bytes())))
                .collect(),
        }
    }

    /// The `user_NAME="PASSWORD"` options of a Kafka JAAS entry for `PlainLoginModule`, as
    /// `listener.name.<listener>.plain.sasl.jaas.config` carries them.
    pub fn from_jaas(jaas: &str) -> Result<PlainUsers, String> {
        let options = crate::jaas::parse(jaas)?;
        Ok(PlainUsers::new(options.iter().filter_map(|(k, v)| {
            k.strip_prefix("user_").map(|u| (u, v.as_str()))
        })))
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Checks one PLAIN message; the authenticated user name on success.
    pub fn authenticate(&self, message: &[u8]) -> Result<String, PlainError> {
        let mut parts = message.split(|&b| b == 0);
        let (Some(authzid), Some(user), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(PlainError::Malformed);
        };
        let user = std::str::from_utf8(user).map_err(|_| PlainError::Malformed)?;
        if user.is_empty() {
            return Err(PlainError::NoUser);
        }
        if password.is_empty() {
            return Err(PlainError::NoPassword);
        }
        if !authzid.is_empty() && authzid != user.as_bytes() {
            return Err(PlainError::AuthzId);
        }
        let given = digest::digest(&digest::SHA256, password);
        // An unknown user costs the same comparison as a known one.
        let unknown = digest::digest(&digest::SHA256, b"");
        let stored = self.users.get(user);
        let expected = stored.unwrap_or(&unknown);
        let same =
            aws_lc_rs::constant_time::verify_slices_are_equal(given.as_ref(), expected.as_ref())
                .is_ok();
        if same && stored.is_some() {
            Ok(user.to_string())
        } else {
            Err(PlainError::BadCredentials)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> PlainUsers {
        PlainUsers::from_jaas(
            r#"org.apache.kafka.common.security.plain.PlainLoginModule required
               username="admin" password="admin-secret"
               user_admin="admin-secret" user_alice="alice-secret";"#,
        )
        .unwrap()
    }

    #[test]
    fn the_configured_password_authenticates_its_user() {
        assert_eq!(
            users().authenticate(b"\0alice\0alice-secret").unwrap(),
            "alice"
        );
        assert_eq!(
            users().authenticate(b"admin\0admin\0admin-secret").unwrap(),
            "admin"
        );
    }

    #[test]
    fn a_wrong_password_or_unknown_user_fails_alike() {
        let u = users();
        assert_eq!(
            u.authenticate(b"\0alice\0nope"),
            Err(PlainError::BadCredentials)
        );
        assert_eq!(
            u.authenticate(b"\0mallory\0alice-secret"),
            Err(PlainError::BadCredentials)
        );
        // A password that is a prefix of the right one is still wrong.
        assert_eq!(
            u.authenticate(b"\0alice\0alice"),
            Err(PlainError::BadCredentials)
        );
    }

    #[test]
    fn the_jaas_login_identity_is_not_a_user_by_itself() {
        // username/password are the broker's own client identity, not an accepted user.
        let u = PlainUsers::from_jaas(r#"x required username="svc" password="pw";"#).unwrap();
        assert!(u.is_empty());
        assert_eq!(
            u.authenticate(b"\0svc\0pw"),
            Err(PlainError::BadCredentials)
        );
    }

    #[test]
    fn malformed_messages_are_refused_with_kafkas_reasons() {
        let u = users();
        assert_eq!(u.authenticate(b""), Err(PlainError::Malformed));
        assert_eq!(
            u.authenticate(b"alice\0alice-secret"),
            Err(PlainError::Malformed)
        );
        assert_eq!(u.authenticate(b"\0a\0b\0c"), Err(PlainError::Malformed));
        assert_eq!(u.authenticate(b"\0\0pw"), Err(PlainError::NoUser));
        assert_eq!(u.authenticate(b"\0alice\0"), Err(PlainError::NoPassword));
        assert_eq!(
            u.authenticate(b"bob\0alice\0alice-secret"),
            Err(PlainError::AuthzId)
        );
        assert_eq!(u.authenticate(b"\0\xff\0pw"), Err(PlainError::Malformed));
    }
}
