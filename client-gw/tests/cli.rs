//! `pbft-gw`'s command line: its help documents the contract's flags, and
//! bad configuration is a clear error (exit 1) before anything listens.

use std::process::Command;

fn pbft_gw(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pbft-gw")).args(args).output().expect("pbft-gw runs")
}

#[test]
fn help_documents_the_contract_flags() {
    let out = pbft_gw(&["-h"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--key",
        "--members",
        "--listen",
        "--repo",
        "--webhook-secret-file",
        "--rate-limit",
        "127.0.0.1:8080",
        "--bootstrap",
        "--mdns",
        "--no-mdns",
        "--data-dir",
        "--log-dir",
        "--verdict-deadline",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}

#[test]
fn a_key_that_is_not_a_gateway_of_the_membership_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<_> = (0..5).map(|_| pbft_node::keys::generate()).collect();
    let member =
        |k: &libp2p_identity::Keypair| pbft_node::membership::Member { peer_id: k.public().to_peer_id(), addr: None };
    let membership = pbft_node::membership::Membership::new(
        "cli-test".into(),
        keys[..4].iter().map(member).collect(),
        vec![],
        vec![],
    )
    .unwrap();
    let members = dir.path().join("members.toml");
    std::fs::write(&members, membership.to_toml()).unwrap();
    let key = dir.path().join("gw.key");
    pbft_node::keys::save(&key, &keys[4], false).unwrap();
    let log = dir.path().join("log");
    let out = pbft_gw(&[
        "--key",
        key.to_str().unwrap(),
        "--members",
        members.to_str().unwrap(),
        "--log-dir",
        log.to_str().unwrap(),
        "--data-dir",
        dir.path().join("data").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a gateway"), "{out:?}");
}

#[test]
fn missing_files_are_clear_errors() {
    let out = pbft_gw(&["--key", "/nonexistent/gw.key", "--members", "/nonexistent/members.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/gw.key"), "{out:?}");
}
