//! Custos: a Kafka-protocol security and compliance gateway.
//!
//! A Kafka request's path through this crate, by file:
//! `server.rs` accepts the connection (TLS in `tls.rs`) and opens the upstream
//! one (`upstream.rs`); `session.rs` reads frames (`frame.rs`), decodes the
//! header (`message.rs`), checks the allow-list (`versions.rs`), runs the
//! stages (`pipeline.rs`, one file each under `stages/`), and forwards; the
//! response comes back through the same session and stages (large Fetch
//! answers partition by partition, `fetch_stream.rs`, or with their records
//! unread, `fetch_relay.rs`, moved socket to socket by `splice.rs`). Broker addresses
//! are mapped in `broker_map.rs`, topic ids to names in `topic_ids.rs` (for
//! share groups, which name topics only by id); `admin.rs` and `metrics.rs`
//! serve operators;
//! `config.rs` reads the one configuration file. Authorization is the
//! `authorize` stage (policies loaded by `policy_store.rs`, resource names read
//! by `resources.rs`); audit records travel with each exchange
//! (`audit_trail.rs`) and are made durable before the answer is released.

#![forbid(unsafe_code)]

pub mod admin;
pub mod audit_key;
pub mod audit_ship;
pub mod audit_trail;
pub mod auth;
pub mod broker_map;
pub mod config;
pub mod fetch_records;
pub mod fetch_relay;
pub mod fetch_stream;
pub mod field_rules;
pub mod frame;
pub mod handshake;
pub mod key_report;
pub mod message;
pub mod metrics;
pub mod pipeline;
pub mod policy_store;
pub mod produce_records;
pub mod protection;
pub mod record_batch;
pub mod resources;
pub mod server;
pub mod session;
pub mod splice;
pub mod stages;
pub mod stream;
pub mod subject_topic;
pub mod tls;
pub mod topic_ids;
pub mod upstream;
pub mod versions;
pub mod wire;
