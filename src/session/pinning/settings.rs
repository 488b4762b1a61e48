//! SET and RESET, and what changing a setting by name does. Most settings are replayed: their names go in the
//! effects, and the pooler reads their values back and sets them on the client's next servers. The privileges
//! are kept on the client's own server instead, since RESET ALL does not reset them: the role (which RESET ROLE
//! and SET ROLE NONE clear) and the session authorization (which only DISCARD ALL clears). SET LOCAL and the
//! other forms that last one transaction change nothing that outlives it.

use super::lexer::Kind;
use super::statement::Head;
use super::{Effects, Pins};

/// SET and RESET: which setting, in the forms a client session uses. `top`: the client's own SQL, where RESET
/// ALL surely runs, rather than a DO block's.
pub(super) fn set_or_reset(
    text: &[u8],
    head: &Head,
    top: bool,
    effects: &mut Effects,
    clears: &mut Pins,
) {
    let is = |i: usize, keyword: &str| head.is(text, i, keyword);
    let reset = is(0, "RESET");
    let at = if !reset && is(1, "SESSION") { 2 } else { 1 };
    let name = if is(at, "LOCAL") || is(at, "TRANSACTION") || is(at, "CONSTRAINTS") {
        // Undone at the end of the transaction by PostgreSQL itself.
        return;
    } else if reset && is(1, "ALL") {
        // Settings return to the client's startup values; the role and the session authorization stay.
        if top {
            effects.settings.get_or_insert_default().all = true;
        }
        return;
    } else if is(at, "ROLE") {
        let none = is(at + 1, "NONE") && head.len() == at + 2;
        return role(reset || none, effects, clears);
    } else if is(at, "AUTHORIZATION")
        || (is(at, "SESSION") && is(at + 1, "AUTHORIZATION"))
        || is(at, "CHARACTERISTICS")
    {
        return authorization(reset, effects);
    } else if is(at, "TIME") && is(at + 1, "ZONE") {
        "timezone".to_owned()
    } else if is(at, "NAMES") {
        "client_encoding".to_owned()
    } else if is(at, "SCHEMA") {
        "search_path".to_owned()
    } else if is(at, "XML") && is(at + 1, "OPTION") {
        "xmloption".to_owned()
    } else {
        match setting_name(text, head, at, reset) {
            Some(name) => name,
            None => return effects.creates.insert(Pins::SETTING),
        }
    };
    change(name, reset, effects, clears);
}

/// The setting name at token `at`: words joined by dots, lower case, then the end of the statement (RESET)
/// or `TO`, `=` or `FROM` (SET). `None` when pgherd cannot read it: quoted, unusual or too long.
fn setting_name(text: &[u8], head: &Head, mut at: usize, reset: bool) -> Option<String> {
    let mut name = String::new();
    loop {
        let part = head.get(at);
        if part.kind != Kind::Word || !part.text(text).is_ascii() {
            return None;
        }
        name.extend(lower_case(part.text(text)));
        at += 1;
        if head.get(at).kind != Kind::Dot {
            break;
        }
        name.push('.');
        at += 1;
    }
    let next = head.get(at);
    let ends = if reset {
        head.len() == at
    } else {
        next.is(text, "TO") || next.is_char(text, b'=') || next.is(text, "FROM")
    };
    ends.then_some(name)
}

/// The characters of an ASCII name, in lower case.
pub(super) fn lower_case(name: &[u8]) -> impl Iterator<Item = char> + '_ {
    name.iter().map(|b| b.to_ascii_lowercase() as char)
}

/// A setting changed by name (lower case): replayed, except the privileges (`role` and `session_authorization`
/// are settings too), which RESET ALL does not reset.
pub(super) fn change(name: String, reset: bool, effects: &mut Effects, clears: &mut Pins) {
    match name.as_str() {
        "role" => role(reset, effects, clears),
        "session_authorization" => authorization(reset, effects),
        _ => effects.named(name),
    }
}

/// SET ROLE (kept on the client's own server, not replayed), or its reset.
fn role(reset: bool, effects: &mut Effects, clears: &mut Pins) {
    if reset {
        clears.insert(Pins::ROLE);
    } else {
        effects.creates.insert(Pins::ROLE);
    }
}

/// SET SESSION AUTHORIZATION or SESSION CHARACTERISTICS: kept on the client's own server. Resetting the session
/// authorization does not unpin: it may leave a role set after it, and an unnamed setting may be either.
fn authorization(reset: bool, effects: &mut Effects) {
    if !reset {
        effects.creates.insert(Pins::SETTING);
    }
}

#[cfg(test)]
mod tests {
    use crate::session::pinning::testing::{creates, named};
    use crate::session::pinning::{scan, Pins};

