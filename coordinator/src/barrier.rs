//! The open round and the barrier's decision over it, without I/O: given what the
//! open round holds (who was
//! sent StartRound, who reported and when, who is still awaited) and the time now, the
//! round closes (and why), waits (until when), or is abandoned. The round driver
//! ([`crate::rounds`]) only gathers the view under the state lock, applies the
//! decision and sleeps; everything the policies say is here and tested in
//! microseconds below.

use std::time::Duration;

use tokio::time::Instant;
use wdml_proto::policy::Closing;

use crate::members::Members;

/// The least a member that missed its last report is waited for once everyone else
/// reported (see [`decide`]).
pub(crate) const MIN_PATIENCE: Duration = Duration::from_millis(200);

/// The round the barrier is waiting on.
#[derive(Debug)]
pub(crate) struct OpenRound {
    pub round: u32,
    pub token: u64,
    pub started: Instant,
    /// Who was sent StartRound, with the connection it was sent on.
    pub participants: std::collections::BTreeMap<u32, u64>,
    /// How many neighbours each participant was given: what its counters can be.
    pub neighbours: std::collections::BTreeMap<u32, u32>,
    /// Done reports received in time, with when they arrived.
    pub reported: std::collections::BTreeMap<u32, (wdml_proto::RoundMetrics, Instant)>,
    /// Participants whose round failed (they said so).
    pub failed: std::collections::BTreeSet<u32>,
    /// Where moving devices are this round, and who hears whom (`None`: static).
    pub moved: Option<Moved>,
    /// What the radio policies decided this round (`None`: no policy set).
    pub decisions: Option<crate::report::Decisions>,
}

/// Where moving devices are in a round (`channel.mobility`).
#[derive(Debug)]
pub(crate) struct Moved {
    pub emulated_s: f64,
    pub positions: Vec<wdml_channel::Position>,
    pub neighbours: Vec<Vec<u32>>,
}

impl OpenRound {
    /// The round as the barrier sees it, with its participants' standing in `members`.
    pub fn view(&self, members: &Members) -> View {
        let seats = self
            .participants
            .iter()
            .map(|(id, connection)| {
                let member = members.get(*id);
                Seat {
                    reported_at: self.reported.get(id).map(|(_, at)| *at),
                    // A participant that reconnected since the round started got no
                    // StartRound on its new stream: it will not report this round. One
                    // that has not reported for rounds is not waited for either.
                    awaited: members.is_current(*id, *connection) && member.is_some_and(|m| m.awaited()),
                    suspect: member.is_none_or(|m| m.missed_reports > 0),
                }
            })
            .collect();
        View {
            started: self.started,
            seats,
            failed: self.failed.len(),
            anyone_live: members.live().next().is_some(),
        }
    }
}

/// How rounds close, in wall time.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rules {
    pub closing: Closing,
    /// No round lasts longer (`coordinator.round_timeout_ms`).
    pub round_timeout: Duration,
    /// `quorum`: how long after the quorum the round still waits.
    pub grace: Duration,
    /// `deadline`: when the round closes, from its start.
    pub deadline: Duration,
}

impl Rules {
    /// The run's rules: its policy, with the emulated grace and deadline turned into
    /// wall time at the run's time scale.
    pub fn of(config: &crate::Config) -> crate::Result<Rules> {
        let closing = config.closing()?;
        let (grace, deadline) = match closing {
            Closing::Sync => (Duration::ZERO, Duration::ZERO),
            Closing::Quorum { grace_s, .. } => (config.wall(grace_s), Duration::ZERO),
            Closing::Deadline { deadline_s } => (Duration::ZERO, config.wall(deadline_s)),
        };
        Ok(Rules {
            closing,
            round_timeout: config.round_timeout,
            grace,
            deadline,
        })
    }
}

