//! The round policies, end to end but in-process: the real coordinator over mutual TLS
//! on loopback, driven by scripted members on one paused tokio runtime ([`harness`]).
//! Each test waits out round timeouts, graces and deadlines of seconds in virtual time
//! and runs in milliseconds; what each asserts used to need a run of real processes.

mod harness;

use std::time::Duration;

use harness::{Coordinator, End, Member, honest_metrics, ms, play_honest, play_taking};
use wdml_proto::RoundPolicy;

/// Everyone reports at once: every round closes on the last report, at once, and the
/// run is finished with a row per node and round.
#[tokio::test(start_paused = true)]
async fn a_sync_round_closes_on_the_last_report() {
    let mut coordinator = Coordinator::start("sync", 3, 4, |_| {}).await;
    let members = coordinator.members(3).await;
    let plays: Vec<_> = members.into_iter().map(|m| tokio::spawn(play_honest(m))).collect();
    let summary = coordinator.end().await.expect("the run ends well");
    assert!(summary.finished, "{}", summary.reason);
    assert_eq!(summary.rounds_closed, 4);
    for play in plays {
        let (started, end) = play.await.unwrap();
        assert_eq!(started, [1, 2, 3, 4]);
        assert!(matches!(end, End::Complete(ref c) if c.finished), "{end:?}");
    }
    let rows = coordinator.metrics();
    assert_eq!(rows.len(), 12);
    // No time passes but the messages': nothing waited for a timer.
    for (round, ms) in coordinator.round_ms() {
        assert!(ms < 50.0, "round {round} took {ms} ms");
    }
}

/// `quorum` of 3 of 4 with a grace of 1 s: each round closes 1 s after the third
/// report, without the straggler (which reports 2 s into each round); its reports are
/// filed as late (late.jsonl, a `late` event each), never in a round's rows, and since
/// it is late but alive it is awaited again each round.
#[tokio::test(start_paused = true)]
async fn a_quorum_round_closes_a_grace_after_the_quorum_and_files_the_straggler_late() {
    let rounds = 4;
    let mut coordinator = Coordinator::start("quorum", 4, rounds, |c| {
        c.settings.set_round_policy(RoundPolicy::Quorum);
        c.settings.quorum = 0.75;
        c.settings.grace_s = 1.0;
    })
    .await;
    let members = coordinator.members(4).await;
    let mut plays = Vec::new();
    for member in members {
        let delay = match member.id {
            // Later than the grace, sooner than two rounds: late every round, never
            // silent (a late report says it is alive).
            3 => ms(2_000),
            id => ms(100 * u64::from(id + 1)),
        };
        plays.push(tokio::spawn(
            member.play(move |m, start| m.report_after(delay, start, honest_metrics(0.5))),
        ));
    }
    let summary = coordinator.end().await.expect("the run ends well");
    assert!(summary.finished, "{}", summary.reason);
    for play in plays {
        play.await.unwrap();
    }
    let rows = coordinator.metrics();
    assert!(rows.iter().all(|r| r.node != 3), "the straggler was waited for");
    assert_eq!(rows.len(), 3 * rounds as usize);
    // The third report comes 300 ms in; the grace ends 1 s later.
    for (round, ms) in coordinator.round_ms() {
        assert!((1_300.0..1_350.0).contains(&ms), "round {round} took {ms} ms");
    }
    // Its report of round r comes 2 s after r started, while r + 1 is open: late;
    // the last round's comes after the run is written up, and is not filed.
    let late = coordinator.late();
    assert!(late.iter().all(|r| r.late && r.node == 3), "{late:?}");
    assert_eq!(late.iter().map(|r| r.round).collect::<Vec<_>>(), [1, 2, 3]);
    let late_events = summary
        .events
        .iter()
        .filter(|e| e.node == 3 && e.event == "late")
        .count();
    assert_eq!(late_events, late.len());
    assert!(
        !summary.events.iter().any(|e| e.event == "silent"),
        "{:?}",
        summary.events
    );
}

