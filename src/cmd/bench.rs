//! `floe bench`: floe's throughput as a ratio to Postgres's own ceiling,
//! measured in one run, alternating, so the numbers survive a noisy machine.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pipeline::cluster::EphemeralCluster;
use pipeline::postgres::Target;
use serde::Serialize;

use crate::output::OutputFormat;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The table (config, Postgres or Snowflake name); its data is generated.
    #[arg(long, default_value = "topology")]
    table: String,
    /// Rows to generate (default: the grid table's full size).
    #[arg(long)]
    rows: Option<u64>,
    /// Postgres URL (default: a throwaway PostGIS cluster). Its table is replaced, repeatedly.
    #[arg(long)]
    target: Option<schemas::config::TargetUrl>,
    /// Runs of each configuration; the report gives their median and min–max.
    #[arg(long, default_value_t = 5)]
    pub(super) repeats: usize,
    /// Config file (default: ./floe.toml, else the shipped grid config).
    #[arg(long)]
    pub(super) config: Option<PathBuf>,
    /// Parallel COPY sessions for floe and the ceiling alike, overriding `load.copy_streams`.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=schemas::config::MAX_COPY_STREAMS as i64))]
    copy_streams: Option<u16>,
    /// Measure incremental runs instead: windows of 100, 1,000 and 10,000
    /// changed rows made in the emulator, against a full refresh.
    #[arg(long)]
    pub(super) incremental: bool,
    /// Measure `floe watch` instead: lag (commit in the emulator → visible
    /// in Postgres) under `--rows-per-sec` of changes for `--minutes`, floe's
    /// CPU and RSS each minute, then warehouse queries over `--idle-minutes`.
    #[arg(long, conflicts_with = "incremental")]
    pub(super) watch: bool,
    /// `floe bench --watch`: the watch interval.
    #[arg(long, default_value = "10s")]
    pub(super) interval: String,
    /// `floe bench --watch`: minutes of change traffic.
    #[arg(long, default_value_t = 10)]
    pub(super) minutes: u64,
    /// `floe bench --watch`: minutes without changes afterwards.
    #[arg(long, default_value_t = 10)]
    pub(super) idle_minutes: u64,
    /// `floe bench --watch`: changed rows a second (10 commits a second).
    #[arg(long, default_value_t = 100)]
    pub(super) rows_per_sec: u64,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub(super) output: OutputFormat,
}

/// Min, median and max of a measure over the repeats.
#[derive(Debug, Clone, Copy, Serialize)]
pub(super) struct Spread {
    pub(super) median: f64,
    pub(super) min: f64,
    pub(super) max: f64,
}

impl Spread {
    pub(super) fn of(values: &[f64]) -> Spread {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Spread {
            median,
            min: v[0],
            max: v[n - 1],
        }
    }
}

/// One configuration's figures (the JSON shape is stable; see README "Benchmarks").
#[derive(Debug, Serialize)]
struct Measured {
    name: &'static str,
    what: &'static str,
    seconds: Spread,
    rows_per_sec: f64,
    /// Encoded COPY bytes per second (the bytes Postgres ingests).
    mb_per_sec: f64,
    peak_rss_bytes: u64,
    /// This configuration's throughput over the ceiling's (1.0: as fast as
    /// Postgres ingesting pre-encoded bytes).
    ratio_to_ceiling: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    goal: Option<f64>,
    /// The ceiling's COPY alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    copy_only_seconds: Option<Spread>,
    /// The ceiling's sessions, PostGIS loads and staging table, made before
    /// its clock starts; a floe run's time includes its own. Reported so a
    /// ratio on a small table can be read against it, never added to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    setup_outside_clock_seconds: Option<Spread>,
    /// Median seconds per stage (floe's runs; the ceiling's copy, index build, swap).
    stages: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Serialize)]
struct Report {
    table: String,
    rows: u64,
    encoded_bytes: u64,
    repeats: usize,
    cpus: usize,
    profile: &'static str,
    /// COPY sessions per load, floe's and the ceiling's.
    copy_streams: usize,
    /// The first run through the emulator, before its result cache holds the query.
    emulator_uncached: Uncached,
    results: Vec<Measured>,
}

/// floe's first run through the emulator, whose query the emulator runs.
#[derive(Debug, Serialize)]
struct Uncached {
    seconds: f64,
    /// From submitting the query to its answer: the emulator building the result.
    query_seconds: f64,
}

/// One run of a floe configuration, as a child process.
pub(super) struct Sample {
    pub(super) seconds: f64,
    pub(super) peak_rss: u64,
    /// The run's JSON report of its (one) table.
    pub(super) report: serde_json::Value,
}