/// One participant of the open round, as the barrier sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Seat {
    /// When its report for this round arrived, if it did.
    pub reported_at: Option<Instant>,
    /// Whether its report is still awaited: its StartRound went to the stream it still
    /// has (one that reconnected since got none, and will not report), and it has not
    /// missed reports for rounds ([`crate::members::SILENT_AFTER`]).
    pub awaited: bool,
    /// It missed its last report, or is no longer a member: withholding, or in trouble.
    pub suspect: bool,
}

/// The open round, as the barrier sees it.
#[derive(Clone, Debug)]
pub(crate) struct View {
    pub started: Instant,
    pub seats: Vec<Seat>,
    /// Participants that said their round failed.
    pub failed: usize,
    /// Whether any member has a stream open.
    pub anyone_live: bool,
}

/// What ends a round, or the wait for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reason {
    /// Every awaited participant reported.
    AllReported,
    /// `quorum`: enough reported, and the grace after the quorum passed.
    Quorum,
    /// `deadline`: the policy's deadline passed.
    Deadline,
    /// `sync`: only members that missed their last report are left, and they had as
    /// long as the round's own reports justify.
    Patience,
    /// The round timeout passed.
    Timeout,
}

/// The barrier's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Close the round now; `awaited` participants were expected to report.
    Close { reason: Reason, awaited: usize },
    /// Nothing closes it before `until` (unless a report or a departure comes first);
    /// `reason` is what closes it then.
    Wait { until: Instant, reason: Reason },
    /// Everyone it was sent to left without a report or a failure and nobody is live:
    /// nothing happened in this round, so it is not closed; it starts again when
    /// members are back.
    Abandoned,
}

