//! The command line: --check, and configuration errors that name file, line and key.

use std::process::Command;

fn check(config: &str) -> (Option<i32>, String) {
    let dir = std::env::temp_dir().join(format!(
        "pgherd-cli-{}-{}",
        std::process::id(),
        config.len()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pgherd.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pgherd"))
        .arg("--check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_valid_file_passes_the_check() {
    let (code, err) = check("listen = [\"127.0.0.1:6432\"]\n[databases.db]\npool_size = 3\n[users.u]\npassword = \"p\"\n");
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn an_unknown_key_names_file_line_and_key() {
    let (code, err) = check("workers = 1\n\n[databases.db]\npool_size = 3\npool_sise = 4\n");
    assert_eq!(code, Some(2));
    assert!(err.contains("pgherd.toml:5:"), "{err}");
    assert!(err.contains("pool_sise"), "{err}");
}

#[test]
fn a_bad_value_names_file_line_and_key() {
    let (code, err) = check("pool_mode = \"sometimes\"\n");
    assert_eq!(code, Some(2));
    assert!(
        err.contains("pgherd.toml:1:") && err.contains("sometimes"),
        "{err}"
    );
}

#[test]
fn a_missing_file_is_an_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_pgherd"))
        .args(["--check", "--config", "/nonexistent/pgherd.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/pgherd.toml"));
}
