//! containerd (Debian's) on a socket, root and state of its own, without the CRI plugin.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use super::wait_for;

/// A containerd with its own root, state and socket, without the CRI plugin.
pub struct Containerd {
    child: Child,
    socket: PathBuf,
}

impl Containerd {
    /// Starts containerd under `dir` and waits until `ctr version` answers.
    pub fn start(dir: &Path) -> Containerd {
        std::fs::create_dir_all(dir).unwrap();
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
                 [debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n",
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                sock = socket.display(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd runs (tests/setup.sh installs it)");
        let c = Containerd { child, socket };
        wait_for("containerd to serve", Duration::from_secs(20), || {
            c.ctr(&["version"]).status.success()
        });
        c
    }

    /// Runs `ctr` against this containerd.
    pub fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("ctr runs")
    }

    /// Pulls `image` into containerd namespace `ns` with the hosts directory `hosts`.
    pub fn pull(&self, ns: &str, hosts: &Path, image: &str) -> Result<(), String> {
        let hosts = hosts.display().to_string();
        let out = self.ctr(&[
            "--namespace",
            ns,
            "images",
            "pull",
            "--snapshotter",
            "native",
            "--hosts-dir",
            &hosts,
            image,
        ]);
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
