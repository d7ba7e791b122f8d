//! Clock discipline as a pure object: a round's SNTP samples in, a
//! correction out. No I/O, no clock, no randomness (the ntp-proto shape);
//! `timesync` feeds it and applies what it decides.
//!
//! Why it is built this way (issue 23 item 2): on a loaded machine an SNTP
//! exchange can wait milliseconds in a run queue on either side, and a
//! one-sided wait of `d` skews that sample's offset by `d/2` while adding
//! `d` to its round-trip delay. Followers were 10–19 ms off the leader, and
//! one bad round stepped a clock by 88 ms. So, like NTP's clock filter:
//!
//! 1. **Delay filter.** Keep only samples whose delay is within
//!    `delay_factor` × the round's smallest delay (plus a small slack, since
//!    loopback delays are tens of µs): the quick ones carry the least error.
//! 2. **Outlier filter.** Of those, drop offsets further than
//!    `outlier_mads` × the median absolute deviation from their median.
//!    The estimate is the median of what is left.
//! 3. **Popcorn filter.** A round whose *best* delay is far above the best
//!    of the last few rounds was queued throughout; it is not used.
//! 4. **Bounded correction.** Small errors are slewed half-way per round; no
//!    round moves the offset by more than `max_slew` unless the error has
//!    persisted, same sign, for `persist_rounds` rounds (a real step: a
//!    restarted node, a new leader with another clock). The first round
//!    ever steps at once: a node started seconds off is right at once.

use std::collections::VecDeque;

/// How many rounds the popcorn filter remembers.
const DELAY_WINDOW: usize = 8;

/// One SNTP exchange: reference time minus local system time, and the
/// round-trip delay, both in ns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Offset to adopt if this sample were exact.
    pub offset_ns: i64,
    /// Round-trip delay (the sample's error is at most half of it).
    pub delay_ns: u64,
}

/// The knobs (from `[clock]`), in ns.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Errors within this are left alone.
    pub tolerance_ns: i64,
    /// The most one round may move the offset, unless the error persisted.
    pub max_slew_ns: i64,
    /// Rounds an error beyond `max_slew_ns` must persist before a full step.
    pub persist_rounds: u32,
    /// Samples with delay above `min_delay × delay_factor + slack` are dropped.
    pub delay_factor: f64,
    /// Offsets beyond this many MADs from the median are dropped.
    pub outlier_mads: f64,
    /// Added to delay bounds, so µs-scale loopback jitter is not "queueing".
    pub delay_slack_ns: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            tolerance_ns: 100_000,
            max_slew_ns: 2_000_000,
            persist_rounds: 2,
            delay_factor: 2.0,
            outlier_mads: 3.0,
            delay_slack_ns: 200_000,
        }
    }
}

/// One round's estimate after filtering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    /// The offset to adopt.
    pub offset_ns: i64,
    /// The smallest round-trip delay among the samples used.
    pub delay_ns: u64,
    /// Samples used.
    pub used: usize,
}

/// Filters one round's samples (steps 1 and 2 of the module docs).
pub fn estimate(samples: &[Sample], limits: &Limits) -> Option<Estimate> {
    let min_delay = samples.iter().map(|s| s.delay_ns).min()?;
    let delay_bound = (min_delay as f64 * limits.delay_factor) as u64 + limits.delay_slack_ns;
    let mut quick: Vec<i64> = samples
        .iter()
        .filter(|s| s.delay_ns <= delay_bound)
        .map(|s| s.offset_ns)
        .collect();
    quick.sort_unstable();
    let median = quick[quick.len() / 2];
    let mut deviations: Vec<u64> = quick.iter().map(|o| o.abs_diff(median)).collect();
    deviations.sort_unstable();
    // A floor on the MAD: a sample's own error is up to half the delay, so
    // agreeing samples must not reject each other over a few µs.
    let mad = deviations[deviations.len() / 2]
        .max(min_delay / 2)
        .max(1_000);
    let reach = (mad as f64 * limits.outlier_mads) as u64;
    let kept: Vec<i64> = quick
        .into_iter()
        .filter(|o| o.abs_diff(median) <= reach)
        .collect();
    Some(Estimate {
        offset_ns: kept[(kept.len() - 1) / 2],
        delay_ns: min_delay,
        used: kept.len(),
    })
}