pub async fn run(args: Args) -> Result<ExitCode> {
    if args.repeats == 0 {
        bail!("--repeats must be at least 1");
    }
    let mut config = super::load_config(args.config.as_deref())?;
    if let Some(n) = args.copy_streams {
        config.load.copy_streams = n.into();
    }
    let name = super::select_tables(&config, std::slice::from_ref(&args.table))?
        .pop()
        .context("no table")?;
    let t = &config.tables[&name];
    let dataset = t
        .snowflake_table
        .as_deref()
        .and_then(schemas::datasets::find)
        .with_context(|| format!("floe bench generates its data; `{name}` is not a grid table"))?;
    let data = tempfile::Builder::new().prefix("floe-bench-").tempdir()?;
    eprintln!("generating {} ...", dataset.snowflake_table);
    emulator::generate::generate(&emulator::generate::GenerateOptions {
        out: data.path().to_path_buf(),
        tables: vec![dataset],
        rows: args.rows,
        seed: 42,
    })?;

    let cluster = match &args.target {
        Some(_) => None,
        None => {
            eprintln!("starting PostGIS ...");
            Some(tokio::task::spawn_blocking(EphemeralCluster::start).await??)
        }
    };
    let url = match (&args.target, &cluster) {
        (Some(u), _) => u.expose().to_string(),
        (None, Some(c)) => c.url(),
        (None, None) => unreachable!("a cluster is started when no target is given"),
    };
    let target = Target::resolve(&config.target.with_url(&url))?;

    let password = format!("bench-{}", std::process::id());
    let (emulator, port) = start_emulator(data.path(), &password)?;
    let _emulator = KillOnDrop(emulator);
    if args.incremental || args.watch {
        let bench = super::bench_incremental::Bench {
            args: &args,
            config: &config,
            name: &name,
            snowflake_table: dataset.snowflake_table,
            url: &url,
            password: &password,
            port,
        };
        let code = match args.watch {
            true => {
                bench
                    .run_watch(&super::bench_watch::WatchBench {
                        interval: args.interval.clone(),
                        minutes: args.minutes,
                        idle_minutes: args.idle_minutes,
                        rows_per_sec: args.rows_per_sec,
                    })
                    .await?
            }
            false => bench.run().await?,
        };
        drop(cluster);
        return Ok(code);
    }

    eprintln!("encoding {name} once for the ceiling ...");
    let encoded = pipeline::bench::encode_table(&config, &name, &target, data.path()).await?;
    let rows = encoded.rows;

    let mut ceiling = Vec::new();
    let mut ceiling_rss = 0u64;
    let mut parquet = Vec::new();
    let mut emulated = Vec::new();
    let floe_run = |source: &str| -> Command {
        let mut c = Command::new(std::env::current_exe().unwrap_or_else(|_| "floe".into()));
        c.arg("run");
        if let Some(p) = &args.config {
            c.arg("--config").arg(p);
        }
        c.args([
            "--table",
            &name,
            "--target",
            &url,
            "--no-snapshot",
            // (the bench replaces the table whatever it held before)
            "--allow-shrink",
            "--copy-streams",
            &config.load.copy_streams.to_string(),
            "--output",
            "json",
        ]);
        match source {
            "parquet" => {
                c.arg("--parquet").arg(data.path());
            }
            _ => {
                c.envs([
                    ("SNOWFLAKE_ACCOUNT", "emulator".to_string()),
                    ("SNOWFLAKE_USER", "floe".into()),
                    ("SNOWFLAKE_PASSWORD", password.clone()),
                    ("SNOWFLAKE_HOST", "127.0.0.1".into()),
                    ("SNOWFLAKE_PORT", port.to_string()),
                    ("SNOWFLAKE_PROTOCOL", "http".into()),
                ]);
            }
        }
        c.env_remove("FLOE_TARGET_URL");
        c
    };
    // Snowflake answers a repeated query over unchanged data from its result
    // cache, and the emulator does too: one run first, so every measured run
    // is served the same way and the emulator's own work (building and
    // compressing the whole result on these same cores, which a warehouse
    // does elsewhere) stays out of floe's figures. Its time is reported.
    eprintln!("first run through the emulator (its query is not cached yet) ...");
    let uncached = measure(&mut floe_run("emulator"))?;
    let uncached_query = uncached.report["stages"]["source_open"]
        .as_f64()
        .unwrap_or(0.0);
    for i in 0..args.repeats {
        // Each repeat runs the three in a different order.
        for k in 0..3 {
            match (i + k) % 3 {
                0 => {
                    reset_peak_rss();
                    let run_id = pipeline::run::new_run_id();
                    ceiling
                        .push(pipeline::bench::ceiling(&config, &target, &encoded, &run_id).await?);
                    ceiling_rss = ceiling_rss.max(own_peak_rss());
                }
                1 => parquet.push(measure(&mut floe_run("parquet"))?),
                _ => emulated.push(measure(&mut floe_run("emulator"))?),
            }
        }
        eprintln!("repeat {}/{} done", i + 1, args.repeats);
    }

    let ceiling_total = Spread::of(&ceiling.iter().map(|c| c.total).collect::<Vec<_>>());
    let mb = encoded.bytes as f64 / 1e6;
    let mut ceiling_stages = serde_json::Map::new();
    for (k, f) in [
        (
            "copy",
            (|c: &pipeline::bench::CeilingRun| c.copy) as fn(&pipeline::bench::CeilingRun) -> f64,
        ),
        ("index_build", |c| c.index_build),
        ("swap", |c| c.swap),
    ] {
        let s = Spread::of(&ceiling.iter().map(f).collect::<Vec<_>>());
        ceiling_stages.insert(k.into(), s.median.into());
    }
    let mut results = vec![Measured {
        name: "ceiling",
        what: "COPY of floe's pre-encoded bytes from memory + the same index build and swap",
        seconds: ceiling_total,
        rows_per_sec: rows as f64 / ceiling_total.median,
        mb_per_sec: mb / ceiling_total.median,
        peak_rss_bytes: ceiling_rss,
        ratio_to_ceiling: 1.0,
        goal: None,
        copy_only_seconds: Some(Spread::of(
            &ceiling.iter().map(|c| c.copy).collect::<Vec<_>>(),
        )),
        setup_outside_clock_seconds: Some(Spread::of(
            &ceiling.iter().map(|c| c.setup).collect::<Vec<_>>(),
        )),
        stages: ceiling_stages,
    }];
    let (parquet_goal, emulator_goal) = goals(dataset.snowflake_table);
    for (name, what, goal, samples) in [
        (
            "floe_parquet",
            "floe run --parquet (full refresh)",
            parquet_goal,
            &parquet,
        ),
        (
            "floe_emulator",
            "floe run through the Snowflake emulator (full refresh)",
            emulator_goal,
            &emulated,
        ),
    ] {
        let seconds = Spread::of(&samples.iter().map(|s| s.seconds).collect::<Vec<_>>());
        let mut stages = serde_json::Map::new();
        let keys: Vec<String> = samples[0].report["stages"]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        for k in keys {
            let v: Vec<f64> = samples
                .iter()
                .filter_map(|s| s.report["stages"][&k].as_f64())
                .collect();
            if !v.is_empty() {
                stages.insert(k, Spread::of(&v).median.into());
            }
        }
        results.push(Measured {
            name,
            what,
            seconds,
            rows_per_sec: rows as f64 / seconds.median,
            mb_per_sec: mb / seconds.median,
            peak_rss_bytes: samples.iter().map(|s| s.peak_rss).max().unwrap_or(0),
            ratio_to_ceiling: ceiling_total.median / seconds.median,
            goal: Some(goal),
            copy_only_seconds: None,
            setup_outside_clock_seconds: None,
            stages,
        });
    }
    let report = Report {
        table: name.clone(),
        rows,
        encoded_bytes: encoded.bytes,
        repeats: args.repeats,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        profile: if cfg!(debug_assertions) {
            "dev"
        } else {
            "release"
        },
        copy_streams: config.load.copy_streams,
        emulator_uncached: Uncached {
            seconds: uncached.seconds,
            query_seconds: uncached_query,
        },
        results,
    };
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Text => print_text(&report),
    }
    drop(cluster);
    Ok(ExitCode::SUCCESS)
}

