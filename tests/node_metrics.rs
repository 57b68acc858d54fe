//! End to end: `--metrics` serves Prometheus text on `/metrics`; scraped during a load, its
//! counters move, and once the load stops they agree with the client's own counts.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{op, wait_for, Node, PortBlock, WireClient, DEADLINE};
use kvmesh_proto::wire::{OpCode, Status};

/// `GET path` over HTTP/1.1; returns (status line, body).
fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect_timeout(&addr, DEADLINE).expect("connect to metrics");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: kvmesh\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read the metrics reply");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP reply");
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// Every sample of a scrape, by its name and labels as printed.
fn samples(body: &str) -> HashMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The sum over shards of `name` with these other labels (`op="put"`), or of all with none.
fn total(samples: &HashMap<String, f64>, name: &str, labels: &str) -> u64 {
    samples
        .iter()
        .filter(|(k, _)| {
            k.split('{').next() == Some(name) && (labels.is_empty() || k.contains(labels))
        })
        .map(|(_, v)| *v as u64)
        .sum()
}

#[test]
fn scraped_counters_move_under_load_and_match_the_clients_counts() {
    let metrics = PortBlock::reserve(1);
    let metrics_addr = metrics.addr();
    let node = Node::start(2, &["--metrics", &metrics_addr.to_string()]);

    let (status, body) = http_get(metrics_addr, "/metrics");
    assert!(status.contains("200"), "{status}");
    assert!(body.contains("# TYPE kvmesh_ops counter"), "{body}");
    assert!(
        body.contains("kvmesh_shard_serving{shard=\"1\"} 1"),
        "{body}"
    );
    let (status, _) = http_get(metrics_addr, "/elsewhere");
    assert!(status.contains("404"), "{status}");

    // The load: through the shared port, so about half the ops are forwarded.
    let stop = Arc::new(AtomicBool::new(false));
    let addr = node.addr;
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut c = WireClient::connect(addr);
            let (mut puts, mut gets, mut hits) = (0u64, 0u64, 0u64);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) || puts < 500 {
                let key = format!("key-{}", i % 300);
                c.put(key.as_bytes(), b"value");
                puts += 1;
                let r = c.call(vec![
                    op(OpCode::OpGet, key.as_bytes(), b"", 0),
                    op(OpCode::OpGet, format!("absent-{i}").as_bytes(), b"", 0),
                ]);
                gets += 2;
                hits += r.iter().filter(|r| r.status() == Status::Ok).count() as u64;
                i += 1;
            }
            (puts, gets, hits)
        })
    };

    // Scraped during the load, the counters move.
    let first = samples(&http_get(metrics_addr, "/metrics").1);
    let before = total(&first, "kvmesh_ops_total", "op=\"put\"");
    wait_for("the put counter to move during the load", || {
        let now = samples(&http_get(metrics_addr, "/metrics").1);
        (total(&now, "kvmesh_ops_total", "op=\"put\"") >= before + 200).then_some(())
    });
    let during = samples(&http_get(metrics_addr, "/metrics").1);
    assert!(total(&during, "kvmesh_connections_open", "") >= 1);
    stop.store(true, Ordering::Relaxed);
    let (puts, gets, hits) = load.join().unwrap();

    // After the load, they agree with what the client counted.
    let after = samples(&http_get(metrics_addr, "/metrics").1);
    assert_eq!(total(&after, "kvmesh_ops_total", "op=\"put\""), puts);
    assert_eq!(total(&after, "kvmesh_ops_total", "op=\"get\""), gets);
    assert_eq!(total(&after, "kvmesh_hits_total", ""), hits);
    assert_eq!(total(&after, "kvmesh_misses_total", ""), gets - hits);
    assert_eq!(total(&after, "kvmesh_keys", ""), 300.min(puts));
    assert!(total(&after, "kvmesh_bytes_used", "") > 0);
    assert_eq!(
        total(
            &after,
            "kvmesh_request_duration_seconds_count",
            "op=\"put\""
        ),
        puts
    );
    assert_eq!(
        total(
            &after,
            "kvmesh_request_duration_seconds_count",
            "op=\"get\""
        ),
        gets
    );
    assert_eq!(
        total(
            &after,
            "kvmesh_request_duration_seconds_bucket",
            "le=\"+Inf\",shard=\"0\",op=\"put\""
        ) + total(
            &after,
            "kvmesh_request_duration_seconds_bucket",
            "le=\"+Inf\",shard=\"1\",op=\"put\""
        ),
        puts
    );
    let forwarded_out = total(&after, "kvmesh_forwarded_out_total", "");
    assert!(forwarded_out > 0);
    assert_eq!(
        forwarded_out,
        total(&after, "kvmesh_forwarded_in_total", "")
    );
    // The same numbers as `kvmesh stats`, which reads the same counters.
    let stats = node.stats();
    assert_eq!(stats.iter().map(|s| s.puts).sum::<u64>(), puts);
}

#[test]
fn metrics_with_a_data_dir_count_the_log() {
    let metrics = PortBlock::reserve(1);
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(
        1,
        &[
            "--metrics",
            &metrics.addr().to_string(),
            "--data-dir",
            data.path().to_str().unwrap(),
        ],
    );
    let mut c = WireClient::connect(node.addr);
    for i in 0..50 {
        c.put(format!("k{i}").as_bytes(), b"v");
    }
    let after = samples(&http_get(metrics.addr(), "/metrics").1);
    // Sync markers are records too.
    assert!(total(&after, "kvmesh_wal_records_total", "") >= 50);
    let writes = total(&after, "kvmesh_wal_writes_total", "");
    assert!((1..=50).contains(&writes), "{writes}");
    assert!(total(&after, "kvmesh_wal_syncs_total", "") >= 1);
    assert!(total(&after, "kvmesh_wal_bytes_total", "") > 0);
}
