//! Everything that touches the kernel objects of the data plane: loading the XDP object
//! ([`loader`]), its maps, typed ([`maps`]; the affinity table mmapped, [`affinity`]), the pinned state under `pin_dir` — adoption,
//! creation of missing maps, migration, attachment, `xlb down` ([`pin`], [`migrate`],
//! [`attach`]) — the one lock that makes a single process the owner of a `pin_dir`
//! ([`lock`]), and the reader of the program's rare events ([`events`]).
//!
//! What maps exist, their layouts and their adoption rules are not decided here: they
//! come from the table in `lb_common::maps`. The decisions about services and backends
//! are not made here either (the controller's); this module only carries them out.
pub mod affinity;
pub mod attach;
pub mod events;
pub mod fastpath;
pub mod loader;
pub mod lock;
pub mod maps;
pub mod migrate;
pub mod pin;
pub mod probe;
