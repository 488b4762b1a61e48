//! A client's session defaults: the settings it gave in its startup packet (application_name, client_encoding,
//! DateStyle, TimeZone, `options=-c name=value`, ...). PostgreSQL applies them at login; pgherd applies them to
//! whichever server the client leases, and only when that server was last set up for different ones.

use std::hash::{Hash, Hasher};
use std::rc::Rc;

/// Startup keys that are not settings.
const NOT_SETTINGS: [&str; 4] = ["user", "database", "replication", "options"];

/// What a server's session settings are known to be.
pub type Fingerprint = u64;
/// A server as PostgreSQL made it: no client settings applied.
pub const FRESH: Fingerprint = 0;
/// A server whose settings a client may have changed: set them up before anyone uses it.
pub const UNKNOWN: Fingerprint = u64::MAX;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct StartupParams {
    /// Lower-case name and value, sorted by name, each name once (the last one given wins).
    settings: Vec<(String, String)>,
    /// Computed once: it is compared at every lease.
    fingerprint: Fingerprint,
}

impl StartupParams {
    /// Collects the settings of a startup packet, including `-c name=value` and `--name=value` in `options`.
    pub fn from_startup(params: &[(String, String)]) -> Result<StartupParams, String> {
        let mut settings: Vec<(String, String)> = Vec::new();
        let mut add = |name: &str, value: &str| -> Result<(), String> {
            let name = name.to_ascii_lowercase();
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
            {
                return Err(format!("invalid configuration parameter name \"{name}\""));
            }
            settings.retain(|(n, _)| *n != name);
            settings.push((name, value.to_owned()));
            Ok(())
        };
        for (key, value) in params {
            if key == "options" {
                for (name, value) in option_settings(value)? {
                    add(&name, &value)?;
                }
            } else if !NOT_SETTINGS.contains(&key.as_str()) && !key.starts_with("_pq_.") {
                add(key, value)?;
            }
        }
        Ok(StartupParams::from_list(settings))
    }

    fn from_list(mut settings: Vec<(String, String)>) -> StartupParams {
        settings.sort();
        let fingerprint = if settings.is_empty() {
            FRESH
        } else {
            let mut hasher = std::hash::DefaultHasher::new();
            settings.hash(&mut hasher);
            hasher.finish().clamp(FRESH + 1, UNKNOWN - 1)
        };
        StartupParams {
            settings,
            fingerprint,
        }
    }

    /// These settings after the client's session showed the `observed` values: `Some(value)` for a setting its
    /// session set, `None` for one it reset, which returns it to the client's `defaults` (its startup value,
    /// or PostgreSQL's default when it gave none).
    pub fn changed(
        &self,
        defaults: &StartupParams,
        observed: &[(String, Option<String>)],
    ) -> StartupParams {
        let mut settings = self.settings.clone();
        for (name, value) in observed {
            settings.retain(|(n, _)| n != name);
            let value = value.as_deref().or_else(|| defaults.get(name));
            if let Some(value) = value {
                settings.push((name.clone(), value.to_owned()));
            }
        }
        StartupParams::from_list(settings)
    }

    /// Whether a session that showed `observed` has these settings for those names.
    pub fn agrees_with(&self, observed: &[(String, Option<String>)]) -> bool {
        observed
            .iter()
            .all(|(name, value)| self.get(name) == value.as_deref())
    }

    /// A query returning, per name, the name, its value (NULL for an unknown custom setting) and whether the
    /// session set it: PostgreSQL's `pg_settings.source` is "session" for SET and set_config. Custom settings
    /// are not in pg_settings; a non-empty value means set.
    pub fn observe_sql(names: &[String]) -> String {
        let list: Vec<String> = names.iter().map(|n| literal(n)).collect();
        format!(
            "SELECT n, pg_catalog.current_setting(n, true), \
             coalesce(s.source = 'session', pg_catalog.current_setting(n, true) <> '') \
             FROM pg_catalog.unnest(ARRAY[{}]::text[]) AS n \
             LEFT JOIN pg_catalog.pg_settings s ON pg_catalog.lower(s.name) = n",
            list.join(", ")
        )
    }

    /// Identifies this set of settings; equal sets give equal fingerprints, and none gives [`FRESH`].
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The value this client asked for `name` (case-insensitive), to report in its ParameterStatus.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.settings
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// SQL that gives a server exactly these settings on top of its defaults. set_config parses values the way
    /// the startup packet's are parsed (a search_path list stays a list), which `SET name = 'value'` would not.
    /// The calls run over a VALUES list, so the answer is one short row however many settings there are
    /// (a SELECT list is limited to 1,664 entries, and its row would carry every value back).
    pub fn apply_sql(&self) -> String {
        let mut sql = String::from("RESET ALL");
        for (i, (name, value)) in self.settings.iter().enumerate() {
            sql.push_str(if i == 0 {
                "; SELECT pg_catalog.count(pg_catalog.set_config(n, v, false)) FROM (VALUES "
            } else {
                ", "
            });
            sql.push_str(&format!("({}, {})", literal(name), literal(value)));
        }
        if !self.settings.is_empty() {
            sql.push_str(") AS s(n, v)");
        }
        sql
    }