/// The barrier's decision for `view` at `now` under `rules`:
/// - every awaited participant reported (or is gone): close;
/// - `quorum`: once `ceil(fraction × awaited)` reported, close `grace` after the report
///   that made the quorum;
/// - `deadline`: close `deadline` after the start;
/// - `sync`, when only members that missed their last report are left: close at twice
///   the slowest report of this round, at least [`MIN_PATIENCE`], after the start (with
///   rejoins, a withholding member held every other round to the round timeout);
/// - never later than the round timeout.
pub(crate) fn decide(rules: &Rules, view: &View, now: Instant) -> Decision {
    let mut reports: Vec<Instant> = view.seats.iter().filter_map(|s| s.reported_at).collect();
    if reports.is_empty() && view.failed == 0 && !view.anyone_live {
        return Decision::Abandoned;
    }
    let awaited = view
        .seats
        .iter()
        .filter(|s| s.reported_at.is_some() || s.awaited)
        .count();
    if reports.len() >= awaited {
        return Decision::Close {
            reason: Reason::AllReported,
            awaited,
        };
    }
    reports.sort();
    let mut close = (view.started + rules.round_timeout, Reason::Timeout);
    let mut sooner = |at: Instant, reason: Reason| {
        if at < close.0 {
            close = (at, reason);
        }
    };
    match rules.closing {
        Closing::Deadline { .. } => sooner(view.started + rules.deadline, Reason::Deadline),
        Closing::Quorum { .. } => {
            let needed = rules.closing.needed(awaited);
            // `needed` is at least 1; the grace runs from the report that made it.
            if let Some(&quorum_at) = reports.get(needed.saturating_sub(1)) {
                sooner(quorum_at + rules.grace, Reason::Quorum);
            }
        }
        Closing::Sync => {
            let suspects_only = view.seats.iter().filter(|s| s.reported_at.is_none()).all(|s| s.suspect);
            if let (true, Some(last)) = (suspects_only, reports.last()) {
                let slowest = last.saturating_duration_since(view.started);
                sooner(view.started + (slowest * 2).max(MIN_PATIENCE), Reason::Patience);
            }
        }
    }
    let (until, reason) = close;
    if now >= until {
        Decision::Close { reason, awaited }
    } else {
        Decision::Wait { until, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn rules(closing: Closing) -> Rules {
        Rules {
            closing,
            round_timeout: 10_000 * MS,
            grace: 500 * MS,
            deadline: 2_000 * MS,
        }
    }

    const SYNC: Closing = Closing::Sync;
    const QUORUM: Closing = Closing::Quorum {
        fraction: 0.5,
        grace_s: 0.5,
    };
    const DEADLINE: Closing = Closing::Deadline { deadline_s: 2.0 };

    /// A participant, written as the table reads: `R(ms)` reported at ms into the
    /// round; `W` awaited and not reported; `S` a suspect (missed its last report) still
    /// awaited; `G` gone (reconnected or left: not awaited, not a suspect); `X` gone
    /// and a suspect.
    #[derive(Clone, Copy)]
    enum P {
        R(u64),
        W,
        S,
        G,
        X,
    }
    use P::*;

    fn view(start: Instant, seats: &[P], failed: usize, anyone_live: bool) -> View {
        let seats = seats
            .iter()
            .map(|p| match *p {
                R(ms) => Seat {
                    reported_at: Some(start + Duration::from_millis(ms)),
                    awaited: true,
                    suspect: false,
                },
                W => Seat {
                    awaited: true,
                    ..Seat::default()
                },
                S => Seat {
                    awaited: true,
                    suspect: true,
                    ..Seat::default()
                },
                G => Seat::default(),
                X => Seat {
                    suspect: true,
                    ..Seat::default()
                },
            })
            .collect();
        View {
            started: start,
            seats,
            failed,
            anyone_live,
        }
    }

    /// What the decision should be, in milliseconds from the round's start.
    #[derive(Debug, PartialEq)]
    enum Want {
        Close(Reason, usize),
        Wait(u64, Reason),
        Abandoned,
    }

    /// name, policy, participants, failed, anyone live, now (ms), decision.
    type Case = (&'static str, Closing, &'static [P], usize, bool, u64, Want);

    #[test]
    fn the_barrier_closes_waits_or_abandons_as_each_policy_says() {
        use Reason::*;
        #[rustfmt::skip]
        let cases: &[Case] = &[
            // name, policy, participants, failed, anyone live, now (ms), decision
            ("sync: everyone reported", SYNC, &[R(10), R(30), R(20)], 0, true, 30, Want::Close(AllReported, 3)),
            ("sync: one still working", SYNC, &[R(10), W, R(20)], 0, true, 30, Want::Wait(10_000, Timeout)),
            ("sync: round timeout passed", SYNC, &[R(10), W], 0, true, 10_000, Want::Close(Timeout, 2)),
            // A member that reconnected (or left) is not awaited: the round closes
            // on the others' reports.
            ("sync: the missing one is gone", SYNC, &[R(10), G, R(40)], 0, true, 40, Want::Close(AllReported, 2)),
            // Only suspects left: twice the slowest report (90 ms → 180), at least
            // 200 ms; then 2 × 400 ms.
            ("sync: only suspects, 200 ms floor", SYNC, &[R(50), R(90), S], 0, true, 100, Want::Wait(200, Patience)),
            ("sync: only suspects, patience over", SYNC, &[R(50), R(90), S], 0, true, 200, Want::Close(Patience, 3)),
            ("sync: slow reports, long patience", SYNC, &[R(400), S], 0, true, 500, Want::Wait(800, Patience)),
            // A suspect that is gone still counts as one (it is not awaited anyway).
            ("sync: a suspect and a gone suspect", SYNC, &[R(10), S, X], 0, true, 300, Want::Close(Patience, 2)),
            // One honest member still working: nobody is cut short.
            ("sync: a suspect and an honest one", SYNC, &[R(50), S, W], 0, true, 5_000, Want::Wait(10_000, Timeout)),
            // Before anyone reported there is no measure of the round: no patience.
            ("sync: only suspects, no report yet", SYNC, &[S, S], 0, true, 300, Want::Wait(10_000, Timeout)),
            // Quorum of 4 at 0.5 is 2 reports: the second (at 300 ms) starts the grace.
            ("quorum: not yet", QUORUM, &[R(100), W, W, W], 0, true, 200, Want::Wait(10_000, Timeout)),
            ("quorum: reached, in grace", QUORUM, &[R(100), R(300), W, W], 0, true, 400, Want::Wait(800, Quorum)),
            ("quorum: grace over", QUORUM, &[R(100), R(300), W, W], 0, true, 800, Want::Close(Quorum, 4)),
            // A report after the quorum does not move the grace.
            ("quorum: a later report", QUORUM, &[R(700), R(100), R(300), W], 0, true, 750, Want::Wait(800, Quorum)),
            ("quorum: all in before the grace", QUORUM, &[R(100), R(300)], 0, true, 300, Want::Close(AllReported, 2)),
            // Patience is for `sync` only: under quorum the grace rules.
            ("quorum: suspects do not shorten it", QUORUM, &[R(10), R(20), S, S], 0, true, 300, Want::Wait(520, Quorum)),
            ("deadline: before it", DEADLINE, &[R(10), W], 0, true, 1_999, Want::Wait(2_000, Deadline)),
            ("deadline: passed", DEADLINE, &[R(10), W, W], 0, true, 2_000, Want::Close(Deadline, 3)),
            ("deadline: all in early", DEADLINE, &[R(10), R(20)], 0, true, 20, Want::Close(AllReported, 2)),
            ("deadline: suspects do not shorten it", DEADLINE, &[R(10), S], 0, true, 300, Want::Wait(2_000, Deadline)),
            // Everyone left without a word: nothing happened; not closed.
            ("everyone gone, nothing heard", SYNC, &[G, G], 0, false, 50, Want::Abandoned),
            // Everyone left, but a failure was said or a report came: the round
            // happened, and closes on what it got.
            ("everyone gone after one failed", SYNC, &[G, G], 1, false, 50, Want::Close(AllReported, 0)),
            ("everyone gone after one reported", SYNC, &[R(10), G], 0, false, 50, Want::Close(AllReported, 1)),
            // Every participant gone without a word, but someone else is live (joined
            // since): the round closes with nobody awaited; only a round nobody at all
            // is left for is abandoned.
            ("participants gone, others live", SYNC, &[G, G], 0, true, 50, Want::Close(AllReported, 0)),
        ];
        let start = Instant::now();
        for (name, closing, seats, failed, live, now, want) in cases {
            let got = decide(
                &rules(*closing),
                &view(start, seats, *failed, *live),
                start + Duration::from_millis(*now),
            );
            let got = match got {
                Decision::Close { reason, awaited } => Want::Close(reason, awaited),
                Decision::Wait { until, reason } => Want::Wait((until - start).as_millis() as u64, reason),
                Decision::Abandoned => Want::Abandoned,
            };
            assert_eq!(&got, want, "{name}");
        }
    }

    /// The decision depends on `now` only through the deadlines: waiting until the
    /// `until` it gives, and not a nanosecond less, closes the round for that reason.
    #[test]
    fn a_wait_ends_exactly_when_it_says() {
        let start = Instant::now();
        for (closing, seats) in [
            (SYNC, &[R(50), R(90), S][..]),
            (QUORUM, &[R(100), R(300), W, W][..]),
            (DEADLINE, &[R(10), W][..]),
            (SYNC, &[R(10), W][..]),
        ] {
            let view = view(start, seats, 0, true);
            let Decision::Wait { until, reason } = decide(&rules(closing), &view, start) else {
                panic!("{closing:?} waits at the start");
            };
            assert!(matches!(
                decide(&rules(closing), &view, until - Duration::from_nanos(1)),
                Decision::Wait { .. }
            ));
            assert_eq!(
                decide(&rules(closing), &view, until),
                Decision::Close {
                    reason,
                    awaited: seats.len()
                }
            );
        }
    }
}