    #[test]
    fn settings_are_named_for_replay() {
        let changed = |sql: &str| scan(sql.as_bytes()).settings.map(|c| (c.names, c.all));
        let names = |n: &[&str]| Some((n.iter().map(|s| s.to_string()).collect(), false));
        assert_eq!(
            changed("SET search_path = app, public"),
            names(&["search_path"])
        );
        assert_eq!(
            changed("set Session TimeZone to 'UTC'"),
            names(&["timezone"])
        );
        assert_eq!(changed("SET TIME ZONE 'UTC'"), names(&["timezone"]));
        assert_eq!(changed("SET NAMES 'LATIN1'"), names(&["client_encoding"]));
        assert_eq!(
            changed("SET myapp.tenant_id = '7'"),
            names(&["myapp.tenant_id"])
        );
        assert_eq!(
            changed("SET a.b = 1; SELECT 1; RESET DateStyle"),
            names(&["a.b", "datestyle"])
        );
        assert_eq!(changed("RESET ALL").map(|c| c.1), Some(true));
        assert_eq!(changed("DISCARD ALL").map(|c| c.1), Some(true));
        for sql in [
            "SET LOCAL statement_timeout = 5",
            "SET TRANSACTION READ ONLY",
            "SET CONSTRAINTS ALL DEFERRED",
            "UPDATE t SET a = 1",
            "SET ROLE admin",
        ] {
            assert_eq!(changed(sql), None, "{sql}");
        }
    }

    /// What the relay does with the effects of messages in turn: clears, then creates.
    fn pinned_after(messages: &[&str]) -> Pins {
        let mut pins = Pins::default();
        for sql in messages {
            let effects = scan(sql.as_bytes());
            pins.remove(effects.clears);
            pins.insert(effects.creates);
        }
        pins
    }

    #[test]
    fn reset_all_leaves_the_role_pinned() {
        // RESET ALL does not reset the role: a server that goes back to the pool must not keep it.
        assert_eq!(pinned_after(&["SET ROLE admin", "RESET ALL"]), Pins::ROLE);
        assert_eq!(
            pinned_after(&["SET ROLE admin", "RESET ROLE"]),
            Pins::default()
        );
        assert_eq!(
            pinned_after(&["SET ROLE admin", "SET ROLE NONE"]),
            Pins::default()
        );
        assert_eq!(
            pinned_after(&["SET ROLE admin", "DISCARD ALL"]),
            Pins::default()
        );
        // An unnamed setting may be the role: only DISCARD ALL clears it.
        for set in [
            "SET \"role\" = admin",
            "SELECT set_config($1, $2, false)",
            "DO $$ BEGIN EXECUTE format('SET ROLE %I', r); END $$",
            "SET SESSION AUTHORIZATION bob",
        ] {
            for reset in ["RESET ALL", "RESET ROLE", "RESET SESSION AUTHORIZATION"] {
                assert_eq!(pinned_after(&[set, reset]), Pins::SETTING, "{set}; {reset}");
            }
            assert_eq!(
                pinned_after(&[set, "DISCARD ALL"]),
                Pins::default(),
                "{set}"
            );
        }
    }

    /// Bug 1: `*` was a static token that address arithmetic took for a slice of the SQL.
    #[test]
    fn star_as_a_setting_name() {
        for sql in [
            "RESET *",
            "SET * TO 1",
            "SET *",
            "RESET",
            "SET",
            "SET a.",
            "SET a.*",
        ] {
            assert_eq!(creates(sql), Pins::SETTING, "{sql}");
            assert_eq!(named(sql), Vec::<String>::new(), "{sql}");
        }
        assert_eq!(scan(b"UNLISTEN *").clears, Pins::LISTEN);
    }

    /// Bug 2: SESSION shifted the name past the few words kept.
    #[test]
    fn session_forms_name_their_setting() {
        assert_eq!(named("SET SESSION TIME ZONE 0"), ["timezone"]);
        assert_eq!(named("SET SESSION XML OPTION DOCUMENT"), ["xmloption"]);
        assert_eq!(named("SET XML OPTION CONTENT"), ["xmloption"]);
        assert_eq!(named("SET SESSION NAMES 'UTF8'"), ["client_encoding"]);
        assert_eq!(named("SET SESSION SCHEMA 'app'"), ["search_path"]);
        assert_eq!(named("SET SESSION a.b TO 1"), ["a.b"]);
        assert_eq!(named("RESET TIME ZONE"), ["timezone"]);
        assert_eq!(named("SET a . /* c */ b = 1"), ["a.b"]);
        assert_eq!(named("SET work_mem FROM CURRENT"), ["work_mem"]);
        for sql in [
            "SET SESSION TIME",
            "SET SESSION XML",
            "SET SESSION",
            "SET TIME",
        ] {
            assert_eq!(creates(sql), Pins::SETTING, "{sql}");
        }
        assert_eq!(
            creates("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"),
            Pins::SETTING
        );
        assert_eq!(named("RESET SESSION AUTHORIZATION"), Vec::<String>::new());
        // Generic forms of the privileges are privileges too.
        assert_eq!(creates("SET session_authorization = 'bob'"), Pins::SETTING);
        assert_eq!(named("SET role = admin"), Vec::<String>::new());
        assert_eq!(creates("SET role = admin"), Pins::ROLE);
        assert_eq!(creates("SET SESSION ROLE admin"), Pins::ROLE);
        assert_eq!(creates("SET ROLE 'none'"), Pins::ROLE);
        assert_eq!(creates("SET LOCAL ROLE admin"), Pins::default());
    }
}
