//! Property tests of the configuration file parser (`Config::load`): random TOML documents made of the real
//! keys with random values of random types, written in the forms TOML allows, and random bytes. Loading never
//! panics, and every error names the file and a line of it, the line of the key at fault.

#[path = "../src/fuzzing.rs"]
mod fuzzing;

mod props {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use pgherd::config::{Config, ConfigError};
    use proptest::prelude::*;

    const TOP_KEYS: &[&str] = &[
        "listen",
        "workers",
        "pool_mode",
        "max_client_conn",
        "auth_type",
        "auth_user",
        "auth_query",
        "auth_query_cache_ttl",
        "listen_backlog",
        "client_login_timeout",
        "client_message_timeout",
        "client_park_after",
        "query_wait_timeout",
        "server_connect_timeout",
        "server_login_retry",
        "server_idle_timeout",
        "server_lifetime",
        "max_prepared_statements",
        "server_reset_query",
        "stats_period",
        "shutdown_timeout",
        "log_level",
    ];
    const DATABASE_KEYS: &[&str] = &[
        "host",
        "port",
        "dbname",
        "pool_size",
        "min_pool_size",
        "pool_mode",
        "max_client_conn",
    ];
    const USER_KEYS: &[&str] = &["password", "auth_type", "pool_mode", "max_client_conn"];
    /// Near misses of real keys, which the parser must refuse by name.
    const TYPOS: &[&str] = &[
        "worker",
        "pool_sise",
        "listen_addr",
        "poolsize",
        "passwd",
        "Port",
    ];

    /// A verifier PostgreSQL would store for "secret" (salt 0..16, 4096 iterations).
    const VERIFIER: &str = "SCRAM-SHA-256$4096:AAECAwQFBgcICQoLDA0ODw==\
        $THoPhoTAuqyoQsK4dUHncUzgfD8fdmhsgKZhWVqNP5U=\
        :7YiHMMi2OcXGRogub03Ek06JRZ9bkhTOdCzHa5iPLiQ=";

    /// A TOML value, rendered on one line.
    #[derive(Debug, Clone)]
    enum Value {
        Int(i64),
        Float(f64),
        Str(String),
        Bool(bool),
        Datetime,
        Array(Vec<Value>),
        Table(Vec<(String, Value)>),
    }

