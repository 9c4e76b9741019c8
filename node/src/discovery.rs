//! mDNS discovery (mdns-sd): announces this node as `_lifeboat._udp.local.` with a TXT record
//! (node id, key fingerprint, name, roles, port, mesh id, protocol version) and browses for the
//! others. Our own record is ignored. Resolved records go to a sink (the peers actor); the
//! daemon's monitor channel is watched and its errors logged.

use lifeboat_actors::seams::{Announcement, Discovered, Discovery};
use lifeboat_protocol::{NodeId, Role, MDNS_SERVICE};
use mdns_sd::{DaemonEvent, ServiceDaemon, ServiceEvent, ServiceInfo};
use std::net::SocketAddr;
use std::str::FromStr;

/// Longest TXT value accepted from the network.
const MAX_TXT: usize = 255;
/// Most addresses taken from one record.
const MAX_ADDRS: usize = 16;

/// mDNS announcer and browser.
pub struct MdnsDiscovery {
    /// The mdns-sd daemon (its own thread).
    daemon: ServiceDaemon,
    /// Full name of our registered service, once announced.
    fullname: Option<String>,
}

impl std::fmt::Debug for MdnsDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MdnsDiscovery({:?})", self.fullname)
    }
}

impl MdnsDiscovery {
    /// Starts browsing; every resolved peer other than `local` is passed to `sink`.
    pub fn start(
        local: NodeId,
        sink: impl Fn(Discovered) + Send + 'static,
    ) -> Result<Self, String> {
        let daemon = ServiceDaemon::new().map_err(|e| format!("mdns: {e}"))?;
        let browse = daemon
            .browse(MDNS_SERVICE)
            .map_err(|e| format!("mdns browse: {e}"))?;
        let monitor = daemon.monitor().map_err(|e| format!("mdns monitor: {e}"))?;
        std::thread::Builder::new()
            .name("lifeboat-mdns-browse".into())
            .spawn(move || {
                while let Ok(ev) = browse.recv() {
                    if let ServiceEvent::ServiceResolved(info) = ev {
                        match parse(&info) {
                            Ok(d) if d.node_id != local => sink(d),
                            Ok(_) => {}
                            Err(e) => tracing::debug!(record = %info.fullname, cause = %e, "ignoring mdns record"),
                        }
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        std::thread::Builder::new()
            .name("lifeboat-mdns-monitor".into())
            .spawn(move || {
                while let Ok(ev) = monitor.recv() {
                    match ev {
                        DaemonEvent::Error(e) => tracing::warn!(cause = %e, "mdns daemon error"),
                        DaemonEvent::IpAdd(ip) => tracing::debug!(%ip, "mdns: address added"),
                        DaemonEvent::IpDel(ip) => tracing::debug!(%ip, "mdns: address removed"),
                        _ => {}
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(MdnsDiscovery {
            daemon,
            fullname: None,
        })
    }

    /// Stops the mdns daemon.
    pub fn shutdown(&self) {
        let _ = self.daemon.shutdown();
    }
}

fn txt<'a>(info: &'a mdns_sd::ResolvedService, key: &str) -> Result<&'a str, String> {
    let v = info
        .txt_properties
        .get_property_val_str(key)
        .ok_or_else(|| format!("TXT lacks {key}"))?;
    if v.len() > MAX_TXT {
        return Err(format!("TXT {key} too long"));
    }
    Ok(v)
}

/// Parses a resolved record; everything from the network is validated.
fn parse(info: &mdns_sd::ResolvedService) -> Result<Discovered, String> {
    let node_id = NodeId::from_str(txt(info, "id")?).map_err(|e| e.to_string())?;
    let name = txt(info, "name")?.to_string();
    if lifeboat_config::validate_name(&name).is_err() {
        return Err("bad name".into());
    }
    let roles = txt(info, "roles")?
        .split(',')
        .filter(|s| !s.is_empty() && *s != "-")
        .map(Role::from_str)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let port: u16 = txt(info, "port")?
        .parse()
        .map_err(|_| "bad port".to_string())?;
    let addrs = info
        .addresses
        .iter()
        .take(MAX_ADDRS)
        .map(|ip| SocketAddr::new(ip.to_ip_addr(), port))
        .collect();
    Ok(Discovered {
        node_id,
        name,
        roles,
        addrs,
    })
}

impl Discovery for MdnsDiscovery {
    fn announce(&mut self, ann: &Announcement) {
        let id = ann.node_id.to_string();
        let roles = lifeboat_protocol::message::roles_to_string(&ann.roles);
        let port = ann.port.to_string();
        let ver = lifeboat_protocol::PROTOCOL_VERSION.to_string();
        let mesh = ann.mesh.clone().unwrap_or_default();
        let props = [
            ("id", id.as_str()),
            ("fp", ann.fingerprint.as_str()),
            ("name", ann.name.as_str()),
            ("roles", roles.as_str()),
            ("port", port.as_str()),
            ("mesh", mesh.as_str()),
            ("ver", ver.as_str()),
        ];
        let host = format!("lifeboat-{id}.local.");
        match ServiceInfo::new(MDNS_SERVICE, &id, &host, "", ann.port, &props[..]) {
            Ok(info) => {
                let info = info.enable_addr_auto();
                self.fullname = Some(info.get_fullname().to_string());
                if let Err(e) = self.daemon.register(info) {
                    tracing::warn!(cause = %e, "mdns announce failed");
                }
            }
            Err(e) => tracing::warn!(cause = %e, "mdns record invalid"),
        }
    }

    fn withdraw(&mut self) {
        if let Some(name) = self.fullname.take() {
            if let Ok(rx) = self.daemon.unregister(&name) {
                let _ = rx.recv_timeout(std::time::Duration::from_secs(1));
            }
        }
        self.shutdown();
    }
}
