//! A poison item — one that takes its worker down every time — hits the quorum queue's
//! delivery limit, is dead-lettered, and becomes a failed child execution named
//! `States.Runtime`; the rest of the run goes on.

use std::time::Duration;

use fleetmap_coordinator::{ChildExecution, ItemSource, PageRequest, RunId, RunStatus, Tolerance};
use fleetmap_protocol::{ItemMessage, Items};
use fleetmap_sample::GenConfig;
use fleetmap_tests::ledger::Ledger;
use fleetmap_tests::{DATA, Harness, amqp_url};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::FieldTable;

/// A consumer of the items queue standing in for a worker that dies with what it holds
/// (it nacks with requeue, which is what the broker does for a dead consumer's deliveries).
async fn crasher(h: &Harness, prefetch: u16) -> (lapin::Connection, lapin::Consumer) {
    let conn = fleetmap_protocol::amqp::connect(&amqp_url(), "fleetmap-test-crasher")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(prefetch, BasicQosOptions::default())
        .await
        .unwrap();
    let consumer = ch
        .basic_consume(
            h.topology.items_queue().into(),
            "crasher".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    (conn, consumer)
}

/// The next delivery the stand-in worker gets, within 10 s.
async fn next_delivery(consumer: &mut lapin::Consumer, what: &str) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect(what)
        .unwrap()
        .unwrap()
}

/// Gives a delivery back as a worker that dies holding it does: the broker requeues it and
/// counts a delivery.
async fn die_with(d: Delivery) {
    d.acker
        .nack(BasicNackOptions {
            requeue: true,
            multiple: false,
        })
        .await
        .unwrap();
}

/// The sample's five files in a run of MaxConcurrency 1 (so only the first item is out at
/// first, and alone) that tolerates one failure.
async fn sample_run_one_at_a_time(h: &Harness) -> (fleetmap_sample::GenReport, RunId) {
    let generated = fleetmap_sample::generate_to_s3(&h.client, DATA, &GenConfig::default())
        .await
        .unwrap();
    let spec = Harness::spec(
        ItemSource::AthenaManifest {
            uri: format!("s3://{DATA}/{}", generated.manifest),
        },
        1,
        Tolerance {
            count: Some(1),
            percentage: None,
        },
    );
    let id = h.handle().start_run(spec).await.unwrap();
    (generated, id)
}