/// What one round decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Correction {
    /// No usable sample.
    NoSamples,
    /// The round was queued throughout (its best delay, then the recent best).
    Queued(u64, u64),
    /// Within tolerance: leave the clock alone.
    None,
    /// Set the offset at once (first sync, or a persistent error).
    Step(i64),
    /// Move the offset to this, by half the error at most `max_slew`.
    Slew(i64),
}

/// A node's discipline against one reference. Keep one per reference and
/// [`reset`](Discipline::reset) it when the reference changes.
#[derive(Debug, Clone)]
pub struct Discipline {
    limits: Limits,
    synced: bool,
    /// Best delays of recent rounds (the popcorn filter's memory).
    recent: VecDeque<u64>,
    /// Errors of consecutive rounds beyond `max_slew`, all of one sign.
    persisted: Vec<i64>,
}

impl Discipline {
    /// A discipline that has never synced.
    pub fn new(limits: Limits) -> Self {
        Discipline {
            limits,
            synced: false,
            recent: VecDeque::with_capacity(DELAY_WINDOW),
            persisted: Vec::new(),
        }
    }

    /// The reference changed (a new leader): forget its delays and any
    /// persisting error, but not that this clock was synced.
    pub fn reset(&mut self) {
        self.recent.clear();
        self.persisted.clear();
    }

