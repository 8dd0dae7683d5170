//! The edge link conformance suite on the in-process link, [`LocalEdges`].

use hubbub_registry::LocalEdges;
use hubbub_registry::conformance::{EdgeLinkEnv, LocalTestEdges};
use std::sync::Arc;
use std::time::Duration;

async fn local_env() -> EdgeLinkEnv {
    let edges = Arc::new(LocalEdges::default());
    EdgeLinkEnv {
        link: edges.clone(),
        edges: Arc::new(LocalTestEdges {
            edges,
            patience: Duration::from_secs(10),
        }),
        guard: Box::new(()),
    }
}

hubbub_registry::edge_link_conformance_tests!(local_env());
