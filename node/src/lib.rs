pub mod net;
pub mod tls;
pub mod transport;