/// `deadline` of 2 s: a round closes 2 s after its start whoever is missing; a report
/// after it is late.
#[tokio::test(start_paused = true)]
async fn a_deadline_round_closes_at_its_deadline() {
    let rounds = 3;
    let mut coordinator = Coordinator::start("deadline", 3, rounds, |c| {
        c.settings.set_round_policy(RoundPolicy::Deadline);
        c.settings.deadline_s = 2.0;
    })
    .await;
    let mut plays = Vec::new();
    for member in coordinator.members(3).await {
        let delay = if member.id == 2 { ms(2_500) } else { ms(10) };
        plays.push(tokio::spawn(
            member.play(move |m, start| m.report_after(delay, start, honest_metrics(0.5))),
        ));
    }
    let summary = coordinator.end().await.expect("the run ends well");
    assert!(summary.finished, "{}", summary.reason);
    for (round, ms) in coordinator.round_ms() {
        assert!((2_000.0..2_050.0).contains(&ms), "round {round} took {ms} ms");
    }
    assert!(coordinator.metrics().iter().all(|r| r.node != 2));
    // Rounds 1 and 2's reports come while the next round is open; the last one's after
    // the run is written up, and is not filed.
    let late: Vec<u32> = coordinator.late().iter().map(|r| r.round).collect();
    assert_eq!(late, [1, 2]);
}

/// A member that heartbeats but never reports, under `sync` with a round timeout of
/// 10 s: round 1 waits it out (nothing says the member is in trouble yet); round 2
/// waits only the barrier's patience (it missed its last report: twice the slowest
/// report, at least 200 ms); from round 3 on it is silent (two misses) and not waited
/// for at all. One `silent` event records it.
#[tokio::test(start_paused = true)]
async fn a_silent_member_costs_one_round_timeout_then_the_patience_then_nothing() {
    let mut coordinator = Coordinator::start("silent", 3, 5, |c| {
        c.round_timeout = Duration::from_secs(10);
    })
    .await;
    let mut plays = Vec::new();
    for member in coordinator.members(3).await {
        plays.push(tokio::spawn(member.play(move |m, start| {
            if m.id != 2 {
                m.report_after(ms(20), start, honest_metrics(0.5));
            }
        })));
    }
    let summary = coordinator.end().await.expect("the run ends well");
    assert!(summary.finished, "{}", summary.reason);
    let times = coordinator.round_ms();
    assert_eq!(times.len(), 5);
    assert!((10_000.0..10_050.0).contains(&times[&1]), "{times:?}");
    assert!((200.0..250.0).contains(&times[&2]), "{times:?}");
    for round in 3..=5 {
        assert!(times[&round] < 50.0, "{times:?}");
    }
    let silent: Vec<_> = summary.events.iter().filter(|e| e.event == "silent").collect();
    assert!(silent.len() == 1 && silent[0].node == 2, "{:?}", summary.events);
    assert!(coordinator.metrics().iter().all(|r| r.node != 2));
}

/// A member that heartbeats, never reports, and joins again (new session, new stream)
/// every other round: its misses are counted per identity across its joins, so after
/// the first round the barrier waits for it only as long as the round's own reports
/// justify. One round waits out the round timeout, no other does. (Was
/// tests/hostile.rs `a_member_that_withholds_its_reports_and_rejoins_stretches_one_round_at_most`,
/// with processes and a 6 s round timeout: up to 8 × 6 s.)
#[tokio::test(start_paused = true)]
async fn a_member_that_withholds_its_reports_and_rejoins_stretches_one_round_at_most() {
    let rounds = 8;
    let round_timeout_ms = 6_000.0;
    let mut coordinator = Coordinator::start("withhold", 3, rounds, |c| {
        c.round_timeout = ms(round_timeout_ms as u64);
    })
    .await;
    let mut plays = Vec::new();
    for id in 0..2 {
        // A second a round, as a node takes: the other member's rejoin (no virtual
        // time) comes while a round is open.
        plays.push(tokio::spawn(play_taking(coordinator.member(id).await, ms(1_000))));
    }
    let mut withholder = coordinator.member(2).await;
    let mut rejoins = 0;
    'run: loop {
        // Heartbeats (its own task), never a report; after two round starts, away and back.
        for _ in 0..2 {
            if withholder.next_start().await.is_err() {
                break 'run;
            }
        }
        drop(withholder);
        withholder = loop {
            match coordinator.try_member_at(2, "127.0.0.1:9").await {
                Ok(member) => break member,
                // Joins are paced (1 a second, 5 at once): wait and join again.
                Err(status) if status.code() == tonic::Code::ResourceExhausted => tokio::time::sleep(ms(500)).await,
                // The run ended meanwhile.
                Err(status) if status.code() == tonic::Code::FailedPrecondition => break 'run,
                Err(status) => panic!("join refused: {status:?}"),
            }
        };
        rejoins += 1;
    }
    let summary = coordinator.end().await.expect("the run ends well");
    assert!(summary.finished, "{}", summary.reason);
    assert!(rejoins >= 2, "it rejoined {rejoins} times");
    let times = coordinator.round_ms();
    assert_eq!(times.len(), rounds as usize);
    let stretched = times.values().filter(|&&ms| ms >= round_timeout_ms * 0.9).count();
    assert!(
        stretched <= 1,
        "{stretched} rounds waited out the round timeout: {times:?}"
    );
    assert!(
        coordinator.metrics().iter().all(|r| r.node < 2),
        "the member never reported"
    );
    assert!(
        summary
            .events
            .iter()
            .filter(|e| e.node == 2 && e.event == "rejoined")
            .count()
            >= 2,
        "{:?}",
        summary.events
    );
}

