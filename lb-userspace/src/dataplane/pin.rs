//! Pinned state under `pin_dir`: the maps and one XDP link per interface, and how a new
//! daemon adopts what an earlier one (of this or another release) left.
//!
//! Layout:
//! ```text
//! <pin_dir>/maps/<MAP_NAME>        every map of lb_common::maps::MAPS
//! <pin_dir>/migrating/<MAP_NAME>   an old map set aside while its contents move to a map
//!                                  of the new layout (only during an adoption)
//! <pin_dir>/link_<ifname>          the bpf_link attaching xlb to that interface
//! ```
//!
//! Adoption, in order ([`survey`] reads and decides, touching nothing; [`load_pinned`]
//! carries it out; [`finish_migrations`] ends it once the new program is attached):
//! 1. every pinned map is classified against the catalog: kept (same layout), to migrate
//!    (a known old layout, or another size where the map allows it), retired (removed),
//!    or unknown — then nothing is touched and the start is refused. State whose
//!    `XLB_META` format is newer than this build's is refused the same way;
//! 2. maps the state lacks (a release added them) are created by the loader, every other
//!    map and pin kept;
//! 3. a migration is crash-safe: the new map is created and the program verified first;
//!    then the old pin is renamed into `migrating/`, the new map pinned in its place and
//!    the contents converted; the old pin is removed only after the new program replaced
//!    the old one (whose map it still is) and a second conversion pass caught what it
//!    wrote meanwhile. A start interrupted anywhere finds `migrating/NAME` and finishes the
//!    job (the conversions never overwrite a newer entry).
//!
//! The new program replaces the old one atomically through the pinned link
//! (`bpf_link_update`), so traffic never stops. A link whose interface was deleted and
//! re-created is severed; it is replaced by a new attachment. Pins keep maps and links
//! alive when the daemon dies; only `xlb down` removes them.
//!
//! Callers hold the pin-dir lock ([`super::lock`]) around all of this. This module never
//! decides or writes map contents (services, backends, slots: the controller's, through
//! [`super::maps`]); it only moves whole maps, and their contents only through the
//! converters of [`super::migrate`].

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{Array, MapData},
    programs::{
        Xdp,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpMode},
    },
};
use lb_common::{
    Backend, MAP_AFFINITY, MAP_BACKENDS, MAP_MAGLEV, MAP_META, MAP_SERVICES, MAP_SVC_IDLE,
    MAX_SERVICES, PROG_XLB, SVC_F_VIP_MARKER, ServiceKey, ServiceValue,
    affinity::table::timeout_units,
    maps::{CATALOG, Catalog, Conversion, Layout, META_FORMAT, MapDef, MapKind, Meta, OnResize},
};
use log::info;

use super::{
    affinity, attach,
    loader::{self, Globals, LoadError, LoadOptions, XLB_OBJECT},
    migrate::{self, Converted, MigrateError},
};

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "pinned state under {pin_dir} holds maps this xlb does not know: {names:?}. It was \
         written by a newer release of xlb (a rollback?); nothing was changed. Run that \
         release again, or remove the state with `xlb down --pin-dir {pin_dir}` (this drops \
         every affinity pin)"
    )]
    Unknown {
        pin_dir: PathBuf,
        names: Vec<String>,
    },
    #[error(
        "pinned map {path} has a layout this xlb cannot adopt: it is {found}, this build \
         needs {expected}{hint}; nothing was changed. Keep the binary and config that made \
         it, or run `xlb down --pin-dir {pin_dir}` to start over (this drops every affinity \
         pin)"
    )]
    UnknownLayout {
        path: PathBuf,
        pin_dir: PathBuf,
        found: String,
        expected: String,
        hint: &'static str,
    },
    #[error(
        "pinned state under {pin_dir} has format {found}, newer than this xlb's \
         ({META_FORMAT}): it was written by a newer release; nothing was changed. Run that \
         release again, or `xlb down --pin-dir {pin_dir}` to start over (this drops every \
         affinity pin)"
    )]
    NewerFormat { pin_dir: PathBuf, found: u32 },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading pinned map {path}: {source}")]
    Map {
        path: PathBuf,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("migrating pinned map {name}: {source}")]
    Migrate {
        name: &'static str,
        #[source]
        source: Box<MigrateError>,
    },
    #[error("loading the xlb object: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("preparing the affinity table: {0}")]
    Table(#[source] Box<LoadError>),
    #[error("the verifier rejected the xlb program: {0}")]
    Verify(#[source] Box<aya::programs::ProgramError>),
    #[error("attaching XDP to {ifname} in {mode} mode failed: {detail}{hint}")]
    Attach {
        ifname: String,
        mode: &'static str,
        hint: String,
        /// The kernel's answer, with its causes (the hint must come last).
        detail: String,
    },
    #[error("pinned link {path}: {source}")]
    Link {
        path: PathBuf,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
}

type Result<T> = std::result::Result<T, PinError>;

/// An error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

pub fn maps_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("maps")
}

/// Where an old map waits while its contents move to the new layout.
pub fn aside_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("migrating")
}

