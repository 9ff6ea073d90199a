//! Child processes that can never outlive the harness.
//!
//! Each child gets its own process group (so a kill reaches everything it
//! started) and `PR_SET_PDEATHSIG = SIGKILL` (so the kernel kills it if the
//! harness dies, even by kill -9). The death signal fires when the *thread*
//! that forked the child exits, so every child is forked by one spawner
//! thread that lives as long as the process.

use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

use nix::sys::prctl;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("harness-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("spawner thread starts");
        Mutex::new(tx)
    })
}

/// What the process cleans up when it exits normally (`exit`, as a test
/// binary ends): a test binary keeps its shared Redis and Kafka in statics,
/// which are never dropped, so their temp dirs would stay behind, one set
/// per run (1,551 of them once filled a disk). Their processes would die
/// with the process (the death signal above), but only after the dirs are
/// removed, and a Kafka still running then writes into its dir again: so
/// the children still alive are killed and reaped first.
#[derive(Default)]
struct AtExit {
    dirs: Vec<PathBuf>,
    /// Process groups of children not reaped yet (each child leads its own).
    groups: std::collections::BTreeSet<i32>,
}

fn at_exit() -> &'static Mutex<AtExit> {
    static AT_EXIT: OnceLock<Mutex<AtExit>> = OnceLock::new();
    extern "C" fn clean_up() {
        let Some(Ok(at_exit)) = AT_EXIT.get().map(Mutex::lock) else {
            return;
        };
        for &group in &at_exit.groups {
            let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(Pid::from_raw(group), None);
        }
        for dir in &at_exit.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    AT_EXIT.get_or_init(|| {
        // SAFETY: registers a plain function with no arguments, once.
        unsafe { nix::libc::atexit(clean_up) };
        Mutex::new(AtExit::default())
    })
}

/// Removes `dir` when the process exits normally, after killing the
/// children still running ([`AtExit`]).
pub fn remove_at_exit(dir: &Path) {
    if let Ok(mut at_exit) = at_exit().lock() {
        at_exit.dirs.push(dir.to_owned());
    }
}

/// Counts `pid`'s group among the children to kill at exit, or no more.
fn kill_at_exit(pid: u32, alive: bool) {
    if let Ok(mut at_exit) = at_exit().lock() {
        match alive {
            true => at_exit.groups.insert(pid as i32),
            false => at_exit.groups.remove(&(pid as i32)),
        };
    }
}

/// A child process (and its process group), killed when dropped.
pub struct Supervised {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Supervised {
    /// Starts `command` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> io::Result<Self> {
        let out = File::options().create(true).append(true).open(log)?;
        command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0);
        // SAFETY: the hook runs between fork and exec, and prctl is
        // async-signal-safe and touches no memory of ours.
        unsafe {
            command.pre_exec(|| Ok(prctl::set_pdeathsig(Signal::SIGKILL)?));
        }
        let (reply_tx, reply_rx) = mpsc::channel();
        spawner()
            .lock()
            .expect("spawner lock")
            .send((command, reply_tx))
            .map_err(|_| io::Error::other("spawner thread is gone"))?;
        let child = reply_rx
            .recv()
            .map_err(|_| io::Error::other("spawner thread is gone"))??;
        tracing::debug!(name, pid = child.id(), log = %log.display(), "spawned");
        kill_at_exit(child.id(), true);
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_owned(),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the process has not exited (once it has, it is reaped:
    /// no longer one to kill at exit).
    pub fn is_running(&mut self) -> bool {
        let running = matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)));
        if let (false, Some(child)) = (running, &self.child) {
            kill_at_exit(child.id(), false);
        }
        running
    }

    /// Sends `signal` to the whole process group (gone already: nothing to do).
    pub fn signal(&self, signal: Signal) {
        if let Some(pid) = self.pid() {
            let _ = killpg(Pid::from_raw(pid as i32), signal);
        }
    }

    /// kill -9 of the whole group, then reap the child.
    pub fn kill(&mut self) {
        self.signal(Signal::SIGKILL);
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
            kill_at_exit(child.id(), false);
            tracing::debug!(name = %self.name, "killed");
        }
    }

    /// SIGTERM, then SIGKILL if the process is still there after `grace`.
    pub fn terminate(&mut self, grace: std::time::Duration) {
        self.signal(Signal::SIGTERM);
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if !self.is_running() {
                self.child.take();
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        self.kill();
    }

    /// The last `lines` lines of the log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }
}

pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free TCP port on loopback (bound, read, released).
pub fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_reaches_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("grandchild.pid");
        let mut command = Command::new("sh");
        command.arg("-c").arg(format!(
            "sleep 300 & echo $! > {}; wait",
            pid_file.display()
        ));
        let mut child = Supervised::spawn("sh", command, &dir.path().join("log")).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !pid_file.exists()
            || std::fs::read_to_string(&pid_file)
                .unwrap()
                .trim()
                .is_empty()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "grandchild never started"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let grandchild: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Alive means present and not a zombie waiting for a reaper.
        let alive = || {
            std::fs::read_to_string(format!("/proc/{grandchild}/stat"))
                .map(|stat| !stat.contains(") Z "))
                .unwrap_or(false)
        };
        assert!(alive());
        assert!(child.is_running());
        child.kill();
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(!alive(), "grandchild {grandchild} survived the group kill");
    }
}