/// The ratios to the ceiling a table's loads aim for, from parquet and
/// through the emulator: topology, the table synced every minute, close to
/// the ceiling; building footprints, whose geometry floe measures and
/// converts while Postgres only copies bytes in the ceiling, lower; the
/// rest as first set for every table.
fn goals(snowflake_table: &str) -> (f64, f64) {
    match snowflake_table {
        "FLUX_OPS_CENTER_TOPOLOGY" => (0.95, 0.9),
        "BUILDING_FOOTPRINTS" => (0.8, 0.8),
        _ => (0.9, 0.8),
    }
}

fn print_text(r: &Report) {
    println!(
        "{}: {} rows, {:.1} MB of COPY data; {} repeats, {} CPUs, {} build, {} COPY stream(s)",
        r.table,
        r.rows,
        r.encoded_bytes as f64 / 1e6,
        r.repeats,
        r.cpus,
        r.profile,
        r.copy_streams
    );
    println!(
        "{:<14} {:>8} {:>17} {:>11} {:>8} {:>9} {:>7}  goal",
        "", "median s", "min–max s", "rows/s", "MB/s", "peak RSS", "ratio"
    );
    for m in &r.results {
        let goal = match m.goal {
            Some(g) if m.ratio_to_ceiling >= g => format!("≥ {g} met"),
            Some(g) => format!("≥ {g} NOT met"),
            None => String::new(),
        };
        println!(
            "{:<14} {:>8.2} {:>8.2}–{:<8.2} {:>11.0} {:>8.1} {:>5} MiB {:>7.2}  {goal}",
            m.name,
            m.seconds.median,
            m.seconds.min,
            m.seconds.max,
            m.rows_per_sec,
            m.mb_per_sec,
            m.peak_rss_bytes >> 20,
            m.ratio_to_ceiling
        );
    }
    println!(
        "floe_emulator runs are served from the emulator's result cache; the first run, uncached: {:.2} s, of which the query {:.2} s",
        r.emulator_uncached.seconds, r.emulator_uncached.query_seconds
    );
    if let Some(setup) = r
        .results
        .iter()
        .find_map(|m| m.setup_outside_clock_seconds.as_ref())
    {
        println!(
            "the ceiling's sessions, PostGIS loads and staging table, before its clock: {:.3} s (median); floe's runs include their own",
            setup.median
        );
    }
    println!("median seconds by stage:");
    for m in &r.results {
        let stages: Vec<String> = m
            .stages
            .iter()
            .filter_map(|(k, v)| v.as_f64().map(|v| format!("{k} {v:.2}")))
            .collect();
        println!("  {:<14} {}", m.name, stages.join(", "));
    }
}

