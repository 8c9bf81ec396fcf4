//! `xlb backend drain --wait`: after the drain, poll the daemon's `drain_status` until
//! the backend holds no live pinned client (exit 0) or the timeout passes (exit 1, with
//! how many remain and when they were last seen), so a script can remove the backend or
//! stop its server without cutting a session.
//!
//! The daemon answers each poll from its background counts of the affinity table (see
//! daemon/tasks/scan.rs): a poll never walks the table. Only a count from a scan that
//! started after the drain can say "none left"; until one exists the wait goes on.
//!
//! Owns: the poll loop, its progress lines and the final messages. Must not touch: how a
//! poll is sent (cli.rs) or counted (the daemon).

use std::time::{Duration, Instant};

use crate::api::DrainStatus;

/// Time between two polls.
pub const POLL: Duration = Duration::from_millis(200);

/// How a wait ended.
#[derive(Debug)]
pub enum Outcome {
    /// No live pinned client left (counted after the drain).
    Drained(DrainStatus),
    /// The timeout passed first; the last answer (`None`: the daemon never answered).
    TimedOut(Option<DrainStatus>),
    /// Someone undrained the backend meanwhile: waiting would never end.
    Undrained(DrainStatus),
}

/// Why a poll failed.
pub enum PollError {
    /// The daemon could not be reached (restarting?): the wait goes on until the timeout.
    Unreachable(String),
    /// Anything else (the backend or service is gone, a bad answer): the wait ends.
    Fatal(anyhow::Error),
}

/// Polls every `interval` until the backend is drained, undrained, or `timeout` passed
/// (never, when `None`). `progress` hears every answer and every unreachable daemon.
pub fn wait(
    mut poll: impl FnMut() -> Result<DrainStatus, PollError>,
    timeout: Option<Duration>,
    interval: Duration,
    mut progress: impl FnMut(Result<&DrainStatus, &str>),
) -> anyhow::Result<Outcome> {
    let start = Instant::now();
    let mut last = None;
    loop {
        match poll() {
            Ok(d) if d.drained => return Ok(Outcome::Drained(d)),
            Ok(d) if !d.draining => return Ok(Outcome::Undrained(d)),
            Ok(d) => {
                progress(Ok(&d));
                last = Some(d);
            }
            Err(PollError::Unreachable(why)) => progress(Err(&why)),
            Err(PollError::Fatal(e)) => return Err(e),
        }
        if timeout.is_some_and(|t| start.elapsed() + interval > t) {
            let rest = timeout.map_or(Duration::ZERO, |t| t.saturating_sub(start.elapsed()));
            std::thread::sleep(rest);
            return Ok(match poll() {
                Ok(d) if d.drained => Outcome::Drained(d),
                Ok(d) => Outcome::TimedOut(Some(d)),
                Err(PollError::Fatal(e)) => return Err(e),
                Err(PollError::Unreachable(_)) => Outcome::TimedOut(last),
            });
        }
        std::thread::sleep(interval);
    }
}

fn seconds(s: f64) -> String {
    if s < 10.0 {
        format!("{s:.1} s")
    } else {
        format!("{s:.0} s")
    }
}

fn clients(n: u64) -> String {
    if n == 1 {
        "1 live pinned client".into()
    } else {
        format!("{n} live pinned clients")
    }
}

/// "last seen 0.4 s ago (the most recent) … 1.9 s ago (the least recent)".
fn last_seen(d: &DrainStatus) -> String {
    match (d.newest_seen_s, d.oldest_seen_s) {
        (Some(n), Some(o)) if (o - n).abs() >= 0.05 => format!(
            "last seen {} ago (the most recent) to {} ago (the least recent)",
            seconds(n),
            seconds(o)
        ),
        (Some(n), _) => format!("last seen {} ago", seconds(n)),
        _ => "last seen: unknown".into(),
    }
}

/// A progress line (one per change of the count).
pub fn progress_line(d: &DrainStatus) -> String {
    if !d.counted_since_drain {
        return format!(
            "waiting for a count of the affinity table since the drain of {} ({})",
            d.address, d.service
        );
    }
    format!(
        "{} ({}): {}, {}",
        d.address,
        d.service,
        clients(d.pinned_clients),
        last_seen(d)
    )
}

/// The success line.
pub fn drained_line(d: &DrainStatus) -> String {
    format!(
        "backend {} of {} is drained: no live pinned client (counted {} ago); it can be removed or stopped",
        d.address,
        d.service,
        seconds(d.counted_age_s.unwrap_or(0.0))
    )
}