pub fn link_path(pin_dir: &Path, ifname: &str) -> PathBuf {
    pin_dir.join(format!("link_{ifname}"))
}

/// What `pin_dir` holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// Nothing pinned: a fresh start.
    Nothing,
    /// Pinned state this build can adopt (see the [`Survey`] for what changes).
    Compatible,
}

/// One map whose contents move into a map of the layout this build needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Migration {
    pub name: &'static str,
    /// The old map's layout.
    pub from: Layout,
    /// The layout this build creates.
    pub to: Layout,
    pub conversion: Conversion,
    /// The old map was already set aside by an interrupted start: this one finishes it.
    pub resumed: bool,
}

/// What adoption will do to the pinned state, decided before anything is touched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Survey {
    pub found: Found,
    /// Maps adopted as they are.
    pub kept: Vec<&'static str>,
    /// Maps the state lacks; created (for a fresh start: every map).
    pub created: Vec<&'static str>,
    /// Pinned maps of earlier releases this one no longer has; removed.
    pub retired: Vec<String>,
    pub migrations: Vec<Migration>,
    /// `XLB_META.format` of the pinned state (`None`: no meta map pinned).
    pub format: Option<u32>,
}

impl Survey {
    /// One log line per change adoption makes (nothing for a fresh start).
    pub fn describe(&self) -> Vec<String> {
        if self.found == Found::Nothing {
            return Vec::new();
        }
        let mut out = Vec::new();
        for name in &self.created {
            out.push(format!(
                "pinned state lacks map {name} (an earlier release had none): creating it; \
                 every other map and pin is kept"
            ));
        }
        for name in &self.retired {
            out.push(format!(
                "pinned map {name} is retired (this release no longer uses it): removing it"
            ));
        }
        for m in &self.migrations {
            out.push(format!(
                "pinned map {} {}: {} → {} ({:?})",
                m.name,
                if m.resumed {
                    "was being migrated when a start was interrupted; finishing"
                } else {
                    "has another layout this build knows; migrating its contents"
                },
                describe(&m.from),
                describe(&m.to),
                m.conversion
            ));
        }
        out
    }
}

/// `lru_hash, key 24 B, value 24 B, 65536 entries, flags 0x0`.
pub fn describe(l: &Layout) -> String {
    let kinds = [
        MapKind::Hash,
        MapKind::Array,
        MapKind::PerCpuArray,
        MapKind::LruHash,
        MapKind::DevMapHash,
        MapKind::RingBuf,
        MapKind::LpmTrie,
    ];
    let kind = kinds
        .iter()
        .find(|k| k.bpf_type() == l.map_type)
        .map_or_else(
            || format!("map type {}", l.map_type),
            |k| k.name().to_string(),
        );
    format!(
        "{kind}, key {} B, value {} B, {} entries, flags {:#x}",
        l.key_size, l.value_size, l.max_entries, l.flags
    )
}

