//! The placeholder `pbft-gw`: its help documents the contract's flags, and
//! running it says plainly that the gateway is not built yet.

use std::process::Command;

fn pbft_gw(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pbft-gw")).args(args).output().expect("pbft-gw runs")
}

#[test]
fn help_documents_the_contract_flags() {
    let out = pbft_gw(&["-h"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--key", "--members", "--listen", "--repo", "--webhook-secret-file", "--rate-limit", "127.0.0.1:8080"]
    {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}

#[test]
fn running_it_exits_2_saying_the_gateway_is_not_built_yet() {
    let out = pbft_gw(&["--key", "gw.key", "--members", "members.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not built yet"));
}