/// A member that reconnects in the middle of a round (a new join with its certificate,
/// a new stream) got no StartRound on its new stream and will not report that round:
/// the round closes on the others' reports, without waiting for the round timeout;
/// from the next round on it takes part again on its new stream.
#[tokio::test(start_paused = true)]
async fn a_member_that_reconnects_mid_round_is_not_waited_for_and_takes_part_again() {
    let mut coordinator = Coordinator::start("reconnect", 3, 3, |c| {
        c.round_timeout = Duration::from_secs(30);
    })
    .await;
    let mut plays = Vec::new();
    for id in 0..2 {
        // A second a round, as a node takes: the other member's rejoin (no virtual
        // time) comes while a round is open.
        plays.push(tokio::spawn(play_taking(coordinator.member(id).await, ms(1_000))));
    }
    let mut first = coordinator.member(2).await;
    let start = first.next_start().await.expect("round 1 starts");
    assert_eq!(start.round, 0);
    // Its certificate proves it is node 2: the new join replaces the old stream
    // whatever the coordinator still holds.
    let second = coordinator.member(2).await;
    assert!(
        matches!(first.next().await, Err(End::Closed | End::Refused(_))),
        "the old stream ends"
    );
    drop(first);
    let (started, end) = play_honest(second).await;
    assert!(matches!(end, End::Complete(ref c) if c.finished), "{end:?}");
    assert_eq!(started, [2, 3], "its new stream takes part from the next round");
    let summary = coordinator.end().await.expect("the run ends well");
    assert!(summary.finished, "{}", summary.reason);
    let times = coordinator.round_ms();
    // On the others' reports (1 s in), not at the round timeout (30 s).
    assert!(times[&1] < 1_100.0, "round 1 waited for the old stream: {times:?}");
    let rows = coordinator.metrics();
    assert_eq!(
        rows.iter().filter(|r| r.node == 2).map(|r| r.round).collect::<Vec<_>>(),
        [2, 3]
    );
    assert!(
        summary.events.iter().any(|e| e.node == 2 && e.event == "rejoined"),
        "{:?}",
        summary.events
    );
}

/// Every member leaves in the middle of a round without a word: nothing happened in it,
/// so it is not closed (no empty round on record); it starts again, with the same
/// number, when members are back, and the run finishes.
#[tokio::test(start_paused = true)]
async fn a_round_everyone_left_is_started_again_when_they_are_back() {
    let mut coordinator = Coordinator::start("abandoned", 2, 2, |_| {}).await;
    let mut members = coordinator.members(2).await;
    for member in &mut members {
        assert_eq!(member.next_start().await.expect("round 1 starts").round, 0);
    }
    drop(members);
    // Well past the heartbeat timeout: they are gone for sure.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let mut plays = Vec::new();
    for member in coordinator.members(2).await {
        plays.push(tokio::spawn(play_honest(member)));
    }
    // Round 1 starts again as soon as one member is back (the other may come in the
    // next round): the first one back has both rounds.
    let mut firsts = Vec::new();
    for play in plays {
        let (started, end) = play.await.unwrap();
        assert!(matches!(end, End::Complete(_)), "{end:?}");
        firsts.push(started);
    }
    assert_eq!(firsts[0], [1, 2], "round 1 again, then round 2");
    let summary = coordinator.end().await.expect("the run ends well");
    assert!(summary.finished, "{}", summary.reason);
    assert_eq!((summary.rounds_closed, summary.failed_rounds), (2, 0));
    let rows = coordinator.metrics();
    for round in 1..=2 {
        assert!(
            rows.iter().any(|r| r.round == round),
            "round {round} has no report: {rows:?}"
        );
    }
}

