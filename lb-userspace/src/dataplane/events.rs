//! The XDP program's rare events (aya-log records, see lb-ebpf's `xlb/log.rs` and
//! `lb_common::log_gate`): read from the program's `AYA_LOGS` ring buffer with aya-log's
//! [`EbpfLogger`] and written to the daemon's log at debug level, target [`TARGET`]
//! (`RUST_LOG=info,xlb::xdp=debug` shows them), in words.
//!
//! The ring buffer belongs to the loaded program and is never pinned
//! (`lb_common::maps::PROGRAM_MAPS`): each daemon start loads a new program with its own,
//! takes its reader here before attaching, and replaces the old program (and its ring
//! buffer) through the pinned link. So the reader always reads the program that runs,
//! adoption sees no new pinned map, and records made while no daemon runs are lost with
//! the old program (the counters in `xlb stats` keep every packet).
//!
//! Owns the reader and the wording; must not touch anything else of the data plane.

use aya::Ebpf;
use aya_log::EbpfLogger;
use lb_common::{
    Stat,
    log_gate::{Event, INSERT_FAILED},
};
use log::{Level, Log, Metadata, Record};

/// The log target of the data plane's events.
pub const TARGET: &str = "xlb::xdp";

/// The reader of a loaded program's records.
pub type EventReader = EbpfLogger<Forward>;

/// Takes the reader of `ebpf`'s records (its `AYA_LOGS` map); `None` for an object built
/// without them.
pub fn reader(ebpf: &mut Ebpf) -> Option<EventReader> {
    EbpfLogger::init_with_logger(ebpf, Forward).ok()
}

/// Writes each record to the daemon's log at debug level, in words.
#[derive(Clone, Copy, Debug, Default)]
pub struct Forward;

impl Log for Forward {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        log::log_enabled!(target: TARGET, Level::Debug)
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            log::debug!(target: TARGET, "{}", describe(&record.args().to_string()));
        }
    }

    fn flush(&self) {}
}

/// A record's text in words (a text that is no event is passed on as it is).
pub fn describe(text: &str) -> String {
    let Some(e) = Event::parse(text) else {
        return format!("XDP: {text}");
    };
    let what = match e.stat() {
        Some(Stat::DropNoBackend) => format!(
            "drop_no_backend: service id {} has no backend that takes clients: its packets are dropped",
            e.a
        ),
        Some(Stat::DropNoTxPort) => format!(
            "drop_no_tx_port: backend id {} sits behind ifindex {}, which is not an egress port of the program (XLB_TX_PORTS): its packets are dropped",
            e.a, e.b
        ),
        Some(Stat::DropFragment) => {
            "drop_fragment: a fragment addressed to a VIP was dropped (a later fragment whose first was not seen, and no single service of its protocol on the VIP)"
                .into()
        }
        Some(Stat::DropIpv6ExtHeader) => {
            "drop_ipv6_ext_header: an IPv6 packet to a VIP with an extension header xlb does not walk (AH, ESP, mobility, HIP, shim6, 253/254, or more than six) was dropped"
                .into()
        }
        Some(Stat::DropMalformed) => {
            "drop_malformed: a packet to a VIP with a truncated TCP/UDP header was dropped".into()
        }
        Some(s) => format!("{}: a packet was dropped", s.name()),
        None if e.gate == INSERT_FAILED => format!(
            "insert_failed: a new client of service id {} could not be pinned to backend id {} (its bucket was busy); Maglev decided its packet, a later one pins it",
            e.a, e.b
        ),
        None => format!("XDP event {}", e.gate),
    };
    format!("{what} (the first this second; `xlb stats` counts every one)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_become_sentences_with_the_stats_names() {
        let d = describe("xlb event 8 3 17");
        assert!(
            d.starts_with("drop_no_tx_port: backend id 3 sits behind ifindex 17"),
            "{d}"
        );
        let d = describe(&format!("xlb event {INSERT_FAILED} 2 5"));
        assert!(
            d.starts_with("insert_failed: a new client of service id 2"),
            "{d}"
        );
        assert!(d.contains("backend id 5"), "{d}");
        let d = describe(&format!("xlb event {} 0 0", Stat::DropFragment as u32));
        assert!(d.starts_with("drop_fragment:"), "{d}");
        assert_eq!(
            describe("something else"),
            "XDP: something else",
            "foreign text passes"
        );
    }
}
