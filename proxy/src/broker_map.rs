//! Which upstream broker each proxy address stands for.
//!
//! Clients must reach every broker through Custos, so each upstream broker id
//! gets its own proxy address and every answer naming a broker is rewritten to
//! it. Today an address is a port (`broker_port_base + node_id`) on one
//! advertised host; the [`Routing`] enum is where one host name per broker,
//! routed by TLS SNI on a single port, will be added.
//!
//! The map learns brokers from the Metadata-style answers passing through it
//! (and from its own periodic refresh), and opens a listener for a broker the
//! moment it first appears, before the answer naming it reaches the client.

use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::sync::{Mutex, RwLock};

use kafka_protocol::protocol::StrBytes;
use tokio::sync::mpsc;

/// A broker's real address, as the cluster advertises it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamAddr {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
}

/// How broker ids map to client-facing addresses.
#[derive(Debug, Clone)]
pub enum Routing {
    /// Broker `id` is served at `advertised_host:(base_port + id)`.
    PortPerBroker {
        /// Port of broker id 0.
        base_port: u16,
        /// Largest id that fits the port range.
        max_broker_id: u16,
    },
}

/// A new listener Custos must start serving.
#[derive(Debug)]
pub struct NewListener {
    /// Broker the listener stands for.
    pub broker_id: i32,
    /// The bound socket.
    pub listener: TcpListener,
}

/// The shared, learned map of broker ids to upstream and proxy addresses.
pub struct BrokerMap {
    advertised_host: StrBytes,
    listen_host: String,
    routing: Routing,
    upstream: RwLock<HashMap<i32, UpstreamAddr>>,
    bound: Mutex<HashSet<i32>>,
    new_listeners: mpsc::UnboundedSender<NewListener>,
}

impl BrokerMap {
    /// A map that binds new listeners on `listen_host` and hands them to the receiver.
    pub fn new(
        advertised_host: &str,
        listen_host: &str,
        routing: Routing,
    ) -> (Self, mpsc::UnboundedReceiver<NewListener>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let map = Self {
            advertised_host: StrBytes::from_string(advertised_host.to_string()),
            listen_host: listen_host.to_string(),
            routing,
            upstream: RwLock::new(HashMap::new()),
            bound: Mutex::new(HashSet::new()),
            new_listeners: tx,
        };
        (map, rx)
    }

    /// The host clients are told to connect to.
    pub fn advertised_host(&self) -> &StrBytes {
        &self.advertised_host
    }

    /// The client-facing port of broker `id`, if it fits the routing scheme.
    pub fn proxy_port(&self, id: i32) -> Option<u16> {
        match self.routing {
            Routing::PortPerBroker {
                base_port,
                max_broker_id,
            } => {
                if id < 0 || id > i32::from(max_broker_id) {
                    return None;
                }
                u16::try_from(i32::from(base_port) + id).ok()
            }
        }
    }

    /// The broker's real address, if known.
    pub fn upstream(&self, id: i32) -> Option<UpstreamAddr> {
        self.upstream.read().ok()?.get(&id).cloned()
    }

    /// Every known broker id with its real address.
    pub fn brokers(&self) -> Vec<(i32, UpstreamAddr)> {
        let mut v: Vec<_> = self
            .upstream
            .read()
            .map(|m| m.iter().map(|(k, v)| (*k, v.clone())).collect())
            .unwrap_or_default();
        v.sort_by_key(|(k, _)| *k);
        v
    }

    /// Records broker `id` at `host:port` and makes sure it has a listener.
    ///
    /// Returns the proxy port clients must use, or `None` when the id does
    /// not fit the routing scheme (logged; the caller must not leak the real
    /// address).
    pub fn learn(&self, id: i32, host: &str, port: i32) -> Option<u16> {
        let Some(proxy_port) = self.proxy_port(id) else {
            tracing::error!(
                broker_id = id,
                "broker id outside listen.max_broker_id; it cannot be exposed through Custos"
            );
            return None;
        };
        if let Ok(port) = u16::try_from(port) {
            let addr = UpstreamAddr {
                host: host.to_string(),
                port,
            };
            let known = self
                .upstream
                .read()
                .map(|m| m.get(&id) == Some(&addr))
                .unwrap_or(false);
            if !known {
                if let Ok(mut m) = self.upstream.write() {
                    tracing::info!(broker_id = id, upstream = %format!("{host}:{port}"), proxy_port, "learned broker");
                    m.insert(id, addr);
                }
            }
        }
        self.ensure_listener(id, proxy_port);
        Some(proxy_port)
    }

    fn ensure_listener(&self, id: i32, port: u16) {
        let Ok(mut bound) = self.bound.lock() else {
            return;
        };
        if bound.contains(&id) {
            return;
        }
        // Bound here, synchronously, so the port accepts connections before
        // the answer that names it is written to the client.
        match TcpListener::bind((self.listen_host.as_str(), port)).and_then(|l| {
            l.set_nonblocking(true)?;
            Ok(l)
        }) {
            Ok(listener) => {
                bound.insert(id);
                let _ = self.new_listeners.send(NewListener {
                    broker_id: id,
                    listener,
                });
            }
            Err(e) => tracing::error!(
                broker_id = id,
                port,
                error = %e,
                "cannot bind the listener for broker; clients will not reach it"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_brokers_and_binds_one_listener_each() {
        let (map, mut rx) = BrokerMap::new(
            "proxy.example",
            "127.0.0.1",
            Routing::PortPerBroker {
                base_port: 0,
                max_broker_id: 0,
            },
        );
        // Port 0 lets the OS choose, so the test does not clash with anything.
        assert_eq!(map.learn(0, "kafka-0", 9092), Some(0));
        assert_eq!(map.learn(0, "kafka-0", 9092), Some(0));
        assert_eq!(map.upstream(0).map(|a| a.port), Some(9092));
        let first = rx.try_recv().expect("one listener");
        assert_eq!(first.broker_id, 0);
        assert!(rx.try_recv().is_err(), "no second listener for the same id");
        // An id beyond the range is refused, never mapped.
        assert_eq!(map.learn(1, "kafka-1", 9092), None);
        assert!(map.upstream(1).is_none());
    }

    #[test]
    fn ports_follow_the_base() {
        let (map, _rx) = BrokerMap::new(
            "h",
            "127.0.0.1",
            Routing::PortPerBroker {
                base_port: 29100,
                max_broker_id: 100,
            },
        );
        assert_eq!(map.proxy_port(3), Some(29103));
        assert_eq!(map.proxy_port(101), None);
        assert_eq!(map.proxy_port(-1), None);
    }
}