/// Names in a directory (empty when it does not exist), sorted.
fn names_in(dir: &Path) -> Result<Vec<String>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(PinError::Io {
                what: "listing",
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut out: Vec<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    Ok(out)
}

fn layout_at(path: &Path) -> Result<Layout> {
    migrate::layout_of(path).map_err(|e| match e {
        MigrateError::Open { path, source } | MigrateError::Op { path, source, .. } => {
            PinError::Map { path, source }
        }
        e @ MigrateError::Table { .. } => PinError::Migrate {
            name: MAP_AFFINITY,
            source: Box::new(e),
        },
    })
}

/// Classifies the pinned state against this build's catalog. Reads only.
pub fn survey(pin_dir: &Path, opts: &LoadOptions) -> Result<Survey> {
    survey_with(pin_dir, opts, &CATALOG)
}

/// [`survey`] against another catalog (tests describe other releases this way).
pub fn survey_with(pin_dir: &Path, opts: &LoadOptions, catalog: &Catalog) -> Result<Survey> {
    let pinned = names_in(&maps_dir(pin_dir))?;
    let aside = names_in(&aside_dir(pin_dir))?;
    let unknown: Vec<String> = pinned
        .iter()
        .chain(&aside)
        .filter(|n| catalog.map(n).is_none() && !catalog.is_retired(n))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(PinError::Unknown {
            pin_dir: pin_dir.to_path_buf(),
            names: unknown,
        });
    }
    let mut s = Survey {
        found: if pinned.is_empty() && aside.is_empty() {
            Found::Nothing
        } else {
            Found::Compatible
        },
        kept: Vec::new(),
        created: Vec::new(),
        retired: pinned
            .iter()
            .chain(&aside)
            .filter(|n| catalog.is_retired(n))
            .cloned()
            .collect(),
        migrations: Vec::new(),
        format: None,
    };
    let sizes = opts.sizes();
    for def in catalog.maps {
        let want = def.layout(&sizes);
        let path = maps_dir(pin_dir).join(def.name);
        let here = pinned.iter().any(|n| n == def.name);
        let old = aside.iter().any(|n| n == def.name);
        let found = here.then(|| layout_at(&path)).transpose()?;
        match (found, old) {
            (None, false) => s.created.push(def.name),
            (Some(l), false) if l == want => s.kept.push(def.name),
            (Some(l), false) => s
                .migrations
                .push(migration(pin_dir, &path, def, l, want, catalog)?),
            (found, true) => {
                // The new map (if the interrupted start got that far) must be this build's.
                if let Some(l) = found.filter(|l| *l != want) {
                    return Err(unknown_layout(pin_dir, &path, def, &l, &want));
                }
                let old_path = aside_dir(pin_dir).join(def.name);
                let mut m = migration(
                    pin_dir,
                    &old_path,
                    def,
                    layout_at(&old_path)?,
                    want,
                    catalog,
                )?;
                m.resumed = true;
                s.migrations.push(m);
            }
        }
    }
    if s.kept.contains(&MAP_META) {
        let format = read_meta(&maps_dir(pin_dir).join(MAP_META))?.format;
        if format > META_FORMAT {
            return Err(PinError::NewerFormat {
                pin_dir: pin_dir.to_path_buf(),
                found: format,
            });
        }
        s.format = Some(format);
    }
    Ok(s)
}

/// How the map pinned at `path` with layout `found` becomes `def` with layout `want`.
fn migration(
    pin_dir: &Path,
    path: &Path,
    def: &MapDef,
    found: Layout,
    want: Layout,
    catalog: &Catalog,
) -> Result<Migration> {
    let conversion = match (def.on_resize, catalog.old_layout(def.name, &found)) {
        (_, Some(old)) => old.conversion,
        (OnResize::Migrate(c), None) if found.same_but_size(&want) => c,
        _ => return Err(unknown_layout(pin_dir, path, def, &found, &want)),
    };
    Ok(Migration {
        name: def.name,
        from: found,
        to: want,
        conversion,
        resumed: false,
    })
}

fn unknown_layout(
    pin_dir: &Path,
    path: &Path,
    def: &MapDef,
    found: &Layout,
    want: &Layout,
) -> PinError {
    let hint = match def.name {
        MAP_MAGLEV if found.same_but_size(want) => " (the Maglev array size changed)",
        MAP_AFFINITY | lb_common::MAP_AFF_KEYS if found.same_but_size(want) => {
            " (daemon.affinity_capacity changed)"
        }
        _ => "",
    };
    PinError::UnknownLayout {
        path: path.to_path_buf(),
        pin_dir: pin_dir.to_path_buf(),
        found: describe(found),
        expected: describe(want),
        hint,
    }
}

