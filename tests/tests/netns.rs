//! System test: three hosts (network namespaces) on one bridge, found by mDNS alone; cutting a
//! host's link shows it unreachable, restoring the link shows it back.

use lifeboat_tests::*;
use std::time::Duration;

#[test]
fn hosts_on_a_bridge_discover_by_mdns_and_track_a_cut_link() {
    assert!(
        can_netns(),
        "this test needs root and `ip netns` (CI runs as root)"
    );
    let seg = Segment::new(3);
    let t = Timing::default();
    let mut nodes: Vec<Node> = seg
        .hosts
        .iter()
        .enumerate()
        .map(|(i, (ns, _))| {
            Node::init(&format!("host{i}"), "0.0.0.0:9443", &[], true, &t).in_netns(&ns.name)
        })
        .collect();
    for n in nodes.iter_mut() {
        n.start();
    }
    let ids: Vec<String> = nodes.iter().map(Node::id).collect();
    for (i, v) in nodes.iter().enumerate() {
        for (j, id) in ids.iter().enumerate() {
            if i != j {
                let want = format!("{}:9443", seg.hosts[j].1);
                wait_until(
                    &format!("host{i} to discover host{j} by mDNS"),
                    WAIT,
                    || {
                        v.peer(id).is_some_and(|p| {
                            p["found_by"]
                                .as_array()
                                .is_some_and(|f| f.iter().any(|x| x == "mdns"))
                                && p["addrs"]
                                    .as_array()
                                    .is_some_and(|a| a.iter().any(|x| x == want.as_str()))
                        })
                    },
                );
            }
        }
    }
    form_mesh(&[&nodes[0], &nodes[1], &nodes[2]]);
    let all_reachable = |nodes: &[Node]| {
        for (i, v) in nodes.iter().enumerate() {
            for (j, id) in ids.iter().enumerate() {
                if i != j {
                    wait_until(&format!("host{i} to reach host{j}"), WAIT, || {
                        sees_reachable(v, id)
                    });
                }
            }
        }
    };
    all_reachable(&nodes);

    // Cut host2 off at the switch.
    seg.set_link(2, false);
    for i in [0, 1] {
        wait_until(
            &format!("host{i} to mark host2 unreachable"),
            Duration::from_secs(30),
            || {
                nodes[i]
                    .peer(&ids[2])
                    .is_some_and(|p| p["state"] == "unreachable")
            },
        );
    }
    wait_until(
        "host2 to mark the others unreachable",
        Duration::from_secs(30),
        || {
            [&ids[0], &ids[1]].iter().all(|id| {
                nodes[2]
                    .peer(id)
                    .is_some_and(|p| p["state"] == "unreachable")
            })
        },
    );
    // The other two still reach each other.
    assert!(sees_reachable(&nodes[0], &ids[1]));

    // Restore it: everyone is back.
    seg.set_link(2, true);
    all_reachable(&nodes);
}
