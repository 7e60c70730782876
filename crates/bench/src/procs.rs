//! The processes a scenario starts (release binaries, wrk, blackbox_exporter)
//! and what /proc says about them.
//!
//! A [`Proc`] is one child process: its stdout and stderr go, line by line,
//! to `LOG_DIR/NAME.log`, and the lines are also kept so that
//! [`Proc::wait_for_line`] can read what a binary prints once it is ready
//! (`http=...` from `sitefarm`, `bootstrap=...` from `broker`, a log line).
//! Dropping a `Proc` kills a child that is still running, so an error in a
//! scenario leaves nothing behind. [`cpu_seconds`] and [`peak_rss_bytes`]
//! read /proc/PID/stat and /proc/PID/status.
//!
//! The waits block the calling thread (they poll with deadlines); from async
//! code call them inside `tokio::task::block_in_place`.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rustix::process::{kill_process, Pid, Signal};

/// How often a wait on a child's exit looks again: exits are not signalled to us otherwise.
const EXIT_POLL: Duration = Duration::from_millis(20);

/// A running child process with its output in a log file.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    /// Starts `program` (a path, or a name looked up on PATH) with `args` and
    /// extra `env`, logging to `log_dir/NAME.log`.
    pub fn spawn<I, S>(
        name: &str,
        program: &Path,
        args: I,
        env: &[(&str, &str)],
        log_dir: &Path,
    ) -> anyhow::Result<Proc>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
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
        if let Some(stdout) = child.stdout.take() {
            copy_lines(stdout, Arc::clone(&file), tx.clone());
        }
        if let Some(stderr) = child.stderr.take() {
            copy_lines(stderr, file, tx);
        }
        Ok(Proc {
            name: name.to_owned(),
            child,
            log,
            lines,
        })
    }

    /// Starts the release binary `bin_dir/binary`; see [`Proc::spawn`].
    pub fn release<I, S>(
        bin_dir: &Path,
        binary: &str,
        args: I,
        env: &[(&str, &str)],
        log_dir: &Path,
    ) -> anyhow::Result<Proc>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let program = bin_dir.join(binary);
        if !program.is_file() {
            bail!(
                "{} is missing: build the release binaries first (cargo build --release --locked --bins)",
                program.display()
            );
        }
        Proc::spawn(binary, &program, args, env, log_dir)
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
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!(
                    "{} closed its output before {what}:\n{}",
                    self.name,
                    tail(&self.log, 15)
                ),
            }
            if let Some(status) = self.child.try_wait().context("cannot wait for a child")? {
                bail!(
                    "{} exited ({status}) before {what}:\n{}",
                    self.name,
                    tail(&self.log, 15)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} gave no {what} within {timeout:?}:\n{}",
                    self.name,
                    tail(&self.log, 15)
                );
            }
        }
    }

    /// Waits up to `timeout` for a child that ends by itself (wrk, probe-loop)
    /// and returns its exit status with the CPU seconds of its whole life.
    ///
    /// The CPU is read from /proc while the child is a zombie, before it is
    /// reaped, which is the last moment its figures exist.
    pub fn finish(mut self, timeout: Duration) -> anyhow::Result<(ExitStatus, f64)> {
        let deadline = Instant::now() + timeout;
        let path = format!("/proc/{}/stat", self.child.id());
        loop {
            let stat =
                std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
            if parse_stat_state(&stat) == Some('Z') {
                let ticks = parse_stat_ticks(&stat)
                    .with_context(|| format!("unexpected {path}: {stat}"))?;
                let status = self.child.wait().context("cannot reap a child")?;
                let cpu = ticks as f64 / rustix::param::clock_ticks_per_second() as f64;
                return Ok((status, cpu));
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "{} did not finish within {timeout:?} and was killed:\n{}",
                    self.name,
                    tail(&self.log, 15)
                );
            }
            std::thread::sleep(EXIT_POLL);
        }
    }

    /// Whether the child is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM and waits up to `grace` for the exit; kills it after that.
    /// Returns the exit status, or an error if it had to be killed.
    pub fn stop(mut self, grace: Duration) -> anyhow::Result<ExitStatus> {
        self.signal(Signal::TERM)?;
        self.wait(grace)
    }

    /// Waits up to `timeout` for the child to exit by itself; kills it after that.
    pub fn wait(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().context("cannot wait for a child")? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "{} did not exit within {timeout:?} and was killed; log {}",
                    self.name,
                    self.log.display()
                );
            }
            std::thread::sleep(EXIT_POLL);
        }
    }

    /// Sends `signal` to the child.
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let pid = i32::try_from(self.child.id())
            .ok()
            .and_then(Pid::from_raw)
            .context("a child's process id out of range")?;
        kill_process(pid, signal).with_context(|| format!("cannot signal {}", self.name))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last `lines` lines of a log file, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// CPU seconds (user + system) a process has used so far, from /proc/PID/stat.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let ticks = parse_stat_ticks(&text).with_context(|| format!("unexpected {path}: {text}"))?;
    Ok(ticks as f64 / rustix::param::clock_ticks_per_second() as f64)
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
) {
    let _ = std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut log) = log.lock() {
                let _ = writeln!(log, "{line}");
            }
            // The receiver may be gone (the Proc dropped); the log still gets the line.
            let _ = lines.send(line);
        }
    });
}

