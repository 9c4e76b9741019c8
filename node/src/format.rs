//! Human-readable renderings of control-socket answers (tables the CLI prints).

use lifeboat_actors::peers::Liveness;
use lifeboat_actors::shell::PeerView;
use lifeboat_protocol::time::human_duration;

fn list<T: ToString>(v: &[T]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.iter().map(T::to_string).collect::<Vec<_>>().join(",")
    }
}

fn kebab<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// Renders `lifeboat peers` as an aligned table.
pub fn peer_table(peers: &[PeerView]) -> String {
    let header = [
        "NODE ID",
        "NAME",
        "ROLES",
        "ADDRESSES",
        "FOUND BY",
        "STATE",
        "LAST CONTACT",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for p in peers {
        let age = p
            .last_contact_age_ms
            .map(|ms| format!("{} ago", human_duration(ms)))
            .unwrap_or_else(|| "never".into());
        let mut state = match p.state {
            Liveness::Reachable => "reachable",
            Liveness::Unreachable => "unreachable",
            Liveness::Seen => "seen",
        }
        .to_string();
        if !p.member {
            state.push_str(" (not a member)");
        }
        let roles: Vec<String> = p.roles.iter().map(kebab).collect();
        let found: Vec<String> = p.found_by.iter().map(kebab).collect();
        rows.push(vec![
            p.node_id.clone(),
            if p.name.is_empty() {
                "-".into()
            } else {
                p.name.clone()
            },
            list(&roles),
            list(&p.addrs),
            list(&found),
            state,
            age,
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            r.iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}
