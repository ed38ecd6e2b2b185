//! Client identity: who is on the other end of a connection.

pub mod client;
pub mod credentials;
pub mod jwks;
pub mod mtls;
pub mod oauth;
pub mod plain;
pub mod principal;
pub mod scram;