fn read_meta(path: &Path) -> Result<Meta> {
    let err = |source| PinError::Map {
        path: path.to_path_buf(),
        source,
    };
    let data = MapData::from_pin(path).map_err(err)?;
    let map: Array<MapData, Meta> = Array::try_from(aya::maps::Map::Array(data)).map_err(err)?;
    map.get(&0, 0).map_err(err)
}

/// An adopted (or fresh) data plane: the object loaded with every map pinned and the
/// program verified, not attached; and the migrations to end after attaching.
pub struct Loaded {
    pub ebpf: Ebpf,
    /// Give to [`finish_migrations`] once the program is attached.
    pub pending: Vec<Migration>,
}

/// Carries out `survey` (from [`survey`] on the same `pin_dir` and `opts`, under the
/// pin-dir lock): retired maps removed, missing maps created, migrations converted, the
/// meta map initialised; loads the object on the result and verifies the program.
pub fn load_pinned(pin_dir: &Path, opts: &LoadOptions, survey: &Survey) -> Result<Loaded> {
    let dir = maps_dir(pin_dir);
    mkdir(&dir)?;
    for name in &survey.retired {
        for path in [dir.join(name), aside_dir(pin_dir).join(name)] {
            if path.exists() {
                remove(&path)?;
                info!("removed retired pinned map {}", path.display());
            }
        }
    }
    // A map being migrated for the first time is created unpinned (its pin still names
    // the old map) and pinned only after the program verified.
    let fresh_migrations: Vec<&'static str> = survey
        .migrations
        .iter()
        .filter(|m| !m.resumed)
        .map(|m| m.name)
        .collect();
    // The table's seed: the one its pinned entries were placed with (a kept table, the
    // new table of an interrupted migration, or the old table of a capacity change —
    // any seed suits an empty table), else a fresh one.
    let seed = affinity::pinned_seed(&dir.join(MAP_AFFINITY)).unwrap_or_else(affinity::random_seed);
    let globals = Globals::new(opts, seed);
    let mut loader = loader::loader(opts, &globals);
    for def in CATALOG.maps {
        if !fresh_migrations.contains(&def.name) {
            loader.map_pin_path(def.name, dir.join(def.name));
        }
    }
    let mut ebpf = loader
        .load(XLB_OBJECT)
        .map_err(|e| PinError::Load(Box::new(e)))?;
    loader::initialise_table(&ebpf, seed).map_err(|e| PinError::Table(Box::new(e)))?;
    xdp_program(&mut ebpf)
        .load()
        .map_err(|e| PinError::Verify(Box::new(e)))?;
    init_meta(&mut ebpf, survey)?;
    sync_service_idle(&mut ebpf)?;
    // Every old map aside first: a conversion may read several (the table and its keys).
    for m in survey.migrations.iter().filter(|m| !m.resumed) {
        set_aside(pin_dir, &ebpf, m.name)?;
    }
    for m in &survey.migrations {
        let done = convert(pin_dir, m)?;
        info!("migrated pinned map {}: {}", m.name, summary(&done));
    }
    Ok(Loaded {
        ebpf,
        pending: survey.migrations.clone(),
    })
}

