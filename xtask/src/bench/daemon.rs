//! The long-running programs a bench starts (aggregator, agent, peers), each behind a guard
//! that stops it when dropped, so that no error path leaves one behind.
//!
//! Each runs in its own process group with its output in a log file, and gets SIGTERM
//! from the kernel if xtask dies first. Stopping: SIGTERM, wait up to the grace period,
//! SIGKILL; then anything left in its process group (plugins Netdata started) is killed
//! while the leader is still an unreaped zombie, so the group id cannot have been reused.

use std::fs::{self, File};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::procfs;
use crate::cmd;

/// How long helpers may outlive the program that started them before they are killed.
const LEFTOVER_GRACE: Duration = Duration::from_secs(3);

pub struct Daemon {
    pub name: &'static str,
    child: Child,
    pub log: PathBuf,
    grace: Duration,
    /// Set once reaped.
    exited: Option<ExitStatus>,
}

impl Daemon {
    /// Start `cmd` with stdout and stderr going to `log` (truncated).
    pub fn spawn(
        name: &'static str,
        mut cmd: Command,
        log: &Path,
        grace: Duration,
    ) -> anyhow::Result<Daemon> {
        let out =
            File::create(log).with_context(|| format!("could not create {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("could not reopen {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .env("NO_COLOR", "1")
            .process_group(0);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        println!("xtask: bench: starting {name}: `{}`", cmd::display(&cmd));
        let child = cmd
            .spawn()
            .with_context(|| format!("could not start {name}"))?;
        Ok(Daemon {
            name,
            child,
            log: log.to_path_buf(),
            grace,
            exited: None,
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Fail, showing the end of its log, if it has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if self.exited.is_none() && exited_unreaped(self.pid()) {
            self.kill_leftovers();
            let status = self.child.wait().context("wait failed")?;
            self.exited = Some(status);
            print_log_tail(&self.log);
            bail!(
                "{} exited unexpectedly ({status}); its log is {}",
                self.name,
                self.log.display()
            );
        }
        Ok(())
    }

    /// Wait until `url` answers 200 (checking that we are still running), up to `limit`.
    pub fn wait_ready(&mut self, url: &str, limit: Duration) -> anyhow::Result<()> {
        println!(
            "xtask: bench: waiting for {} at {url} (up to {} s)",
            self.name,
            limit.as_secs()
        );
        let http = super::http_agent(Duration::from_secs(2));
        let deadline = Instant::now() + limit;
        loop {
            super::check_interrupted()?;
            self.check_running()?;
            if matches!(http.get(url).call(), Ok(resp) if resp.status() == 200) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                print_log_tail(&self.log);
                bail!("{} was not ready within {} s", self.name, limit.as_secs());
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGTERM, wait the grace period, SIGKILL; then clear its process group. Fails if it
    /// had to be killed or exited non-zero.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.exited {
            bail!("{} had already exited ({status})", self.name);
        }
        let pid = self.pid();
        println!(
            "xtask: bench: stopping {} (SIGTERM, up to {} s)",
            self.name,
            self.grace.as_secs()
        );
        // SAFETY: kill has no memory preconditions; `pid` is our unreaped child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + self.grace;
        let mut killed = false;
        while !exited_unreaped(pid) {
            if !killed && Instant::now() >= deadline {
                println!(
                    "xtask: bench: {} still running after {} s; SIGKILL",
                    self.name,
                    self.grace.as_secs()
                );
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                killed = true;
            }
            thread::sleep(Duration::from_millis(50));
        }
        self.kill_leftovers();
        let status = self.child.wait().context("wait failed")?;
        self.exited = Some(status);
        if killed {
            bail!("{} had to be killed", self.name);
        }
        // Programs without a SIGTERM handler (node_exporter) die of the signal: that is
        // their ordinary way to stop.
        let clean = status.success() || status.signal() == Some(libc::SIGTERM);
        if !clean {
            bail!(
                "{} exited badly ({status}); see {}",
                self.name,
                self.log.display()
            );
        }
        println!("xtask: bench: {} exited ({status})", self.name);
        Ok(())
    }

    /// SIGKILL what is left in our process group once the leader has exited but is not
    /// reaped yet: its pid (the group id) cannot have been reused, so the group holds only
    /// helpers it started. They get a moment to exit on their own first.
    fn kill_leftovers(&self) {
        let pid = self.pid();
        let deadline = Instant::now() + LEFTOVER_GRACE;
        loop {
            let left: Vec<String> = procfs::snapshot()
                .iter()
                .filter(|p| p.pgrp == pid && p.pid != pid)
                .map(|p| format!("{} {}", p.pid, procfs::comm(p.pid)))
                .collect();
            if left.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                println!(
                    "xtask: bench: {} left {} process(es) running in its group {} s after \
                     it exited ({}); SIGKILL",
                    self.name,
                    left.len(),
                    LEFTOVER_GRACE.as_secs(),
                    left.join(", ")
                );
                // SAFETY: SIGKILL to our own child's process group; no memory involved.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.exited.is_none()
            && let Err(e) = self.stop()
        {
            println!("xtask: bench: {e:#}");
        }
    }
}

/// Whether child `pid` has exited, without reaping it: it stays a zombie, holding its pid
/// and so its process group id.
fn exited_unreaped(pid: i32) -> bool {
    // SAFETY: waitid writes only into `info`, which we own; WNOWAIT leaves the child be.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let res = libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        // No such child any more (already reaped) counts as exited.
        res == -1 || info.si_pid() != 0
    }
}

pub fn print_log_tail(log: &Path) {
    const N_LINES: usize = 20;
    let Ok(text) = fs::read_to_string(log) else {
        return;
    };
    let lines: Vec<&str> = text.lines().collect();
    let first_idx = lines.len().saturating_sub(N_LINES);
    println!("xtask: bench: last lines of {}:", log.display());
    for line in &lines[first_idx..] {
        println!("    {line}");
    }
}
