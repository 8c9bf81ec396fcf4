//! Is the daemon's memory (VmRSS) and open-descriptor count flat? Judged per daemon life
//! (a restart starts a new process) and across lives, on robust levels rather than peaks
//! — health probes, control connections and allocator arenas come and go, a leak raises
//! the level for good:
//!
//! - **level** of a stretch of samples: the median RSS, and the fewest open descriptors
//!   (the floor every transient probe or connection falls back to);
//! - **within a life** of at least [`MIN_JUDGED`] samples after the first [`WARMUP_S`]
//!   seconds: the level of the last third may exceed the level of the first third by at
//!   most [`RSS_SLACK_KIB`] + [`RSS_SLACK_PCT`] % and [`FD_SLACK`] descriptors;
//! - **across lives**: every life's level may exceed the first life's by the same slack —
//!   a restart adopts the same state, so it should need the same memory and descriptors.
//!
//! A leak per operation shows best in one long life: run the soak without `kill`.
//! Pure: works on the samples the observer took.

use std::collections::BTreeMap;

use super::observe::Sample;

pub const WARMUP_S: f64 = 3.0;
pub const MIN_JUDGED: usize = 12;
pub const RSS_SLACK_KIB: u64 = 1024;
pub const RSS_SLACK_PCT: u64 = 5;
pub const FD_SLACK: u64 = 2;

/// One life's summary.
#[derive(Clone, Debug, PartialEq)]
pub struct LifeSummary {
    pub life: u32,
    pub samples: usize,
    pub seconds: f64,
    pub rss_min: u64,
    pub rss_max: u64,
    /// Median RSS of all, the first third and the last third of the samples.
    pub rss_level: u64,
    pub rss_first: u64,
    pub rss_last: u64,
    pub fds_min: u64,
    pub fds_max: u64,
    /// Fewest descriptors in the first and in the last third.
    pub fds_first: u64,
    pub fds_last: u64,
    /// Judged within the life (enough samples after warm-up).
    pub judged: bool,
}

/// The summaries and the violations (one line each).
pub fn judge(samples: &[Sample]) -> (Vec<LifeSummary>, Vec<String>) {
    let mut lives: BTreeMap<u32, Vec<Sample>> = BTreeMap::new();
    for s in samples {
        lives.entry(s.life).or_default().push(*s);
    }
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for (life, all) in lives {
        let start = all[0].t;
        let steady: Vec<Sample> = all
            .iter()
            .copied()
            .filter(|s| (s.t - start) as f64 / 1e9 >= WARMUP_S)
            .collect();
        let Some(sum) = summarize(life, &steady) else {
            continue;
        };
        if sum.judged {
            if sum.rss_last > rss_limit(sum.rss_first) {
                bad.push(format!(
                    "daemon life {life}: RSS grew from {} KiB (median of the first third) to {} KiB (median of the last third), more than {RSS_SLACK_KIB} KiB + {RSS_SLACK_PCT}%",
                    sum.rss_first, sum.rss_last
                ));
            }
            if sum.fds_last > sum.fds_first + FD_SLACK {
                bad.push(format!(
                    "daemon life {life}: open descriptors never fell below {} in the last third, {} in the first (slack {FD_SLACK})",
                    sum.fds_last, sum.fds_first
                ));
            }
        }
        out.push(sum);
    }
    bad.extend(across_lives(&out));
    (out, bad)
}

fn summarize(life: u32, steady: &[Sample]) -> Option<LifeSummary> {
    let (first_s, last_s) = (steady.first()?, steady.last()?);
    let third = (steady.len() / 3).max(1);
    let first = &steady[..third];
    let last = &steady[steady.len() - third..];
    let rss = |xs: &[Sample]| median(xs.iter().map(|s| s.rss_kib).collect());
    let floor = |xs: &[Sample]| xs.iter().map(|s| s.fds).min().unwrap_or(0);
    Some(LifeSummary {
        life,
        samples: steady.len(),
        seconds: (last_s.t - first_s.t) as f64 / 1e9,
        rss_min: steady.iter().map(|s| s.rss_kib).min().unwrap_or(0),
        rss_max: steady.iter().map(|s| s.rss_kib).max().unwrap_or(0),
        rss_level: rss(steady),
        rss_first: rss(first),
        rss_last: rss(last),
        fds_min: floor(steady),
        fds_max: steady.iter().map(|s| s.fds).max().unwrap_or(0),
        fds_first: floor(first),
        fds_last: floor(last),
        judged: steady.len() >= MIN_JUDGED,
    })
}

fn across_lives(lives: &[LifeSummary]) -> Vec<String> {
    let Some(base) = lives.first() else {
        return Vec::new();
    };
    let mut bad = Vec::new();
    for s in &lives[1..] {
        if s.rss_level > rss_limit(base.rss_level) {
            bad.push(format!(
                "daemon life {}: median RSS {} KiB, life {} needed {} KiB (slack {RSS_SLACK_KIB} KiB + {RSS_SLACK_PCT}%)",
                s.life, s.rss_level, base.life, base.rss_level
            ));
        }
        if s.fds_min > base.fds_min + FD_SLACK {
            bad.push(format!(
                "daemon life {}: never fewer than {} open descriptors, life {} went down to {} (slack {FD_SLACK})",
                s.life, s.fds_min, base.life, base.fds_min
            ));
        }
    }
    bad
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn rss_limit(base: u64) -> u64 {
    base + RSS_SLACK_KIB + base * RSS_SLACK_PCT / 100
}
