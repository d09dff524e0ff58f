//! The checkpoint's two slots against the real loopback S3-protocol server: a torn newer
//! slot falls back to the older one; a torn only copy or a store that refuses us stops the
//! start instead of passing for a first start. Finished runs live in archive objects of
//! their own that the checkpoint names, and runs' children in segment objects; one of
//! either gone missing (or swapped for another's) stops the start too.

use fleetmap_coordinator::ItemSource;
use fleetmap_coordinator::admission::AdmissionControl;
use fleetmap_coordinator::run::{ChildSpec, MapRun, RunId, Tolerance};
use fleetmap_coordinator::spec::RunSpec;
use fleetmap_coordinator::state::{
    ArchivedRun, ArchivedRunRef, RunSnapshotRef, STATE_VERSION, SegmentRef, SnapshotRef,
    StateError, StateStore,
};
use fleetmap_objstore::local::LocalS3;
use fleetmap_objstore::{S3Uri, ensure_bucket, put_bytes};
use fleetmap_protocol::ResultTarget;
use fleetmap_protocol::{AnomalyCounts, ItemStatus, OutcomeMessage};

const BUCKET: &str = "state";

/// A run still open, as a checkpoint holds it.
fn open_ref<'a>(
    run: &'a MapRun,
    spec: &'a RunSpec,
    segments: Vec<SegmentRef>,
) -> RunSnapshotRef<'a> {
    RunSnapshotRef {
        finalized: false,
        ..snapshot_ref(run, spec, segments)
    }
}

/// A checkpoint of `generation`: `runs` inline, `archived` named.
fn checkpoint(
    generation: u64,
    opened: u64,
    runs: Vec<RunSnapshotRef<'_>>,
    archived: &[ArchivedRun],
) -> Vec<u8> {
    let admission = AdmissionControl::new(7);
    serde_json::to_vec(&SnapshotRef {
        version: STATE_VERSION,
        generation,
        saved_ms: 0,
        runs,
        archived: archived
            .iter()
            .map(|a| ArchivedRunRef {
                id: &a.id,
                redrive_count: a.redrive_count,
            })
            .collect(),
        open: &[],
        admission: &admission,
        republish: Vec::new(),
        opened,
        runs_finished: archived.len() as u64,
        executions_finished: 0,
    })
    .unwrap()
}

fn body(generation: u64, opened: u64) -> Vec<u8> {
    checkpoint(generation, opened, Vec::new(), &[])
}

async fn server() -> (LocalS3, aws_sdk_s3::Client, S3Uri) {
    let server = LocalS3::start().await.expect("local S3 starts");
    let client = server.client().await;
    ensure_bucket(&client, BUCKET).await.unwrap();
    let prefix = S3Uri::parse_prefix("s3://state/coord/").unwrap();
    (server, client, prefix)
}

