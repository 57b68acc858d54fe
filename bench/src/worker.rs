//! One client worker: a glommio executor (pinned when `--cpus` is given) that drives its share
//! of the connections through the stages of the run and reports a progress tick every second.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use glommio::{spawn_local, LocalExecutorBuilder, Placement};

use crate::codec::Codec;
use crate::conn::Conn;
use crate::feed::{Feed, Load, Prefill};
use crate::gate::{FailOnDrop, Gate, Stage};
use crate::pacer::{Pacer, Phases};
use crate::plan::ConnSpec;
use crate::stats::{Counters, Recorder, Window};
use crate::target_grpc::GrpcConn;
use crate::workload::{make_value, KeySet, Mix};

/// Settings every connection shares.
#[derive(Clone, Debug)]
pub struct Settings {
    pub redis: bool,
    /// gRPC unary calls over HTTP/2 instead of a byte-stream codec.
    pub grpc: bool,
    pub pipeline: usize,
    /// gRPC: keys per call (`--batch`); 1 is the old API's unary calls.
    pub batch: usize,
    pub timeout: Duration,
    pub value_size: usize,
    pub ttl_ms: u64,
    pub read_ratio: f64,
    pub warmup: Duration,
    /// `None`: bounded by requests.
    pub duration: Option<Duration>,
    /// Open loop: requests per second of one connection.
    pub conn_rate: Option<f64>,
    pub prefill: bool,
    pub prefill_only: bool,
    pub seed: u64,
}

/// Requests in flight per connection during the prefill (at least `--pipeline`).
const PREFILL_DEPTH: usize = 32;

/// What one connection needs: where to go and which keys it owns.
pub struct ConnPlan {
    pub spec: ConnSpec,
    pub addr: SocketAddr,
    pub keys: Arc<KeySet>,
}

/// A worker's progress over one second of the load; `last` says the worker's load is over
/// (and carries no window).
pub struct Tick {
    pub second: u64,
    pub window: Window,
    pub last: bool,
}

/// What a worker hands back at the end.
#[derive(Default)]
pub struct Outcome {
    pub total: Window,
    pub last_done: Option<Instant>,
    pub first_errors: Vec<String>,
    pub prefill: Counters,
    pub failures: Vec<String>,
}

/// Starts worker `id` on its own thread.
pub fn spawn(
    id: usize,
    cpu: Option<usize>,
    conns: Vec<ConnPlan>,
    settings: Settings,
    gate: Arc<Gate>,
    ticks: Sender<Tick>,
) -> anyhow::Result<glommio::ExecutorJoinHandle<anyhow::Result<Outcome>>> {
    let placement = cpu.map_or(Placement::Unbound, Placement::Fixed);
    LocalExecutorBuilder::new(placement)
        .name(&format!("bench-{id}"))
        .spawn(move || async move {
            let guard = FailOnDrop::new(&gate);
            let outcome = run(conns, settings, &gate, ticks).await;
            if outcome.is_ok() {
                guard.disarm();
            }
            outcome
        })
        .map_err(|e| anyhow!("cannot start client worker {id} (cpu {cpu:?}): {e}"))
}

