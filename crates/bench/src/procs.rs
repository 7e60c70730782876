//! The processes a scenario starts (release binaries, wrk, blackbox_exporter)
//! and what /proc says about them.
//!
//! A [`Proc`] is one child process: its stdout and stderr go, line by line,
//! to `LOG_DIR/NAME.log`, and the lines are also kept so that
//! [`Proc::wait_for_line`] can read what a binary prints once it is ready
//! (`http=...` from `sitefarm`, `bootstrap=...` from `broker`, a log line).
//! Dropping a `Proc` kills a child that is still running, so an error in a
//! scenario leaves nothing behind. [`cpu_seconds`], [`CpuClock`] and
//! [`peak_rss_bytes`] read /proc/PID/stat and /proc/PID/status;
//! [`MachineCpu`] reads /proc/stat.
//!
//! The waits block the calling thread (they poll with deadlines); from async
//! code call them inside `tokio::task::block_in_place`.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rustix::process::{kill_process, Pid, Signal};

/// How often a wait on a child's exit looks again: exits are not signalled to us otherwise.
const EXIT_POLL: Duration = Duration::from_millis(20);
/// Lines of a child's log quoted in an error about it.
const TAIL_LINES: usize = 20;
/// How long an exited child's last output may take to reach its log; longer
/// only when something it started still holds its pipes.
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);

/// A running child process with its output in a log file.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    lines: mpsc::Receiver<String>,
    /// The threads copying stdout and stderr; they end when the pipes close.
    copiers: Vec<JoinHandle<()>>,
}

