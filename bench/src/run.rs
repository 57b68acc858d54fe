//! One load run, from the main thread: validate the flags, learn the endpoints, plan the
//! connections, start the workers, walk them through the stages, sample the server, and report.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};

use crate::args::{RunArgs, Target};
use crate::gate::{Gate, Stage};
use crate::plan;
use crate::procstat;
use crate::progress::Progress;
use crate::report::Report;
use crate::stats::Window;
use crate::worker::{self, ConnPlan, Outcome, Settings};
use crate::workload::write_key;

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    args.validate()?;
    let default_addr = match args.target {
        Target::Redis => "127.0.0.1:6379",
        Target::Kvmesh => "127.0.0.1:7000",
        Target::Grpc => "127.0.0.1:50051",
    };
    let addr_text = args
        .addr
        .clone()
        .unwrap_or_else(|| default_addr.to_string());
    let addr = resolve(&addr_text)?;
    let timeout = args.timeout.0;

    // For kvmesh, where each key lives: its owner node's owning shard port.
    let mut route = None;
    let endpoints: Vec<SocketAddr> = match args.target {
        Target::Redis => vec![addr],
        Target::Kvmesh if args.via_addr => vec![addr],
        Target::Kvmesh => {
            let map = crate::target_kvmesh::discover(addr, timeout)?;
            let endpoints = map.endpoints();
            route = Some(map);
            endpoints
        }
        // One endpoint: the node's gRPC port, which every shard serves.
        Target::Grpc => vec![addr],
    };
    let parts = endpoints.len();
    let mut key = Vec::new();
    let owner = |k: u32| {
        write_key(k, &mut key);
        match &route {
            Some(map) if parts > 1 => map.endpoint_for(&key),
            _ => 0,
        }
    };
    let sets: Vec<_> =
        plan::key_sets(args.keys, parts, owner, args.key_dist).map_err(|e| anyhow!(e))?;
    let masses: Vec<f64> = sets.iter().map(|s| s.mass).collect();
    let lens: Vec<usize> = sets.iter().map(|s| s.keys.len()).collect();
    let alloc = plan::allocate(args.connections, &masses).map_err(|e| anyhow!(e))?;
    let specs = plan::connections(&alloc, &lens, args.requests);
    let sets: Vec<_> = sets.into_iter().map(Arc::new).collect();

    let cpus: Vec<Option<usize>> = match &args.cpus {
        Some(list) => list.0.iter().map(|&c| Some(c)).collect(),
        None => vec![None; std::thread::available_parallelism().map_or(1, |n| n.get())],
    };
    let workers = cpus.len().min(specs.len());
    let settings = Settings {
        redis: args.target == Target::Redis,
        grpc: args.target == Target::Grpc,
        pipeline: args.pipeline,
        batch: args.batch,
        timeout,
        value_size: args.value_size.0,
        ttl_ms: args.ttl.0.as_millis() as u64,
        read_ratio: args.read_ratio,
        warmup: args.warmup.0,
        duration: args.requests.is_none().then_some(args.duration.0),
        conn_rate: args.rate.map(|r| r / specs.len() as f64),
        prefill: !args.no_prefill,
        prefill_only: args.prefill_only,
        seed: args.seed,
    };
    eprintln!(
        "{} at {addr}: {} endpoint(s), connections per endpoint {alloc:?}, {workers} worker(s) on cpus {}",
        args.target.name(),
        parts,
        args.cpus.as_ref().map_or("any".to_string(), |c| c.to_string()),
    );

    let gate = Arc::new(Gate::new(workers));
    let (tx, rx) = mpsc::channel();
    let mut handles = Vec::with_capacity(workers);
    for (id, hand) in plan::deal(specs.len(), workers).into_iter().enumerate() {
        let conns = hand
            .into_iter()
            .map(|i| ConnPlan {
                spec: specs[i].clone(),
                addr: endpoints[specs[i].endpoint],
                keys: sets[specs[i].endpoint].clone(),
            })
            .collect();
        match worker::spawn(
            id,
            cpus[id],
            conns,
            settings.clone(),
            gate.clone(),
            tx.clone(),
        ) {
            Ok(handle) => handles.push(handle),
            Err(e) => {
                gate.fail();
                join(handles)?;
                return Err(e);
            }
        }
    }
    drop(tx);

    let pid = args.server_pid;
    // Memory per key only means something when the prefill loads a fresh server.
    let rss_pid = pid.filter(|_| settings.prefill_only);
    let sample_rss = || rss_pid.map(procstat::rss_bytes).transpose();
    let sample_cpu = || -> anyhow::Result<Option<f64>> {
        let Some(pid) = pid else { return Ok(None) };
        let mut cpu = procstat::cpu_seconds(pid)?;
        for &other in &args.also_server_pid {
            cpu += procstat::cpu_seconds(other)?;
        }
        Ok(Some(cpu))
    };
    if !gate.wait_all(Stage::Connected) {
        return Err(join(handles)
            .err()
            .unwrap_or_else(|| anyhow!("a worker failed")));
    }
    let rss_before = sample_rss()?;
    let prefill_start = gate.release(Stage::Connected);
    if settings.prefill {
        eprintln!(
            "prefill: writing {} keys of {} bytes",
            args.keys, settings.value_size
        );
    }
    if !gate.wait_all(Stage::Prefilled) {
        return Err(join(handles)
            .err()
            .unwrap_or_else(|| anyhow!("a worker failed")));
    }
    let rss_after = sample_rss()?;
    let start = gate.release(Stage::Prefilled);
    let prefill_s = start.duration_since(prefill_start).as_secs_f64();

    let measure = start + settings.warmup;
    let (mut cpu_start, mut cpu_end) = (None, None);
    let mut progress = Progress::new(workers, settings.warmup);
    while !settings.prefill_only && !gate.all_arrived(Stage::Finished) && !gate.failed() {
        match rx.recv_timeout(Duration::from_millis(10)) {
            Ok(tick) => progress
                .add(tick)
                .into_iter()
                .for_each(|line| eprintln!("{line}")),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        let now = Instant::now();
        if cpu_start.is_none() && now >= measure {
            cpu_start = Some(sample_cpu()?);
        }
        let ended = settings.duration.is_some_and(|d| now >= measure + d);
        if cpu_end.is_none() && ended {
            cpu_end = Some(sample_cpu()?);
        }
    }
    if cpu_start.is_none() {
        cpu_start = Some(sample_cpu()?);
    }
    let cpu_end = match cpu_end {
        Some(cpu) => cpu,
        None => sample_cpu()?,
    };
    let outcomes = join(handles)?;

    let mut total = Window::default();
    let mut report = Report::default();
    let mut last_done = None;
    for o in &outcomes {
        total.merge(&o.total);
        last_done = last_done.max(o.last_done);
        report.prefill_keys += o.prefill.ok + o.prefill.errors();
        report.prefill_errors += o.prefill.errors();
        report.first_errors.extend(o.first_errors.iter().cloned());
        report.failures.extend(o.failures.iter().cloned());
    }
    let mut seen = std::collections::HashSet::new();
    report.first_errors.retain(|e| seen.insert(e.clone()));
    // With a duration, what finished inside the window counts; with --requests, until the last.
    let elapsed = match (settings.duration, last_done) {
        (Some(window), _) => window,
        (None, Some(done)) => done.saturating_duration_since(measure),
        (None, None) => Duration::ZERO,
    };
    report.set_results(&total, elapsed.as_secs_f64());
    report.label = args
        .label
        .clone()
        .unwrap_or_else(|| args.target.name().to_string());
    report.target = args.target.name().to_string();
    report.addr = addr_text;
    report.shards = parts as u32;
    report.mode = match (settings.prefill_only, args.rate) {
        (true, _) => "prefill-only",
        (false, None) => "closed",
        (false, Some(_)) => "open",
    }
    .to_string();
    report.connections = specs.len();
    report.pipeline = args.pipeline;
    report.batch = args.batch;
    report.keys = args.keys;
    report.key_dist = args.key_dist.to_string();
    report.value_size = settings.value_size;
    report.read_ratio = args.read_ratio;
    report.ttl_ms = settings.ttl_ms;
    report.rate = args.rate;
    report.workers = workers;
    report.cpus = args.cpus.as_ref().map(|c| c.to_string());
    report.prefill_s = prefill_s;
    report.server_pid = pid;
    if let (Some(Some(a)), Some(b)) = (cpu_start, cpu_end) {
        if !settings.prefill_only {
            report.server_cpu_s = Some(b - a);
            report.server_cpu_us_per_req =
                (report.requests > 0).then(|| (b - a) * 1e6 / report.requests as f64);
        }
    }
    report.server_rss_before = rss_before;
    report.server_rss_after = rss_after;
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        if report.prefill_keys > 0 {
            report.rss_bytes_per_key =
                Some((after as f64 - before as f64) / report.prefill_keys as f64);
        }
    }

    print!("{}", report.summary());
    if args.json {
        println!("{}", report.to_json());
    }
    Ok(())
}

/// Joins every worker; the first failure wins.
fn join(
    handles: Vec<glommio::ExecutorJoinHandle<anyhow::Result<Outcome>>>,
) -> anyhow::Result<Vec<Outcome>> {
    let mut outcomes = Vec::new();
    let mut first_error = None;
    for handle in handles {
        match handle.join() {
            Ok(Ok(outcome)) => outcomes.push(outcome),
            Ok(Err(e)) => {
                // "another worker failed" only echoes the real failure.
                if first_error.is_none() || e.to_string() != "another worker failed" {
                    first_error.get_or_insert(e);
                }
            }
            Err(e) => {
                first_error.get_or_insert(anyhow!("a client worker died: {e}"));
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(outcomes),
    }
}

fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("--addr `{addr}` is not HOST:PORT"))?
        .next()
        .ok_or_else(|| anyhow!("--addr `{addr}` resolves to no address"))
}
