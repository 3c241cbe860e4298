//! Kill-at-random test for the spool, in sled's manner: this test binary runs itself as a
//! child that appends batches as fast as it can, printing each seq once `append` has
//! returned (fsynced); the parent SIGKILLs it at a random moment, reopens the spool and
//! checks that every printed seq is there, intact, in order.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use node_agent::ship::spool::Spool;

const CHILD_ENV: &str = "SPOOL_CRASH_CHILD_DIR";

fn payload(seq: u64) -> Vec<u8> {
    // Varying sizes, content derived from the seq so damage is detectable.
    (0..(100 + (seq * 7919) % 3000))
        .map(|i| (seq as u8).wrapping_add(i as u8))
        .collect()
}

#[test]
fn every_acknowledged_append_survives_sigkill() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(&dir);
        return;
    }
    let dir = std::env::temp_dir().join(format!("spool-crash-{}", rand::random::<u64>()));
    let mut confirmed_total = 0;
    for round in 0..6 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "every_acknowledged_append_survives_sigkill",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let kill_after = Duration::from_millis(100 + rand::random::<u64>() % 400);
        let started = Instant::now();
        let mut confirmed = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(seq) = line
                .strip_prefix("durable ")
                .and_then(|s| s.parse::<u64>().ok())
            {
                confirmed.push(seq);
            }
            if started.elapsed() >= kill_after {
                child.kill().unwrap();
                break;
            }
        }
        let _ = child.wait();

        let (spool, rec) = Spool::open(&dir).unwrap();
        assert_eq!(
            rec.quarantined, 0,
            "a crash mid-append must only ever tear the tail"
        );
        let seqs: Vec<u64> = rec.found.iter().map(|f| f.seq).collect();
        for seq in &confirmed {
            let f = rec
                .found
                .iter()
                .find(|f| f.seq == *seq)
                .unwrap_or_else(|| panic!("round {round}: durable seq {seq} lost"));
            assert_eq!(
                spool.read(f.loc).unwrap(),
                payload(*seq),
                "round {round}: seq {seq} damaged"
            );
        }
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "round {round}: seqs not contiguous"
        );
        confirmed_total += confirmed.len();
    }
    assert!(
        confirmed_total > 50,
        "the child barely ran ({confirmed_total} appends)"
    );
}

fn child(dir: &str) {
    let (mut spool, _) = Spool::open(std::path::Path::new(dir)).unwrap();
    let mut seq = spool.last_seq();
    loop {
        seq += 1;
        spool.append(seq, 1, &payload(seq)).unwrap();
        println!("durable {seq}");
    }
}