impl Proc {
    /// Starts `program` (a path, or a name looked up on PATH) with `args` and
    /// extra `env`, logging to `log_dir/NAME.log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: impl IntoIterator<Item = impl AsRef<OsStr>>,
        env: &[(&str, &str)],
        log_dir: &Path,
    ) -> anyhow::Result<Proc> {
        std::fs::create_dir_all(log_dir)
            .with_context(|| format!("cannot create {}", log_dir.display()))?;
        let log = log_dir.join(format!("{name}.log"));
        let file =
            File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let file = Arc::new(Mutex::new(file));
        let mut command = Command::new(program);
        let _ = command
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {} ({})", name, program.display()))?;
        let (tx, lines) = mpsc::channel();
        let mut copiers = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            copiers.push(copy_lines(stdout, Arc::clone(&file), tx.clone()));
        }
        if let Some(stderr) = child.stderr.take() {
            copiers.push(copy_lines(stderr, file, tx));
        }
        Ok(Proc {
            name: name.to_owned(),
            child,
            log,
            lines,
            copiers,
        })
    }

    /// Starts the release binary `bin_dir/binary`, named after it; see [`Proc::spawn`].
    pub fn release(
        bin_dir: &Path,
        binary: &str,
        args: impl IntoIterator<Item = impl AsRef<OsStr>>,
        env: &[(&str, &str)],
        log_dir: &Path,
    ) -> anyhow::Result<Proc> {
        Proc::spawn(
            binary,
            &release_binary(bin_dir, binary)?,
            args,
            env,
            log_dir,
        )
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log file (stderr and stdout).
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Waits up to `timeout` for an output line starting with `prefix` and
    /// returns the rest of it; fails, quoting the log's end, if the child
    /// exits or says nothing of the kind in time.
    pub fn wait_for_line(&mut self, prefix: &str, timeout: Duration) -> anyhow::Result<String> {
        self.wait_for(&format!("a line starting {prefix:?}"), timeout, |line| {
            line.strip_prefix(prefix).map(str::to_owned)
        })
    }

    /// Waits up to `timeout` for an output line that contains `needle` (a log message).
    pub fn wait_for_text(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        self.wait_for(&format!("{needle:?}"), timeout, |line| {
            line.contains(needle).then_some(())
        })
    }

    /// Waits up to `timeout` for the first output line `matches` accepts.
    fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&str) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left.min(EXIT_POLL * 5)) {
                Ok(line) => {
                    if let Some(found) = matches(&line) {
                        return Ok(found);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(self.failure(&format!("closed its output before {what}")))
                }
            }
            if let Some(status) = self.child.try_wait().context("cannot wait for a child")? {
                self.drain_output();
                return Err(self.failure(&format!("exited ({status}) before {what}")));
            }
            if Instant::now() >= deadline {
                return Err(self.failure(&format!("gave no {what} within {timeout:?}")));
            }
        }
    }

    /// Waits up to `timeout` for a child that ends by itself (wrk, probe-loop)
    /// and returns its exit status with the CPU seconds of its whole life.
    ///
    /// The CPU is read from /proc while the child is a zombie, before it is
    /// reaped, which is the last moment its figures exist.
    pub fn finish(mut self, timeout: Duration) -> anyhow::Result<(ExitStatus, f64)> {
        self.finish_in_place(timeout)
    }

    /// [`Proc::finish`] for a child that must succeed: its CPU seconds, or
    /// an error quoting its log when it exits otherwise.
    pub fn finish_ok(mut self, timeout: Duration) -> anyhow::Result<f64> {
        let (status, cpu) = self.finish_in_place(timeout)?;
        self.check(status)?;
        Ok(cpu)
    }

    fn finish_in_place(&mut self, timeout: Duration) -> anyhow::Result<(ExitStatus, f64)> {
        let pid = self.child.id();
        let ticks = self.on_exit(timeout, |_| {
            let stat = read_stat(pid)?;
            Ok((stat.state == 'Z').then_some(stat.own_ticks))
        })?;
        let status = self.child.wait().context("cannot reap a child")?;
        self.drain_output();
        Ok((status, seconds(ticks)))
    }

    /// Whether the child is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Fails, quoting the log, when the child has exited: for a child that
    /// should outlive a measurement.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if self.running() {
            Ok(())
        } else {
            self.drain_output();
            Err(self.failure("exited early"))
        }
    }

    /// Sends SIGTERM and waits up to `grace` for the exit; kills it after that.
    /// Returns the exit status, or an error if it had to be killed.
    pub fn stop(mut self, grace: Duration) -> anyhow::Result<ExitStatus> {
        self.signal(Signal::TERM)?;
        self.wait(grace)
    }

    /// [`Proc::stop`] for a child that must exit cleanly on SIGTERM: an
    /// error quoting its log when it exits otherwise.
    pub fn stop_ok(mut self, grace: Duration) -> anyhow::Result<()> {
        self.signal(Signal::TERM)?;
        let status = self.wait(grace)?;
        self.check(status)
    }

    /// Waits up to `timeout` for the child to exit by itself; kills it after that.
    pub fn wait(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let status = self.on_exit(timeout, |child| {
            child.try_wait().context("cannot wait for a child")
        })?;
        self.drain_output();
        Ok(status)
    }

    /// Sends `signal` to the child.
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let pid = i32::try_from(self.child.id())
            .ok()
            .and_then(Pid::from_raw)
            .context("a child's process id out of range")?;
        kill_process(pid, signal).with_context(|| format!("cannot signal {}", self.name))
    }

    /// Polls `exited` until it finds the child gone; past `timeout` kills
    /// the child and fails, so that no wait can hang a run.
    fn on_exit<T>(
        &mut self,
        timeout: Duration,
        mut exited: impl FnMut(&mut Child) -> anyhow::Result<Option<T>>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = exited(&mut self.child)? {
                return Ok(found);
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(
                    self.failure(&format!("did not exit within {timeout:?} and was killed"))
                );
            }
            std::thread::sleep(EXIT_POLL);
        }
    }

    /// Waits, a few seconds at most, for the last lines of a child that has
    /// exited to reach the log, so that what is read or quoted from it is whole.
    fn drain_output(&mut self) {
        let deadline = Instant::now() + OUTPUT_DRAIN;
        while !self.copiers.iter().all(JoinHandle::is_finished) && Instant::now() < deadline {
            std::thread::sleep(EXIT_POLL);
        }
    }

    /// Fails, quoting the log, unless `status` is a success.
    fn check(&self, status: ExitStatus) -> anyhow::Result<()> {
        if status.success() {
            Ok(())
        } else {
            Err(self.failure(&format!("exited with {status}")))
        }
    }

    /// An error about the child: what happened, where its log is, and the log's end.
    fn failure(&self, what: &str) -> anyhow::Error {
        anyhow::anyhow!(
            "{} {what}; its log {}:\n{}",
            self.name,
            self.log.display(),
            tail(&self.log, TAIL_LINES)
        )
    }

    /// Kills and reaps a child that is still running.
    fn kill(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The path of the release binary `bin_dir/binary`, or an error saying how to build it.
pub fn release_binary(bin_dir: &Path, binary: &str) -> anyhow::Result<PathBuf> {
    let program = bin_dir.join(binary);
    if !program.is_file() {
        bail!(
            "{} is missing: build the release binaries first (cargo build --release --locked --bins)",
            program.display()
        );
    }
    Ok(program)
}

/// The last `lines` lines of a log file, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// CPU seconds (user + system) a process has used so far, from /proc/PID/stat.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    Ok(seconds(read_stat(pid)?.own_ticks))
}

