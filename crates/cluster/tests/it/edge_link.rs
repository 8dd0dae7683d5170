//! The edge link conformance suite on the HTTP link: [`HttpEdges`] posting to real edge
//! internal listeners found in the Redis registry.

use crate::support::{ClusterEdges, SECRET, redis};
use hubbub_cluster::{HttpEdges, RedisRegistry};
use hubbub_registry::conformance::EdgeLinkEnv;
use std::sync::Arc;

async fn env() -> EdgeLinkEnv {
    let (conn, ns) = redis();
    let registry = RedisRegistry::new(conn, &ns);
    EdgeLinkEnv {
        link: Arc::new(HttpEdges::new(registry.clone(), SECRET).expect("link")),
        edges: Arc::new(ClusterEdges::new(registry)),
        guard: Box::new(()),
    }
}

hubbub_registry::edge_link_conformance_tests!(env());
