//! The I/O shell of a Lifeboat node: real implementations of the seams (QUIC+Noise transport,
//! mDNS discovery, system clock, OS randomness, state-dir persistence), the daemon assembly and
//! its local control socket.

pub mod control;
pub mod daemon;
pub mod direct_io;
pub mod discovery;
pub mod disk;
pub mod failpoint;
pub mod format;
pub mod init;
pub mod jobs;
pub mod metrics;
pub mod net;
pub mod quickstart;
mod quickstart_recovery;
pub mod replication;
pub mod replies;
pub mod seams;
pub mod tls;
pub mod transport;
pub mod vault;
pub mod webhook;