/// The state letter (field 3) of /proc/PID/stat: R, S, D, Z, ...
fn parse_stat_state(stat: &str) -> Option<char> {
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// CPU time of the whole machine so far, from the first line of /proc/stat.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MachineCpu {
    /// Seconds all cores spent busy (anything but idle and iowait; irq and softirq included).
    pub busy: f64,
    /// Seconds all cores spent, busy or not.
    pub total: f64,
}

impl MachineCpu {
    /// A reading now.
    pub fn now() -> anyhow::Result<MachineCpu> {
        let text = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
        let (busy, total) =
            parse_machine_ticks(&text).with_context(|| format!("unexpected /proc/stat: {text}"))?;
        let hz = rustix::param::clock_ticks_per_second() as f64;
        Ok(MachineCpu {
            busy: busy as f64 / hz,
            total: total as f64 / hz,
        })
    }

    /// Busy cores on average since `earlier` (2.0 is both cores of this machine, full).
    pub fn busy_cores_since(&self, earlier: &MachineCpu, seconds: f64) -> f64 {
        (self.busy - earlier.busy) / seconds
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

/// utime + stime, in clock ticks, from the text of /proc/PID/stat.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces or
    // parentheses itself; the fields after the last ')' are plain numbers.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
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
    fn stat_ticks_skip_a_name_with_spaces_and_parentheses() {
        let stat = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    250 75 0 0 20 0 9 0 12345 1000000 2000 18446744073709551615";
        assert_eq!(parse_stat_ticks(stat), Some(325));
        assert_eq!(parse_stat_state(stat), Some('S'));
        assert_eq!(parse_stat_ticks("1 (x) S 1 2"), None);
        assert_eq!(parse_stat_ticks("no parenthesis"), None);
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

    #[test]
    fn a_child_is_read_and_stopped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut proc = Proc::spawn(
            "sh",
            Path::new("sh"),
            ["-c", "echo ready=42; exec sleep 30"],
            &[],
            dir.path(),
        )
        .expect("spawn");
        assert_eq!(
            proc.wait_for_line("ready=", Duration::from_secs(5))
                .expect("line"),
            "42"
        );
        let status = proc.stop(Duration::from_secs(5)).expect("stops on SIGTERM");
        assert!(!status.success());
    }

    #[test]
    fn a_finished_child_has_its_cpu_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut proc = Proc::spawn(
            "sh",
            Path::new("sh"),
            [
                "-c",
                "echo working >&2; i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done",
            ],
            &[],
            dir.path(),
        )
        .expect("spawn");
        proc.wait_for_text("work", Duration::from_secs(5))
            .expect("stderr line");
        let (status, cpu) = proc.finish(Duration::from_secs(30)).expect("finishes");
        assert!(status.success());
        assert!(cpu >= 0.0);
    }

    #[test]
    fn an_early_exit_is_reported_with_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut proc = Proc::spawn(
            "sh",
            Path::new("sh"),
            ["-c", "echo oops >&2; exit 3"],
            &[],
            dir.path(),
        )
        .expect("spawn");
        let err = proc
            .wait_for_line("ready=", Duration::from_secs(5))
            .expect_err("no line");
        assert!(format!("{err:#}").contains("oops"), "{err:#}");
    }
}
