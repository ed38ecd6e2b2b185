//! Client identity: who is on the other end of a connection.

pub mod client;
pub mod credentials;
pub mod plain;
pub mod principal;
pub mod scram;
