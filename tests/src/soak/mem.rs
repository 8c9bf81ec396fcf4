//! Is the daemon's memory (VmRSS) and open-descriptor count flat? Judged per daemon life
//! (a restart starts a new process) and across lives:
//!
//! - **within a life** of at least [`MIN_JUDGED`] samples after the first [`WARMUP_S`]
//!   seconds: the maximum of the last third may exceed the maximum of the first third by at
//!   most [`RSS_SLACK_KIB`] + [`RSS_SLACK_PCT`] % (allocator arenas settle) and
//!   [`FD_SLACK`] descriptors (a health probe or a control connection open at that moment);
//! - **across lives**: every life's maximum after warm-up may exceed the first judged
//!   life's by at most the same slack — a restart adopts the same state, so it should need
//!   the same memory and descriptors.
//!
//! Pure: works on the samples the observer took.

use std::collections::BTreeMap;

use super::observe::Sample;

pub const WARMUP_S: f64 = 3.0;
pub const MIN_JUDGED: usize = 12;
pub const RSS_SLACK_KIB: u64 = 2048;
pub const RSS_SLACK_PCT: u64 = 10;
pub const FD_SLACK: u64 = 4;

/// One life's summary.
#[derive(Clone, Debug, PartialEq)]
pub struct LifeSummary {
    pub life: u32,
    pub samples: usize,
    pub seconds: f64,
    pub rss_min: u64,
    pub rss_max: u64,
    pub rss_first_third: u64,
    pub rss_last_third: u64,
    pub fds_min: u64,
    pub fds_max: u64,
    pub fds_first_third: u64,
    pub fds_last_third: u64,
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
        if steady.is_empty() {
            continue;
        }
        let third = (steady.len() / 3).max(1);
        let max_of = |xs: &[Sample], f: fn(&Sample) -> u64| xs.iter().map(f).max().unwrap_or(0);
        let first = &steady[..third];
        let last = &steady[steady.len() - third..];
        let sum = LifeSummary {
            life,
            samples: steady.len(),
            seconds: (steady[steady.len() - 1].t - steady[0].t) as f64 / 1e9,
            rss_min: steady.iter().map(|s| s.rss_kib).min().unwrap_or(0),
            rss_max: max_of(&steady, |s| s.rss_kib),
            rss_first_third: max_of(first, |s| s.rss_kib),
            rss_last_third: max_of(last, |s| s.rss_kib),
            fds_min: steady.iter().map(|s| s.fds).min().unwrap_or(0),
            fds_max: max_of(&steady, |s| s.fds),
            fds_first_third: max_of(first, |s| s.fds),
            fds_last_third: max_of(last, |s| s.fds),
            judged: steady.len() >= MIN_JUDGED,
        };
        if sum.judged {
            if sum.rss_last_third > rss_limit(sum.rss_first_third) {
                bad.push(format!(
                    "daemon life {life}: RSS grew from {} KiB (max of the first third) to {} KiB (max of the last third), more than {RSS_SLACK_KIB} KiB + {RSS_SLACK_PCT}%",
                    sum.rss_first_third, sum.rss_last_third
                ));
            }
            if sum.fds_last_third > sum.fds_first_third + FD_SLACK {
                bad.push(format!(
                    "daemon life {life}: open descriptors grew from {} to {} (max of first and last third; slack {FD_SLACK})",
                    sum.fds_first_third, sum.fds_last_third
                ));
            }
        }
        out.push(sum);
    }
    if let Some(base) = out.first().cloned() {
        for s in out.iter().skip(1) {
            if s.rss_max > rss_limit(base.rss_max) {
                bad.push(format!(
                    "daemon life {}: RSS up to {} KiB, life {} needed at most {} KiB (slack {RSS_SLACK_KIB} KiB + {RSS_SLACK_PCT}%)",
                    s.life, s.rss_max, base.life, base.rss_max
                ));
            }
            if s.fds_max > base.fds_max + FD_SLACK {
                bad.push(format!(
                    "daemon life {}: up to {} open descriptors, life {} had at most {} (slack {FD_SLACK})",
                    s.life, s.fds_max, base.life, base.fds_max
                ));
            }
        }
    }
    (out, bad)
}

fn rss_limit(base: u64) -> u64 {
    base + RSS_SLACK_KIB + base * RSS_SLACK_PCT / 100
}
