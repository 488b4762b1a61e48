//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it, without
//! channel binding: pgherd never offers SCRAM-SHA-256-PLUS.
//!
//! Passwords are used as raw UTF-8 bytes, without SASLprep. That matches
//! PostgreSQL for ASCII passwords and for any password SASLprep leaves
//! unchanged; a password SASLprep would normalise will not authenticate.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::{ct_eq, random};

pub const MECHANISM: &str = "SCRAM-SHA-256";

/// The gs2 header of a client that does not do channel binding.
const GS2_HEADER: &str = "n,,";

type HmacSha256 = Hmac<Sha256>;

/// PostgreSQL's defaults for a new verifier, which pgherd's own verifiers use too.
const DEFAULT_ITERATIONS: u32 = 4096;
const DEFAULT_SALT_LEN: usize = 16;

/// A SCRAM verifier: what the server stores instead of the password.
#[derive(Clone)]
pub struct Secret {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
    /// A stand-in for a user that does not exist ([`Secret::for_unknown_user`]): no proof is ever accepted.
    doomed: bool,
}

/// Keys are secrets: show only what identifies the verifier.
impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("iterations", &self.iterations)
            .field("doomed", &self.doomed)
            .finish_non_exhaustive()
    }
}

impl Secret {
    /// Parses pg_authid's `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    pub fn parse(s: &str) -> Option<Secret> {
        let (mechanism, rest) = s.split_once('$')?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored_key, server_key) = keys.split_once(':')?;
        if mechanism != MECHANISM {
            return None;
        }
        Some(Secret {
            iterations: iterations.parse().ok().filter(|&i| i >= 1)?,
            salt: STANDARD.decode(salt).ok()?,
            stored_key: decode_key(stored_key)?,
            server_key: decode_key(server_key)?,
            doomed: false,
        })
    }

    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> Secret {
        let (client_key, server_key) = derive_keys(password, salt, iterations);
        Secret {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key,
            doomed: false,
        }
    }

    /// A fresh verifier with PostgreSQL's defaults (16-byte salt, 4096 iterations).
    pub fn generate(password: &str) -> Secret {
        Secret::from_password(
            password,
            &random::bytes::<DEFAULT_SALT_LEN>(),
            DEFAULT_ITERATIONS,
        )
    }

    /// A stand-in verifier for a user that does not exist, so that a login as that user gets the same
    /// challenge as a real one and fails the same way, and user names cannot be told apart by trying them
    /// (PostgreSQL does the same with its "mock" salt). Pure: the same `user` and `server_secret` give the same
    /// verifier, in any process that keeps the secret.
    ///
    /// - Iterations and salt length are those of [`Secret::generate`] (4096, 16 bytes).
    /// - The salt is HMAC-SHA-256 keyed with `server_secret` over the user name, cut to 16 bytes: the same
    ///   name always gets the same salt, different names get unrelated salts, and without the secret nobody
    ///   can tell a stand-in's salt from a real random one.
    /// - The exchange is doomed: [`ServerExchange::client_final`] answers every client-final that is well
    ///   formed with [`ScramError::WrongPassword`], after the same work as for a real verifier. The keys are
    ///   derived from the secret too (nobody knows a password for them), so even without that flag no proof
    ///   could match.
    pub fn for_unknown_user(user: &str, server_secret: &[u8; 32]) -> Secret {
        // Labels end in NUL, which no user name holds, so (label, name) pairs cannot collide.
        let derive = |label: &[u8]| {
            let mut mac = keyed(server_secret);
            mac.update(label);
            mac.update(user.as_bytes());
            <[u8; 32]>::from(mac.finalize().into_bytes())
        };
        let salt = derive(b"pgherd stand-in salt\0");
        Secret {
            iterations: DEFAULT_ITERATIONS,
            salt: salt.get(..DEFAULT_SALT_LEN).unwrap_or(&salt).to_vec(),
            stored_key: derive(b"pgherd stand-in StoredKey\0"),
            server_key: derive(b"pgherd stand-in ServerKey\0"),
            doomed: true,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum ScramError {
    /// The peer sent something that is not SCRAM as we speak it, or sent it out of turn.
    Protocol(String),
    /// The client's proof does not match the secret.
    WrongPassword,
    /// The server ended the exchange with `e=<error>`.
    Server(String),
}

impl fmt::Display for ScramError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScramError::Protocol(what) => write!(f, "SCRAM protocol violation: {what}"),
            ScramError::WrongPassword => f.write_str("password authentication failed"),
            ScramError::Server(error) => write!(f, "server rejected SCRAM authentication: {error}"),
        }
    }
}

impl std::error::Error for ScramError {}

/// pgherd's side when a client authenticates to it.
pub struct ServerExchange {
    secret: Secret,
    nonce: String,
    state: ServerState,
}

enum ServerState {
    AwaitingClientFirst,
    AwaitingClientFinal {
        /// What the client must send as `c=`: base64 of the gs2 header it used.
        channel_binding: String,
        nonce: String,
        /// `client-first-bare,server-first,`: the AuthMessage minus its last part.
        auth_prefix: String,
    },
    Done,
}

impl ServerExchange {
    pub fn new(secret: Secret) -> Self {
        Self::with_nonce(secret, &random_nonce())
    }

    pub fn with_nonce(secret: Secret, nonce: &str) -> Self {
        ServerExchange {
            secret,
            nonce: nonce.to_owned(),
            state: ServerState::AwaitingClientFirst,
        }
    }

