//! The gateway's settings and the `--peers` list (pure).

use std::net::SocketAddr;
use std::time::Duration;

/// One node the gateway forwards to: `ID=HOST:PORT`, the node's id and its wire port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub id: u32,
    pub addr: SocketAddr,
}

/// Validated settings of `kvmesh gateway`.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// The gRPC address every executor serves (SO_REUSEPORT).
    pub grpc: SocketAddr,
    /// The cluster's members (`--peers`); at least one, each id once.
    pub peers: Vec<Peer>,
    /// Executors (threads) serving gRPC, unpinned.
    pub executors: usize,
    /// Bounds each connect, write and reply wait on a node.
    pub timeout: Duration,
    /// Largest gRPC message accepted or sent, in bytes.
    pub grpc_max_message: usize,
}

/// Parses one `ID=HOST:PORT`.
pub fn parse_peer(s: &str) -> Result<Peer, String> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("peer {s:?} is not ID=HOST:PORT"))?;
    let id = id
        .trim()
        .parse()
        .map_err(|e| format!("peer {s:?}: node id {id:?} is not a number: {e}"))?;
    let addr = addr
        .trim()
        .parse()
        .map_err(|e| format!("peer {s:?}: {addr:?} is not HOST:PORT: {e}"))?;
    Ok(Peer { id, addr })
}

impl GatewayConfig {
    /// One clear message per problem.
    pub fn validate(&self) -> Result<(), String> {
        if self.peers.is_empty() {
            return Err(
                "--peers names no node: give the cluster's members as ID=HOST:PORT,... (their \
                 wire ports)"
                    .into(),
            );
        }
        for (i, peer) in self.peers.iter().enumerate() {
            if self.peers[..i].iter().any(|p| p.id == peer.id) {
                return Err(format!("--peers names node {} twice", peer.id));
            }
        }
        if self.executors == 0 {
            return Err("--threads must be at least 1".into());
        }
        if self.timeout.is_zero() {
            return Err("--timeout must be above zero".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers() {
        assert_eq!(
            parse_peer("7=127.0.0.1:7000"),
            Ok(Peer {
                id: 7,
                addr: "127.0.0.1:7000".parse().unwrap()
            })
        );
        for bad in ["127.0.0.1:7000", "x=127.0.0.1:7000", "7=localhost", "7="] {
            assert!(parse_peer(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn peers_are_required_and_unique() {
        let peer = parse_peer("1=127.0.0.1:7000").unwrap();
        let mut config = GatewayConfig {
            grpc: "127.0.0.1:50051".parse().unwrap(),
            peers: vec![peer.clone()],
            executors: 1,
            timeout: Duration::from_secs(2),
            grpc_max_message: 1 << 20,
        };
        assert_eq!(config.validate(), Ok(()));
        config.peers.push(parse_peer("2=127.0.0.1:7100").unwrap());
        assert_eq!(config.validate(), Ok(()));
        config.peers.push(peer);
        assert!(config.validate().unwrap_err().contains("twice"));
        config.peers.clear();
        assert!(config.validate().is_err());
    }
}