/// `XLB_SVC_IDLE` and `XLB_SVC_FAST` from the services map: state pinned before they
/// existed (or written by a controller that did not keep them) gets every service's
/// timeout and fast-path copy before the program runs.
fn sync_service_idle(ebpf: &mut Ebpf) -> Result<()> {
    let err = |source| PinError::Map {
        path: PathBuf::from(MAP_SVC_IDLE),
        source,
    };
    let services: Vec<(ServiceKey, ServiceValue)> = {
        let map = ebpf.map(MAP_SERVICES).expect("services map");
        let services: aya::maps::HashMap<&MapData, ServiceKey, ServiceValue> =
            aya::maps::HashMap::try_from(map).map_err(err)?;
        services
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(_, v)| v.flags & SVC_F_VIP_MARKER == 0 && v.id < MAX_SERVICES)
            .collect()
    };
    if let Some(aya::maps::Map::Array(data)) = ebpf.map(lb_common::MAP_SVC_FAST) {
        let mut fast = super::fastpath::FastServices::new(data)
            .map_err(|e| PinError::Table(Box::new(LoadError::Table(e))))?;
        for (k, v) in &services {
            fast.set(k, v);
        }
    }
    let map = ebpf.map_mut(MAP_SVC_IDLE).expect("service idle map");
    let mut idle: Array<&mut MapData, u32> = Array::try_from(map).map_err(err)?;
    for (_, v) in services {
        idle.set(v.id, timeout_units(v.idle_timeout_ns), 0)
            .map_err(err)?;
    }
    Ok(())
}

/// Renames the old pin of `name` into `migrating/` and pins the new map in its place.
fn set_aside(pin_dir: &Path, ebpf: &Ebpf, name: &'static str) -> Result<()> {
    let (from, to) = (maps_dir(pin_dir).join(name), aside_dir(pin_dir).join(name));
    mkdir(&aside_dir(pin_dir))?;
    fs::rename(&from, &to).map_err(|source| PinError::Io {
        what: "setting aside",
        path: from.clone(),
        source,
    })?;
    let map = ebpf.map(name).expect("every table map is in the object");
    map.pin(&from)
        .map_err(|source| PinError::Pin { path: from, source })
}

fn convert(pin_dir: &Path, m: &Migration) -> Result<Converted> {
    migrate::convert(
        m.conversion,
        &aside_dir(pin_dir).join(m.name),
        &maps_dir(pin_dir).join(m.name),
    )
    .map_err(|source| PinError::Migrate {
        name: m.name,
        source: Box::new(source),
    })
}

fn summary(c: &Converted) -> String {
    format!(
        "{} entries read, {} written, {} already there, {} not kept",
        c.read, c.written, c.already, c.lost
    )
}

/// Ends the migrations once the new program is attached: a last conversion pass catches
/// what the old program wrote since the first, then the old map's pin is removed (the map
/// itself goes with the old program).
pub fn finish_migrations(pin_dir: &Path, pending: &[Migration]) -> Result<()> {
    for m in pending {
        let done = convert(pin_dir, m)?;
        remove(&aside_dir(pin_dir).join(m.name))?;
        info!(
            "migration of {} finished ({} late entries caught); the old map's pin is removed",
            m.name, done.written
        );
    }
    if !pending.is_empty() {
        let _ = fs::remove_dir(aside_dir(pin_dir));
    }
    Ok(())
}

/// Writes this build's format into `XLB_META`, and when the map was just created for
/// state that predates it, starts the generation counter above every generation the
/// backends array holds (removed backends' generations are gone; the data plane's
/// service check covers an id reissued to another service, see lb_common::affinity).
fn init_meta(ebpf: &mut Ebpf, survey: &Survey) -> Result<()> {
    let err = |source| PinError::Map {
        path: PathBuf::from(MAP_META),
        source,
    };
    let next = if survey.found == Found::Compatible && survey.created.contains(&MAP_META) {
        let map = ebpf.map(MAP_BACKENDS).expect("backends map");
        let backends: Array<&MapData, Backend> = Array::try_from(map).map_err(err)?;
        let max = backends
            .iter()
            .filter_map(|b| b.ok())
            .map(|b| b.generation)
            .max()
            .unwrap_or(0);
        Some(max.saturating_add(1).max(1))
    } else {
        None
    };
    let map = ebpf.map_mut(MAP_META).expect("meta map");
    let mut meta_map: Array<&mut MapData, Meta> = Array::try_from(map).map_err(err)?;
    let mut meta = meta_map.get(&0, 0).map_err(err)?;
    if let Some(n) = next {
        meta.next_generation = n;
        info!("initialised the durable generation counter at {n} (state older than {MAP_META})");
    }
    meta.format = META_FORMAT;
    meta_map.set(0, meta, 0).map_err(err)
}

