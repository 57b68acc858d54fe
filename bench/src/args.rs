//! The command line: `kvmesh-bench [RUN OPTIONS]` runs a load, `kvmesh-bench table` formats
//! reports, `kvmesh-bench free-port` finds free loopback ports for scripts.

use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::units::{Bytes, CpuList, KeyDist, Span};

#[derive(Parser, Debug)]
#[command(
    name = "kvmesh-bench",
    version,
    about = "kvmesh's load generator: drives a kvmesh node or redis-server with the same machinery",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Formats JSON reports (the last stdout line of `--json` runs, one per line) as Markdown
    /// tables: one row per workload, one column group per label, and the ratio between labels
    /// (with rounds, runs repeated per label: medians, and the median of the rounds' ratios).
    Table(TableArgs),
    /// Prints a loopback port P such that P..P+COUNT-1 are all free to bind right now.
    FreePort {
        /// How many consecutive ports must be free.
        #[arg(long, default_value_t = 1)]
        count: u16,
    },
    /// Measures what one durable write costs on a disk, with no server: an aligned direct
    /// write into a preallocated, zeroed file, then fdatasync (what kvmesh's log does), and
    /// the same for an appending buffered write (what Redis's AOF does). Prints the latencies
    /// and the physical limit of a closed loop: concurrency / latency.
    FsyncProbe(FsyncProbeArgs),
    /// Serves kvmesh's wire frames for GET and SET from a plain hash map on one thread: the
    /// physical limit of the network path, driven by `--target kvmesh` like a one-shard node.
    /// Pin it with `taskset`; it runs until killed.
    ProbeServer(crate::probe::ProbeArgs),
}

#[derive(Args, Debug)]
pub struct FsyncProbeArgs {
    /// Directory on the disk to measure; a probe file is created there and removed.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Syncs to measure per mode.
    #[arg(long, default_value_t = 2000)]
    pub count: usize,
    /// Bytes per write: a multiple of 4096 for the direct writes.
    #[arg(long, default_value_t = 4096)]
    pub write_size: usize,
    /// Clients waiting for their reply, for the physical limit.
    #[arg(long, default_value_t = 50)]
    pub concurrency: u32,
    /// Print one JSON object as the last line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct TableArgs {
    /// Files of JSON reports, one per line; lines that are not JSON objects are skipped.
    /// Reads stdin when none is given.
    pub files: Vec<PathBuf>,
    /// A heading printed above the tables.
    #[arg(long)]
    pub title: Option<String>,
    /// A ratio column pair to show, `LABEL/BASE` (e.g. `kvmesh/redis`); repeatable. Default:
    /// every later label over the first.
    #[arg(long = "ratio", value_name = "LABEL/BASE")]
    pub ratios: Vec<String>,
}

/// What the load generator talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// kvmesh's wire protocol, cluster- and topology-aware: every key goes straight to its owner
    /// node's owning shard port (unless --via-addr).
    Kvmesh,
    /// RESP `GET`/`SET` (redis-server, or anything that speaks RESP2).
    Redis,
    /// kvmesh's gRPC API (`distributed_cache.DistributedCache` Get/Put), unary calls over
    /// HTTP/2 to the node's gRPC port, `--pipeline` concurrent streams per connection.
    Grpc,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Kvmesh => "kvmesh",
            Target::Redis => "redis",
            Target::Grpc => "grpc",
        }
    }
}