    /// One round: the current offset and the round's samples in, the
    /// correction (and the estimate it rests on) out.
    pub fn round(&mut self, current_ns: i64, samples: &[Sample]) -> (Correction, Option<Estimate>) {
        let Some(est) = estimate(samples, &self.limits) else {
            return (Correction::NoSamples, None);
        };
        let best_recent = self.recent.iter().copied().min();
        if self.recent.len() == DELAY_WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(est.delay_ns);
        if let Some(best) = best_recent {
            let bound =
                (best as f64 * self.limits.delay_factor) as u64 + self.limits.delay_slack_ns;
            if self.synced && est.delay_ns > bound {
                return (Correction::Queued(est.delay_ns, best), Some(est));
            }
        }
        if !self.synced {
            self.synced = true;
            return (Correction::Step(est.offset_ns), Some(est));
        }
        let error = est.offset_ns - current_ns;
        if error.abs() <= self.limits.tolerance_ns {
            self.persisted.clear();
            return (Correction::None, Some(est));
        }
        let max = self.limits.max_slew_ns;
        if error.abs() <= max {
            self.persisted.clear();
            return (Correction::Slew(current_ns + error / 2), Some(est));
        }
        if self
            .persisted
            .last()
            .is_some_and(|p| p.signum() != error.signum())
        {
            self.persisted.clear();
        }
        self.persisted.push(error);
        if self.persisted.len() as u32 >= self.limits.persist_rounds.max(1) {
            // Step by the smallest of the persisting errors: a spike inside
            // the run cannot make the step larger than the error really is.
            let smallest = self
                .persisted
                .iter()
                .copied()
                .min_by_key(|e| e.abs())
                .unwrap_or(error);
            self.persisted.clear();
            return (Correction::Step(current_ns + smallest), Some(est));
        }
        (
            Correction::Slew(current_ns + error.clamp(-max, max)),
            Some(est),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_000_000;
    const US: u64 = 1_000;

    fn s(offset_ns: i64, delay_ns: u64) -> Sample {
        Sample {
            offset_ns,
            delay_ns,
        }
    }

    /// A discipline that already synced once at offset 0 with 50 µs delay.
    fn synced() -> Discipline {
        let mut d = Discipline::new(Limits::default());
        assert_eq!(d.round(0, &[s(0, 50 * US)]).0, Correction::Step(0));
        d
    }

    #[test]
    fn the_estimate_keeps_quick_agreeing_samples() {
        let l = Limits::default();
        // (samples, expected offset, expected samples used)
        let table: &[(&[Sample], i64, usize)] = &[
            // Queued samples (10–40 ms delay, offsets skewed by half) lose
            // to the quick ones, however many there are.
            (
                &[
                    s(5_000_000, 10_000 * US),
                    s(20_000, 60 * US),
                    s(-15_000_000, 30_000 * US),
                    s(21_000, 70 * US),
                    s(19_000_000, 40_000 * US),
                    s(19_000, 80 * US),
                ],
                20_000,
                3,
            ),
            // A quick sample with a wild offset (a clock read after a
            // preemption on the server) is an outlier among quick ones.
            (
                &[
                    s(10_000, 60 * US),
                    s(12_000, 61 * US),
                    s(11_000, 62 * US),
                    s(9 * MS, 63 * US),
                    s(10_500, 64 * US),
                ],
                10_500,
                4,
            ),
            // One sample: it is the estimate.
            (&[s(-3 * MS, 90 * US)], -3 * MS, 1),
        ];
        for (samples, offset, used) in table {
            let e = estimate(samples, &l).unwrap();
            assert_eq!((e.offset_ns, e.used), (*offset, *used), "{samples:?}");
        }
        assert!(estimate(&[], &l).is_none());
    }

    #[test]
    fn corrections_are_bounded_unless_the_error_persists() {
        // (rounds of (current offset, samples), expected corrections)
        type Round<'a> = (i64, &'a [Sample]);
        let table: &[(&[Round], &[Correction])] = &[
            // Tiny error: left alone.
            (&[(0, &[s(50_000, 60 * US)])], &[Correction::None]),
            // Small error: half-way.
            (&[(0, &[s(MS, 60 * US)])], &[Correction::Slew(MS / 2)]),
            // One 88 ms spike: moves at most max_slew; gone next round,
            // and the slew is taken back by half.
            (
                &[(0, &[s(88 * MS, 60 * US)]), (2 * MS, &[s(0, 60 * US)])],
                &[Correction::Slew(2 * MS), Correction::Slew(MS)],
            ),
            // A real 3 s jump of the reference: a bounded move, then the
            // step once it persisted for two rounds.
            (
                &[
                    (0, &[s(3_000 * MS, 60 * US)]),
                    (2 * MS, &[s(3_000 * MS, 60 * US)]),
                ],
                &[Correction::Slew(2 * MS), Correction::Step(3_000 * MS)],
            ),
            // Errors that flip sign do not add up to a step.
            (
                &[
                    (0, &[s(50 * MS, 60 * US)]),
                    (2 * MS, &[s(-50 * MS, 60 * US)]),
                ],
                &[Correction::Slew(2 * MS), Correction::Slew(0)],
            ),
            // A round queued throughout (best delay 20 ms after rounds of
            // 50 µs) is not used at all.
            (
                &[(0, &[s(10 * MS, 20_000 * US), s(9 * MS, 21_000 * US)])],
                &[Correction::Queued(20_000 * US, 50 * US)],
            ),
        ];
        for (rounds, expected) in table {
            let mut d = synced();
            let got: Vec<Correction> = rounds
                .iter()
                .map(|(current, samples)| d.round(*current, samples).0)
                .collect();
            assert_eq!(&got, expected, "{rounds:?}");
        }
    }

    #[test]
    fn the_first_round_steps_and_a_new_reference_is_judged_afresh() {
        let mut d = Discipline::new(Limits::default());
        assert_eq!(d.round(0, &[]).0, Correction::NoSamples);
        assert_eq!(
            d.round(0, &[s(5_000 * MS, 2_000 * US)]).0,
            Correction::Step(5_000 * MS)
        );
        // A new leader farther away: its delays are not "queued".
        d.reset();
        assert_eq!(
            d.round(5_000 * MS, &[s(5_000 * MS + 50_000, 9_000 * US)]).0,
            Correction::None
        );
    }
}