fn xdp_program(ebpf: &mut Ebpf) -> &mut Xdp {
    ebpf.program_mut(PROG_XLB)
        .expect("the xlb object has the xlb program")
        .try_into()
        .expect("xlb is an XDP program")
}

fn mkdir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|source| PinError::Io {
        what: "creating",
        path: dir.to_path_buf(),
        source,
    })
}

fn remove(path: &Path) -> Result<()> {
    fs::remove_file(path).map_err(|source| PinError::Io {
        what: "removing",
        path: path.to_path_buf(),
        source,
    })
}

/// How the program was attached to one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attached {
    /// A new link, now pinned.
    New,
    /// The pinned link of an earlier daemon, its program replaced atomically.
    Replaced,
    /// The pinned link was severed (its interface was deleted and re-created): replaced
    /// by a new attachment, pinned in its place.
    Reattached,
}

/// Attaches xlb to `ifname` through a pinned link: replaces the program of an existing
/// pinned link atomically, or creates and pins a new link. A failure names its cause
/// ([`attach::diagnose`]).
pub fn attach(ebpf: &mut Ebpf, pin_dir: &Path, ifname: &str, generic: bool) -> Result<Attached> {
    let path = link_path(pin_dir, ifname);
    if path.exists() {
        match replace_through_link(ebpf, &path, ifname, generic) {
            Err(PinError::Attach { detail, .. }) if detail.contains(SEVERED) => {
                // The kernel detached the link when its interface went away; nothing
                // holds the interface now but the dead link's pin.
                remove(&path)?;
                info!(
                    "the pinned link of {ifname} was severed (the interface was deleted and \
                     re-created): attaching anew; maps and pins are kept"
                );
                attach_new(ebpf, &path, ifname, generic)?;
                return Ok(Attached::Reattached);
            }
            r => return r.map(|()| Attached::Replaced),
        }
    }
    attach_new(ebpf, &path, ifname, generic)?;
    Ok(Attached::New)
}

/// Marker put into the error detail when `bpf_link_update` answers ENOLINK.
const SEVERED: &str = "(link severed)";

fn mode_name(generic: bool) -> &'static str {
    if generic { "generic" } else { "native" }
}

fn replace_through_link(ebpf: &mut Ebpf, path: &Path, ifname: &str, generic: bool) -> Result<()> {
    let pinned = PinnedLink::from_pin(path).map_err(|source| PinError::Link {
        path: path.to_path_buf(),
        source,
    })?;
    // Keep the pin: the link must outlive this daemon.
    let fd_link: FdLink = pinned.into();
    let link = XdpLink::try_from(fd_link).map_err(|source| PinError::Link {
        path: path.to_path_buf(),
        source,
    })?;
    let prog = xdp_program(ebpf);
    let id = prog.attach_to_link(link).map_err(|source| {
        let mut detail = chain(&source);
        if attach::errno(&source) == Some(libc::ENOLINK) {
            detail.push(' ');
            detail.push_str(SEVERED);
        }
        PinError::Attach {
            ifname: ifname.to_string(),
            mode: mode_name(generic),
            hint: String::new(),
            detail,
        }
    })?;
    // Take the link out of the program's care so dropping the program (daemon exit)
    // does not detach it; the pin keeps it alive.
    let _ = prog.take_link(id);
    Ok(())
}

fn attach_new(ebpf: &mut Ebpf, path: &Path, ifname: &str, generic: bool) -> Result<()> {
    let mode = if generic {
        XdpMode::Skb
    } else {
        XdpMode::Driver
    };
    let failed = |source: &(dyn std::error::Error + 'static)| {
        let hint = attach::diagnose(ifname, generic, attach::errno(source));
        PinError::Attach {
            ifname: ifname.to_string(),
            mode: mode_name(generic),
            hint: capitalized(&hint)
                .map(|h| format!(". {h}"))
                .unwrap_or_default(),
            detail: chain(source),
        }
    };
    let prog = xdp_program(ebpf);
    let id = prog.attach(ifname, mode).map_err(|e| failed(&e))?;
    let link = prog.take_link(id).map_err(|e| failed(&e))?;
    let fd_link = FdLink::try_from(link).map_err(|source| PinError::Link {
        path: path.to_path_buf(),
        source,
    })?;
    fd_link.pin(path).map_err(|source| PinError::Pin {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(())
}

/// `text` with its first letter upper-case (`None` when empty): hints follow a sentence.
fn capitalized(text: &str) -> Option<String> {
    let mut chars = text.chars();
    let first = chars.next()?;
    Some(first.to_uppercase().chain(chars).collect())
}

/// Interfaces that have a pinned link under `pin_dir`.
pub fn pinned_links(pin_dir: &Path) -> Vec<String> {
    let Ok(rd) = fs::read_dir(pin_dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("link_"))
                .map(str::to_string)
        })
        .collect();
    out.sort();
    out
}