/// Lets a real worker finish the sample's run, which tolerates one failure, and returns
/// its one failed child execution.
async fn one_of_five_failed(h: &mut Harness, id: &RunId) -> ChildExecution {
    h.add_worker("worker-1", 2);
    let d = h
        .wait_until(id, Duration::from_secs(60), "the run ends", |d| {
            d.status.is_terminal()
        })
        .await;
    assert_eq!(
        d.status,
        RunStatus::Succeeded,
        "one failure is tolerated: {d:#?}"
    );
    assert_eq!(
        (d.execution_counts.succeeded, d.execution_counts.failed),
        (4, 1)
    );
    let mut failed = h
        .handle()
        .executions(
            id,
            Some(fleetmap_coordinator::ExecState::Failed),
            PageRequest::default(),
        )
        .await
        .unwrap();
    assert_eq!(failed.items.len(), 1);
    failed.items.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_item_is_dead_lettered_and_fails_only_its_execution() {
    // No real workers at first: a "crashing worker" takes the poison item and dies with it
    // unacked (here: a requeueing nack, which is what the broker does for a dead consumer).
    let mut h = Harness::start(0, 1).await;
    let (generated, id) = sample_run_one_at_a_time(&h).await;
    let poison_key = generated.files[0].clone();

    let (conn, mut crasher) = crasher(&h, 1).await;
    let mut crashes = 0;
    while crashes < h.topology.delivery_limit + 1 {
        let d = next_delivery(
            &mut crasher,
            "the poison item keeps coming back until the limit",
        )
        .await;
        let item = ItemMessage::decode(&d.data).unwrap();
        assert_eq!(
            item.key, poison_key,
            "MaxConcurrency 1: only the first item is out"
        );
        die_with(d).await;
        crashes += 1;
    }
    let _ = conn.close(200, "crasher done".into()).await;

    // Real workers take over the rest of the run.
    let f = one_of_five_failed(&mut h, &id).await;
    assert_eq!(f.error.as_deref(), Some("States.Runtime"));
    // Every reading of the other files exactly once; none of the poison file's.
    let records = h.result_records().await;
    assert!(
        records.iter().all(|r| r["metadata"]["source"]
            .as_str()
            .is_some_and(|s| !s.ends_with(&poison_key))),
        "a record from the poison item"
    );
    let ledger = Ledger::count(
        generated.readings_total - generated.rows_per_file[0],
        &records,
    );
    ledger.report(
        "poison item (crashes every worker that takes it)",
        "a consumer that takes the item and drops it unacked, past the delivery limit",
        1,
    );
    ledger.assert_exact();
    assert!(
        f.cause.as_deref().unwrap().contains(&poison_key),
        "{:?}",
        f.cause
    );
    h.stop().await;
}

/// Small files travel several to a message. A pack that comes back from the broker (its
/// worker died holding it) is split: each child goes back alone, so a poison child would
/// meet the delivery limit by itself, and every reading is still written exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redelivered_pack_is_split_into_single_items() {
    let mut h = Harness::start(0, 1).await;
    // 40 small files: enough waiting children for packs (a pack takes at most a quarter).
    let cfg = GenConfig {
        devices: 40,
        ..GenConfig::default()
    };
    let generated = fleetmap_sample::generate_to_s3(&h.client, DATA, &cfg)
        .await
        .unwrap();
    let files = generated.files.len();
    assert!(files > 1, "the sample has several files");
    // MaxConcurrency 0: no limit, so the small files may share messages.
    let spec = Harness::spec(
        ItemSource::AthenaManifest {
            uri: format!("s3://{DATA}/{}", generated.manifest),
        },
        0,
        Tolerance::default(),
    );
    let id = h.handle().start_run(spec).await.unwrap();

    let (conn, mut crasher) = crasher(&h, 64).await;
    // The first child goes out alone, as soon as its footer is read (time to first child
    // execution); the rest, read meanwhile, share a message.
    let (mut taken, mut packs) = (Vec::new(), 0);
    let mut children = 0;
    while children < files {
        let d = next_delivery(&mut crasher, "the run's items are published").await;
        assert!(!d.redelivered);
        children += match Items::decode(&d.data).unwrap() {
            Items::One(_) => 1,
            Items::Pack(p) => {
                packs += 1;
                p.children.len()
            }
        };
        taken.push(d);
    }
    assert_eq!(children, files);
    assert!(packs >= 1, "the sample's small files share messages");
    for d in taken {
        die_with(d).await;
    }
    let _ = conn.close(200, "crasher done".into()).await;

    h.add_worker("worker-1", 2);
    let d = h
        .wait_until(&id, Duration::from_secs(60), "the run ends", |d| {
            d.status.is_terminal()
        })
        .await;
    assert_eq!(d.status, RunStatus::Succeeded, "{d:#?}");
    assert_eq!(d.execution_counts.succeeded, files as u64);
    assert_eq!(
        h.stats
            .packs_split
            .load(std::sync::atomic::Ordering::Relaxed),
        packs,
        "every redelivered pack was split"
    );
    let records = h.result_records().await;
    let ledger = Ledger::count(generated.readings_total, &records);
    ledger.report(
        "a redelivered pack",
        "a consumer that takes every item message (packs among them) and drops each unacked once",
        1,
    );
    ledger.assert_exact();
    h.stop().await;
}

/// A worker refuses (rejects without requeue) only what it cannot decode, so an item the
/// coordinator wrote and a worker refused means a worker of another version: the failed
/// child says so instead of blaming crashes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_item_a_worker_refuses_fails_with_a_cause_that_says_why() {
    let mut h = Harness::start(0, 1).await;
    let (_, id) = sample_run_one_at_a_time(&h).await;
    let (conn, mut refuser) = crasher(&h, 1).await;
    let d = next_delivery(&mut refuser, "the first item is published").await;
    d.acker
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    let _ = conn.close(200, "refuser done".into()).await;

    let cause = one_of_five_failed(&mut h, &id).await.cause.unwrap();
    assert!(cause.contains("could not decode"), "{cause}");
    assert!(!cause.contains("delivered"), "{cause}");
    h.stop().await;
}