/// Options of a load run.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Protocol and server to drive.
    #[arg(long, value_enum, default_value_t = Target::Kvmesh)]
    pub target: Target,
    /// Server address HOST:PORT [default: 127.0.0.1:7000 for kvmesh, 127.0.0.1:6379 for redis,
    /// 127.0.0.1:50051 for grpc]. For kvmesh this is any wire port of the node; the shard ports
    /// come from its topology. For grpc it is the node's `--grpc` address.
    #[arg(long)]
    pub addr: Option<String>,
    /// kvmesh only: send every key to --addr itself instead of to its owner's shard port, so
    /// the node forwards what it does not own (to another shard, or another node): measures
    /// the cost of the hop.
    #[arg(long)]
    pub via_addr: bool,
    /// Connections in total, spread over the client cores (and, for kvmesh, over the shards in
    /// proportion to the share of the load each shard owns).
    #[arg(long, default_value_t = 50)]
    pub connections: usize,
    /// Requests in flight per connection (for grpc: concurrent HTTP/2 streams per connection).
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// grpc only: keys per call. Above 1, the load goes through the bytes API's batch calls,
    /// `distributed_cache.KvMesh` MultiGet and MultiPut (at most 1000 keys each); every key
    /// counts as one request, with its call's latency.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Size of the key space: keys `key:0000000000` .. `key:<keys-1>`.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u32,
    /// Key distribution: `uniform`, or `zipf:S` where the key of rank r has weight 1/(r+1)^S.
    #[arg(long, default_value = "uniform")]
    pub key_dist: KeyDist,
    /// Value size for SETs and the prefill (bytes; units B, KiB, MiB).
    #[arg(long, default_value = "100")]
    pub value_size: Bytes,
    /// Fraction of requests that are GETs (0 = SET only, 1 = GET only).
    #[arg(long, default_value_t = 0.9)]
    pub read_ratio: f64,
    /// Time to live of every SET, e.g. 30s; 0 = never expires.
    #[arg(long, default_value = "0")]
    pub ttl: Span,
    /// Length of the measured phase (after the warmup), e.g. 10s.
    #[arg(long, default_value = "10s", conflicts_with = "requests")]
    pub duration: Span,
    /// Measure exactly this many requests (after the warmup) instead of a duration.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Load before measuring, not counted in the results.
    #[arg(long, default_value = "2s")]
    pub warmup: Span,
    /// Open loop: send this many requests per second in total, on a fixed schedule, and
    /// measure latency from each request's intended send time (coordinated-omission corrected,
    /// as wrk2 does). Without it the run is closed loop: maximum throughput.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Client cores: one pinned worker per core, e.g. `1` or `0-3` [default: one unpinned worker
    /// per online core].
    #[arg(long)]
    pub cpus: Option<CpuList>,
    /// A request unanswered this long fails as a timeout; its connection is then reopened.
    #[arg(long, default_value = "1s")]
    pub timeout: Span,
    /// Skip the prefill (by default every key is SET once before the load, so GETs hit).
    #[arg(long, conflicts_with = "prefill_only")]
    pub no_prefill: bool,
    /// Only prefill, then report (with `--server-pid`: the server's resident memory per key).
    #[arg(long)]
    pub prefill_only: bool,
    /// Print one JSON object with the results as the last line of stdout.
    #[arg(long)]
    pub json: bool,
    /// Name of this run in the JSON report and in tables [default: the target].
    #[arg(long)]
    pub label: Option<String>,
    /// The server's process id (on this machine): report its CPU time per request (user +
    /// system time from /proc over the measured phase, all threads) and, with
    /// `--prefill-only`, its resident memory per key (RSS after the prefill minus before).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// More server processes whose CPU time counts with --server-pid's (the other nodes of a
    /// cluster), comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        requires = "server_pid",
        value_name = "PID,..."
    )]
    pub also_server_pid: Vec<u32>,
    /// Seed for key and operation choice; the same seed replays the same requests.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl RunArgs {
    /// Checks the flags against each other, with one message per problem.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        if self.target == Target::Grpc && self.ttl.0.subsec_nanos() != 0 {
            problems.push(format!(
                "--ttl {:?} is not whole seconds, and the gRPC API's ttl is seconds",
                self.ttl.0
            ));
        }
        if self.via_addr && self.target != Target::Kvmesh {
            problems.push("--via-addr is for --target kvmesh".into());
        }
        if self.connections == 0 {
            problems.push("--connections must be at least 1".into());
        }
        if self.pipeline == 0 {
            problems.push("--pipeline must be at least 1".into());
        }
        if self.batch == 0 || self.batch > 1000 {
            problems.push(format!(
                "--batch {} must be between 1 and 1000 (the bytes API's batch limit)",
                self.batch
            ));
        }
        if self.batch > 1 && self.target != Target::Grpc {
            problems.push("--batch needs --target grpc".into());
        }
        if self.keys == 0 {
            problems.push("--keys must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.read_ratio) {
            problems.push(format!(
                "--read-ratio {} must be between 0 and 1",
                self.read_ratio
            ));
        }
        if let Some(rate) = self.rate {
            if !(rate > 0.0 && rate.is_finite()) {
                problems.push(format!(
                    "--rate {rate} must be a positive number of requests per second"
                ));
            }
        }
        if self.requests.is_none() && self.duration.0.is_zero() && !self.prefill_only {
            problems.push("--duration must be longer than 0".into());
        }
        if self.requests == Some(0) {
            problems.push("--requests must be at least 1".into());
        }
        if self.timeout.0.is_zero() {
            problems.push("--timeout must be longer than 0".into());
        }
        if self.no_prefill && self.prefill_only {
            problems.push("--no-prefill and --prefill-only contradict each other".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("{}", problems.join("\n"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn run_args(argv: &[&str]) -> RunArgs {
        let argv = std::iter::once("kvmesh-bench").chain(argv.iter().copied());
        Cli::try_parse_from(argv).unwrap().run
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_are_valid() {
        let args = run_args(&[]);
        args.validate().unwrap();
        assert_eq!(
            (args.target, args.connections, args.pipeline, args.keys),
            (Target::Kvmesh, 50, 1, 100_000)
        );
    }

    #[test]
    fn grpc_ttl_is_whole_seconds() {
        run_args(&["--target", "grpc", "--ttl", "30s"])
            .validate()
            .unwrap();
        let err = run_args(&["--target", "grpc", "--ttl", "1500ms"])
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("whole seconds"), "{err}");
    }

    #[test]
    fn every_problem_is_reported() {
        let err = run_args(&["--pipeline", "0", "--read-ratio", "1.5"])
            .validate()
            .unwrap_err()
            .to_string();
        assert_eq!(err.lines().count(), 2, "{err}");
        assert!(
            Cli::try_parse_from(["kvmesh-bench", "--requests", "5", "--duration", "1s"]).is_err()
        );
    }

    #[test]
    fn subcommands_parse() {
        let cli = Cli::try_parse_from(["kvmesh-bench", "free-port", "--count", "3"]).unwrap();
        assert!(matches!(cli.command, Some(Command::FreePort { count: 3 })));
    }
}
