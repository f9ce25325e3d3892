//! The `connect4` binary is its own program: it answers `--version` and `--help` with its
//! own name, and still has every postgame subcommand.

use std::process::Command;

fn connect4(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_connect4"))
        .args(args)
        .output()
        .expect("the connect4 binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn version_names_connect4_not_postgame() {
    let (ok, stdout) = connect4(&["--version"]);
    assert!(ok, "--version succeeds");
    assert_eq!(
        stdout.trim_end(),
        format!("connect4 {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_lists_postgame_subcommands_under_the_applications_name() {
    let (ok, stdout) = connect4(&["--help"]);
    assert!(ok, "--help succeeds");
    for sub in ["serve", "migrate", "bench", "doctor", "chaos"] {
        assert!(stdout.contains(sub), "{sub} missing from:\n{stdout}");
    }
    assert!(
        stdout.contains("connect4"),
        "usage names the binary:\n{stdout}"
    );
}
