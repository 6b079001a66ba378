//! `smtp-sink` (Debian package `postfix`) as the provider of interop tests, optionally
//! dumping every transaction to its own file (`-d`). Shared by `tests/interop/`,
//! `tests/interop_queue/` and `tests/interop_postfix.rs`.

use super::harness::{is_root, Proc, STARTUP};

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

pub struct Sink {
    /// Kept for its `Drop`, which stops smtp-sink.
    _proc: Proc,
    pub port: u16,
    /// Where the transactions are dumped, if they are.
    pub dump: Option<PathBuf>,
}

/// Starts `smtp-sink [-u nobody] [-d DUMP/%H%M%S.] FAULTS 127.0.0.1:PORT 256` and waits
/// until it listens. `port` is the caller's (`free_port()`, or the port of a sink it
/// replaces); with `dump`, every transaction is written to its own file in
/// `<dir>/<label>-dump/`. The log is `<dir>/<label>-sink.log`.
pub fn start_sink(
    bin: &Path,
    dir: &Path,
    label: &str,
    faults: &[&str],
    port: u16,
    dump: bool,
) -> Sink {
    let mut cmd = Command::new(bin);
    if is_root() {
        // smtp-sink refuses to run as root without dropping privileges.
        cmd.args(["-u", "nobody"]);
    }
    let dump_dir = dump.then(|| {
        let d = dir.join(format!("{label}-dump"));
        fs::create_dir_all(&d).unwrap();
        // Written by `nobody` after the privilege drop.
        fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).unwrap();
        d
    });
    if let Some(d) = &dump_dir {
        // strftime prefix + smtp-sink's random hex suffix: "023902.1fa7100e".
        cmd.arg("-d").arg(format!("{}/%H%M%S.", d.display()));
    }
    cmd.args(faults);
    cmd.arg(format!("127.0.0.1:{port}")).arg("256");
    let mut proc = Proc::spawn(
        &format!("smtp-sink[{label}]"),
        &mut cmd,
        dir.join(format!("{label}-sink.log")),
    );
    proc.wait_listening(port, STARTUP);
    Sink {
        _proc: proc,
        port,
        dump: dump_dir,
    }
}

impl Sink {
    /// The dump directory; panics if the sink was started without one.
    pub fn dump_dir(&self) -> &Path {
        self.dump.as_deref().expect("sink started without dump")
    }

    /// The dump files so far, sorted by name.
    pub fn dump_files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(self.dump_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        v.sort();
        v
    }

    /// How many dump files exist (0 if the directory cannot be read).
    pub fn count(&self) -> usize {
        fs::read_dir(self.dump_dir())
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.path().is_file())
                    .count()
            })
            .unwrap_or(0)
    }

    /// Waits (bounded) until at least `n` dump files exist, then returns all of them.
    pub fn wait_dumps(&self, n: usize, limit: Duration) -> Vec<PathBuf> {
        let deadline = Instant::now() + limit;
        loop {
            let files = self.dump_files();
            if files.len() >= n || Instant::now() >= deadline {
                return files;
            }
            sleep(Duration::from_millis(50));
        }
    }
}