/// Saves the next `n` generations the way the engine does.
async fn save_generations(store: &mut StateStore, n: u64) {
    for _ in 0..n {
        let generation = store.next_generation();
        store
            .save(generation, body(generation, generation * 10))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn the_newest_slot_wins_and_saves_alternate() {
    let (server, client, prefix) = server().await;
    let mut store = StateStore::new(client.clone(), &prefix);
    assert!(store.load().await.unwrap().is_none(), "first start");
    save_generations(&mut store, 3).await;
    let dir = server.root().join(BUCKET).join("coord");
    assert!(dir.join("coordinator-state.0.json").is_file());
    assert!(dir.join("coordinator-state.1.json").is_file());

    let mut again = StateStore::new(client, &prefix);
    let snap = again.load().await.unwrap().expect("a checkpoint");
    assert_eq!((snap.generation, snap.opened), (3, 30));
    assert_eq!(again.next_generation(), 4);
    server.shutdown().await;
}

#[tokio::test]
async fn a_torn_newer_slot_falls_back_to_the_older_one() {
    let (server, client, prefix) = server().await;
    let mut store = StateStore::new(client.clone(), &prefix);
    save_generations(&mut store, 4).await;
    let dir = server.root().join(BUCKET).join("coord");
    // Generation 4 lives in slot 0. Tear it behind the server's back, keeping the checksum
    // it recorded, as a non-atomic store does when the writer dies mid-PUT.
    std::fs::write(
        dir.join("coordinator-state.0.json"),
        b"{\"version\":1,\"gen",
    )
    .unwrap();

    let mut again = StateStore::new(client.clone(), &prefix);
    let snap = again.load().await.unwrap().expect("the older slot");
    assert_eq!((snap.generation, snap.opened), (3, 30));
    // The next save overwrites the torn slot, never the one just loaded.
    assert_eq!(again.next_generation(), 4);
    save_generations(&mut again, 1).await;
    let mut third = StateStore::new(client.clone(), &prefix);
    assert_eq!(third.load().await.unwrap().unwrap().generation, 4);

    // A slot the store serves whole but that is not a snapshot is torn too.
    put_bytes(
        &client,
        BUCKET,
        "coord/coordinator-state.1.json",
        "{\"version\":1".into(),
        "application/json",
    )
    .await
    .unwrap();
    let mut fourth = StateStore::new(client, &prefix);
    assert_eq!(fourth.load().await.unwrap().unwrap().generation, 4);
    server.shutdown().await;
}

#[tokio::test]
async fn a_torn_only_copy_stops_the_start_and_names_it() {
    let (server, client, prefix) = server().await;
    let mut store = StateStore::new(client.clone(), &prefix);
    save_generations(&mut store, 1).await;
    let dir = server.root().join(BUCKET).join("coord");
    std::fs::write(dir.join("coordinator-state.1.json"), b"{").unwrap();
    let err = StateStore::new(client, &prefix).load().await.unwrap_err();
    assert!(matches!(err, StateError::Corrupt { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("s3://state/coord/coordinator-state.1.json"),
        "{err}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_store_that_refuses_us_is_an_error_not_a_first_start() {
    let (server, _client, prefix) = server().await;
    let mut cfg = server.config();
    cfg.secret_access_key = Some("not-the-secret".into());
    let client = fleetmap_objstore::client(&cfg).await;
    let err = StateStore::new(client, &prefix).load().await.unwrap_err();
    assert!(matches!(err, StateError::Store { .. }), "{err:?}");
    assert!(err.to_string().contains("s3://state/coord/"), "{err}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_legacy_single_object_checkpoint_is_refused_by_name_not_ignored() {
    let (server, client, prefix) = server().await;
    // What fleetmap wrote before the two slots: state version 1, one object.
    put_bytes(
        &client,
        BUCKET,
        "coord/coordinator-state.json",
        "{\"version\":1,\"saved_ms\":0,\"runs\":[]}".into(),
        "application/json",
    )
    .await
    .unwrap();
    let err = StateStore::new(client, &prefix).load().await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("s3://state/coord/coordinator-state.json"),
        "{msg}"
    );
    assert!(msg.contains("state version 1 is not"), "{msg}");
    server.shutdown().await;
}

/// A finished-looking run with `children` children.
fn finished_run(id: &str, redrive_count: u32, children: u32) -> (MapRun, RunSpec) {
    let mut run = MapRun::new(RunId(id.into()), None, 0, Tolerance::default(), 1);
    run.set_children(
        (0..children)
            .map(|i| ChildSpec {
                bucket: "data".into(),
                key: format!("part-{i}.parquet"),
                row_groups: None,
                first_index: 0,
                items: None,
            })
            .collect(),
        1,
    );
    run.redrive_count = redrive_count;
    let spec = RunSpec::new(
        ItemSource::Prefix {
            uri: "s3://data/".into(),
        },
        ResultTarget {
            bucket: "results".into(),
            prefix: String::new(),
        },
    );
    (run, spec)
}

/// Writes children `ranges` (start, end) of `run` to segments, as the engine does before a checkpoint.
async fn write_children(
    store: &StateStore,
    run: &MapRun,
    ranges: &[(u64, u64)],
) -> Vec<SegmentRef> {
    let mut writes = Vec::new();
    let mut refs = Vec::new();
    for &(start, end) in ranges {
        let s = SegmentRef { start, end };
        let children = run.children_segment(start as usize..end as usize);
        writes.push(store.segment_body(&run.id, s, &children).unwrap());
        refs.push(s);
    }
    store.write_segments(writes, Vec::new()).await.unwrap();
    refs
}

fn snapshot_ref<'a>(
    run: &'a MapRun,
    spec: &'a RunSpec,
    segments: Vec<SegmentRef>,
) -> RunSnapshotRef<'a> {
    RunSnapshotRef {
        run,
        spec,
        writer_prefix: "s3://results/mapruns/".into(),
        finalized: true,
        manifest_key: &None,
        open_order: Some(1),
        segments,
        tail: None,
        record_segments: Vec::new(),
        records: Vec::new(),
    }
}

#[tokio::test]
async fn finished_runs_are_archived_once_and_read_back_in_the_named_order() {
    let (server, client, prefix) = server().await;
    let mut store = StateStore::new(client.clone(), &prefix);
    let (a, a_spec) = finished_run("run-a", 0, 3);
    let (b, b_spec) = finished_run("run-b", 2, 5);
    let (a_children, b_children) = (
        write_children(&store, &a, &[(0, 3)]).await,
        write_children(&store, &b, &[(0, 2), (2, 5)]).await,
    );
    let (done, error) = store
        .archive(&[
            snapshot_ref(&a, &a_spec, a_children),
            snapshot_ref(&b, &b_spec, b_children),
        ])
        .await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(
        done,
        [
            ArchivedRun {
                id: RunId("run-a".into()),
                redrive_count: 0
            },
            ArchivedRun {
                id: RunId("run-b".into()),
                redrive_count: 2
            }
        ]
    );
    let runs = server.root().join(BUCKET).join("coord").join("runs");
    assert!(runs.join("run-a.0.json").is_file());
    assert!(
        runs.join("run-b.2.json").is_file(),
        "the redrive is in the key"
    );

    let generation = store.next_generation();
    let body = checkpoint(generation, 2, Vec::new(), &done);
    assert!(
        !String::from_utf8_lossy(&body).contains("part-0.parquet"),
        "the checkpoint names archived runs, it does not repeat them"
    );
    store.save(generation, body).await.unwrap();

    let snap = StateStore::new(client, &prefix)
        .load()
        .await
        .unwrap()
        .expect("a checkpoint");
    assert!(snap.runs.is_empty());
    let back: Vec<(String, u32, u32)> = snap
        .archived_runs
        .iter()
        .map(|r| {
            (
                r.run.id.0.clone(),
                r.run.redrive_count,
                r.run.counts().total as u32,
            )
        })
        .collect();
    assert_eq!(back, [("run-a".into(), 0, 3), ("run-b".into(), 2, 5)]);
    assert!(snap.archived_runs.iter().all(|r| r.finalized));
    let b_back = &snap.archived_runs[1].run;
    assert_eq!(b_back.child(4).unwrap().key, "part-4.parquet");
    assert_eq!(b_back.child(5), None);
    server.shutdown().await;
}

#[tokio::test]
async fn a_missing_archive_stops_the_start_and_names_it() {
    let (server, client, prefix) = server().await;
    let mut store = StateStore::new(client.clone(), &prefix);
    let generation = store.next_generation();
    let gone = [ArchivedRun {
        id: RunId("run-gone".into()),
        redrive_count: 1,
    }];
    store
        .save(generation, checkpoint(generation, 2, Vec::new(), &gone))
        .await
        .unwrap();
    let err = StateStore::new(client, &prefix).load().await.unwrap_err();
    assert!(matches!(err, StateError::Corrupt { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("s3://state/coord/runs/run-gone.1.json"),
        "{msg}"
    );
    assert!(msg.contains("missing"), "{msg}");
    server.shutdown().await;
}

#[tokio::test]
async fn an_archive_of_another_run_is_refused_by_name() {
    let (server, client, prefix) = server().await;
    let mut store = StateStore::new(client.clone(), &prefix);
    let (a, a_spec) = finished_run("run-a", 0, 1);
    let a_children = write_children(&store, &a, &[(0, 1)]).await;
    let (done, error) = store
        .archive(&[snapshot_ref(&a, &a_spec, a_children)])
        .await;
    assert!(error.is_none(), "{error:?}");
    // Someone copies run-a's archive over run-b's name.
    let dir = server.root().join(BUCKET).join("coord").join("runs");
    std::fs::copy(dir.join("run-a.0.json"), dir.join("run-b.0.json")).unwrap();
    let mut named = done;
    named.push(ArchivedRun {
        id: RunId("run-b".into()),
        redrive_count: 0,
    });
    let generation = store.next_generation();
    store
        .save(generation, checkpoint(generation, 2, Vec::new(), &named))
        .await
        .unwrap();
    let err = StateStore::new(client, &prefix).load().await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("runs/run-b.0.json"), "{msg}");
    assert!(msg.contains("holds map run run-a"), "{msg}");
    server.shutdown().await;
}

#[tokio::test]
async fn children_are_written_once_in_segments_and_read_back_with_an_inline_tail() {
    let (server, client, prefix) = server().await;
    let mut store = StateStore::new(client.clone(), &prefix);
    let (run, spec) = finished_run("run-open", 0, 10);
    let segments = write_children(&store, &run, &[(0, 4), (4, 7)]).await;
    let dir = server
        .root()
        .join(BUCKET)
        .join("coord")
        .join("children")
        .join("run-open");
    assert!(dir.join("0-4.bin").is_file() && dir.join("4-7.bin").is_file());
    let mut open = open_ref(&run, &spec, segments);
    open.tail = Some(run.children_segment(7..10));
    let generation = store.next_generation();
    let body = checkpoint(generation, 1, vec![open], &[]);
    let text = String::from_utf8_lossy(&body);
    assert!(
        !text.contains("part-6.parquet") && text.contains("part-7.parquet"),
        "segments are named, the tail is inline: {text}"
    );
    store.save(generation, body).await.unwrap();

    let snap = StateStore::new(client.clone(), &prefix)
        .load()
        .await
        .unwrap()
        .expect("a checkpoint");
    let back = &snap.runs[0];
    assert_eq!(back.segments.len(), 2);
    assert!(back.tail.is_none(), "the tail went back into the run");
    let keys: Vec<&str> = (0..10).map(|i| back.run.child(i).unwrap().key).collect();
    let want: Vec<String> = (0..10).map(|i| format!("part-{i}.parquet")).collect();
    assert_eq!(keys, want);
    assert_eq!(back.run.child(10), None);
    server.shutdown().await;
}

#[tokio::test]
async fn a_missing_or_swapped_segment_stops_the_start_and_names_it() {
    let (server, client, prefix) = server().await;
    let mut store = StateStore::new(client.clone(), &prefix);
    let (run, spec) = finished_run("run-x", 0, 6);
    let (other, _) = finished_run("run-y", 0, 6);
    let segments = write_children(&store, &run, &[(0, 3), (3, 6)]).await;
    write_children(&store, &other, &[(0, 3)]).await;
    let open = open_ref(&run, &spec, segments);
    let generation = store.next_generation();
    store
        .save(generation, checkpoint(generation, 1, vec![open], &[]))
        .await
        .unwrap();
    let dir = server.root().join(BUCKET).join("coord").join("children");
    let segment = dir.join("run-x").join("3-6.bin");
    let saved = std::fs::read(&segment).unwrap();

    std::fs::remove_file(&segment).unwrap();
    let err = StateStore::new(client.clone(), &prefix)
        .load()
        .await
        .unwrap_err();
    assert!(matches!(err, StateError::Corrupt { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("s3://state/coord/children/run-x/3-6.bin"),
        "{msg}"
    );
    assert!(msg.contains("children 3..6 of map run run-x"), "{msg}");
    assert!(msg.contains("missing"), "{msg}");

    // Another run's segment under this one's name.
    std::fs::write(&segment, &saved).unwrap();
    let swapped = std::fs::read(dir.join("run-y").join("0-3.bin")).unwrap();
    put_bytes(
        &client,
        BUCKET,
        "coord/children/run-x/0-3.bin",
        swapped.into(),
        "application/octet-stream",
    )
    .await
    .unwrap();
    let err = StateStore::new(client.clone(), &prefix)
        .load()
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("children/run-x/0-3.bin"), "{msg}");
    assert!(
        msg.contains("holds children 0..3 of map run run-y"),
        "{msg}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_state_version_2_checkpoint_is_read_with_its_inline_children() {
    let (server, client, prefix) = server().await;
    let (run, spec) = finished_run("run-v2", 0, 3);
    // What version 2 wrote: the children inside the run, a letter and an attempt number
    // per child. Built from this version's JSON, as the shapes are otherwise the same.
    let open = open_ref(&run, &spec, Vec::new());
    let mut json: serde_json::Value =
        serde_json::from_slice(&checkpoint(1, 1, vec![open], &[])).unwrap();
    json["version"] = 2.into();
    let r = &mut json["runs"][0];
    r.as_object_mut().unwrap().remove("segments");
    r["run"]["children"] = serde_json::to_value(run.children_segment(0..3)).unwrap();
    r["run"]["states"] = "PPP".into();
    r["run"]["attempts"] = serde_json::json!([0, 0, 0]);
    put_bytes(
        &client,
        BUCKET,
        "coord/coordinator-state.1.json",
        serde_json::to_vec(&json).unwrap().into(),
        "application/json",
    )
    .await
    .unwrap();
    let mut store = StateStore::new(client, &prefix);
    let snap = store.load().await.unwrap().expect("a checkpoint");
    let back = &snap.runs[0].run;
    assert_eq!(back.counts().pending, 3);
    assert_eq!(back.child(2).unwrap().key, "part-2.parquet");
    assert!(
        snap.runs[0].segments.is_empty(),
        "the next save writes them"
    );
    assert_eq!(store.next_generation(), 2);
    server.shutdown().await;
}

#[tokio::test]
async fn records_are_written_once_in_segments_and_read_back_with_the_inline_rest() {
    let (server, client, prefix) = server().await;
    let mut store = StateStore::new(client.clone(), &prefix);
    let (mut run, spec) = finished_run("run-r", 0, 6);
    run.log_records();
    run.open(1);
    while run.next_dispatch(2).is_some() {}
    for execution in 0..4 {
        run.apply_outcome(
            &OutcomeMessage {
                run_id: "run-r".into(),
                execution,
                attempt: 1,
                worker_id: "w".into(),
                started_ms: 2,
                finished_ms: 3,
                bytes_read: 10,
                status: ItemStatus::Succeeded {
                    readings: 24,
                    anomalies: AnomalyCounts::default(),
                    devices: Vec::new(),
                    devices_truncated: false,
                    result_key: format!("analytics/run-r/{execution}.json"),
                },
            },
            3,
        );
    }
    assert_eq!(run.record_log_len(), 4);
    // The first three records go to segment 0; once durable the log forgets them and the
    // fourth rides inline.
    let w = store
        .record_body(&run.id, 0, 3, run.logged_records(3))
        .unwrap();
    store.write_segments(Vec::new(), vec![w]).await.unwrap();
    run.trim_record_log(3);
    let children = write_children(&store, &run, &[(0, 6)]).await;
    let mut open = open_ref(&run, &spec, children);
    open.record_segments = vec![0];
    open.records = run.logged_records(run.record_log_len());
    let generation = store.next_generation();
    let body = checkpoint(generation, 1, vec![open], &[]);
    let text = String::from_utf8_lossy(&body);
    assert!(
        !text.contains("run-r/0.json") && text.contains("run-r/3.json"),
        "segments are named, the rest is inline: {text}"
    );
    store.save(generation, body).await.unwrap();
    let dir = server.root().join(BUCKET).join("coord").join("records");
    assert!(dir.join("run-r").join("0.json").is_file());

    let snap = StateStore::new(client.clone(), &prefix)
        .load()
        .await
        .unwrap()
        .expect("a checkpoint");
    let back = &snap.runs[0].run;
    let keys: Vec<Option<&str>> = (0..6)
        .map(|e| back.record(e).and_then(|r| r.result_key.as_deref()))
        .collect();
    assert_eq!(
        keys,
        [
            Some("analytics/run-r/0.json"),
            Some("analytics/run-r/1.json"),
            Some("analytics/run-r/2.json"),
            Some("analytics/run-r/3.json"),
            None,
            None
        ]
    );
    assert_eq!(
        back.record_log_len(),
        1,
        "the inline record is logged again"
    );

    // A record segment gone missing stops the start and says which.
    std::fs::remove_file(dir.join("run-r").join("0.json")).unwrap();
    let err = StateStore::new(client, &prefix).load().await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("s3://state/coord/records/run-r/0.json"),
        "{msg}"
    );
    assert!(msg.contains("record segment 0 of map run run-r"), "{msg}");
    server.shutdown().await;
}
