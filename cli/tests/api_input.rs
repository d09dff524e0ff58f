//! Bad requests to the map run API get a 4xx with a JSON body naming the problem — never a
//! 5xx, a hang or a crash — and change nothing: a good run started before them is still
//! there, untouched, afterwards. Real `fleetmap coordinator` process, real RabbitMQ.

mod common;

use serde_json::{Value, json};

const TOKEN: &str = "api-input-token";

struct Api {
    http: reqwest::Client,
    url: String,
}

impl Api {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json");
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req.send().await.expect("the coordinator answers");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }

    async fn start(&self, body: &str) -> (u16, Value) {
        self.send(
            reqwest::Method::POST,
            "/v1/map-runs",
            Some(body.as_bytes().to_vec()),
        )
        .await
    }
}

/// A 4xx whose JSON body has an error name and a message containing `needle`.
fn refused(what: &str, (status, body): (u16, Value), want: u16, needle: &str) {
    assert_eq!(status, want, "{what}: {body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{what}: no error name in {body}"
    );
    assert!(
        message.to_lowercase().contains(&needle.to_lowercase()),
        "{what}: message {message:?} does not mention {needle:?}"
    );
}

fn good_request(extra: Value) -> String {
    let mut req = json!({
        "ItemReader": {"Items": ["s3://fleetmap-data/none/such-object"]},
        "Results": {"Bucket": "fleetmap-results", "Prefix": "analytics"},
        "MaxConcurrency": 1,
    });
    if let (Some(r), Some(e)) = (req.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            r.insert(k.clone(), v.clone());
        }
    }
    req.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_4xx_naming_the_problem_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("fmapi-{}", std::process::id());
    let (_s3, env) = common::s3_server(dir.path(), &prefix);
    let (_coordinator, url) = env.coordinator(&["--api-token", TOKEN]);
    let api = Api {
        http: reqwest::Client::new(),
        url,
    };

    // Accepted first: no workers run, so it stays RUNNING throughout.
    let (status, started) = api.start(&good_request(json!({}))).await;
    assert_eq!(status, 201, "{started}");
    let run = started["mapRunId"].as_str().unwrap().to_owned();

    // Authentication: missing and wrong tokens, and the token never echoed back.
    let anonymous = api
        .http
        .get(format!("{}/v1/map-runs", api.url))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    let wrong = api
        .http
        .get(format!("{}/v1/map-runs", api.url))
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    assert!(!wrong.text().await.unwrap().contains(TOKEN));

    refused(
        "not JSON",
        api.start("{\"ItemReader\": ").await,
        400,
        "json",
    );
    refused(
        "unknown field",
        api.start(&good_request(json!({"MaxConcurency": 5}))).await,
        400,
        "MaxConcurency",
    );
    refused(
        "negative MaxConcurrency",
        api.start(&good_request(json!({"MaxConcurrency": -1})))
            .await,
        400,
        "MaxConcurrency",
    );
    refused(
        "absurd MaxConcurrency",
        api.start(&good_request(json!({"MaxConcurrency": 1u64 << 40})))
            .await,
        400,
        "MaxConcurrency",
    );
    refused(
        "percentage above 100",
        api.start(&good_request(json!({"ToleratedFailurePercentage": 150})))
            .await,
        400,
        "ToleratedFailurePercentage",
    );
    refused(
        "label too long",
        api.start(&good_request(json!({"Label": "x".repeat(41)})))
            .await,
        400,
        "Label",
    );
    refused(
        "result prefix escaping with ..",
        api.start(&good_request(
            json!({"Results": {"Bucket": "fleetmap-results", "Prefix": "a/../../etc"}}),
        ))
        .await,
        400,
        "..",
    );
    refused(
        "two item sources",
        api.start(&good_request(json!({"ItemReader": {
            "Items": ["s3://fleetmap-data/a"], "Prefix": "s3://fleetmap-data/"}})))
            .await,
        400,
        "exactly one",
    );
    refused(
        "not an S3 URI",
        api.start(&good_request(
            json!({"ItemReader": {"Manifest": "https://example.com/manifest.csv"}}),
        ))
        .await,
        400,
        "s3://",
    );
    let huge = vec![b' '; fleetmap_coordinator::api::MAX_BODY_BYTES + 1];
    let (status, _) = api
        .send(reqwest::Method::POST, "/v1/map-runs", Some(huge))
        .await;
    assert_eq!(status, 413, "an oversized body");
    refused(
        "unknown run",
        api.send(reqwest::Method::GET, "/v1/map-runs/no-such-run", None)
            .await,
        404,
        "no-such-run",
    );
    refused(
        "unknown status filter",
        api.send(reqwest::Method::GET, "/v1/map-runs?status=SLEEPING", None)
            .await,
        400,
        "SLEEPING",
    );
    refused(
        "update to a negative MaxConcurrency",
        api.send(
            reqwest::Method::PATCH,
            &format!("/v1/map-runs/{run}"),
            Some(br#"{"maxConcurrency": -5}"#.to_vec()),
        )
        .await,
        400,
        "maxConcurrency",
    );

    // Nothing was lost or added: the one accepted run, unchanged.
    let (status, list) = api.send(reqwest::Method::GET, "/v1/map-runs", None).await;
    assert_eq!(status, 200, "{list}");
    let runs = list["mapRuns"].as_array().expect("mapRuns");
    assert_eq!(runs.len(), 1, "{list}");
    let (status, described) = api
        .send(reqwest::Method::GET, &format!("/v1/map-runs/{run}"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(described["maxConcurrency"], 1, "{described}");
    assert_eq!(described["status"], "RUNNING", "{described}");
}
