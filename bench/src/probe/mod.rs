//! `kvmesh-bench probe-server`: the physical limit of kvmesh's network path on this machine.
//!
//! A minimal server that speaks exactly kvmesh's wire frames for GET and SET (and answers
//! `OP_TOPOLOGY` as a one-shard node, so `kvmesh-bench --target kvmesh` drives it unchanged)
//! from a plain hash map: one thread, no shards, no log, no limits, no metrics. What kvmesh
//! spends per request beyond it is kvmesh's own overhead; what both spend is the kernel's.
//!
//! - [`frames`]: the codec, pure: requests decoded in place, replies encoded straight into the
//!   connection's output buffer.
//! - [`Store`]: the map and the one function that answers an op.
//! - [`epoll`]: one bare level-triggered epoll loop, as Redis's `ae` does: read once per ready
//!   connection, answer every whole frame, write the replies of one turn before waiting again.
//! - [`uring`]: one bare io_uring loop: a `recv` always in flight per connection, every `send`
//!   and `recv` of a turn submitted together by one `io_uring_enter`.
//!
//! Thread model: the calling thread runs the loop forever; pin it with `taskset`.

pub mod epoll;
pub mod frames;
pub mod uring;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};

use anyhow::Context;
use clap::{Args, ValueEnum};
use kvmesh_net::routing::SHARD_HASH_NAME;
use kvmesh_proto::wire::Topology;
use prost::Message;

use frames::{Answer, OpRef, OP_GET, OP_PUT, OP_TOPOLOGY, STATUS_NOT_FOUND};

#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// Address to listen on (port 0: any free port; the ready line names it).
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub listen: SocketAddr,
    /// The event loop.
    #[arg(long, value_enum, default_value_t = Mode::Epoll)]
    pub mode: Mode,
    /// `--mode uring`: set the ring up with `IORING_SETUP_DEFER_TASKRUN`, so completions are
    /// run only inside the loop's `io_uring_enter`, as kvmesh's glommio main rings are by
    /// default (see `vendor/README.md`; Linux 6.1 or later); `false`: `IORING_SETUP_COOP_TASKRUN`,
    /// run at the next system call's return.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub defer_taskrun: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// One level-triggered epoll loop with plain read and write calls.
    Epoll,
    /// One io_uring loop: recv and send operations, submitted in batches.
    Uring,
}

/// Runs the probe until the process is killed.
pub fn run(args: ProbeArgs) -> anyhow::Result<()> {
    let listener =
        TcpListener::bind(args.listen).with_context(|| format!("cannot bind {}", args.listen))?;
    let addr = listener.local_addr()?;
    let store = Store::new(addr.port());
    eprintln!("probe ready: {addr} ({:?})", args.mode);
    match args.mode {
        Mode::Epoll => epoll::serve(listener, store).context("epoll loop failed"),
        Mode::Uring => {
            uring::serve(listener, store, args.defer_taskrun).context("io_uring loop failed")
        }
    }
}

/// The probe's whole state: a plain hash map of keys to values.
pub struct Store {
    map: HashMap<Vec<u8>, Vec<u8>, ahash::RandomState>,
    /// `Topology` of a one-shard node whose shard port is the probe's own, encoded once.
    topology: Vec<u8>,
}

impl Store {
    pub fn new(port: u16) -> Self {
        let topology = Topology {
            node_id: 1,
            shards: 1,
            shard: 0,
            shard_ports: vec![u32::from(port)],
            shard_hash: SHARD_HASH_NAME.into(),
            cluster: "probe".into(),
            ..Topology::default()
        };
        Self {
            map: HashMap::default(),
            topology: topology.encode_to_vec(),
        }
    }

    /// Answers one op. A SET overwrites in place, reusing the old value's allocation when it
    /// fits; `ttl_ms` is ignored (the bench sends 0).
    pub fn execute<'s>(&'s mut self, op: &OpRef<'_>) -> Answer<'s> {
        match op.code {
            OP_GET => match self.map.get(op.key) {
                Some(value) => Answer::Value(value),
                None => Answer::Status(STATUS_NOT_FOUND, ""),
            },
            OP_PUT => {
                match self.map.get_mut(op.key) {
                    Some(value) => {
                        value.clear();
                        value.extend_from_slice(op.value);
                    }
                    None => {
                        self.map.insert(op.key.to_vec(), op.value.to_vec());
                    }
                }
                Answer::Ok
            }
            OP_TOPOLOGY => Answer::Topology(&self.topology),
            _ => Answer::Status(
                frames::STATUS_UNKNOWN_OPERATION,
                "the probe serves GET, PUT and TOPOLOGY only",
            ),
        }
    }
}

