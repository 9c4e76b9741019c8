//! The actix actors that host the state machines in the daemon. Each is a thin shell: it owns
//! one state machine, feeds it `now` from the [`Clock`] seam, performs the returned actions
//! through the other seams, persists through [`StateStore`] and tells subscribers of changes.
//!
//! Mailboxes are bounded (actix's default capacity of 16 queued `send`s per sender); callers
//! from the network side use `try_send` for droppable traffic (heartbeats, discovery) and
//! `send().await` for requests, so a flood from the network backs up in the network task, not
//! in memory here.

use crate::mesh::{Mesh, MeshError, PskKind};
use crate::peers::{Liveness, PeerAction, PeerEntry, PeerTable, Source};
use crate::roles::RoleSet;
use crate::seams::{Announcement, Clock, Discovered, Discovery, Rng, StateStore, Transport};
use actix::prelude::*;
use lifeboat_config::state::RolesFile;
use lifeboat_protocol::handshake::PskId;
use lifeboat_protocol::message::{Member, MeshGrant, RegisterRefusal, RoleOp};
use lifeboat_protocol::regkey::RegistrationKey;
use lifeboat_protocol::{Message, NodeId, PublicKey, Role, UnixMillis};
use serde::Serialize;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

mod discovery;
mod mesh;
mod peers;
mod roles;

pub use discovery::*;
pub use mesh::*;
pub use peers::*;
pub use roles::*;