    fn quoted(s: &str) -> String {
        let mut out = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    /// A key as TOML writes it: bare when it can be.
    fn key(k: &str) -> String {
        let bare = !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if bare {
            k.to_owned()
        } else {
            quoted(k)
        }
    }

    impl Value {
        fn render(&self) -> String {
            match self {
                Value::Int(i) => i.to_string(),
                Value::Float(f) if f.is_nan() => "nan".into(),
                Value::Float(f) if f.is_infinite() => {
                    (if *f > 0.0 { "inf" } else { "-inf" }).into()
                }
                Value::Float(f) => format!("{f:?}"),
                Value::Str(s) => quoted(s),
                Value::Bool(b) => b.to_string(),
                Value::Datetime => "1979-05-27T07:32:00Z".into(),
                Value::Array(items) => {
                    let items: Vec<String> = items.iter().map(Value::render).collect();
                    format!("[{}]", items.join(", "))
                }
                Value::Table(entries) => inline(entries),
            }
        }
    }

    fn inline(entries: &[(String, Value)]) -> String {
        let entries: Vec<String> = entries
            .iter()
            .map(|(k, v)| format!("{} = {}", key(k), v.render()))
            .collect();
        format!("{{ {} }}", entries.join(", "))
    }

    /// Any value of any type.
    fn any_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(Value::Int),
            (-1000i64..1000).prop_map(Value::Int),
            any::<f64>().prop_map(Value::Float),
            (-100.0f64..100.0).prop_map(Value::Float),
            any::<String>().prop_map(Value::Str),
            "[a-z ]{0,8}".prop_map(Value::Str),
            any::<bool>().prop_map(Value::Bool),
            Just(Value::Datetime),
        ];
        leaf.prop_recursive(2, 8, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec(("[a-z_]{1,8}", inner), 0..3).prop_map(Value::Table),
            ]
        })
    }

    fn strings(choices: &'static [&'static str]) -> impl Strategy<Value = Value> {
        proptest::sample::select(choices).prop_map(|s| Value::Str(s.to_owned()))
    }

    /// One of the `valid` strings mostly, else one of the `invalid`.
    fn choice(
        valid: &'static [&'static str],
        invalid: &'static [&'static str],
    ) -> impl Strategy<Value = Value> {
        prop_oneof![9 => strings(valid), 1 => strings(invalid)]
    }

    fn ints(range: std::ops::Range<i64>) -> impl Strategy<Value = Value> {
        prop_oneof![9 => range.prop_map(Value::Int), 1 => any::<i64>().prop_map(Value::Int)]
    }

    fn seconds() -> impl Strategy<Value = Value> {
        prop_oneof![
            30 => (1i64..100_000).prop_map(Value::Int),
            30 => (0.001f64..1e6).prop_map(Value::Float),
            1 => (-2i64..=0).prop_map(Value::Int),
            1 => Just(Value::Float(-1.5)),
            1 => Just(Value::Float(1e300)),
            1 => Just(Value::Float(f64::NAN)),
            1 => Just(Value::Float(f64::INFINITY)),
            1 => Just(Value::Float(0.0)),
        ]
    }

    fn password() -> impl Strategy<Value = Value> {
        prop_oneof![
            "[a-z]{1,8}".prop_map(Value::Str),
            "md5[0-9a-f]{32}".prop_map(Value::Str),
            "md5[0-9a-z]{30,33}".prop_map(Value::Str),
            Just(Value::Str(VERIFIER.to_owned())),
            Just(Value::Str(VERIFIER.replace("$4096", "$0"))),
            "SCRAM-SHA-256\\$[0-9a-z:$]{0,20}".prop_map(Value::Str),
        ]
    }

    /// A likely value for `key`, and sometimes any value at all.
    fn value_for(key: &'static str, users: Vec<String>) -> BoxedStrategy<Value> {
        let likely: BoxedStrategy<Value> = match key {
            "listen" => prop_oneof![
                9 => proptest::collection::vec(
                    choice(&["127.0.0.1:6432", "[::1]:6432", "0.0.0.0:0"], &["localhost:6432", "127.0.0.1", ""]),
                    1..3,
                ),
                1 => Just(Vec::new()),
            ]
            .prop_map(Value::Array)
            .boxed(),
            "workers" => ints(0..200).boxed(),
            "pool_mode" => choice(&["session", "transaction", "statement"], &["Session", "sometimes"]).boxed(),
            "auth_type" => choice(&["scram-sha-256", "md5", "trust"], &["MD5", "password"]).boxed(),
            "log_level" => choice(&["error", "warn", "info", "debug"], &["trace", ""]).boxed(),
            "auth_user" => prop_oneof![
                proptest::sample::select(if users.is_empty() { vec!["nobody".to_owned()] } else { users })
                    .prop_map(Value::Str),
                "[a-z]{1,5}".prop_map(Value::Str),
            ]
            .boxed(),
            "auth_query" | "server_reset_query" | "host" | "dbname" => {
                prop_oneof![any::<String>(), "[a-zA-Z0-9. ]{0,12}"].prop_map(Value::Str).boxed()
            }
            "max_client_conn" | "listen_backlog" => ints(0..200_000).boxed(),
            "max_prepared_statements" => ints(0..300).boxed(),
            "port" => ints(0..70_000).boxed(),
            "pool_size" | "min_pool_size" => ints(0..30).boxed(),
            "password" => password().boxed(),
            _ if key.ends_with("_timeout")
                || key.ends_with("_ttl")
                || key.ends_with("_after")
                || key.ends_with("_retry")
                || key.ends_with("_lifetime")
                || key.ends_with("_period") =>
            {
                seconds().boxed()
            }
            _ => any_value().boxed(),
        };
        prop_oneof![39 => likely, 1 => any_value()].boxed()
    }

    /// The entries of one table: distinct real keys in any order (its first key, mostly among them), now and
    /// then a typo or a key twice.
    fn entries(
        keys: &'static [&'static str],
        users: Vec<String>,
    ) -> BoxedStrategy<Vec<(String, Value)>> {
        let chosen = (
            proptest::sample::subsequence(keys.to_vec(), 0..=keys.len().min(6)),
            proptest::bool::weighted(0.9),
            proptest::option::weighted(0.05, proptest::sample::select(TYPOS)),
            proptest::bool::weighted(0.05),
        )
            .prop_map(|(mut chosen, first, typo, twice)| {
                if first && !chosen.contains(&keys[0]) {
                    chosen.push(keys[0]);
                }
                chosen.extend(typo);
                if twice {
                    chosen.extend(chosen.first().copied());
                }
                chosen
            })
            .prop_shuffle();
        chosen
            .prop_flat_map(move |chosen| {
                chosen
                    .into_iter()
                    .map(|k| (Just(k.to_owned()), value_for(k, users.clone())))
                    .collect::<Vec<_>>()
            })
            .boxed()
    }

    /// How a [databases] or [users] entry is written: all are the same table to TOML.
    #[derive(Debug, Clone, Copy)]
    enum Form {
        /// `[databases.name]` then `key = value` lines.
        Header,
        /// `[ databases . "name" ]`: spaces and quotes TOML allows in a header.
        SpacedHeader,
        /// `databases.name.key = value` lines at the top level.
        Dotted,
        /// `name = { key = value, ... }` under a `[databases]` header.
        Inline,
    }

    fn forms() -> impl Strategy<Value = Form> + Clone {
        prop_oneof![
            Just(Form::Header),
            Just(Form::SpacedHeader),
            Just(Form::Dotted),
            Just(Form::Inline)
        ]
    }

    #[derive(Debug, Clone)]
    struct Section {
        name: String,
        entries: Vec<(String, Value)>,
        form: Form,
    }

    #[derive(Debug, Clone)]
    struct Doc {
        top: Vec<(String, Value)>,
        databases: Vec<Section>,
        users: Vec<Section>,
    }

    fn section_name() -> BoxedStrategy<String> {
        prop_oneof![4 => "[a-z][a-z0-9_]{0,6}", 1 => "[a-z .-]{1,6}", 1 => any::<String>()].boxed()
    }

    fn sections(
        keys: &'static [&'static str],
        forms: impl Strategy<Value = Form> + Clone + 'static,
        names: impl Strategy<Value = String> + Clone + 'static,
    ) -> BoxedStrategy<Vec<Section>> {
        proptest::collection::vec(
            (names, entries(keys, Vec::new()), forms).prop_map(|(name, entries, form)| Section {
                name,
                entries,
                form,
            }),
            0..3,
        )
        .boxed()
    }

    fn doc(
        forms: impl Strategy<Value = Form> + Clone + 'static,
        names: impl Strategy<Value = String> + Clone + 'static,
    ) -> impl Strategy<Value = Doc> {
        (
            sections(DATABASE_KEYS, forms.clone(), names.clone()),
            sections(USER_KEYS, forms, names),
        )
            .prop_flat_map(|(databases, users)| {
                let names: Vec<String> = users.iter().map(|u| u.name.clone()).collect();
                entries(TOP_KEYS, names).prop_map(move |top| Doc {
                    top,
                    databases: databases.clone(),
                    users: users.clone(),
                })
            })
    }

    /// What a line of a generated document is about.
    #[derive(Debug, Clone, PartialEq)]
    enum About {
        Nothing,
        /// A top-level key.
        Top(String),
        /// `[databases]` or `[users]` above inline tables.
        Table(&'static str),
        /// A database or user: its header (no keys), one of its keys, or all of them (inline).
        Entry(&'static str, String, Vec<String>),
    }

    impl About {
        fn has_key(&self, k: &str) -> bool {
            match self {
                About::Top(key) => key == k,
                About::Entry(_, _, keys) => keys.iter().any(|key| key == k),
                _ => false,
            }
        }
    }

    impl Doc {
        /// Plaintext passwords checked with SCRAM cost a 4096-iteration PBKDF2 each at load, which a debug
        /// build takes tens of milliseconds for: cases keep to one.
        fn scram_derivations(&self) -> usize {
            let global_scram = !self.top.iter().any(|(k, v)| {
                k == "auth_type" && matches!(v, Value::Str(s) if s != "scram-sha-256")
            });
            self.users
                .iter()
                .filter(|u| {
                    let plain = u.entries.iter().any(|(k, v)| {
                        k == "password"
                            && matches!(v, Value::Str(s) if !s.starts_with("md5") && !s.starts_with("SCRAM"))
                    });
                    let auth = u.entries.iter().find(|(k, _)| k == "auth_type").map(|(_, v)| v);
                    let scram = match auth {
                        Some(Value::Str(s)) => s == "scram-sha-256",
                        Some(_) => false,
                        None => global_scram,
                    };
                    plain && scram
                })
                .count()
        }

        /// The document, line by line, with what each line is about.
        fn render(&self) -> Vec<(String, About)> {
            let mut lines = Vec::new();
            let entry = |(k, v): &(String, Value)| format!("{} = {}", key(k), v.render());
            for e in &self.top {
                lines.push((entry(e), About::Top(e.0.clone())));
            }
            for (table, sections) in [("databases", &self.databases), ("users", &self.users)] {
                for s in sections.iter().filter(|s| matches!(s.form, Form::Dotted)) {
                    for e in &s.entries {
                        let line = format!("{table}.{}.{}", key(&s.name), entry(e));
                        lines.push((line, About::Entry(table, s.name.clone(), vec![e.0.clone()])));
                    }
                }
            }
            for (table, sections) in [("databases", &self.databases), ("users", &self.users)] {
                for s in sections {
                    let header = match s.form {
                        Form::Header => format!("[{table}.{}]", key(&s.name)),
                        Form::SpacedHeader => {
                            format!("[ {table} . {} ]  # comment", quoted(&s.name))
                        }
                        Form::Dotted | Form::Inline => continue,
                    };
                    lines.push((String::new(), About::Nothing));
                    lines.push((header, About::Entry(table, s.name.clone(), Vec::new())));
                    for e in &s.entries {
                        lines.push((
                            entry(e),
                            About::Entry(table, s.name.clone(), vec![e.0.clone()]),
                        ));
                    }
                }
                let inline: Vec<&Section> = sections
                    .iter()
                    .filter(|s| matches!(s.form, Form::Inline))
                    .collect();
                if !inline.is_empty() {
                    lines.push((String::new(), About::Nothing));
                    lines.push((format!("[{table}]"), About::Table(table)));
                    for s in inline {
                        let keys = s.entries.iter().map(|(k, _)| k.clone()).collect();
                        let line = format!("{} = {}", key(&s.name), self::inline(&s.entries));
                        lines.push((line, About::Entry(table, s.name.clone(), keys)));
                    }
                }
            }
            lines
        }
    }

    /// A file in the temporary directory, removed when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(contents: &[u8]) -> TempFile {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!(
                "pgherd-config-props-{}-{n}.toml",
                std::process::id()
            ));
            std::fs::write(&path, contents).unwrap();
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// Checks that a load's error names the file, and a line of it when the file is text and `line_required`;
    /// returns that line.
    fn check_file(
        text: Option<&str>,
        file: &TempFile,
        e: &ConfigError,
        line_required: bool,
    ) -> Result<Option<usize>, TestCaseError> {
        let shown = e.to_string();
        let path = file.0.display().to_string();
        prop_assert_eq!(&e.file, &path);
        prop_assert!(shown.starts_with(&path), "{}", shown);
        let Some(text) = text else {
            // A file that is not UTF-8 cannot be read as text: no line, and no key at fault.
            prop_assert!(e.message.starts_with("cannot read"), "{}", shown);
            return Ok(None);
        };
        // Without the file, the same error on the same line.
        let again = Config::parse(text).unwrap_err();
        prop_assert_eq!((again.line, &again.message), (e.line, &e.message));
        let Some(line) = e.line else {
            if line_required {
                return Err(TestCaseError::fail(format!(
                    "no line in \"{shown}\" for\n{text}"
                )));
            }
            return Ok(None);
        };
        prop_assert!(shown.starts_with(&format!("{path}:{line}: ")), "{}", shown);
        let lines = text.split('\n').count();
        prop_assert!(
            (1..=lines).contains(&line),
            "line {} of {}: {}",
            line,
            lines,
            shown
        );
        Ok(Some(line))
    }

    /// Checks that the line an error names is about the key at fault, as far as the message tells which.
    fn check_line(about: &About, line: &str, message: &str) -> Result<(), TestCaseError> {
        let named = |prefix: &str| Some(message.split_once(prefix)?.1.split_once('`')?.0);
        if let Some(k) = named("unknown field `") {
            prop_assert!(about.has_key(k), "{:?} is not about {}", about, k);
            return Ok(());
        }
        if let Some(k) = named("duplicate key `") {
            // A key of the line's value (an inline table) or of its table, or the name of a section. toml
            // spells a section's name as the file does (quoted if not bare, as `key` and a spaced header write
            // it) or plain, and a name may hold a backtick: compare the whole phrase, not `k`.
            let is_name = match about {
                About::Entry(_, name, _) => [name.clone(), key(name), quoted(name)]
                    .iter()
                    .any(|n| message.contains(&format!("duplicate key `{n}`"))),
                About::Table(table) => *table == k,
                _ => false,
            };
            let in_value = line.contains(&format!("{} = ", key(k)));
            prop_assert!(
                about.has_key(k) || is_name || in_value,
                "{:?} is not about {}",
                about,
                k
            );
            return Ok(());
        }
        for top in ["listen", "workers", "max_prepared_statements", "auth_user"] {
            if message.starts_with(&format!("{top}: ")) {
                prop_assert_eq!(about, &About::Top(top.to_owned()));
                return Ok(());
            }
        }
        for (table, key) in [
            ("databases", ".pool_size: "),
            ("databases", ".min_pool_size: "),
            ("users", ".password: "),
        ] {
            let name = message
                .strip_prefix(table)
                .and_then(|m| m.strip_prefix('.'))
                .and_then(|m| m.split_once(key))
                .map(|(name, _)| name);
            if let Some(name) = name {
                let ok = matches!(about, About::Entry(t, n, _) if *t == table && n == name);
                prop_assert!(ok, "{:?} is not about {}.{}", about, table, name);
                return Ok(());
            }
        }
        // Type and value errors name no key: the line is the one of the value, some key's.
        prop_assert_ne!(about, &About::Nothing);
        Ok(())
    }

    /// Loads `doc` from a file and checks the error, if any; `line_at_fault`: that it names the right line.
    fn load_document(doc: &Doc, line_at_fault: bool) -> Result<(), TestCaseError> {
        let lines = doc.render();
        let text: String = lines.iter().map(|(l, _)| format!("{l}\n")).collect();
        let file = TempFile::new(text.as_bytes());
        let Err(e) = Config::load(&file.0) else {
            return Ok(());
        };
        let Some(line) = check_file(Some(&text), &file, &e, line_at_fault)? else {
            return Ok(());
        };
        if !line_at_fault {
            return Ok(());
        }
        let (text_of_line, about) = lines
            .get(line - 1)
            .map_or(("", &About::Nothing), |(l, a)| (l.as_str(), a));
        check_line(about, text_of_line, &e.message)
            .map_err(|failure| TestCaseError::fail(format!("{failure}: {e}\n{text}")))
    }

    proptest! {
        #![proptest_config(crate::fuzzing::config())]

        /// Documents of real keys and random values, databases and users under `[databases.name]` headers: an
        /// error names the file and the line of the key at fault.
        #[test]
        fn random_documents(doc in doc(Just(Form::Header), "[a-z][a-z0-9_]{0,6}")) {
            prop_assume!(doc.scram_derivations() <= 1);
            load_document(&doc, true)?;
        }

        /// Databases and users in every form TOML allows, with names that need quotes: no panic, and an error
        /// names the file (and a line of it, if any, the same as without the file).
        #[test]
        fn random_documents_in_every_form(doc in doc(forms(), section_name())) {
            prop_assume!(doc.scram_derivations() <= 1);
            load_document(&doc, false)?;
        }

        /// The same, and every error names the line of the key at fault: a validation error takes it from
        /// where the value is written, not from a search of the text, so neither a key that starts like another
        /// (`listen_backlog = 0` above `listen = []`) nor a section written other than `[databases.name]`
        /// (quoted name, spaces in the header, dotted keys, inline table) can mislead it.
        #[test]
        fn random_documents_in_every_form_name_the_line_at_fault(doc in doc(forms(), section_name())) {
            prop_assume!(doc.scram_derivations() <= 1);
            load_document(&doc, true)?;
        }

        /// Any bytes, and any text.
        #[test]
        fn random_bytes(
            bytes in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..200),
                any::<String>().prop_map(String::into_bytes),
                "[a-z_ =\\[\\].\"0-9\n#{},]{0,120}".prop_map(String::into_bytes),
            ],
        ) {
            let file = TempFile::new(&bytes);
            if let Err(e) = Config::load(&file.0) {
                check_file(std::str::from_utf8(&bytes).ok(), &file, &e, true)?;
            }
        }
    }
}