/// Answers every whole request frame at the front of `input` into `out`; returns the bytes
/// consumed, and whether the connection must close after `out` is sent (a refused frame).
pub fn answer_all(store: &mut Store, input: &[u8], out: &mut Vec<u8>) -> (usize, bool) {
    let mut pos = 0;
    loop {
        match frames::decode(&input[pos..], kvmesh_net::DEFAULT_MAX_FRAME) {
            Ok(Some((request, used))) => {
                let writer = frames::ResponseWriter::start(request.id, out);
                for op in request.ops() {
                    writer.answer(&store.execute(&op), out);
                }
                writer.finish(out);
                pos += used;
            }
            Ok(None) => return (pos, false),
            Err(e) => {
                frames::refusal(&e, out);
                return (pos, true);
            }
        }
    }
}

/// The bytes the frame at the front of `input` needs in all, when its prefix is buffered: the
/// caller grows its read buffer to that.
pub fn frame_len(input: &[u8]) -> Option<usize> {
    match kvmesh_net::frame::peek_len(input, kvmesh_net::DEFAULT_MAX_FRAME) {
        Ok(Some(len)) => Some(kvmesh_net::frame::PREFIX_LEN + len),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvmesh_net::frame;
    use kvmesh_proto::wire::{Op, OpCode, Request, Response, Status};

    fn request(id: u64, code: OpCode, key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let op = Op {
            code: code as i32,
            key: key.to_vec(),
            value: value.to_vec(),
            ..Op::default()
        };
        frame::encode(
            &Request {
                id,
                ops: vec![op],
                ..Request::default()
            },
            &mut out,
        );
        out
    }

    fn responses(mut out: &[u8]) -> Vec<Response> {
        let mut all = Vec::new();
        while let Some((r, used)) = frame::decode::<Response>(out, 1 << 20).unwrap() {
            all.push(r);
            out = &out[used..];
        }
        assert!(out.is_empty());
        all
    }

    #[test]
    fn set_then_get_then_miss_then_partial() {
        let mut store = Store::new(7000);
        let mut input = request(1, OpCode::OpPut, b"k", b"v1");
        input.extend(request(2, OpCode::OpPut, b"k", b"value two"));
        input.extend(request(3, OpCode::OpGet, b"k", b""));
        input.extend(request(4, OpCode::OpGet, b"nope", b""));
        let next = request(5, OpCode::OpTopology, b"", b"");
        input.extend(&next[..3]);
        let mut out = Vec::new();
        let (used, close) = answer_all(&mut store, &input, &mut out);
        assert_eq!((used, close), (input.len() - 3, false));
        let got = responses(&out);
        assert_eq!(got.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert_eq!(got[2].results[0].value, b"value two");
        assert_eq!(got[3].results[0].status(), Status::NotFound);
        assert_eq!(frame_len(&input[used..]), None);
        assert_eq!(frame_len(&next), Some(next.len()));

        out.clear();
        assert_eq!(answer_all(&mut store, &next, &mut out), (next.len(), false));
        let topology = responses(&out)[0].results[0].topology.clone().unwrap();
        assert_eq!((topology.shards, topology.shard_ports), (1, vec![7000]));
        assert_eq!(topology.shard_hash, SHARD_HASH_NAME);
    }

    #[test]
    fn a_bad_frame_is_refused_and_closes() {
        let mut store = Store::new(7000);
        let mut input = request(1, OpCode::OpGet, b"k", b"");
        input.extend([0, 0, 0, 2, 0x0a, 0]);
        let mut out = Vec::new();
        let (_, close) = answer_all(&mut store, &input, &mut out);
        assert!(close);
        let got = responses(&out);
        assert_eq!(got[1].error(), Status::MalformedFrame);
        assert_eq!(got[0].results[0].status(), Status::NotFound);
    }
}