    /// Takes the client-first-message (SASLInitialResponse payload) and
    /// returns the server-first-message.
    pub fn client_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.state, ServerState::AwaitingClientFirst) {
            return Err(out_of_order());
        }
        // A failed step ends the exchange; the client has to start over.
        self.state = ServerState::Done;
        let msg = utf8(msg)?;
        let (gs2_header, bare) = split_gs2_header(msg)?;
        let mut attrs = bare.split(',');
        // PostgreSQL takes the user from the startup packet and so do we.
        attribute(&mut attrs, 'n')?;
        let client_nonce = attribute(&mut attrs, 'r')?;
        if client_nonce.is_empty() || !client_nonce.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(protocol("invalid client nonce"));
        }
        let nonce = format!("{client_nonce}{}", self.nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            STANDARD.encode(&self.secret.salt),
            self.secret.iterations
        );
        self.state = ServerState::AwaitingClientFinal {
            channel_binding: STANDARD.encode(gs2_header),
            nonce,
            auth_prefix: format!("{bare},{server_first},"),
        };
        Ok(server_first.into_bytes())
    }

    /// Takes the client-final-message and returns the server-final-message
    /// together with the ClientKey the proof revealed, which lets pgherd log
    /// in to PostgreSQL as this client (see [`ClientExchange::from_keys`]).
    pub fn client_final(&mut self, msg: &[u8]) -> Result<(Vec<u8>, [u8; 32]), ScramError> {
        let ServerState::AwaitingClientFinal {
            channel_binding,
            nonce,
            auth_prefix,
        } = std::mem::replace(&mut self.state, ServerState::Done)
        else {
            return Err(out_of_order());
        };
        let msg = utf8(msg)?;
        // The proof comes last and is the one part the AuthMessage leaves out.
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or_else(|| protocol("missing proof"))?;
        let mut attrs = without_proof.split(',');
        if attribute(&mut attrs, 'c')? != channel_binding {
            return Err(protocol("channel binding mismatch"));
        }
        if attribute(&mut attrs, 'r')? != nonce {
            return Err(protocol("nonce mismatch"));
        }
        let proof = decode_32(proof, "invalid proof")?;
        let auth_message = format!("{auth_prefix}{without_proof}");
        let client_signature = hmac(&self.secret.stored_key, auth_message.as_bytes());
        let client_key = xor(proof, &client_signature);
        // `|`, not `||`: a stand-in does the same work as a real verifier before it fails.
        if !ct_eq(&sha256(&client_key), &self.secret.stored_key) | self.secret.doomed {
            return Err(ScramError::WrongPassword);
        }
        let server_signature = hmac(&self.secret.server_key, auth_message.as_bytes());
        let server_final = format!("v={}", STANDARD.encode(server_signature));
        Ok((server_final.into_bytes(), client_key))
    }
}

/// pgherd's side when it logs in to PostgreSQL.
pub struct ClientExchange {
    credentials: Credentials,
    nonce: String,
    /// What the server must send in `v=`; known once the client-final is built.
    server_signature: Option<[u8; 32]>,
}

enum Credentials {
    Password(String),
    Keys {
        client_key: [u8; 32],
        server_key: [u8; 32],
    },
}

impl ClientExchange {
    pub fn new(password: &str) -> Self {
        Self::with_nonce(password, &random_nonce())
    }

    pub fn with_nonce(password: &str, nonce: &str) -> Self {
        ClientExchange {
            credentials: Credentials::Password(password.to_owned()),
            nonce: nonce.to_owned(),
            server_signature: None,
        }
    }

    /// Logs in with the ClientKey recovered from a client's own login plus
    /// the ServerKey of that secret, so pgherd never needs the password
    /// (PgBouncer's passthrough trick). This works only if PostgreSQL holds
    /// the very same verifier (same salt and iterations); that cannot be
    /// checked here, PostgreSQL will just reject the proof.
    pub fn from_keys(client_key: [u8; 32], server_key: [u8; 32]) -> Self {
        ClientExchange {
            credentials: Credentials::Keys {
                client_key,
                server_key,
            },
            nonce: random_nonce(),
            server_signature: None,
        }
    }

    /// The SASLInitialResponse payload.
    pub fn client_first(&self) -> Vec<u8> {
        format!("{GS2_HEADER}{}", self.client_first_bare()).into_bytes()
    }

    /// The key derivation a server-first-message asks of a password exchange, for the caller to run in steps
    /// and hand back with [`ClientExchange::use_keys`]; `None` when the keys are known already.
    pub fn derivation(&self, server_first: &[u8]) -> Result<Option<Derivation>, ScramError> {
        let Credentials::Password(password) = &self.credentials else {
            return Ok(None);
        };
        let first = ServerFirst::parse(utf8(server_first)?)?;
        Ok(Some(Derivation::new(
            password,
            &first.salt,
            first.iterations,
        )))
    }

    /// The keys derived from the password: `server_first` then needs no derivation of its own.
    pub fn use_keys(&mut self, (client_key, server_key): ([u8; 32], [u8; 32])) {
        self.credentials = Credentials::Keys {
            client_key,
            server_key,
        };
    }

