//! `ratchet bench dashboard`: the dashboard and `/metrics` of a real
//! `ratchet daemon` (a child process of this binary) over HTTP.
//!
//! - Latency of each endpoint on a lineage of N synthetic trials (the
//!   daemon idle: its specialists paused), median of repeated requests.
//! - The daemon's resident memory before the first request and after a
//!   minute of a dashboard open (the page's requests every two seconds).
//! - The research loop's speed on the no-op experiment of `bench loop`,
//!   without a client and with one polling the dashboard at 10 requests a
//!   second (twenty times an open page's rate), one run after the other.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::domain::TrialStatus;

pub fn dashboard_command(
    trials: u64,
    loop_trials: u64,
    dir: Option<PathBuf>,
    keep: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(trials >= 10, "--trials must be at least 10");
    anyhow::ensure!(loop_trials >= 10, "--loop-trials must be at least 10");
    let root = super::root("dashboard", dir)?;
    std::fs::create_dir_all(&root)?;
    // reqwest is built without a TLS provider of its own (see llm.rs).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(async {
        scale(&root.join("scale"), trials).await?;
        speed(&root.join("loop"), loop_trials).await
    });
    drop(rt);
    if keep {
        eprintln!("kept: {}", root.display());
    } else {
        let _ = std::fs::remove_dir_all(&root);
    }
    result
}

/// The no-op experiment of `bench loop` in `dir`, its dashboard on a free
/// port, and `extra` daemon settings: the dashboard's address.
fn experiment(dir: &Path, extra: &str) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir.join("experiment"))?;
    std::fs::write(
        dir.join("experiment/experiment.toml"),
        super::looping::EXPERIMENT,
    )?;
    std::fs::write(dir.join("experiment/recipe.toml"), super::looping::RECIPE)?;
    std::fs::write(dir.join("agent.md"), "Search the surface.\n")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let config = super::looping::specialists(2, true).replace(
        "seed = 0\n",
        &format!("seed = 0\nhttp = \"{addr}\"\n{extra}"),
    );
    std::fs::write(dir.join("specialists.toml"), config)?;
    Ok(addr)
}

/// `ratchet daemon` on `dir`'s configuration, its log in `dir/daemon.log`.
fn start(dir: &Path) -> anyhow::Result<Child> {
    let log = std::fs::File::create(dir.join("daemon.log"))?;
    Ok(Command::new(std::env::current_exe()?)
        .args(["daemon", "--config"])
        .arg(dir.join("specialists.toml"))
        .env("RATCHET_LOG", "warn")
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?)
}