    /// How many settings these are, and their names' and values' bytes: what `max_client_settings` and
    /// `max_client_settings_bytes` bound.
    pub fn size(&self) -> (usize, usize) {
        let bytes = self.settings.iter().map(|(n, v)| n.len() + v.len()).sum();
        (self.settings.len(), bytes)
    }
}

/// The shard's distinct startup-setting sets, shared by the clients that use them: the clients of one
/// application usually all send the same ones.
pub type Interned = super::intern::Interner<Fingerprint, StartupParams>;

impl Interned {
    pub fn settings(&self, params: StartupParams) -> Rc<StartupParams> {
        self.intern(params.fingerprint(), params, |p, q| p == q, |p| p)
    }
}

/// An escape-string literal: read the same whatever standard_conforming_strings is.
fn literal(s: &str) -> String {
    format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// The settings in an `options` value: words separated by unescaped spaces, `\` escaping the next character;
/// `-c name=value`, `-cname=value` and `--name=value` are settings, other switches are refused as PostgreSQL
/// refuses unknown ones.
fn option_settings(options: &str) -> Result<Vec<(String, String)>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_ascii_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let mut settings = Vec::new();
    let mut words = words.into_iter();
    while let Some(word) = words.next() {
        let setting = if word == "-c" {
            words.next().ok_or("option -c needs name=value")?
        } else if let Some(rest) = word.strip_prefix("--").or_else(|| word.strip_prefix("-c")) {
            rest.to_owned()
        } else {
            return Err(format!(
                "unsupported command-line option \"{word}\" in options"
            ));
        };
        let (name, value) = setting
            .split_once('=')
            .ok_or_else(|| format!("option \"{setting}\" needs a value"))?;
        // PostgreSQL treats - and _ alike in option names given this way.
        settings.push((name.replace('-', "_"), value.to_owned()));
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Result<StartupParams, String> {
        let owned: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        StartupParams::from_startup(&owned)
    }

    #[test]
    fn settings_come_from_keys_and_options() {
        let p = params(&[
            ("user", "u"),
            ("database", "d"),
            ("application_name", "psql"),
            ("DateStyle", "ISO"),
            (
                "options",
                "-c search_path=a,\\ b --statement-timeout=5s -cwork_mem=4MB",
            ),
            ("_pq_.x", "1"),
        ])
        .unwrap();
        assert_eq!(p.get("datestyle"), Some("ISO"));
        assert_eq!(p.get("search_path"), Some("a, b"));
        assert_eq!(p.get("statement_timeout"), Some("5s"));
        assert_eq!(p.get("work_mem"), Some("4MB"));
        assert_eq!(p.get("user"), None);
        assert_eq!(p.get("_pq_.x"), None);
        assert_eq!(
            p.apply_sql(),
            "RESET ALL; SELECT pg_catalog.count(pg_catalog.set_config(n, v, false)) FROM (VALUES \
             (E'application_name', E'psql'), (E'datestyle', E'ISO'), (E'search_path', E'a, b'), \
             (E'statement_timeout', E'5s'), (E'work_mem', E'4MB')) AS s(n, v)"
        );
        assert_eq!(p.size(), (5, 77));
    }

    #[test]
    fn fingerprints_tell_sets_apart() {
        let none = params(&[("user", "u")]).unwrap();
        assert_eq!(none.fingerprint(), FRESH);
        assert_eq!(none.apply_sql(), "RESET ALL");
        let a = params(&[("TimeZone", "UTC"), ("application_name", "x")]).unwrap();
        let same = params(&[("application_name", "x"), ("timezone", "UTC")]).unwrap();
        let other = params(&[("TimeZone", "Asia/Tokyo"), ("application_name", "x")]).unwrap();
        assert_eq!(a.fingerprint(), same.fingerprint());
        assert_ne!(a.fingerprint(), other.fingerprint());
        assert!(a.fingerprint() != FRESH && a.fingerprint() != UNKNOWN);
    }

    #[test]
    fn changes_start_from_the_clients_defaults() {
        let defaults = params(&[("application_name", "app"), ("timezone", "UTC")]).unwrap();
        let observed = |pairs: &[(&str, Option<&str>)]| -> Vec<(String, Option<String>)> {
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.map(str::to_owned)))
                .collect()
        };
        let set = observed(&[("timezone", Some("Asia/Tokyo")), ("myapp.x", Some("7"))]);
        let now = defaults.changed(&defaults, &set);
        assert_eq!(now.get("timezone"), Some("Asia/Tokyo"));
        assert_eq!(now.get("myapp.x"), Some("7"));
        assert!(now.agrees_with(&set));
        assert_ne!(now.fingerprint(), defaults.fingerprint());
        // RESET returns to the startup value, which the server does not have: it must be set up again.
        let reset = observed(&[("timezone", None), ("myapp.x", None)]);
        let back = now.changed(&defaults, &reset);
        assert_eq!(back, defaults);
        assert!(!back.agrees_with(&reset));
        assert!(back.agrees_with(&observed(&[("myapp.x", None)])));
        let sql = StartupParams::observe_sql(&["timezone".into(), "a.b".into()]);
        assert!(sql.contains("ARRAY[E'timezone', E'a.b']"), "{sql}");
    }

    #[test]
    fn equal_sets_are_shared() {
        let interned = Interned::default();
        let a = interned.settings(params(&[("application_name", "x")]).unwrap());
        let b = interned.settings(params(&[("application_name", "x")]).unwrap());
        let c = interned.settings(params(&[("application_name", "y")]).unwrap());
        assert!(Rc::ptr_eq(&a, &b));
        assert!(!Rc::ptr_eq(&a, &c));
    }

    #[test]
    fn values_are_quoted_and_names_checked() {
        let p = params(&[("application_name", "it's a \\ path")]).unwrap();
        assert!(
            p.apply_sql().contains("E'it''s a \\\\ path'"),
            "{}",
            p.apply_sql()
        );
        assert!(params(&[("bad name", "x")]).is_err());
        assert!(params(&[("options", "-c nameonly")]).is_err());
        assert!(params(&[("options", "-d 5")]).is_err());
        assert!(params(&[("options", "-c")]).is_err());
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    /// Reads an `E'...'` literal back as PostgreSQL would: `''` is a quote, `\\` a backslash.
    fn unliteral(sql: &str) -> Option<String> {
        let inner = sql.strip_prefix("E'")?.strip_suffix('\'')?;
        let (mut out, mut chars) = (String::new(), inner.chars());
        while let Some(c) = chars.next() {
            match c {
                '\\' => out.push(chars.next()?),
                '\'' if chars.next()? == '\'' => out.push('\''),
                '\'' => return None,
                c => out.push(c),
            }
        }
        Some(out)
    }

    /// An `options` word for `name=value`: every space and backslash escaped, as libpq users must.
    fn option_word(name: &str, value: &str) -> String {
        let mut word = format!("-c {name}=");
        for c in value.chars() {
            if c == '\\' || c.is_ascii_whitespace() {
                word.push('\\');
            }
            word.push(c);
        }
        word
    }

    proptest! {
        #![proptest_config(crate::fuzzing::config())]

        /// Whatever a client puts in its startup packet: a setting list or an error, never a panic, and only
        /// names PostgreSQL could have.
        #[test]
        fn any_startup_parameters_are_read_or_refused(
            pairs in proptest::collection::vec((".{0,12}", ".{0,24}"), 0..8),
        ) {
            if let Ok(p) = StartupParams::from_startup(&pairs) {
                for (name, _) in &p.settings {
                    prop_assert!(!name.is_empty());
                    prop_assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.'));
                }
                prop_assert_eq!(p.fingerprint() == FRESH, p.settings.is_empty());
                prop_assert!(p.fingerprint() != UNKNOWN);
            }
        }

        /// `-c name=value` words, values escaped: each value comes back exactly, the last of a name winning.
        #[test]
        fn options_round_trip(
            settings in proptest::collection::vec(("[a-z_][a-z0-9_.]{0,10}", "[^\u{0}]{0,16}"), 1..6),
        ) {
            let words: Vec<String> = settings.iter().map(|(n, v)| option_word(n, v)).collect();
            let p = StartupParams::from_startup(&[("options".to_owned(), words.join(" "))]);
            let p = p.map_err(TestCaseError::fail)?;
            for (name, _) in &settings {
                let last = settings.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
                prop_assert_eq!(p.get(name), last);
            }
        }

        /// Any value is quoted so the server reads it back unchanged: nothing a client sets escapes its literal.
        #[test]
        fn values_are_quoted_whatever_they_hold(value in ".{0,40}") {
            prop_assert_eq!(unliteral(&literal(&value)), Some(value));
        }

        /// The settings after a transaction agree with what the server showed, and equal sets share a
        /// fingerprint whatever order they were given in.
        #[test]
        fn changes_agree_with_what_the_server_showed(
            defaults in proptest::collection::btree_map("[a-z]{1,4}", "[a-z0-9]{0,4}", 0..5),
            observed in proptest::collection::vec(("[a-z]{1,4}", proptest::option::of("[a-z0-9]{1,4}")), 0..5),
        ) {
            let pairs: Vec<(String, String)> = defaults.into_iter().collect();
            let start = StartupParams::from_startup(&pairs).map_err(TestCaseError::fail)?;
            let mut reversed = pairs.clone();
            reversed.reverse();
            let same = StartupParams::from_startup(&reversed).map_err(TestCaseError::fail)?;
            prop_assert_eq!(start.fingerprint(), same.fingerprint());
            // Each name once, as the server reports it.
            let mut seen = std::collections::HashSet::new();
            let observed: Vec<_> = observed.into_iter().filter(|(n, _)| seen.insert(n.clone())).collect();
            let now = start.changed(&start, &observed);
            for (name, value) in &observed {
                let expected = value.as_deref().or_else(|| start.get(name));
                prop_assert_eq!(now.get(name), expected);
            }
        }
    }
}