    /// Takes the server-first-message and returns the client-final-message.
    pub fn server_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        let bare = self.client_first_bare();
        self.answer(&bare, msg)
    }

    /// Checks the server-final-message, i.e. that the server knows the secret too.
    pub fn server_final(&self, msg: &[u8]) -> Result<(), ScramError> {
        let expected = self.server_signature.ok_or_else(out_of_order)?;
        let msg = utf8(msg)?;
        let first = msg.split(',').next().unwrap_or_default();
        if let Some(error) = first.strip_prefix("e=") {
            return Err(ScramError::Server(error.to_owned()));
        }
        let signature = first
            .strip_prefix("v=")
            .ok_or_else(|| protocol("expected v= or e="))?;
        if !ct_eq(
            &decode_32(signature, "invalid server signature")?,
            &expected,
        ) {
            return Err(protocol("server signature mismatch"));
        }
        Ok(())
    }

    fn client_first_bare(&self) -> String {
        // Like libpq, send no user name: the server uses the startup packet's.
        format!("n=,r={}", self.nonce)
    }

    /// Split from `server_first` so tests can replay RFC 7677, whose
    /// client-first names a user.
    fn answer(&mut self, client_first_bare: &str, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        if self.server_signature.is_some() {
            return Err(out_of_order());
        }
        let server_first = utf8(msg)?;
        let ServerFirst {
            nonce,
            salt,
            iterations,
        } = ServerFirst::parse(server_first)?;
        // A server that does not extend our nonce could be replaying an old exchange.
        if nonce.len() <= self.nonce.len() || !nonce.starts_with(&self.nonce) {
            return Err(protocol("server nonce does not extend ours"));
        }
        let (client_key, server_key) = match &self.credentials {
            Credentials::Password(password) => derive_keys(password, &salt, iterations),
            Credentials::Keys {
                client_key,
                server_key,
            } => (*client_key, *server_key),
        };
        let without_proof = format!("c={},r={nonce}", STANDARD.encode(GS2_HEADER));
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let client_signature = hmac(&sha256(&client_key), auth_message.as_bytes());
        let proof = xor(client_key, &client_signature);
        self.server_signature = Some(hmac(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", STANDARD.encode(proof)).into_bytes())
    }
}

/// What a server-first-message says: `r=<nonce>,s=<salt>,i=<iterations>`.
struct ServerFirst<'a> {
    nonce: &'a str,
    salt: Vec<u8>,
    iterations: u32,
}

impl<'a> ServerFirst<'a> {
    fn parse(msg: &'a str) -> Result<ServerFirst<'a>, ScramError> {
        let mut attrs = msg.split(',');
        let nonce = attribute(&mut attrs, 'r')?;
        let salt = STANDARD
            .decode(attribute(&mut attrs, 's')?)
            .map_err(|_| protocol("invalid salt"))?;
        let iterations = attribute(&mut attrs, 'i')?
            .parse()
            .ok()
            .filter(|&i: &u32| i >= 1)
            .ok_or_else(|| protocol("invalid iteration count"))?;
        Ok(ServerFirst {
            nonce,
            salt,
            iterations,
        })
    }
}

/// Returns (ClientKey, ServerKey) for a password.
fn derive_keys(password: &str, salt: &[u8], iterations: u32) -> ([u8; 32], [u8; 32]) {
    let mut derivation = Derivation::new(password, salt, iterations);
    derivation.step(u32::MAX);
    derivation.keys()
}

/// Hi() of RFC 5802 (PBKDF2-HMAC-SHA-256, one output block) in steps, so that the caller can let other work
/// run between them: 4,096 iterations take a millisecond or two.
pub struct Derivation {
    /// Keyed once and cloned per iteration, which halves the hashing.
    prf: HmacSha256,
    u: [u8; 32],
    salted_password: [u8; 32],
    left: u32,
}

impl Derivation {
    pub fn new(password: &str, salt: &[u8], iterations: u32) -> Derivation {
        let prf = keyed(password.as_bytes());
        let mut mac = prf.clone();
        mac.update(salt);
        mac.update(&1u32.to_be_bytes());
        let u: [u8; 32] = mac.finalize().into_bytes().into();
        Derivation {
            prf,
            u,
            salted_password: u,
            left: iterations.saturating_sub(1),
        }
    }

    /// Runs up to `rounds` more iterations; true when none are left.
    pub fn step(&mut self, rounds: u32) -> bool {
        let now = rounds.min(self.left);
        for _ in 0..now {
            let mut mac = self.prf.clone();
            mac.update(&self.u);
            self.u = mac.finalize().into_bytes().into();
            self.salted_password = xor(self.salted_password, &self.u);
        }
        self.left -= now; // now <= left
        self.left == 0
    }

    /// (ClientKey, ServerKey), once `step` has returned true.
    pub fn keys(&self) -> ([u8; 32], [u8; 32]) {
        // The caller's contract, whatever the input: `left` counts iterations, not bytes of a message.
        debug_assert_eq!(self.left, 0, "keys of an unfinished derivation");
        (
            hmac(&self.salted_password, b"Client Key"),
            hmac(&self.salted_password, b"Server Key"),
        )
    }
}

/// HMAC-SHA-256 keyed with `key`.
fn keyed(key: &[u8]) -> HmacSha256 {
    // Cannot fail: HMAC hashes a key longer than a block and pads a shorter one, so every length is valid
    // (hmac 0.12 returns InvalidLength only for MACs with a fixed key size, which HMAC is not).
    HmacSha256::new_from_slice(key).expect("HMAC takes any key length")
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = keyed(key);
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn xor(mut a: [u8; 32], b: &[u8; 32]) -> [u8; 32] {
    a.iter_mut().zip(b).for_each(|(x, y)| *x ^= y);
    a
}

fn random_nonce() -> String {
    STANDARD.encode(random::bytes::<18>())
}

fn decode_key(s: &str) -> Option<[u8; 32]> {
    STANDARD.decode(s).ok()?.try_into().ok()
}

fn decode_32(s: &str, what: &str) -> Result<[u8; 32], ScramError> {
    decode_key(s).ok_or_else(|| protocol(what))
}

/// Splits off the gs2 header; we accept only those without channel binding
/// or authorization identity, as PostgreSQL does without SSL.
fn split_gs2_header(msg: &str) -> Result<(&str, &str), ScramError> {
    match msg.get(..3) {
        // get() returned the first 3 bytes as a str: 3 is in bounds and on a character boundary.
        Some("n,," | "y,,") => Ok(msg.split_at(3)),
        _ if msg.starts_with("p=") => Err(protocol("channel binding requested but not offered")),
        _ => Err(protocol("unsupported gs2 header")),
    }
}

/// The value of the next attribute, which must be `name=`.
fn attribute<'a>(
    attrs: &mut impl Iterator<Item = &'a str>,
    name: char,
) -> Result<&'a str, ScramError> {
    attrs
        .next()
        .and_then(|attr| attr.strip_prefix(name)?.strip_prefix('='))
        .ok_or_else(|| ScramError::Protocol(format!("expected attribute {name}=")))
}