/// Detaches the program from `ifname` by removing its pinned link.
pub fn detach(pin_dir: &Path, ifname: &str) -> Result<()> {
    let path = link_path(pin_dir, ifname);
    let pinned = PinnedLink::from_pin(&path).map_err(|source| PinError::Link {
        path: path.clone(),
        source,
    })?;
    // Unpinned and closed: the last reference, so the kernel detaches the program.
    let link = pinned.unpin().map_err(|source| PinError::Io {
        what: "unpinning",
        path: path.clone(),
        source,
    })?;
    drop(link);
    Ok(())
}

/// What `down` removed.
#[derive(Debug, Default)]
pub struct Removed {
    pub links: Vec<String>,
    /// Pinned maps of this build's catalog (and retired ones, and old maps set aside).
    pub maps: Vec<String>,
    /// Pinned maps this build does not know (a newer release's), removed too.
    pub unknown: Vec<String>,
}

/// Detaches every pinned link and removes every pinned map and the directories: the
/// whole deployment, whatever release wrote it. Works without a daemon; callers hold the
/// pin-dir lock.
pub fn down(pin_dir: &Path) -> Result<Removed> {
    let mut removed = Removed::default();
    for ifname in pinned_links(pin_dir) {
        detach(pin_dir, &ifname)?;
        removed.links.push(ifname);
    }
    for dir in [maps_dir(pin_dir), aside_dir(pin_dir)] {
        for name in names_in(&dir)? {
            remove(&dir.join(&name))?;
            if CATALOG.map(&name).is_some() || CATALOG.is_retired(&name) {
                removed.maps.push(name);
            } else {
                removed.unknown.push(name);
            }
        }
        let _ = fs::remove_dir(&dir);
    }
    let _ = fs::remove_dir(pin_dir);
    removed.maps.sort();
    Ok(removed)
}

/// Mounts bpffs on `pin_dir`'s bpffs root (/sys/fs/bpf) when it is not mounted (a fresh
/// machine has no bpffs there); `Ok(true)` when it did.
///
/// Errors: the mount fails; or bpffs is missing in a mount namespace other than PID 1's.
/// That is what `ip netns exec` gives (it remounts /sys in a namespace of its own): a
/// bpffs mounted there dies with this process, and with it every pin, the restart safety
/// and the one-daemon-per-pin_dir lock — so it is refused, saying how to run instead.
pub fn ensure_bpffs(pin_dir: &Path) -> io::Result<bool> {
    let root = Path::new("/sys/fs/bpf");
    if !pin_dir.starts_with(root) {
        return Ok(false);
    }
    let mounts = fs::read_to_string("/proc/self/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        return Ok(false);
    }
    let ns = |pid: &str| fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    if ns("self") != ns("1") {
        return Err(io::Error::other(
            "bpffs is not mounted at /sys/fs/bpf in this mount namespace, which is not the \
             host's (PID 1's) — as under `ip netns exec`, which remounts /sys: pins there would \
             vanish with this process (the daemon's restart safety and its lock against a \
             second daemon, `xlb decap`'s attachment). \
             Run xlb in the host's mount namespace and enter only the network namespace: \
             `nsenter --net=/var/run/netns/NAME xlb ...`",
        ));
    }
    fs::create_dir_all(root)?;
    let src = c"bpf";
    let target = c"/sys/fs/bpf";
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(true)
}
