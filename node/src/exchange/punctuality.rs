//! How long to wait for each neighbour, and which neighbours to stop waiting for.
//!
//! A neighbour's message can only arrive after the neighbour has computed its
//! predictions (its *lead*) and the radio has carried them (the air time, which the
//! pure channel model gives exactly). The lead is measured on every message that
//! arrives. The wait for a neighbour is its air time plus a generous multiple of the
//! longest lead seen recently (its own, or any neighbour's if it has none yet), never
//! more than the run's exchange timeout; with no history at all, the timeout.
//!
//! A neighbour whose expected message is missing [`Punctuality::miss`]-many times in
//! a row is *silent*: the round stops waiting for it (and the node tells the
//! coordinator) until one of its messages arrives again.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

/// Leads remembered per neighbour.
const HISTORY: usize = 8;
/// The wait allows this many times the longest recent lead …
const LEAD_FACTOR: u32 = 4;
/// … and at least this much beyond the air time: scheduling noise on a loaded host
/// must not cost a message.
const MIN_SLACK: Duration = Duration::from_secs(2);

/// What this node has learned of its neighbours' timing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Punctuality {
    leads: BTreeMap<u32, VecDeque<Duration>>,
    /// Expected messages missed in a row, per neighbour.
    missed: BTreeMap<u32, u32>,
    silent: BTreeSet<u32>,
}

impl Punctuality {
    /// When to give up on `neighbour`'s message in a round that began at `began`,
    /// whose air time (scaled to wall time) is `air`.
    pub fn deadline(&self, neighbour: u32, began: Instant, air: Duration, timeout: Duration) -> Instant {
        let longest = |leads: &VecDeque<Duration>| leads.iter().copied().max();
        let lead = self
            .leads
            .get(&neighbour)
            .and_then(longest)
            .or_else(|| self.leads.values().filter_map(longest).max());
        let wait = match lead {
            Some(lead) => (air + (lead * LEAD_FACTOR).max(lead + MIN_SLACK)).min(timeout),
            None => timeout,
        };
        began + wait
    }

    /// `neighbour`'s message arrived `lead` later than the radio alone explains.
    pub fn arrived(&mut self, neighbour: u32, lead: Duration) {
        let leads = self.leads.entry(neighbour).or_default();
        if leads.len() == HISTORY {
            leads.pop_front();
        }
        leads.push_back(lead);
        self.missed.remove(&neighbour);
        self.silent.remove(&neighbour);
    }

    /// `neighbour`'s expected message did not arrive. Returns how many it missed in a
    /// row when that makes it silent (`silent_after` misses; 0 never does).
    pub fn miss(&mut self, neighbour: u32, silent_after: u32) -> Option<u32> {
        let missed = self.missed.entry(neighbour).or_default();
        *missed += 1;
        if silent_after > 0 && *missed >= silent_after && self.silent.insert(neighbour) {
            return Some(*missed);
        }
        None
    }

    /// Whether the round should not wait for `neighbour`.
    pub fn is_silent(&self, neighbour: u32) -> bool {
        self.silent.contains(&neighbour)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_follow_the_radio_and_recent_leads_within_the_timeout() {
        let mut p = Punctuality::default();
        let began = Instant::now();
        let (air, timeout) = (Duration::from_millis(30), Duration::from_secs(10));
        assert_eq!(p.deadline(1, began, air, timeout), began + timeout, "nothing known yet");
        p.arrived(1, Duration::from_millis(100));
        assert_eq!(
            p.deadline(1, began, air, timeout),
            began + air + MIN_SLACK + Duration::from_millis(100)
        );
        // A neighbour never heard from borrows the others' leads.
        assert_eq!(p.deadline(2, began, air, timeout), p.deadline(1, began, air, timeout));
        p.arrived(1, Duration::from_secs(1));
        assert_eq!(p.deadline(1, began, air, timeout), began + air + Duration::from_secs(4));
        p.arrived(1, Duration::from_secs(5));
        assert_eq!(
            p.deadline(1, began, air, timeout),
            began + timeout,
            "never past the timeout"
        );
    }

    #[test]
    fn a_neighbour_goes_silent_after_misses_in_a_row_until_it_is_heard() {
        let mut p = Punctuality::default();
        assert_eq!(p.miss(3, 2), None);
        assert_eq!(p.miss(3, 2), Some(2));
        assert!(p.is_silent(3));
        assert_eq!(p.miss(3, 2), None, "reported once per silence");
        p.arrived(3, Duration::ZERO);
        assert!(!p.is_silent(3));
        assert_eq!(p.miss(3, 2), None, "the count starts again");
        assert_eq!(p.miss(4, 0), None);
        assert_eq!(p.miss(4, 0), None, "0: never silent");
    }
}