/// CPU seconds used by a process, or a process tree, since the clock was made.
#[derive(Debug, Clone, Copy)]
pub struct CpuClock {
    pid: u32,
    tree: bool,
    start: f64,
}

impl CpuClock {
    /// Counts one process.
    pub fn process(pid: u32) -> anyhow::Result<CpuClock> {
        CpuClock::new(pid, false)
    }

    /// Counts `pid` and its children, live and reaped: PostgreSQL forks a
    /// backend per connection and reaps it when it closes.
    pub fn tree(pid: u32) -> anyhow::Result<CpuClock> {
        CpuClock::new(pid, true)
    }

    fn new(pid: u32, tree: bool) -> anyhow::Result<CpuClock> {
        let start = CpuClock::read(pid, tree)?;
        Ok(CpuClock { pid, tree, start })
    }

    /// CPU seconds used since the clock was made.
    pub fn elapsed(&self) -> anyhow::Result<f64> {
        // A tree's live children are summed as they are now: one reaped since
        // the start moves into the root's reaped share, never below zero.
        Ok((CpuClock::read(self.pid, self.tree)? - self.start).max(0.0))
    }

    fn read(pid: u32, tree: bool) -> anyhow::Result<f64> {
        let root = read_stat(pid)?;
        if !tree {
            return Ok(seconds(root.own_ticks));
        }
        let mut ticks = root.own_ticks + root.reaped_ticks;
        let entries = std::fs::read_dir("/proc").context("cannot list /proc")?;
        for entry in entries.flatten() {
            let Some(child) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            // A child may end between the listing and the read; it is then in the root's reaped share.
            if let Ok(stat) = read_stat(child) {
                if stat.parent == pid {
                    ticks += stat.own_ticks;
                }
            }
        }
        Ok(seconds(ticks))
    }
}

/// Peak resident set size (VmHWM) of a running process, in bytes, from /proc/PID/status.
pub fn peak_rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_status_kb(&text, "VmHWM:")
        .map(|kb| kb * 1024)
        .with_context(|| format!("no VmHWM in {path}"))
}

/// Copies a child's output to the log file and the line channel, on a thread
/// of its own so that a chatty child never blocks on a full pipe.
fn copy_lines<R: Read + Send + 'static>(
    from: R,
    log: Arc<Mutex<File>>,
    lines: mpsc::Sender<String>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut log) = log.lock() {
                let _ = writeln!(log, "{line}");
            }
            // The receiver may be gone (the Proc dropped); the log still gets the line.
            let _ = lines.send(line);
        }
    })
}

/// Clock ticks as seconds.
fn seconds(ticks: u64) -> f64 {
    ticks as f64 / rustix::param::clock_ticks_per_second() as f64
}

/// What the bench reads in /proc/PID/stat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    /// R, S, D, Z, ...
    state: char,
    /// The parent's process id.
    parent: u32,
    /// utime + stime, in clock ticks.
    own_ticks: u64,
    /// cutime + cstime: the ticks of the children it has reaped.
    reaped_ticks: u64,
}

fn read_stat(pid: u32) -> anyhow::Result<Stat> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_stat(&text).with_context(|| format!("unexpected {path}: {text}"))
}

fn parse_stat(stat: &str) -> Option<Stat> {
    // The command name (field 2) is in parentheses and may hold spaces or
    // parentheses itself; the fields after the last ')' are plain values.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    // After the name, fields count from state (field 3): ppid is field 4,
    // utime to cstime are fields 14 to 17.
    let number = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        parent: fields.get(1)?.parse().ok()?,
        own_ticks: number(11)? + number(12)?,
        reaped_ticks: number(13)? + number(14)?,
    })
}

/// CPU time of the whole machine so far, from the first line of /proc/stat.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MachineCpu {
    /// Seconds all cores spent busy (anything but idle and iowait; irq and softirq included).
    pub busy: f64,
    /// Seconds all cores spent, busy or not.
    pub total: f64,
    /// When it was read.
    pub at: Instant,
}

impl MachineCpu {
    /// A reading now.
    pub fn now() -> anyhow::Result<MachineCpu> {
        let text = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
        let (busy, total) =
            parse_machine_ticks(&text).with_context(|| format!("unexpected /proc/stat: {text}"))?;
        Ok(MachineCpu {
            busy: seconds(busy),
            total: seconds(total),
            at: Instant::now(),
        })
    }