async fn run(
    plans: Vec<ConnPlan>,
    s: Settings,
    gate: &Gate,
    ticks: Sender<Tick>,
) -> anyhow::Result<Outcome> {
    let value = Rc::new(make_value(s.value_size, s.seed));
    let (ttl_ms, batch) = (s.ttl_ms, s.batch);
    let opened = plans.iter().map(|plan| {
        let (addr, timeout, value) = (plan.addr, s.timeout, value.clone());
        if s.grpc {
            return spawn_local(async move {
                GrpcConn::connect(addr, timeout, &value, ttl_ms, batch)
                    .await
                    .map(AnyConn::Grpc)
            });
        }
        let codec: Box<dyn Codec> = if s.redis {
            Box::new(crate::target_redis::RedisCodec)
        } else {
            Box::new(crate::target_kvmesh::KvmeshCodec::default())
        };
        spawn_local(async move {
            Conn::connect(addr, timeout, codec, value, ttl_ms)
                .await
                .map(AnyConn::Stream)
        })
    });
    let mut conns = Vec::with_capacity(plans.len());
    for task in opened.collect::<Vec<_>>() {
        conns.push(task.await.map_err(|e| anyhow!(e))?);
    }
    gate.arrive(Stage::Connected);
    gate.wait(Stage::Connected)
        .await
        .ok_or_else(|| anyhow!("another worker failed"))?;

    let mut outcome = Outcome::default();
    if s.prefill {
        let rec = Rc::new(RefCell::new(Recorder::default()));
        let depth = s.pipeline.max(PREFILL_DEPTH);
        let tasks: Vec<_> = conns
            .into_iter()
            .zip(&plans)
            .map(|(mut conn, plan)| {
                let mut feed = Prefill::new(
                    plan.keys.clone(),
                    plan.spec.prefill.start,
                    plan.spec.prefill.end,
                );
                let rec = rec.clone();
                spawn_local(
                    async move { conn.run_strict(&mut feed, depth, &rec).await.map(|()| conn) },
                )
            })
            .collect();
        conns = Vec::with_capacity(tasks.len());
        for task in tasks {
            conns.push(task.await.map_err(|e| anyhow!("prefill failed: {e}"))?);
        }
        let rec = rec.borrow();
        outcome.prefill = rec.total.counts;
        outcome
            .first_errors
            .extend(rec.first_errors.iter().cloned());
    }
    gate.arrive(Stage::Prefilled);
    let start = gate
        .wait(Stage::Prefilled)
        .await
        .ok_or_else(|| anyhow!("another worker failed"))?;
    if s.prefill_only {
        gate.arrive(Stage::Finished);
        return Ok(outcome);
    }

    let phases = Phases {
        start,
        measure: start + s.warmup,
        end: s.duration.map(|d| start + s.warmup + d),
    };
    let rec = Rc::new(RefCell::new(Recorder::default()));
    let ticker = spawn_local(tick_every_second(start, rec.clone(), ticks.clone()));
    let tasks: Vec<_> = conns
        .into_iter()
        .zip(&plans)
        .map(|(mut conn, plan)| {
            let seed = s
                .seed
                .wrapping_add(0x9e37_79b9_7f4a_7c15u64.wrapping_mul(plan.spec.index as u64 + 1));
            let pacer = match s.conn_rate {
                None => Pacer::closed(phases, plan.spec.quota),
                Some(rate) => {
                    let interval = Duration::from_secs_f64(1.0 / rate);
                    // Spread the connections' schedules evenly over one interval.
                    let offset = interval.mul_f64(fastrand::Rng::with_seed(seed).f64());
                    Pacer::open(phases, plan.spec.quota, interval, offset)
                }
            };
            let mut load = Load {
                pacer,
                mix: Mix::new(plan.keys.clone(), s.read_ratio, seed),
            };
            let rec = rec.clone();
            let depth = s.pipeline;
            spawn_local(async move {
                let result = conn.run(&mut load, depth, &rec).await;
                rec.borrow_mut().count(0, load.pacer.unsent());
                result
            })
        })
        .collect();
    for task in tasks {
        if let Err(why) = task.await {
            outcome.failures.push(why);
        }
    }
    drop(ticker);
    let _ = ticks.send(Tick {
        second: 0,
        window: Window::default(),
        last: true,
    });
    let mut rec = rec.borrow_mut();
    outcome.total = std::mem::take(&mut rec.total);
    outcome.last_done = rec.last_done;
    outcome.first_errors.append(&mut rec.first_errors);
    gate.arrive(Stage::Finished);
    Ok(outcome)
}

/// A connection of any target: a byte stream with a codec, or HTTP/2 with gRPC calls.
enum AnyConn {
    Stream(Conn),
    Grpc(GrpcConn),
}

impl AnyConn {
    async fn run(
        &mut self,
        feed: &mut dyn Feed,
        depth: usize,
        rec: &RefCell<Recorder>,
    ) -> Result<(), String> {
        match self {
            AnyConn::Stream(conn) => conn.run(feed, depth, rec).await,
            AnyConn::Grpc(conn) => conn.run(feed, depth, rec).await,
        }
    }

    async fn run_strict(
        &mut self,
        feed: &mut dyn Feed,
        depth: usize,
        rec: &RefCell<Recorder>,
    ) -> Result<(), String> {
        match self {
            AnyConn::Stream(conn) => conn.run_strict(feed, depth, rec).await,
            AnyConn::Grpc(conn) => conn.run_strict(feed, depth, rec).await,
        }
    }
}

/// Sends the progress interval to the main thread at every whole second after `start`.
async fn tick_every_second(start: Instant, rec: Rc<RefCell<Recorder>>, ticks: Sender<Tick>) {
    for second in 1u64.. {
        let at = start + Duration::from_secs(second);
        glommio::timer::sleep(at.saturating_duration_since(Instant::now())).await;
        let window = rec.borrow_mut().take_interval();
        let tick = Tick {
            second,
            window,
            last: false,
        };
        if ticks.send(tick).is_err() {
            return;
        }
    }
}
