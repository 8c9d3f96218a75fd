//! Nothing assumes a single host: the coordinator and every node on its own address,
//! as on a LAN (Linux routes all of 127.0.0.0/8 to the loopback interface, so
//! 127.0.0.2, 127.0.0.3, … behave as distinct hosts), peers reaching each other only
//! through the addresses they advertise.

mod common;

use std::time::Duration;

use common::{Cluster, Process, metrics, small, summary};

/// A port that is free on `host` right now.
fn free_port(host: &str) -> u16 {
    // Below Linux's ephemeral range (32768-60999): a port the kernel handed out for
    // ":0" may be handed out again, to an outgoing connection of another test, before
    // the node binds it on every interface (CI saw "the port is in use").
    let start = 20_000 + (std::process::id() % 10_000) as u16;
    (start..32_000)
        .chain(20_000..start)
        .find(|&port| {
            // One at a time: each listener is closed before the next bind.
            let on_host = std::net::TcpListener::bind((host, port)).is_ok();
            on_host && std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
        })
        .expect("a free port below the ephemeral range")
}

/// A coordinator on `host`, with no node yet.
fn coordinator_on(label: &str, host: &str, overrides: &[String]) -> Cluster {
    Cluster::coordinator_on(label, host, overrides)
}

#[test]
fn nodes_on_distinct_addresses_exchange_through_the_addresses_they_advertise() {
    let rounds = 3;
    let mut cluster = coordinator_on("lan", "127.0.0.10", &small(4, rounds));
    assert!(cluster.coordinator.address.starts_with("127.0.0.10:"));
    // Three nodes, each bound to its own address (and advertising it).
    for (id, host) in [(0, "127.0.0.2"), (1, "127.0.0.3"), (2, "127.0.0.4")] {
        let i = cluster.start_node(id, "mlp:64", host);
        assert!(cluster.nodes[i].address.starts_with(&format!("{host}:")));
    }
    // The fourth as on a laptop: it listens on every interface and tells the others
    // the one address they can reach it at.
    let port = free_port("127.0.0.5");
    let advertised = format!("127.0.0.5:{port}");
    let mut args = cluster.node_args(3, "mlp:64", &format!("0.0.0.0:{port}"));
    args.extend(["--advertise".into(), advertised.clone()]);
    cluster.start_node_with(3, &args);

    let status = cluster.wait_for_end(Duration::from_secs(180));
    assert!(status.success(), "the coordinator failed");
    for node in &mut cluster.nodes {
        let status = node.wait_for(Duration::from_secs(30));
        assert!(
            status.is_some_and(|s| s.success()),
            "{} did not exit 0: {status:?}",
            node.name
        );
    }

    let s = summary(cluster.out());
    assert!(s.finished, "{}", s.reason);
    assert_eq!(s.rounds_closed, rounds);
    for node in &s.nodes {
        assert_eq!(node.status, "finished", "node {}", node.id);
        assert_eq!(node.rounds_reported, rounds, "node {}", node.id);
    }
    // The coordinator knows each node by the address it advertised (never 0.0.0.0),
    // and that is what it handed to the peers.
    let expected: Vec<String> = cluster.nodes[..3]
        .iter()
        .map(|p| p.address.clone())
        .chain([advertised])
        .collect();
    for (id, address) in expected.iter().enumerate() {
        assert!(
            s.events
                .iter()
                .any(|e| e.node == id as u32 && e.event == "joined" && e.reason.contains(address.as_str())),
            "node {id} did not join as {address}: {:?}",
            s.events
        );
    }
    assert!(!s.events.iter().any(|e| e.reason.contains("0.0.0.0")), "{:?}", s.events);

    // Every node heard its neighbours every round, across the distinct addresses.
    let rows = metrics(cluster.out());
    assert_eq!(rows.len(), 4 * rounds as usize, "4 nodes × {rounds} rounds");
    for row in &rows {
        assert!(
            row.metrics.messages_received > 0 && row.metrics.peers_heard > 0,
            "node {} heard nobody in round {}: {row:?}",
            row.node,
            row.round
        );
    }
}

#[test]
fn a_node_on_every_interface_without_an_advertised_address_is_refused() {
    let mut cluster = coordinator_on("lan-unspecified", "127.0.0.10", &small(1, 1));
    let args = cluster.node_args(0, "mlp:64", "0.0.0.0:0");
    let log = cluster.out().join("logs/node-0.log");
    let mut node = Process::start("node-0", &args, &log);
    let status = node
        .wait_for(Duration::from_secs(30))
        .expect("the node exits by itself");
    assert!(!status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("--advertise"), "the error names the flag: {text}");
    cluster.coordinator.kill();
}