/// The error of a wait that timed out after `waited` (the `--timeout` given) (exit 1):
/// how many remain and when they were last seen, or that no count since the drain exists
/// yet.
pub fn timed_out_message(
    service: &str,
    address: std::net::IpAddr,
    waited: Duration,
    d: Option<&DrainStatus>,
) -> String {
    let waited = crate::model::format_duration(waited);
    let Some(d) = d else {
        return format!(
            "backend {address} of {service}: the daemon did not answer within {waited}"
        );
    };
    if !d.counted_since_drain {
        return format!(
            "backend {address} of {service}: no count of the affinity table since the drain \
             within {waited} (the last count, {} old, had {}); try a longer --timeout",
            seconds(d.counted_age_s.unwrap_or(f64::NAN)),
            clients(d.pinned_clients)
        );
    }
    format!(
        "backend {address} of {service} still holds {} after {waited}: {}; a pin is released \
         when its client has been silent for idle_timeout ({})",
        clients(d.pinned_clients),
        last_seen(d),
        d.idle_timeout
    )
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    fn status(pinned: u64, counted: bool, draining: bool) -> DrainStatus {
        DrainStatus {
            service: "web".into(),
            address: "192.0.2.11".parse().unwrap(),
            draining,
            pinned_clients: pinned,
            counted_since_drain: counted,
            counted_age_s: Some(0.25),
            newest_seen_s: (pinned > 0).then_some(0.4),
            oldest_seen_s: (pinned > 0).then_some(1.93),
            idle_timeout: "6s".into(),
            drained: counted && draining && pinned == 0,
        }
    }

    /// Ends at the first count since the drain that finds none: an earlier count of 0
    /// (taken before the drain) does not end it.
    #[test]
    fn ends_when_a_count_since_the_drain_finds_none() {
        let answers = [
            status(0, false, true),
            status(3, true, true),
            status(1, true, true),
            status(0, true, true),
        ];
        let n = Cell::new(0);
        let mut seen = Vec::new();
        let out = wait(
            || {
                let i = n.get();
                n.set(i + 1);
                Ok(answers[i.min(3)].clone())
            },
            Some(Duration::from_secs(5)),
            Duration::from_millis(1),
            |d| seen.push(d.map(|d| d.pinned_clients).ok()),
        )
        .unwrap();
        assert!(matches!(out, Outcome::Drained(_)), "{out:?}");
        assert_eq!(n.get(), 4);
        assert_eq!(seen, [Some(0), Some(3), Some(1)]);
    }

    #[test]
    fn times_out_with_the_last_answer_and_survives_an_unreachable_daemon() {
        let n = Cell::new(0);
        let start = Instant::now();
        let out = wait(
            || {
                n.set(n.get() + 1);
                if n.get() % 2 == 0 {
                    Err(PollError::Unreachable("restarting".into()))
                } else {
                    Ok(status(2, true, true))
                }
            },
            Some(Duration::from_millis(50)),
            Duration::from_millis(5),
            |_| {},
        )
        .unwrap();
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(50), "{waited:?}");
        assert!(waited < Duration::from_millis(500), "{waited:?}");
        let Outcome::TimedOut(Some(d)) = out else {
            panic!("{out:?}");
        };
        assert_eq!(d.pinned_clients, 2);
    }

    #[test]
    fn an_undrained_backend_ends_the_wait() {
        let out = wait(
            || Ok(status(5, true, false)),
            None,
            Duration::from_millis(1),
            |_| {},
        )
        .unwrap();
        assert!(matches!(out, Outcome::Undrained(_)));
    }

    #[test]
    fn messages_say_how_many_remain_and_when_they_were_last_seen() {
        let d = status(3, true, true);
        let m = timed_out_message("web", d.address, Duration::from_secs(2), Some(&d));
        assert!(
            m.contains("still holds 3 live pinned clients after 2s"),
            "{m}"
        );
        assert!(
            m.contains("last seen 0.4 s ago (the most recent) to 1.9 s ago"),
            "{m}"
        );
        assert!(m.contains("idle_timeout (6s)"), "{m}");
        let d = status(1, false, true);
        let m = timed_out_message("web", d.address, Duration::from_secs(2), Some(&d));
        assert!(
            m.contains("no count of the affinity table since the drain"),
            "{m}"
        );
        assert!(progress_line(&status(1, true, true)).contains("1 live pinned client,"));
        assert!(drained_line(&status(0, true, true)).contains("is drained"));
    }
}
