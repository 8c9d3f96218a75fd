//! The dashboard, in a real browser: headless Chromium opens the live page of a run
//! (over HTTPS with the run's certificate), which shows one node per member and one
//! link per neighbour pair, gains a point on its accuracy curve as rounds close (pushed
//! by server-sent events), and shows a killed node as gone, without a console error.
//! The JSON API and `/metrics` say what `metrics.jsonl` says. A screenshot is kept in
//! `target/tmp/dashboard.png`.
//!
//! Needs `chromium` (Debian's package).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Cluster, TempDir, dump_logs, exchange, get, metrics};
use tokio::io::AsyncReadExt;
use wdml_coordinator::MetricsRow;

/// Three nodes in a full mesh on an emulated radio that loses nothing, with 150 ms of
/// latency paced in wall time: a round takes about 0.2 s, and the run lasts long
/// enough to be watched (the test ends it).
fn scenario() -> Vec<String> {
    let mut overrides = common::small_mesh(3, 400);
    overrides.extend([
        "channel.latency_ms=150".into(),
        "channel.time_scale=1".into(),
        "run.name=\"dash\"".into(),
    ]);
    overrides
}

/// A coordinator with its dashboard on a free port, and three nodes; the page's URL.
fn start() -> (Cluster, String) {
    let mut cluster = Cluster::coordinator_with("dashboard", "127.0.0.1", &scenario(), &["--http", "127.0.0.1:0"]);
    for id in 0..3 {
        cluster.start_node(id, "mlp:64", "127.0.0.1");
    }
    let url = cluster.dashboard_url();
    assert!(url.starts_with("https://"), "{url}");
    (cluster, url)
}

/// What Chromium made of `url` after `budget_ms` of virtual time: the DOM, and its
/// console lines.
fn chromium(url: &str, budget_ms: u32, screenshot: Option<&Path>) -> (String, Vec<String>) {
    let mut command = Command::new("chromium");
    command.args([
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        // The run's CA is not the browser's: the page is read-only, the test trusts it.
        "--ignore-certificate-errors",
        "--window-size=1400,1000",
        "--enable-logging=stderr",
        "--v=0",
    ]);
    command.arg(format!("--virtual-time-budget={budget_ms}"));
    match screenshot {
        Some(path) => command.arg(format!("--screenshot={}", path.display())),
        None => command.arg("--dump-dom"),
    };
    let output = command
        .arg(url)
        .output()
        .expect("chromium runs (apt-get install chromium)");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let console = String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|l| l.contains("CONSOLE"))
        .map(str::to_string)
        .collect();
    (String::from_utf8_lossy(&output.stdout).into_owned(), console)
}

/// The values of `attribute` on the elements of `dom` that carry `marker` (a crude
/// scan of Chromium's serialised DOM; the page's markup is ours).
fn attributes(dom: &str, marker: &str, attribute: &str) -> Vec<String> {
    dom.split('<')
        .filter(|tag| tag.contains(marker))
        .filter_map(|tag| tag.split(&format!("{attribute}=\"")).nth(1))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_string)
        .collect()
}

/// The rounds of the first `count` `round` events `/api/events` pushes (within 30 s).
fn pushed_rounds(url: &str, ca: &Path, count: usize) -> Vec<u32> {
    exchange(url, "/api/events", ca, async |io| {
        let (mut text, mut rounds) = (String::new(), Vec::new());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut buffer = [0u8; 4096];
        while rounds.len() < count {
            let Ok(Ok(n)) = tokio::time::timeout_at(deadline, io.read(&mut buffer)).await else {
                break;
            };
            if n == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&buffer[..n]));
            rounds = text
                .split("event: round\ndata: ")
                .skip(1)
                .filter_map(|rest| rest.split('\n').next()?.trim().parse().ok())
                .collect();
        }
        rounds.truncate(count);
        rounds
    })
}

