//! What a package ships besides the binary (issue 16): the man page and completions, made
//! from the flags' definitions.

mod common;

use common::*;

#[test]
fn lockd_prints_its_man_page_and_completions() {
    let out = lockd().arg("--print-man").output().unwrap();
    assert!(out.status.success());
    let man = String::from_utf8_lossy(&out.stdout);
    for flag in [".TH lockd 1", "node\\-id", "max\\-locks", "LOCKD_AUTH_KEY"] {
        assert!(man.contains(flag), "the man page lacks {flag}");
    }
    for (shell, marker) in [
        ("bash", "complete -F _lockd"),
        ("zsh", "#compdef lockd"),
        ("fish", "complete -c lockd"),
    ] {
        let out = lockd()
            .args(["--print-completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let s = String::from_utf8_lossy(&out.stdout);
        assert!(
            s.contains(marker) && s.contains("lock-timeout"),
            "{shell}: {s}"
        );
    }
}