    /// Busy cores on average between `earlier` and this reading (2.0 is both cores of a 2-core machine, full).
    pub fn busy_cores_since(&self, earlier: &MachineCpu) -> f64 {
        (self.busy - earlier.busy) / self.at.duration_since(earlier.at).as_secs_f64()
    }
}

/// (busy, total) ticks from the aggregate `cpu` line of /proc/stat.
fn parse_machine_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|n| n.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal guest guest_nice; guest time
    // is already inside user and nice, so it is not added again.
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// The kB value of a `Key:   123 kB` line of /proc/PID/status.
fn parse_status_kb(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_skip_a_name_with_spaces_and_parentheses() {
        let stat = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    250 75 30 12 20 0 9 0 12345 1000000 2000 18446744073709551615";
        assert_eq!(
            parse_stat(stat),
            Some(Stat {
                state: 'S',
                parent: 1,
                own_ticks: 325,
                reaped_ticks: 42,
            })
        );
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn a_clock_counts_this_process_and_its_tree() {
        let own = CpuClock::process(std::process::id()).expect("own stat");
        let tree = CpuClock::tree(std::process::id()).expect("own stat");
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(100) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        assert!(x != 1);
        assert!(own.elapsed().expect("own stat") > 0.0);
        assert!(tree.elapsed().expect("own stat") > 0.0);
    }

    #[test]
    fn machine_ticks_leave_out_idle_and_guest() {
        let stat = "cpu  100 5 50 800 20 1 4 0 30 0\ncpu0 50 2 25 400 10 0 2 0 15 0\n";
        assert_eq!(parse_machine_ticks(stat), Some((160, 980)));
        assert_eq!(parse_machine_ticks("intr 1 2 3\n"), None);
        let now = MachineCpu::now().expect("readable");
        assert!(now.total >= now.busy);
    }

    #[test]
    fn status_kb_by_key() {
        let status =
            "Name:\tmonitor\nVmPeak:\t  900000 kB\nVmHWM:\t   51234 kB\nVmRSS:\t 40000 kB\n";
        assert_eq!(parse_status_kb(status, "VmHWM:"), Some(51_234));
        assert_eq!(parse_status_kb(status, "VmSwap:"), None);
    }

    #[test]
    fn own_process_figures_are_readable() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).expect("cpu") >= 0.0);
        assert!(peak_rss_bytes(pid).expect("rss") > 0);
    }

    /// `sh -c script`, logging into `dir`.
    fn sh(script: &str, dir: &Path) -> Proc {
        Proc::spawn("sh", Path::new("sh"), ["-c", script], &[], dir).expect("sh starts")
    }

    #[test]
    fn a_child_is_read_and_stopped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut proc = sh("echo ready=42; exec sleep 30", dir.path());
        assert_eq!(
            proc.wait_for_line("ready=", Duration::from_secs(5))
                .expect("line"),
            "42"
        );
        proc.ensure_running().expect("still running");
        let status = proc.stop(Duration::from_secs(5)).expect("stops on SIGTERM");
        assert!(!status.success());
    }

    #[test]
    fn a_finished_child_has_its_cpu_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = "echo working >&2; i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done";
        let mut proc = sh(script, dir.path());
        proc.wait_for_text("work", Duration::from_secs(5))
            .expect("stderr line");
        let cpu = proc.finish_ok(Duration::from_secs(30)).expect("finishes");
        assert!(cpu >= 0.0);
    }

    #[test]
    fn an_early_exit_is_reported_with_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut proc = sh("echo oops >&2; exit 3", dir.path());
        let err = proc
            .wait_for_line("ready=", Duration::from_secs(5))
            .expect_err("no line");
        assert!(format!("{err:#}").contains("oops"), "{err:#}");
        let _ = proc.wait(Duration::from_secs(5)).expect("exits");
        let err = proc.ensure_running().expect_err("exited");
        assert!(format!("{err:#}").contains("exited early"), "{err:#}");
    }

    #[test]
    fn a_failed_exit_is_an_error_quoting_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = sh("echo broken >&2; exit 3", dir.path())
            .finish_ok(Duration::from_secs(10))
            .expect_err("exit 3 fails");
        assert!(format!("{err:#}").contains("broken"), "{err:#}");
        let mut proc = sh(
            "trap 'echo bye >&2; exit 4' TERM; echo up; while :; do sleep 0.05; done",
            dir.path(),
        );
        proc.wait_for_line("up", Duration::from_secs(5))
            .expect("up");
        let err = proc
            .stop_ok(Duration::from_secs(10))
            .expect_err("exit 4 on SIGTERM fails");
        assert!(format!("{err:#}").contains("exit status: 4"), "{err:#}");
    }
}
