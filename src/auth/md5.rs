//! PostgreSQL's legacy md5 password authentication.

use md5::{Digest, Md5};

use super::ct_eq;

/// The pg_authid form: `"md5"` + hex(md5(password ++ user)).
pub fn stored_hash(user: &str, password: &str) -> String {
    format!("md5{}", hex_md5(password.as_bytes(), user.as_bytes()))
}

/// The PasswordMessage payload (without NUL) for an `AuthenticationMD5Password`
/// challenge. It needs only the stored hash, which is why md5 lets a pooler
/// log in without knowing the plaintext password.
pub fn client_response(stored: &str, salt: [u8; 4]) -> Vec<u8> {
    // Malformed input must not panic; it just yields a response nobody accepts.
    let inner = stored.get(3..).unwrap_or_default();
    format!("md5{}", hex_md5(inner.as_bytes(), &salt)).into_bytes()
}

/// Checks a client's PasswordMessage payload against the stored hash.
pub fn verify(stored: &str, salt: [u8; 4], response: &[u8]) -> bool {
    // A plaintext or SCRAM entry must never be treated as an md5 hash.
    if stored.len() != 35 || !stored.starts_with("md5") {
        return false;
    }
    // Callers may hand over the message body with its C-string terminator.
    let response = response.strip_suffix(b"\0").unwrap_or(response);
    ct_eq(&client_response(stored, salt), response)
}

fn hex_md5(a: &[u8], b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hasher = Md5::new();
    hasher.update(a);
    hasher.update(b);
    // One allocation: a login runs this once per client.
    let mut hex = String::with_capacity(32);
    for byte in hasher.finalize() {
        // Both indexes are nibbles, below 16 = DIGITS.len().
        hex.push(DIGITS[usize::from(byte >> 4)].into());
        hex.push(DIGITS[usize::from(byte & 15)].into());
    }
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

    // Derived independently with Python's hashlib.
    const STORED: &str = "md553f48b7c4b76a86ce72276c5755f217d";
    const SALT: [u8; 4] = [1, 2, 3, 4];
    const RESPONSE: &[u8] = b"md5bb41a296aab6baccb36ff243a562abff";

    #[test]
    fn stored_hash_matches_postgres() {
        assert_eq!(stored_hash("postgres", "secret"), STORED);
    }

    #[test]
    fn client_response_matches_libpq() {
        assert_eq!(client_response(STORED, SALT), RESPONSE);
    }

    #[test]
    fn verify_accepts_with_or_without_nul() {
        assert!(verify(STORED, SALT, RESPONSE));
        assert!(verify(
            STORED,
            SALT,
            b"md5bb41a296aab6baccb36ff243a562abff\0"
        ));
    }

    #[test]
    fn verify_rejects_wrong_inputs() {
        assert!(!verify(STORED, [1, 2, 3, 5], RESPONSE));
        assert!(!verify(
            STORED,
            SALT,
            b"md5bb41a296aab6baccb36ff243a562abfe"
        ));
        assert!(!verify(
            STORED,
            SALT,
            b"md5bb41a296aab6baccb36ff243a562abff\0\0"
        ));
        assert!(!verify(STORED, SALT, b""));
        assert!(!verify("secret", SALT, RESPONSE));
        assert_eq!(client_response("", SALT).len(), 35);
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![any::<String>(), "[a-z0-9]{0,12}"]
    }

    proptest! {
        #![proptest_config(crate::fuzzing::config())]

        /// The response a client computes from the password is accepted, with or without its terminator.
        #[test]
        fn the_right_response_is_accepted(user in text(), password in text(), salt in any::<[u8; 4]>()) {
            let stored = stored_hash(&user, &password);
            let response = client_response(&stored, salt);
            prop_assert!(verify(&stored, salt, &response));
            prop_assert!(verify(&stored, salt, &[&response[..], b"\0"].concat()));
        }

        /// Anything else is refused: random responses, any one byte changed, another salt, another password.
        #[test]
        fn only_the_right_response_is_accepted(
            user in text(),
            password in text(),
            other in text(),
            salt in any::<[u8; 4]>(),
            other_salt in any::<[u8; 4]>(),
            random in proptest::collection::vec(any::<u8>(), 0..40),
            hex in "md5[0-9a-f]{32}",
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let stored = stored_hash(&user, &password);
            let right = client_response(&stored, salt);
            let accepted = |r: &[u8]| r == &right[..] || r == [&right[..], b"\0"].concat();
            prop_assert_eq!(verify(&stored, salt, &random), accepted(&random));
            prop_assert_eq!(verify(&stored, salt, hex.as_bytes()), accepted(hex.as_bytes()));
            let mut mutated = right.clone();
            mutated[at.index(right.len())] ^= flip;
            prop_assert!(!verify(&stored, salt, &mutated));
            if other_salt != salt {
                prop_assert!(!verify(&stored, other_salt, &right));
            }
            if other != password {
                prop_assert!(!verify(&stored_hash(&user, &other), salt, &right));
            }
        }

        /// Any stored string and any response: no panic, and nothing but a well-formed md5 entry accepts.
        #[test]
        fn arbitrary_entries_and_responses(
            stored in prop_oneof![any::<String>(), "md5.{0,34}"],
            salt in any::<[u8; 4]>(),
            response in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let accepted = verify(&stored, salt, &response);
            prop_assert!(!accepted || (stored.len() == 35 && stored.starts_with("md5")));
            prop_assert_eq!(client_response(&stored, salt).len(), 35);
        }
    }
}