/// Runs one `floe run`, timing it and sampling its peak RSS (VmHWM, a
/// high-water mark, so a peak between samples is not missed).
///
/// The time ends when the process does: a thread of its own waits for it
/// (draining its output), so the 10 ms between samples never adds to a
/// run's time, as it did when the sampling loop also noticed the exit.
pub(super) fn measure(cmd: &mut Command) -> Result<Sample> {
    let started = Instant::now();
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting floe run")?;
    let status_path = format!("/proc/{}/status", child.id());
    let (done_tx, done) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let out = child.wait_with_output();
        // The receiver outlives the waiter (joined below).
        let _ = done_tx.send(Instant::now());
        out
    });
    let mut peak = 0u64;
    let ended = loop {
        peak = peak.max(vm_hwm(&status_path).unwrap_or(0));
        match done.recv_timeout(Duration::from_millis(10)) {
            Ok(at) => break at,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break Instant::now(),
        }
    };
    let seconds = ended.duration_since(started).as_secs_f64();
    let out = match waiter.join() {
        Ok(out) => out.context("waiting for floe run")?,
        Err(_) => bail!("the thread waiting for floe run panicked"),
    };
    if !out.status.success() {
        bail!(
            "floe run failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("floe run's JSON report")?;
    Ok(Sample {
        seconds,
        peak_rss: peak,
        report: report[0].clone(),
    })
}

fn vm_hwm(status_path: &str) -> Option<u64> {
    let status = std::fs::read_to_string(status_path).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb << 10)
}

/// Resets this process's peak RSS (Linux: `5` into `clear_refs`), so the
/// ceiling's peak is its own.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn own_peak_rss() -> u64 {
    vm_hwm("/proc/self/status").unwrap_or(0)
}

pub(super) struct KillOnDrop(pub(super) std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The Snowflake emulator in its own process, so its memory (it holds whole
/// results) is not counted as floe's.
pub(super) fn start_emulator(data: &Path, password: &str) -> Result<(std::process::Child, u16)> {
    let mut child = Command::new(std::env::current_exe().unwrap_or_else(|_| "floe".into()))
        .args([
            "emulate-snowflake",
            "--port",
            "0",
            "--user",
            "floe",
            "--password",
            password,
        ])
        .arg("--data")
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the Snowflake emulator")?;
    let stdout = child.stdout.take().context("emulator stdout")?;
    let mut first = String::new();
    std::io::BufReader::new(stdout).read_line(&mut first)?;
    let port = first
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("the emulator's banner: {first:?}"))?;
    Ok((child, port))
}
