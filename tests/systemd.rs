//! Running under systemd: the example unit passes `systemd-analyze verify`, and the proxy tells a
//! `Type=notify` manager it is ready only once it answers, reloading on SIGHUP and stopping on
//! SIGTERM (the notification socket is the test's own, as systemd's would be).

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn the_example_unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/systemd/portcullis.service"),
    )
    .unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    let t = tempfile::tempdir().unwrap();
    // the unit as shipped, pointing at the binary under test
    let path = t.path().join("portcullis.service");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/local/bin/portcullis",
            env!("CARGO_BIN_EXE_portcullis"),
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "systemd-analyze verify: {said}");
    assert!(
        !said.contains("portcullis.service"),
        "no warning about the unit: {said}"
    );
}

fn next_message(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("a notification in time");
    String::from_utf8_lossy(&buf[..n]).to_string()
}

#[test]
fn ready_reloading_and_stopping_are_told_to_the_service_manager() {
    let t = tempfile::tempdir().unwrap();
    let socket_path = t.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let port = free_port();
    let config = t.path().join("proxy.toml");
    std::fs::write(
        &config,
        format!("[server]\nlisten = \"127.0.0.1:{port}\"\nshutdown_grace = \"1s\"\n[storage]\npath = \"data\"\n"),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .stderr(std::fs::File::create(t.path().join("proxy.log")).unwrap())
        .spawn()
        .unwrap();
    let ready = next_message(&socket);
    assert!(ready.contains("READY=1"), "{ready}");
    // ready means answering: no retry needed
    let r = http()
        .get(format!("http://127.0.0.1:{port}/readyz"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);

    // SIGHUP (ExecReload): reloading, with the time it began, then ready again
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    let reloading = next_message(&socket);
    assert!(
        reloading.contains("RELOADING=1") && reloading.contains("MONOTONIC_USEC="),
        "{reloading}"
    );
    assert!(next_message(&socket).contains("READY=1"));

    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(next_message(&socket).contains("STOPPING=1"));
    let status = child.wait().unwrap();
    assert!(status.success(), "exits cleanly after draining: {status}");
}
