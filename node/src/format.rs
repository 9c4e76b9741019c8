//! Human-readable renderings of control-socket answers (tables the CLI prints).

use lifeboat_protocol::time::human_duration;
use serde_json::Value;

fn cell(v: &Value) -> String {
    match v {
        Value::Array(a) if a.is_empty() => "-".into(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Renders `lifeboat peers` as an aligned table.
pub fn peer_table(peers: &Value) -> String {
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
    for p in peers.as_array().map(|a| a.as_slice()).unwrap_or(&[]) {
        let age = p["last_contact_age_ms"]
            .as_u64()
            .map(|ms| format!("{} ago", human_duration(ms)))
            .unwrap_or_else(|| "never".into());
        let mut state = cell(&p["state"]);
        if p["member"] == false {
            state.push_str(" (not a member)");
        }
        rows.push(vec![
            cell(&p["node_id"]),
            cell(&p["name"]),
            cell(&p["roles"]),
            cell(&p["addrs"]),
            cell(&p["found_by"]),
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