/// A member whose stream goes quiet (no heartbeat; its link cut, say) is marked gone
/// after the heartbeat timeout, and the round it was awaited in closes then, not at
/// the round timeout.
#[tokio::test(start_paused = true)]
async fn a_member_that_goes_quiet_is_marked_gone_after_the_heartbeat_timeout() {
    let mut coordinator = Coordinator::start("quiet", 3, 2, |c| {
        c.heartbeat_timeout = Duration::from_secs(4);
        c.round_timeout = Duration::from_secs(50);
    })
    .await;
    let mut plays = Vec::new();
    for id in 0..2 {
        plays.push(tokio::spawn(play_honest(coordinator.member(id).await)));
    }
    let mut quiet = coordinator.member(2).await;
    quiet.next_start().await.expect("round 1 starts");
    quiet.go_quiet();
    let summary = coordinator.end().await.expect("the run ends well");
    assert!(summary.finished, "{}", summary.reason);
    let times = coordinator.round_ms();
    // Reaped between 4 s and 5 s (the reaper looks every timeout / 4).
    assert!((4_000.0..5_100.0).contains(&times[&1]), "{times:?}");
    assert!(
        summary
            .events
            .iter()
            .any(|e| e.node == 2 && e.event == "gone" && e.reason.contains("silent")),
        "{:?}",
        summary.events
    );
    drop(quiet);
}

/// What a member is never allowed: a report whose numbers its round cannot hold. A
/// claim of more messages than it has neighbours, then a loss of 1.7e308: each closes
/// its stream naming the field, and nothing of it reaches the record.
#[tokio::test(start_paused = true)]
async fn a_report_its_round_cannot_hold_is_refused_naming_the_field() {
    let mut coordinator = Coordinator::start("bounds", 3, 6, |_| {}).await;
    // The honest members take a second a round (virtual): the liar, joining again
    // after each refusal, is back for the next round.
    let mut plays = Vec::new();
    for id in 0..2 {
        let member = coordinator.member(id).await;
        plays.push(tokio::spawn(
            member.play(|m, start| m.report_after(ms(1_000), start, honest_metrics(0.5))),
        ));
    }
    type Lie = fn(&mut wdml_proto::RoundMetrics);
    let lies: [(&str, Lie); 3] = [
        ("messages_received", |m| m.messages_received = 99),
        ("compute_ms", |m| m.compute_ms = 3_600_000.0),
        ("train_loss", |m| m.train_loss = 1.7e308),
    ];
    for (field, lie) in lies {
        let mut liar: Member = coordinator.member(2).await;
        let start = liar.next_start().await.expect("a round starts");
        let mut metrics = honest_metrics(0.5);
        lie(&mut metrics);
        liar.report(&start, metrics).await;
        loop {
            match liar.next().await {
                Ok(_) => continue,
                Err(End::Refused(status)) => {
                    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{field}: {status:?}");
                    assert!(status.message().contains(field), "{field}: {status:?}");
                    break;
                }
                Err(end) => panic!("{field}: the stream ended otherwise: {end:?}"),
            }
        }
    }
    let summary = coordinator.end().await.expect("the run ends well");
    assert!(summary.finished, "{}", summary.reason);
    assert!(coordinator.metrics().iter().all(|r| r.node != 2));
    let text = std::fs::read_to_string(coordinator.run_dir.join("summary.json")).unwrap();
    assert!(!text.contains("e308"), "the lie reached the record");
}
