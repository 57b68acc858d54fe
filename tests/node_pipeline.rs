//! End to end: a pipelined burst, many frames in one write, is answered in request order with
//! what serving the frames one by one would answer. The fast path serves a run of frames at a
//! time (parsed, its gets read ahead, then run), and the general path's frames cut the runs.

mod common;

use std::collections::HashMap;

use common::{op, Node, WireClient};
use kvmesh_net::frame;
use kvmesh_proto::wire::{Op, OpCode, Request, Status};

/// What a request of these ops must get, per op, from a store that holds `model` (updated).
fn expect(model: &mut HashMap<Vec<u8>, Vec<u8>>, ops: &[Op]) -> Vec<(Status, Vec<u8>)> {
    ops.iter()
        .map(|op| match OpCode::try_from(op.code) {
            Ok(OpCode::OpPut) => {
                model.insert(op.key.clone(), op.value.clone());
                (Status::Ok, Vec::new())
            }
            Ok(OpCode::OpGet) => match model.get(&op.key) {
                Some(value) => (Status::Ok, value.clone()),
                None => (Status::NotFound, Vec::new()),
            },
            // A remove is OK whether or not the key was there.
            Ok(OpCode::OpRemove) => {
                model.remove(&op.key);
                (Status::Ok, Vec::new())
            }
            _ => (Status::UnknownOperation, Vec::new()),
        })
        .collect()
}

#[test]
fn a_burst_of_frames_is_answered_in_order_as_one_by_one() {
    let node = Node::start(1, &[]);
    let mut c = WireClient::connect(node.addr);
    let key = |i: usize| format!("key-{}", i % 11).into_bytes();
    let mut requests = Vec::new();
    for i in 0..300usize {
        let ops = match i % 9 {
            0 | 3 => vec![op(
                OpCode::OpPut,
                &key(i * 7),
                format!("v{i}").as_bytes(),
                0,
            )],
            1 => vec![op(OpCode::OpRemove, &key(i * 5), b"", 0)],
            // Several gets in one request, the same key twice.
            2 => vec![
                op(OpCode::OpGet, &key(i), b"", 0),
                op(OpCode::OpGet, &key(i + 1), b"", 0),
                op(OpCode::OpGet, &key(i), b"", 0),
            ],
            // Not plain: the general path answers it between two runs.
            4 if i % 4 == 0 => {
                let mut unknown = op(OpCode::OpGet, &key(i), b"", 0);
                unknown.code = 77;
                vec![unknown, op(OpCode::OpGet, &key(i + 2), b"", 0)]
            }
            _ => vec![op(OpCode::OpGet, &key(i * 3), b"", 0)],
        };
        requests.push(Request {
            id: i as u64 + 1,
            ops,
            ..Request::default()
        });
    }
    // Twice: into an empty store, then over what the first burst left.
    let mut model = HashMap::new();
    for _ in 0..2 {
        let mut bytes = Vec::new();
        for request in &requests {
            frame::encode(request, &mut bytes);
        }
        c.send_raw(&bytes);
        for request in &requests {
            let response = c.recv().expect("a reply");
            assert_eq!(response.id, request.id, "replies in request order");
            let got: Vec<(Status, Vec<u8>)> = response
                .results
                .iter()
                .map(|r| (r.status(), r.value.clone()))
                .collect();
            assert_eq!(
                got,
                expect(&mut model, &request.ops),
                "request {}",
                request.id
            );
        }
    }
}