fn utf8(msg: &[u8]) -> Result<&str, ScramError> {
    std::str::from_utf8(msg).map_err(|_| protocol("message is not UTF-8"))
}

fn protocol(what: &str) -> ScramError {
    ScramError::Protocol(what.to_owned())
}

fn out_of_order() -> ScramError {
    protocol("SCRAM step out of order")
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7677, section 3.
    const RFC_CLIENT_FIRST: &[u8] = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const RFC_CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const RFC_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const RFC_SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const RFC_SERVER_FIRST: &[u8] = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
        s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const RFC_CLIENT_FINAL: &[u8] = b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
        p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const RFC_SERVER_FINAL: &[u8] = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    // Password "secret", salt 0..16, 4096 iterations, computed with Python's
    // hashlib.pbkdf2_hmac and hmac in the layout PostgreSQL stores.
    const PG_VERIFIER: &str = "SCRAM-SHA-256$4096:AAECAwQFBgcICQoLDA0ODw==\
        $THoPhoTAuqyoQsK4dUHncUzgfD8fdmhsgKZhWVqNP5U=\
        :7YiHMMi2OcXGRogub03Ek06JRZ9bkhTOdCzHa5iPLiQ=";

    fn rfc_secret() -> Secret {
        Secret::from_password("pencil", &STANDARD.decode(RFC_SALT).unwrap(), 4096)
    }

    fn test_secret() -> Secret {
        Secret::from_password("hunter2", b"0123456789abcdef", 4096)
    }

    /// Runs a whole exchange and returns the ClientKey the server recovered.
    fn run(
        mut client: ClientExchange,
        server: &mut ServerExchange,
    ) -> Result<[u8; 32], ScramError> {
        let server_first = server.client_first(&client.client_first())?;
        let client_final = client.server_first(&server_first)?;
        let (server_final, client_key) = server.client_final(&client_final)?;
        client.server_final(&server_final)?;
        Ok(client_key)
    }

    fn is_protocol_error<T>(result: Result<T, ScramError>) -> bool {
        matches!(result, Err(ScramError::Protocol(_)))
    }

    #[test]
    fn rfc7677_client_side() {
        let mut client = ClientExchange::with_nonce("pencil", RFC_CLIENT_NONCE);
        let bare = std::str::from_utf8(&RFC_CLIENT_FIRST[3..]).unwrap();
        let client_final = client.answer(bare, RFC_SERVER_FIRST).unwrap();
        assert_eq!(client_final, RFC_CLIENT_FINAL);
        assert_eq!(client.server_final(RFC_SERVER_FINAL), Ok(()));
    }

    #[test]
    fn rfc7677_server_side() {
        let mut server = ServerExchange::with_nonce(rfc_secret(), RFC_SERVER_NONCE);
        assert_eq!(
            server.client_first(RFC_CLIENT_FIRST).unwrap(),
            RFC_SERVER_FIRST
        );
        let (server_final, client_key) = server.client_final(RFC_CLIENT_FINAL).unwrap();
        assert_eq!(server_final, RFC_SERVER_FINAL);
        assert_eq!(sha256(&client_key), rfc_secret().stored_key);
    }

    #[test]
    fn client_first_is_what_postgres_clients_send() {
        let client = ClientExchange::with_nonce("pencil", RFC_CLIENT_NONCE);
        assert_eq!(client.client_first(), b"n,,n=,r=rOprNGfwEbeRWgbNEkqO");
    }

    #[test]
    fn full_exchange() {
        let secret = test_secret();
        let client = ClientExchange::with_nonce("hunter2", "clientnonce");
        let mut server = ServerExchange::with_nonce(secret.clone(), "servernonce");
        let client_key = run(client, &mut server).unwrap();
        assert_eq!(sha256(&client_key), secret.stored_key);
    }

    #[test]
    fn wrong_password() {
        let client = ClientExchange::with_nonce("hunter3", "clientnonce");
        let mut server = ServerExchange::with_nonce(test_secret(), "servernonce");
        assert_eq!(run(client, &mut server), Err(ScramError::WrongPassword));
    }

    #[test]
    fn passthrough_with_recovered_client_key() {
        let secret = test_secret();
        let client = ClientExchange::new("hunter2");
        let client_key = run(client, &mut ServerExchange::new(secret.clone())).unwrap();
        let relayed = ClientExchange::from_keys(client_key, secret.server_key);
        assert!(run(relayed, &mut ServerExchange::new(secret)).is_ok());
    }

    #[test]
    fn generated_secret() {
        let secret = Secret::generate("hunter2");
        assert_eq!((secret.salt.len(), secret.iterations), (16, 4096));
        let client = ClientExchange::new("hunter2");
        assert!(run(client, &mut ServerExchange::new(secret)).is_ok());
    }

    #[test]
    fn postgres_verifier() {
        let secret = Secret::parse(PG_VERIFIER).unwrap();
        let derived = Secret::from_password("secret", &(0..16).collect::<Vec<u8>>(), 4096);
        assert_eq!(secret.iterations, 4096);
        assert_eq!(secret.salt, derived.salt);
        assert_eq!(secret.stored_key, derived.stored_key);
        assert_eq!(secret.server_key, derived.server_key);

        let client = ClientExchange::new("secret");
        assert!(run(client, &mut ServerExchange::new(secret.clone())).is_ok());
        let client = ClientExchange::new("Secret");
        assert_eq!(
            run(client, &mut ServerExchange::new(secret)),
            Err(ScramError::WrongPassword)
        );
    }

    #[test]
    fn malformed_verifiers() {
        let key = "THoPhoTAuqyoQsK4dUHncUzgfD8fdmhsgKZhWVqNP5U=";
        let short_key = "THoPhoTAuqyoQsK4dUHncUzgfD8fdmhsgKZhWVqNPw==";
        for verifier in [
            String::new(),
            "md553f48b7c4b76a86ce72276c5755f217d".to_owned(),
            format!("SCRAM-SHA-1$4096:AAEC${key}:{key}"),
            format!("SCRAM-SHA-256$4096:AAEC${key}"),
            format!("SCRAM-SHA-256$4096${key}:{key}"),
            format!("SCRAM-SHA-256$0:AAEC${key}:{key}"),
            format!("SCRAM-SHA-256$many:AAEC${key}:{key}"),
            format!("SCRAM-SHA-256$4096:AA!C${key}:{key}"),
            format!("SCRAM-SHA-256$4096:AAEC${short_key}:{key}"),
            format!("SCRAM-SHA-256$4096:AAEC${key}:{key}x"),
        ] {
            assert!(Secret::parse(&verifier).is_none(), "{verifier}");
        }
    }

    #[test]
    fn malformed_client_first() {
        for msg in [
            &b""[..],
            b"n,,n=user",
            b"n,,r=abc",
            b"n,,m=ext,n=,r=abc",
            b"n,,n=,r=",
            b"n,,n=,r=a\tb",
            b"n,a=admin,n=,r=abc",
            b"p=tls-server-end-point,,n=,r=abc",
            b"n,,n=,r=\xff",
        ] {
            let mut server = ServerExchange::new(test_secret());
            assert!(is_protocol_error(server.client_first(msg)), "{msg:?}");
        }
    }

    #[test]
    fn malformed_client_final() {
        let proof = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        let nonce = "abcSERVER";
        for msg in [
            format!("c=biws,r={nonce}"),
            format!("c=biws,r={nonce},p=!!!!"),
            format!("c=biws,r={nonce},p=AAAA"),
            format!("c=biws,r=abcOTHER,p={proof}"),
            format!("c=biws,p={proof}"),
            format!("c=eSws,r={nonce},p={proof}"),
            format!("r={nonce},c=biws,p={proof}"),
        ] {
            let mut server = ServerExchange::with_nonce(test_secret(), "SERVER");
            server.client_first(b"n,,n=,r=abc").unwrap();
            assert!(
                is_protocol_error(server.client_final(msg.as_bytes())),
                "{msg}"
            );
        }
    }

    #[test]
    fn channel_binding_must_echo_the_gs2_header() {
        let mut server = ServerExchange::with_nonce(test_secret(), "SERVER");
        server.client_first(b"y,,n=,r=abc").unwrap();
        let client_final = b"c=biws,r=abcSERVER,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        assert!(is_protocol_error(server.client_final(client_final)));
    }

    #[test]
    fn server_steps_out_of_order() {
        let mut server = ServerExchange::with_nonce(rfc_secret(), RFC_SERVER_NONCE);
        assert!(is_protocol_error(server.client_final(RFC_CLIENT_FINAL)));

        let mut server = ServerExchange::with_nonce(rfc_secret(), RFC_SERVER_NONCE);
        server.client_first(RFC_CLIENT_FIRST).unwrap();
        assert!(is_protocol_error(server.client_first(RFC_CLIENT_FIRST)));

        let mut server = ServerExchange::with_nonce(rfc_secret(), RFC_SERVER_NONCE);
        server.client_first(RFC_CLIENT_FIRST).unwrap();
        server.client_final(RFC_CLIENT_FINAL).unwrap();
        assert!(is_protocol_error(server.client_final(RFC_CLIENT_FINAL)));
    }

    #[test]
    fn malformed_server_first() {
        for msg in [
            &b""[..],
            b"r=rOprNGfwEbeRWgbNEkqO",
            b"r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            b"r=OTHERrOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            b"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==",
            b"r=rOprNGfwEbeRWgbNEkqOxyz,s=!!,i=4096",
            b"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0",
            b"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=-1",
            b"m=ext,r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        ] {
            let mut client = ClientExchange::with_nonce("pencil", RFC_CLIENT_NONCE);
            assert!(is_protocol_error(client.server_first(msg)), "{msg:?}");
        }
    }

    #[test]
    fn server_final_outcomes() {
        let client = ClientExchange::with_nonce("pencil", RFC_CLIENT_NONCE);
        assert!(is_protocol_error(client.server_final(RFC_SERVER_FINAL)));

        let mut client = ClientExchange::with_nonce("pencil", RFC_CLIENT_NONCE);
        client.server_first(RFC_SERVER_FIRST).unwrap();
        assert!(is_protocol_error(client.server_first(RFC_SERVER_FIRST)));
        assert_eq!(
            client.server_final(b"e=invalid-proof"),
            Err(ScramError::Server("invalid-proof".to_owned()))
        );
        // Valid for the RFC's client-first, not for ours with an empty user.
        assert!(is_protocol_error(client.server_final(RFC_SERVER_FINAL)));
        assert!(is_protocol_error(client.server_final(b"v=AAAA")));
        assert!(is_protocol_error(client.server_final(b"x=1")));
    }

    #[test]
    fn a_derivation_in_steps_gives_the_same_keys() {
        let whole = derive_keys("secret", b"0123456789abcdef", 4096);
        let mut stepped = Derivation::new("secret", b"0123456789abcdef", 4096);
        let mut steps = 1;
        while !stepped.step(100) {
            steps += 1;
        }
        assert_eq!(steps, 41, "4,095 iterations after the first, 100 at a time");
        assert_eq!(stepped.keys(), whole);
    }

    #[test]
    fn a_password_exchange_asks_for_its_derivation_and_takes_the_keys() {
        let verifier = Secret::from_password("secret", b"0123456789abcdef", 4096);
        let mut server = ServerExchange::new(verifier);
        let mut client = ClientExchange::new("secret");
        let server_first = server.client_first(&client.client_first()).unwrap();
        let mut derivation = client
            .derivation(&server_first)
            .unwrap()
            .expect("a password needs one");
        while !derivation.step(512) {}
        client.use_keys(derivation.keys());
        assert!(
            client.derivation(&server_first).unwrap().is_none(),
            "keys known now"
        );
        let client_final = client.server_first(&server_first).unwrap();
        let (server_final, _) = server.client_final(&client_final).unwrap();
        client.server_final(&server_final).unwrap();
    }

    const CLUSTER_SECRET: [u8; 32] = [7; 32];

    #[test]
    fn a_stand_in_is_the_same_for_the_same_name_and_secret() {
        let a = Secret::for_unknown_user("mallory", &CLUSTER_SECRET);
        let b = Secret::for_unknown_user("mallory", &CLUSTER_SECRET);
        assert_eq!((a.iterations, a.salt.len()), (4096, 16));
        assert_eq!(
            (&a.salt, a.stored_key, a.server_key, a.iterations),
            (&b.salt, b.stored_key, b.server_key, b.iterations)
        );
        let other_name = Secret::for_unknown_user("mallory2", &CLUSTER_SECRET);
        let other_secret = Secret::for_unknown_user("mallory", &[8; 32]);
        assert_ne!(a.salt, other_name.salt);
        assert_ne!(a.salt, other_secret.salt);
        assert_ne!(a.stored_key, other_name.stored_key);
        assert_ne!(
            a.salt[..],
            a.stored_key[..16],
            "salt and keys are derived apart"
        );
    }

    #[test]
    fn a_stand_in_challenges_like_a_real_verifier_and_fails_like_a_wrong_password() {
        let real = Secret::generate("hunter2");
        let stand_in = Secret::for_unknown_user("nobody", &CLUSTER_SECRET);
        let mut real_server = ServerExchange::with_nonce(real, "servernonce");
        let mut fake_server = ServerExchange::with_nonce(stand_in.clone(), "servernonce");
        let first = b"n,,n=,r=clientnonce";
        let real_first = real_server.client_first(first).unwrap();
        let fake_first = fake_server.client_first(first).unwrap();
        let shape = |m: &[u8]| {
            let m = std::str::from_utf8(m).unwrap().to_owned();
            let first = ServerFirst::parse(&m).unwrap();
            (
                m.len(),
                first.nonce.to_owned(),
                first.salt.len(),
                first.iterations,
            )
        };
        assert_eq!(shape(&real_first), shape(&fake_first));
        assert_eq!(
            std::str::from_utf8(&fake_first).unwrap(),
            format!(
                "r=clientnonceservernonce,s={},i=4096",
                STANDARD.encode(&stand_in.salt)
            )
        );
        // A client following the protocol to the letter, whatever its password.
        for password in ["", "hunter2", "nobody"] {
            let client = ClientExchange::with_nonce(password, "clientnonce");
            let mut server = ServerExchange::with_nonce(stand_in.clone(), "servernonce");
            assert_eq!(run(client, &mut server), Err(ScramError::WrongPassword));
        }
    }

    #[test]
    fn a_doomed_exchange_fails_even_the_right_proof() {
        let secret = Secret {
            doomed: true,
            ..test_secret()
        };
        let client = ClientExchange::with_nonce("hunter2", "clientnonce");
        let mut server = ServerExchange::with_nonce(secret, "servernonce");
        assert_eq!(run(client, &mut server), Err(ScramError::WrongPassword));
        // And a malformed client-final is refused as for any verifier.
        let mut server =
            ServerExchange::with_nonce(Secret::for_unknown_user("nobody", &CLUSTER_SECRET), "S");
        server.client_first(b"n,,n=,r=c").unwrap();
        assert!(is_protocol_error(
            server.client_final(b"c=biws,r=cX,p=AAAA")
        ));
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    /// Printable nonces without commas, as both sides make them.
    fn nonce() -> impl Strategy<Value = String> {
        "[!-+--~]{1,24}"
    }

    fn password() -> impl Strategy<Value = String> {
        prop_oneof!["[a-zA-Z0-9]{0,12}", any::<String>()]
    }

    /// A verifier with few iterations: the properties do not depend on the count, and debug-build PBKDF2
    /// is slow.
    fn secret(password: &str, salt: &[u8], iterations: u32) -> Secret {
        Secret::from_password(password, salt, iterations)
    }

    fn client(password: &str, nonce: &str) -> ClientExchange {
        ClientExchange::with_nonce(password, nonce)
    }

    /// A client that knows keys, not a password: no derivation, whatever the server asks.
    fn keyed_client(client_key: [u8; 32], server_key: [u8; 32], nonce: &str) -> ClientExchange {
        ClientExchange {
            credentials: Credentials::Keys {
                client_key,
                server_key,
            },
            nonce: nonce.to_owned(),
            server_signature: None,
        }
    }

    /// Runs the first half of a correct exchange: (server after client-first, client-final).
    fn to_client_final(
        secret: &Secret,
        password: &str,
        client_nonce: &str,
        server_nonce: &str,
    ) -> (ServerExchange, ClientExchange, Vec<u8>) {
        let mut client = client(password, client_nonce);
        let mut server = ServerExchange::with_nonce(secret.clone(), server_nonce);
        let server_first = server.client_first(&client.client_first()).unwrap();
        let client_final = client.server_first(&server_first).unwrap();
        (server, client, client_final)
    }

    /// client-first-messages as clients write them, with the parts a hostile one would vary.
    fn client_first() -> impl Strategy<Value = Vec<u8>> {
        let header = prop_oneof![
            Just("n,,".to_owned()),
            Just("y,,".to_owned()),
            Just("p=tls-server-end-point,,".to_owned()),
            "[a-z=,]{0,6}",
        ];
        let user = prop_oneof![Just(String::new()), "[a-z=,]{0,6}"];
        let nonce = prop_oneof![nonce(), any::<String>()];
        let tail = prop_oneof![Just(String::new()), ",[a-z]=[a-z]{0,4}", any::<String>()];
        (header, user, nonce, tail)
            .prop_map(|(h, u, r, t)| format!("{h}n={u},r={r}{t}").into_bytes())
    }

    proptest! {
        #![proptest_config(crate::fuzzing::config())]

        /// A client with the right password always gets in, the server learns its ClientKey, and the client
        /// accepts the server's signature.
        #[test]
        fn the_right_password_succeeds(
            password in password(),
            salt in proptest::collection::vec(any::<u8>(), 0..24),
            iterations in 1u32..16,
            client_nonce in nonce(),
            server_nonce in nonce(),
        ) {
            let secret = secret(&password, &salt, iterations);
            let (mut server, client, client_final) =
                to_client_final(&secret, &password, &client_nonce, &server_nonce);
            let (server_final, client_key) = server.client_final(&client_final).unwrap();
            prop_assert_eq!(sha256(&client_key), secret.stored_key);
            prop_assert_eq!(client.server_final(&server_final), Ok(()));
        }

        /// Another password fails as a wrong password, and a stand-in fails every password.
        #[test]
        fn a_wrong_password_or_a_stand_in_fails(
            password in password(),
            other in password(),
            salt in proptest::collection::vec(any::<u8>(), 0..24),
            iterations in 1u32..16,
            client_nonce in nonce(),
            server_nonce in nonce(),
            user in any::<String>(),
            cluster in any::<[u8; 32]>(),
        ) {
            prop_assume!(password != other);
            let secret = secret(&password, &salt, iterations);
            let (mut server, _, client_final) =
                to_client_final(&secret, &other, &client_nonce, &server_nonce);
            prop_assert_eq!(server.client_final(&client_final), Err(ScramError::WrongPassword));

            // A stand-in of few iterations, so the client can run it: even the keys' owner fails.
            let stand_in = Secret { iterations, ..Secret::for_unknown_user(&user, &cluster) };
            let (mut server, _, client_final) =
                to_client_final(&stand_in, &password, &client_nonce, &server_nonce);
            prop_assert_eq!(server.client_final(&client_final), Err(ScramError::WrongPassword));
            let doomed = Secret { doomed: true, ..secret };
            let (mut server, _, client_final) =
                to_client_final(&doomed, &password, &client_nonce, &server_nonce);
            prop_assert_eq!(server.client_final(&client_final), Err(ScramError::WrongPassword));
        }

        /// Stand-ins: deterministic per (name, secret), apart across names and secrets, shaped like real ones.
        #[test]
        fn stand_ins_are_deterministic_and_distinct(
            user in any::<String>(),
            other_user in any::<String>(),
            cluster in any::<[u8; 32]>(),
            other_cluster in any::<[u8; 32]>(),
        ) {
            let a = Secret::for_unknown_user(&user, &cluster);
            let again = Secret::for_unknown_user(&user, &cluster);
            prop_assert_eq!((a.iterations, a.salt.len()), (DEFAULT_ITERATIONS, DEFAULT_SALT_LEN));
            prop_assert_eq!((&a.salt, a.stored_key, a.server_key), (&again.salt, again.stored_key, again.server_key));
            prop_assert!(a.doomed);
            if other_user != user {
                prop_assert_ne!(&a.salt, &Secret::for_unknown_user(&other_user, &cluster).salt);
            }
            if other_cluster != cluster {
                prop_assert_ne!(&a.salt, &Secret::for_unknown_user(&user, &other_cluster).salt);
            }
        }

        /// Any single byte of a correct client-final changed: the exchange fails.
        #[test]
        fn a_mutated_client_final_fails(
            password in password(),
            salt in proptest::collection::vec(any::<u8>(), 0..24),
            iterations in 1u32..16,
            client_nonce in nonce(),
            server_nonce in nonce(),
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let secret = secret(&password, &salt, iterations);
            let (mut server, _, mut client_final) =
                to_client_final(&secret, &password, &client_nonce, &server_nonce);
            let at = at.index(client_final.len());
            client_final[at] ^= flip;
            prop_assert!(server.client_final(&client_final).is_err(), "byte {} changed", at);
        }

        /// Any client-first and client-final bytes: no panic, a server-first only for a usable client-first
        /// and in the usual shape, and no success without the password.
        #[test]
        fn arbitrary_client_messages(
            first in prop_oneof![client_first(), proptest::collection::vec(any::<u8>(), 0..60)],
            last in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..120),
                ("[a-zA-Z0-9+/=]{0,8}", "[!-~]{0,30}", "[a-zA-Z0-9+/=]{0,48}")
                    .prop_map(|(c, r, p)| format!("c={c},r={r},p={p}").into_bytes()),
            ],
            server_nonce in nonce(),
            salt in proptest::collection::vec(any::<u8>(), 0..24),
        ) {
            let secret = secret("the password", &salt, 2);
            let mut server = ServerExchange::with_nonce(secret, &server_nonce);
            match server.client_first(&first) {
                Ok(server_first) => {
                    let text = String::from_utf8(server_first).unwrap();
                    let parsed = ServerFirst::parse(&text).unwrap();
                    prop_assert!(parsed.nonce.ends_with(&server_nonce));
                    prop_assert_eq!((parsed.salt, parsed.iterations), (salt, 2));
                    prop_assert!(server.client_final(&last).is_err());
                }
                Err(ScramError::Protocol(_)) => {
                    prop_assert!(matches!(server.client_final(&last), Err(ScramError::Protocol(_))));
                }
                Err(other) => prop_assert!(false, "client-first failed with {:?}", other),
            }
        }

        /// pgherd logging in to a hostile server: any server-first and server-final, no panic, and no
        /// server-final accepted unless its signature was made with the ServerKey.
        #[test]
        fn arbitrary_server_messages(
            client_key in any::<[u8; 32]>(),
            server_key in any::<[u8; 32]>(),
            client_nonce in nonce(),
            server_nonce in nonce(),
            salt in "[a-zA-Z0-9+/]{0,8}={0,2}",
            iterations in "[0-9-]{0,6}",
            junk in proptest::collection::vec(any::<u8>(), 0..80),
            tail in prop_oneof![Just(String::new()), ",[a-z]=[a-z]{0,4}"],
            last in proptest::collection::vec(any::<u8>(), 0..80),
            signature in any::<[u8; 32]>(),
        ) {
            let mut client = keyed_client(client_key, server_key, &client_nonce);
            let _ = keyed_client(client_key, server_key, &client_nonce).server_first(&junk);
            let first = format!("r={client_nonce}{server_nonce},s={salt},i={iterations}{tail}");
            let Ok(client_final) = client.server_first(first.as_bytes()) else {
                prop_assert!(client.server_final(b"v=").is_err());
                return Ok(());
            };
            let client_final = String::from_utf8(client_final).unwrap();
            let without_proof = client_final.rsplit_once(",p=").unwrap().0;
            let auth_message = format!("n=,r={client_nonce},{first},{without_proof}");
            let right = hmac(&server_key, auth_message.as_bytes());
            // The first attribute is all that counts: `v=` and the right signature, then the end or a comma.
            let signed = format!("v={}", STANDARD.encode(right));
            let first = last.split(|&b| b == b',').next().unwrap_or_default();
            prop_assert_eq!(client.server_final(&last).is_ok(), first == signed.as_bytes());
            let forged = format!("v={}", STANDARD.encode(signature));
            prop_assert_eq!(client.server_final(forged.as_bytes()).is_ok(), signature == right);
            let made = format!("v={}", STANDARD.encode(right));
            prop_assert_eq!(client.server_final(made.as_bytes()), Ok(()));
        }

        /// A client with a password answers a well-formed server-first of any (small) iteration count and salt,
        /// and accepts only the real server's final message, never one made with another ServerKey.
        #[test]
        fn a_client_accepts_only_the_real_server(
            password in password(),
            salt in proptest::collection::vec(any::<u8>(), 0..24),
            iterations in 1u32..16,
            client_nonce in nonce(),
            server_nonce in nonce(),
            impostor_key in any::<[u8; 32]>(),
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let secret = secret(&password, &salt, iterations);
            let (mut server, client, client_final) =
                to_client_final(&secret, &password, &client_nonce, &server_nonce);
            let (server_final, _) = server.client_final(&client_final).unwrap();
            let mut mutated = server_final.clone();
            let at = at.index(mutated.len());
            mutated[at] ^= flip;
            prop_assert!(client.server_final(&mutated).is_err());
            prop_assume!(impostor_key != secret.server_key);
            let impostor = Secret { server_key: impostor_key, ..secret };
            let (mut server, client, client_final) =
                to_client_final(&impostor, &password, &client_nonce, &server_nonce);
            let (server_final, _) = server.client_final(&client_final).unwrap();
            prop_assert!(matches!(client.server_final(&server_final), Err(ScramError::Protocol(_))));
        }
    }
}