#[test]
fn a_browser_shows_the_live_run_and_the_api_says_what_the_metrics_say() {
    if !common::have_chromium("a_browser_shows_the_live_run") {
        return;
    }
    let (mut cluster, url) = start();
    cluster.wait_for_round(3, Duration::from_secs(120));

    // 1. The page: one node per member, one link per neighbour pair, no console line.
    let (dom, console) = chromium(&url, 500, None);
    assert!(console.is_empty(), "console: {console:#?}");
    let nodes = attributes(&dom, "class=\"node ", "data-node");
    assert_eq!(nodes, ["0", "1", "2"], "{dom}");
    let mut links = attributes(&dom, "data-link=", "data-link");
    links.sort();
    assert_eq!(links, ["0-1", "0-2", "1-2"]);
    let points = |dom: &str| -> Vec<u32> {
        attributes(dom, "polyline ", "data-points")
            .iter()
            .map(|p| p.parse().unwrap())
            .collect()
    };
    let before = points(&dom);
    assert_eq!(
        before.len(),
        3 * 4,
        "a polyline per node in each of 4 charts (accuracy, loss, energy, air time)"
    );
    let shown: u32 = attributes(&dom, "body ", "data-rounds")[0].parse().unwrap();
    assert!(
        shown >= 3 && before[..3].iter().all(|&p| p == shown),
        "{before:?} at round {shown}"
    );

    // The radio as drawn: each pair by the weaker direction's SNR in the round shown.
    // /api/radio gives the draws the nodes' shapers made: recomputed here from
    // channel.json with the channel crate. Fading moves them from round to round.
    let ca = cluster.tls().join("ca.pem");
    let radio = |round: u32| -> serde_json::Value {
        serde_json::from_str(&get(&url, &format!("/api/radio?round={round}"), &ca)).unwrap()
    };
    let record: wdml_coordinator::ChannelRecord =
        serde_json::from_str(&std::fs::read_to_string(cluster.out().join("channel.json")).unwrap()).unwrap();
    let channel = record.channel.channel(record.seed, record.nodes as usize).unwrap();
    let snr = |round: u32, from: u32, to: u32| {
        let link = wdml_channel::Link::new(from as usize, to as usize);
        channel.link_state(link, u64::from(round - 1)).unwrap().snr_db
    };
    for round in [shown, shown - 1] {
        let links = radio(round)["links"].as_array().unwrap().clone();
        assert_eq!(links.len(), 6, "every directed link of the mesh");
        for l in &links {
            let (from, to) = (l["from"].as_u64().unwrap() as u32, l["to"].as_u64().unwrap() as u32);
            assert_eq!(l["snr_db"].as_f64().unwrap(), snr(round, from, to), "{l}");
        }
    }
    assert_ne!(
        snr(shown, 0, 1),
        snr(shown - 1, 0, 1),
        "fading changes the SNR each round"
    );
    // (the round the page drew the radio of: the newest closed when it asked)
    let drawn_round: u32 = attributes(&dom, "id=\"topology\"", "data-round")[0].parse().unwrap();
    assert!(drawn_round >= shown, "{drawn_round} < {shown}");
    let drawn: Vec<f64> = attributes(&dom, "data-link=", "data-snr")
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    for (pair, drawn) in attributes(&dom, "data-link=", "data-link").iter().zip(drawn) {
        let (a, b) = pair.split_once('-').unwrap();
        let (a, b) = (a.parse().unwrap(), b.parse().unwrap());
        let weaker = snr(drawn_round, a, b).min(snr(drawn_round, b, a));
        assert!(
            (drawn - weaker).abs() < 0.006,
            "{pair}: drawn {drawn} dB, round {drawn_round}: {weaker} dB"
        );
    }

    // 2. As rounds close, the coordinator pushes each one to open pages (server-sent
    //    events), and the page drawn later has the new points.
    let pushed = pushed_rounds(&url, &ca, 2);
    assert_eq!(pushed.len(), 2, "{pushed:?}");
    assert_eq!(
        pushed[1],
        pushed[0] + 1,
        "one event per closed round, in order: {pushed:?}"
    );
    cluster.wait_for_round(shown + 2, Duration::from_secs(60));
    let (dom, console) = chromium(&url, 500, None);
    assert!(console.is_empty(), "console: {console:#?}");
    let after = points(&dom);
    assert!(
        after.iter().zip(&before).all(|(a, b)| a >= &(b + 2)),
        "{before:?} then {after:?}"
    );

    // 3. The JSON API and /metrics say what metrics.jsonl says.
    let api: Vec<MetricsRow> = serde_json::from_str(&get(&url, "/api/rounds", &ca)).unwrap();
    let file = metrics(cluster.out());
    assert!(!api.is_empty() && api.len() <= file.len());
    for row in &api {
        let on_disk = file
            .iter()
            .find(|r| (r.round, r.node) == (row.round, row.node))
            .unwrap();
        assert_eq!(
            serde_json::to_value(row).unwrap(),
            serde_json::to_value(on_disk).unwrap()
        );
    }
    let newest = api.iter().map(|r| r.round).max().unwrap();
    let since: Vec<MetricsRow> =
        serde_json::from_str(&get(&url, &format!("/api/rounds?since={}", newest - 1), &ca)).unwrap();
    assert!(
        !since.is_empty() && since.iter().all(|r| r.round >= newest),
        "?since= gives the newer rounds only"
    );
    // Without the run's token (none, or a wrong one), nothing of the run: 401.
    let base = url.split_once("?token=").expect("the printed URL carries the token").0;
    for bad in [base.to_string(), format!("{base}?token={}", "0".repeat(64))] {
        for path in [
            "/",
            "/app.js",
            "/api/run",
            "/api/nodes",
            "/api/rounds",
            "/metrics",
            "/api/events",
        ] {
            let (head, body) = common::response(&bad, path, &ca);
            assert!(head.starts_with("HTTP/1.1 401"), "{path} without the token: {head}");
            assert!(!body.contains("127.0.0.1") && !body.contains("seed"), "{path}: {body}");
        }
    }
    let token = std::fs::read_to_string(cluster.out().join("dashboard.token")).unwrap();
    assert!(
        url.ends_with(&format!("?token={token}")),
        "the URL carries the file's token"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(cluster.out().join("dashboard.token"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "only its owner reads the token");
    let prometheus = get(&url, "/metrics", &ca);
    let closed: u32 = prometheus
        .lines()
        .find_map(|l| l.strip_prefix("wdml_rounds_closed_total{run=\"dash-42\"} "))
        .unwrap()
        .parse()
        .unwrap();
    let in_file = file.iter().map(|r| r.round).max().unwrap();
    assert!(closed >= api.iter().map(|r| r.round).max().unwrap() && closed <= in_file + 1);
    for node in 0..3u32 {
        let reported = prometheus
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!(
                    "wdml_node_rounds_reported_total{{node=\"{node}\",model=\"mlp:64\"}} "
                ))
            })
            .unwrap();
        let rows = file.iter().filter(|r| r.node == node).count() as f64;
        let reported: f64 = reported.parse().unwrap();
        assert!(reported >= api.iter().filter(|r| r.node == node).count() as f64 && reported <= rows + 1.0);
    }

    // 4. A node killed (-9) is shown as gone once the coordinator notices.
    cluster.nodes[2].kill();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let nodes = get(&url, "/api/nodes", &ca);
        if nodes.contains("\"id\":2,") && nodes.contains("\"status\":\"gone\"") {
            break;
        }
        if Instant::now() > deadline {
            dump_logs(cluster.out());
            panic!("node 2 never shown gone: {nodes}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (dom, console) = chromium(&url, 500, None);
    assert!(console.is_empty(), "console: {console:#?}");
    let statuses = attributes(&dom, "class=\"node ", "data-status");
    assert_eq!(statuses, ["live", "live", "gone"], "{dom}");
    // The membership events say so too, in the API and on the page.
    let membership: Vec<serde_json::Value> = serde_json::from_str(&get(&url, "/api/membership", &ca)).unwrap();
    let events: Vec<(u64, &str)> = membership
        .iter()
        .map(|e| (e["node"].as_u64().unwrap(), e["event"].as_str().unwrap()))
        .collect();
    let mut joined: Vec<u64> = events.iter().filter(|e| e.1 == "joined").map(|e| e.0).collect();
    joined.sort();
    assert_eq!(joined, [0, 1, 2], "{membership:?}");
    assert_eq!(events.last(), Some(&(2, "gone")), "{membership:?}");
    assert!(dom.contains(": node 2 gone"), "{dom}");

    let screenshot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    chromium(&url, 500, Some(&screenshot));
    assert!(std::fs::metadata(&screenshot).unwrap().len() > 10_000);
    eprintln!("screenshot: {}", screenshot.display());
}

/// `wdml view` serving `dir` on a free port, and its URL.
fn view(dir: &Path) -> (common::Process, String) {
    let child = Command::new(common::WDML)
        .args(["view", "--http", "127.0.0.1:0"])
        .arg(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut view = common::Process::adopt("view", child);
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(view.child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let url = line
        .trim()
        .strip_prefix("dashboard on ")
        .unwrap_or_else(|| panic!("{line}"))
        .to_string();
    (view, url)
}

#[test]
fn the_radio_view_shows_whom_a_policy_chose_and_at_what_power() {
    if !common::have_chromium("the_radio_view_shows_whom_a_policy_chose") {
        return;
    }
    let dir = TempDir::new("dashboard-policy");
    let mut overrides = common::small_mesh(6, 2);
    overrides.extend([
        "channel.time_scale=0".into(),
        "channel.selection=\"pairs\"".into(),
        "channel.power_control={min_energy={}}".into(),
    ]);
    assert!(common::launch(dir.path(), &overrides).status.success());
    let (mut view, url) = view(dir.path());
    let ca = dir.path().join("tls/ca.pem");
    // The API gives the round's line of policy.jsonl as it is.
    let api: serde_json::Value = serde_json::from_str(&get(&url, "/api/radio?round=2", &ca)).unwrap();
    let written: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(dir.path().join("policy.jsonl"))
            .unwrap()
            .lines()
            .nth(1)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(api["policy"], written);
    // The page draws the newest round: its three pairs in full, the other twelve
    // neighbour pairs of the full mesh faint; nothing on the console.
    let (dom, console) = chromium(&url, 500, None);
    view.kill();
    assert!(console.is_empty(), "console: {console:#?}");
    let chosen = attributes(&dom, "data-link=", "data-chosen");
    assert_eq!(chosen.len(), 15, "{dom}");
    assert_eq!(chosen.iter().filter(|c| *c == "true").count(), 3, "{chosen:?}");
    assert!(dom.contains("not chosen this round"), "{dom}");
}

#[test]
fn a_comparison_shows_its_algorithms_side_by_side_with_the_numbers_of_comparison_json() {
    if !common::have_chromium("a_comparison_shows_its_algorithms_side_by_side") {
        return;
    }
    let dir = TempDir::new("dashboard-compare");
    // `wdml compare` serves the comparison's own page while it runs.
    let output = Command::new(common::WDML)
        .args(["compare", "--algorithms", "local,dml", "--out"])
        .arg(dir.path())
        .args(common::small_mesh(3, 3).iter().flat_map(|o| ["--set", o.as_str()]))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("comparison dashboard (the algorithms side by side): https://127.0.0.1:"),
        "{stderr}"
    );

    // Afterwards, `wdml view` serves it from the directory, with the comparison's
    // certificate.
    let (mut view, url) = view(dir.path());
    let ca = dir.path().join("tls/ca.pem");

    // The API gives each algorithm's curve, exactly as comparison.json has it.
    let api: serde_json::Value = serde_json::from_str(&get(&url, "/api/compare", &ca)).unwrap();
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("comparison.json")).unwrap()).unwrap();
    let algorithms: Vec<&str> = api
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["algorithm"].as_str().unwrap())
        .collect();
    assert_eq!(algorithms, ["local", "dml"]);
    for (shown, written) in api.as_array().unwrap().iter().zip(file.as_array().unwrap()) {
        assert_eq!(shown["algorithm"], written["algorithm"]);
        assert_eq!(shown["curve"], written["curve"], "{}", shown["algorithm"]);
        assert_eq!(shown["curve"].as_array().unwrap().len(), 3);
        assert_eq!(shown["finished"], true);
    }
    // Over a radio: DML pays for its exchange, local training nothing.
    let energy = |a: usize| api[a]["curve"][2]["cumulative_energy_j"].as_f64().unwrap();
    assert!(energy(0) == 0.0 && energy(1) > 0.0, "{api}");

    // The page: a line per algorithm in each of its three charts, three rounds each,
    // and a row per algorithm; nothing on the console.
    let (dom, console) = chromium(&url, 500, None);
    let screenshot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-compare.png");
    chromium(&url, 500, Some(&screenshot));
    view.kill();
    assert!(console.is_empty(), "console: {console:#?}");
    let lines = attributes(&dom, "polyline ", "data-node");
    assert_eq!(lines, ["local", "dml", "local", "dml", "local", "dml"], "{dom}");
    let points = attributes(&dom, "polyline ", "data-points");
    assert!(points.iter().all(|p| p == "3"), "{points:?}");
    assert_eq!(
        attributes(&dom, "tr data-algorithm", "data-algorithm"),
        ["local", "dml"],
        "{dom}"
    );
}