/// The last `n` lines of `text`.
fn tail_of(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Stops the daemon; one that stopped by itself is an error, with the end
/// of its log.
fn stop(mut child: Child, dir: &Path) -> anyhow::Result<()> {
    if let Some(s) = child.try_wait()? {
        let log = std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
        anyhow::bail!(
            "the daemon stopped by itself ({s}); its log ends:\n{}",
            tail_of(&log, 15)
        );
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    child.wait()?;
    Ok(())
}

/// One GET: status, body bytes, time.
async fn get(client: &reqwest::Client, url: &str) -> anyhow::Result<(u16, usize, Duration)> {
    let t = Instant::now();
    let r = client.get(url).send().await?;
    let status = r.status().as_u16();
    let body = r.bytes().await?;
    Ok((status, body.len(), t.elapsed()))
}

async fn wait_up(client: &reqwest::Client, addr: &str, child: &mut Child) -> anyhow::Result<()> {
    let t = Instant::now();
    loop {
        if let Ok((200, _, _)) = get(client, &format!("http://{addr}/api/v1/status")).await {
            return Ok(());
        }
        if let Some(s) = child.try_wait()? {
            anyhow::bail!("the daemon exited ({s}) before its dashboard answered");
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(600),
            "the dashboard never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn get_json(client: &reqwest::Client, url: &str) -> anyhow::Result<serde_json::Value> {
    Ok(client.get(url).send().await?.json().await?)
}

/// VmRSS and VmHWM of a process, bytes.
fn memory(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mb(b: u64) -> String {
    format!("{:.2} MB", b as f64 / 1e6)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Latency and memory on a lineage of `n` trials.
async fn scale(dir: &Path, n: u64) -> anyhow::Result<()> {
    let addr = experiment(dir, "")?;
    let lineage = dir.join("lineage");
    super::lineage::build(&lineage, n, false)?;
    {
        // An idle daemon: nothing proposes, nothing runs.
        let store = super::lineage::reopen(&lineage)?;
        store.set_paused(&["a".to_string(), "b".to_string()], true)?;
        store.flush().await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut child = start(dir)?;
    let client = reqwest::Client::new();
    let result = async {
        wait_up(&client, &addr, &mut child).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        // (after the status requests that waited for it to answer)
        let (rss0, _) = memory(child.id());
        let out = std::io::stdout();
        let url = |p: &str| format!("http://{addr}{p}");
        let (code, bytes, cold) = get(&client, &url("/api/v1/plot")).await?;
        anyhow::ensure!(code == 200, "/api/v1/plot answered {code}");
        writeln!(
            out.lock(),
            "ratchet bench dashboard: a daemon on {n} trials (idle), its dashboard at http://{addr}/\n\
             first plot request (reads every finished trial once): {}, {}",
            ms(cold),
            mb(bytes as u64)
        )?;
        // A page opened (above: its first, whole plot) and left open for a
        // minute: what it asks every 2 s.
        let epoch = get_json(&client, &url("/api/v1/plot")).await?;
        let incremental = format!(
            "/api/v1/plot?epoch={}&after={}",
            epoch["epoch"], epoch["next"]
        );
        let t = Instant::now();
        let mut polls = 0u64;
        while t.elapsed() < Duration::from_secs(60) {
            for p in ["/api/v1/status", incremental.as_str(), "/api/v1/progress"] {
                get(&client, &url(p)).await?;
            }
            if polls.is_multiple_of(5) {
                get(&client, &url("/api/v1/failures?limit=8")).await?;
            }
            polls += 1;
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let (rss1, _) = memory(child.id());
        writeln!(
            out.lock(),
            "daemon resident memory: {} before the first dashboard request, {} after a page was open for a minute ({} more)",
            mb(rss0),
            mb(rss1),
            mb(rss1.saturating_sub(rss0)),
        )?;
        let (epoch, next) = (&epoch["epoch"], &epoch["next"]);
        let paths = [
            "/".to_string(),
            "/api/v1/status".into(),
            format!("/api/v1/plot?epoch={epoch}&after={next}"),
            "/api/v1/plot".into(),
            "/api/v1/trials?limit=100".into(),
            format!("/api/v1/trials/{}", n / 2),
            "/api/v1/failures?limit=8".into(),
            "/api/v1/progress".into(),
            "/metrics".into(),
        ];
        writeln!(out.lock(), "{:<44} {:>10} {:>10} {:>12}", "GET", "median", "p90", "bytes")?;
        for p in &paths {
            let mut times = Vec::new();
            let mut size = 0;
            for _ in 0..21 {
                let (code, bytes, d) = get(&client, &url(p)).await?;
                anyhow::ensure!(code == 200, "{p} answered {code}");
                size = bytes;
                times.push(d);
            }
            times.sort();
            writeln!(
                out.lock(),
                "{:<44} {:>10} {:>10} {:>12}",
                p,
                ms(times[10]),
                ms(times[18]),
                size
            )?;
        }
        let (rss2, hwm) = memory(child.id());
        writeln!(
            out.lock(),
            "after the table above (21 requests of each, the whole plot among them): {} resident, peak {}",
            mb(rss2),
            mb(hwm)
        )?;
        Ok(())
    }
    .await;
    let stopped = stop(child, dir);
    result.and(stopped)
}

/// The loop's trials per second with and without a client polling.
async fn speed(dir: &Path, trials: u64) -> anyhow::Result<()> {
    let mut rates = Vec::new();
    for (run, poll) in [("no client", false), ("a client polling at 10/s", true)] {
        let d = dir.join(if poll { "polled" } else { "alone" });
        let addr = experiment(&d, &format!("stop_after_trials = {trials}\n"))?;
        let mut child = start(&d)?;
        let client = reqwest::Client::new();
        let mut requests = 0u64;
        let mut slowest = Duration::ZERO;
        let ran = async {
            wait_up(&client, &addr, &mut child).await?;
            let t = Instant::now();
            loop {
                if let Some(status) = child.try_wait()? {
                    anyhow::ensure!(status.success(), "the daemon failed ({status})");
                    return Ok(());
                }
                anyhow::ensure!(
                    t.elapsed() < Duration::from_secs(1800),
                    "the loop did not finish in 30 minutes"
                );
                if poll {
                    for p in [
                        "/api/v1/status",
                        "/api/v1/plot",
                        "/api/v1/progress",
                        "/metrics",
                    ] {
                        if let Ok((_, _, t)) = get(&client, &format!("http://{addr}{p}")).await {
                            requests += 1;
                            slowest = slowest.max(t);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(if poll { 100 } else { 50 })).await;
            }
        }
        .await;
        if let Err(e) = ran {
            let log = std::fs::read_to_string(d.join("daemon.log")).unwrap_or_default();
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("{e}; the daemon's log ends:\n{}", tail_of(&log, 15));
        }
        // The rate from lineage's own times: first proposal to last outcome.
        let store = super::lineage::reopen(&d.join("lineage"))?;
        let (mut first, mut last, mut done) = (u64::MAX, 0u64, 0u64);
        for t in store.iter() {
            let t = t?;
            if let Some(c) = t.history.first() {
                first = first.min(c.at_ms);
            }
            if t.status.is_terminal() && t.status != TrialStatus::Interrupted {
                done += 1;
                last = last.max(t.history.last().map_or(0, |c| c.at_ms));
            }
        }
        let secs = (last.saturating_sub(first)) as f64 / 1e3;
        let rate = done as f64 / secs.max(1e-3);
        rates.push(rate);
        writeln!(
            std::io::stdout().lock(),
            "loop, {run}: {done} trials in {secs:.1} s, {rate:.2} trials/s{}",
            if poll {
                format!(" ({requests} dashboard requests, slowest {})", ms(slowest))
            } else {
                String::new()
            }
        )?;
    }
    writeln!(
        std::io::stdout().lock(),
        "loop speed with the client polling / without: {:.3}",
        rates[1] / rates[0]
    )?;
    Ok(())
}
