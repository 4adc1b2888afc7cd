//! A real kube-apiserver (1.20.2) keeps its state in ferrocd: the same
//! kubectl workload against it on ferrocd and on etcd 3.5.1 gives the same
//! visible results, with no storage error in its log.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ferrocd_tests::certs::Pki;
use ferrocd_tests::cluster::Cluster;
use ferrocd_tests::kube::{object_list, ApiServer};
use ferrocd_tests::member::Member;
use ferrocd_tests::tools;
use serde_json::Value;

const CONFIGMAPS: usize = 1500;
const SECRETS: usize = 500;
const WATCH_WAIT: Duration = Duration::from_secs(120);

/// Flags that make kube-apiserver lean on its storage: no watch cache (lists,
/// paginated lists and watches go to storage), its own compaction every few
/// seconds, and Events that expire (stored with leases).
const STORAGE_HEAVY: [&str; 3] = ["--watch-cache=false", "--etcd-compaction-interval=5s", "--event-ttl=5s"];

/// What kube-apiserver logs when its own compaction meets a compaction it
/// made before, or a watch it resumed from a compacted revision: caused on
/// purpose here.
const EXPECTED_LOG: [&str; 2] =
    ["required revision has been compacted", "mvcc: required revision is a future revision"];

fn ok(out: ferrocd_tests::command::Output, what: &str) -> String {
    assert!(out.success, "{what} failed:\n{}\n{}", out.stdout, out.stderr);
    out.stdout
}

/// The error line kubectl printed, without what differs from run to run.
fn error_of(out: &ferrocd_tests::command::Output) -> String {
    assert!(!out.success, "expected a refusal, got:\n{}", out.stdout);
    let line = out.stderr.lines().find(|l| l.starts_with("Error") || l.contains("error")).unwrap_or_default();
    line.chars().filter(|c| !c.is_ascii_digit()).collect()
}

/// Follows `continue` tokens through `path` with `limit` per page; returns
/// the pages' sizes.
fn pages(api: &ApiServer, path: &str, limit: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut token = String::new();
    loop {
        let url = format!(
            "{path}?limit={limit}{}",
            if token.is_empty() { String::new() } else { format!("&continue={token}") }
        );
        let page: Value = serde_json::from_str(&ok(api.kubectl(&["get", "--raw", &url]), "a page")).expect("page JSON");
        sizes.push(page["items"].as_array().map_or(0, Vec::len));
        token = page["metadata"]["continue"].as_str().unwrap_or_default().to_string();
        if token.is_empty() {
            return sizes;
        }
    }
}

/// Runs the workload and returns what a user sees of it, step by step.
async fn workload(api: &ApiServer) -> Vec<String> {
    let mut seen = Vec::new();
    ok(api.kubectl(&["create", "namespace", "w"]), "create namespace");
    let watch = api.watch(&["get", "configmaps", "-n", "w"]);
    // The watch is up once it reports the sentinel.
    ok(api.kubectl(&["create", "configmap", "sentinel", "-n", "w", "--from-literal=k=v"]), "sentinel");
    let first = watch.until(WATCH_WAIT, |e| e["object"]["metadata"]["name"] == "sentinel");
    assert!(first.last().is_some_and(|e| e["object"]["metadata"]["name"] == "sentinel"), "the watch saw no sentinel");
    let sentinel_rv =
        first.last().map(|e| e["object"]["metadata"]["resourceVersion"].as_str().unwrap_or("").to_string());

    // Many objects created, patched, listed in pages and deleted.
    let started = Instant::now();
    let cms = object_list("ConfigMap", "w", "cm", CONFIGMAPS, |i| format!("  data:\n    n: \"{i}\"\n"));
    let created = ok(api.kubectl_with_input(&["create", "-f", "-"], &cms), "create configmaps");
    seen.push(format!("configmaps created: {}", created.lines().filter(|l| l.ends_with(" created")).count()));
    let secrets = object_list("Secret", "w", "s", SECRETS, |i| format!("  stringData:\n    n: \"{i}\"\n"));
    let created = ok(api.kubectl_with_input(&["create", "-f", "-"], &secrets), "create secrets");
    seen.push(format!("secrets created: {}", created.lines().filter(|l| l.ends_with(" created")).count()));
    let labeled = ok(api.kubectl(&["label", "configmaps", "-n", "w", "--all", "round=two"]), "label");
    seen.push(format!("configmaps labeled: {}", labeled.lines().count()));
    let listed = ok(api.kubectl(&["get", "configmaps", "-n", "w", "--chunk-size=100", "-o", "name"]), "chunked list");
    seen.push(format!("configmaps listed in chunks: {}", listed.lines().count()));
    let sizes = pages(api, "/api/v1/namespaces/w/configmaps", 250);
    seen.push(format!("pages of 250: {sizes:?}"));
    let secrets_listed = ok(api.kubectl(&["get", "secrets", "-n", "w", "--chunk-size=70", "-o", "name"]), "secrets");
    seen.push(format!("secrets listed: {}", secrets_listed.lines().filter(|l| l.contains("secret/s-")).count()));
    let labeled_list = ok(api.kubectl(&["get", "configmaps", "-n", "w", "-l", "round=two", "-o", "name"]), "by label");
    seen.push(format!("configmaps with the label: {}", labeled_list.lines().count()));
    let deleted = ok(api.kubectl(&["delete", "configmaps", "-n", "w", "--all", "--wait=false"]), "delete");
    seen.push(format!("configmaps deleted: {}", deleted.lines().count()));
    ok(api.kubectl(&["delete", "secrets", "-n", "w", "--all", "--wait=false"]), "delete secrets");

    // Every change was watched, exactly once each, in order.
    let expected = 3 * (CONFIGMAPS + 1);
    let mut events = first.len();
    let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
    by_name.insert("sentinel".into(), vec!["ADDED".into()]);
    for e in watch.until(WATCH_WAIT, |_| {
        events += 1;
        events >= expected
    }) {
        let name = e["object"]["metadata"]["name"].as_str().unwrap_or("?").to_string();
        by_name.entry(name).or_default().push(e["type"].as_str().unwrap_or("?").to_string());
    }
    let whole = by_name.values().filter(|t| *t == &["ADDED", "MODIFIED", "DELETED"]).count();
    let odd: Vec<_> = by_name.iter().filter(|(_, t)| *t != &["ADDED", "MODIFIED", "DELETED"]).take(5).collect();
    seen.push(format!("configmaps watched added, modified, deleted once each: {whole}; others: {odd:?}"));
    eprintln!("objects and watch: {:?}", started.elapsed());

    // A custom resource with a status subresource.
    let crd = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.test.ferrocd.io}
spec:
  group: test.ferrocd.io
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {type: object, properties: {size: {type: integer}}}
          status: {type: object, properties: {ready: {type: boolean}}}
"#;
    ok(api.kubectl_with_input(&["apply", "-f", "-"], crd), "apply the CRD");
    if let Err(e) = api.kubectl_for().wait_crd_established("widgets.test.ferrocd.io", Duration::from_secs(60)) {
        panic!("{e}");
    }
    let widget = "apiVersion: test.ferrocd.io/v1\nkind: Widget\nmetadata: {name: w1, namespace: w}\nspec: {size: 1}\n";
    ok(api.kubectl_with_input(&["create", "-f", "-"], widget), "create a widget");
    // Status through its subresource: the spec and generation stay.
    let status = r#"{"status":{"ready":true},"spec":{"size":9}}"#;
    ok(
        api.kubectl(&["patch", "widget", "w1", "-n", "w", "--subresource=status", "--type=merge", "-p", status]),
        "status",
    );
    let w: Value =
        serde_json::from_str(&ok(api.kubectl(&["get", "widget", "w1", "-n", "w", "-o", "json"]), "get")).expect("json");
    seen.push(format!(
        "after a status patch: spec {} status {} generation {}",
        w["spec"], w["status"], w["metadata"]["generation"]
    ));
    ok(api.kubectl(&["patch", "widget", "w1", "-n", "w", "--type=merge", "-p", r#"{"spec":{"size":2}}"#]), "spec");
    let w: Value =
        serde_json::from_str(&ok(api.kubectl(&["get", "widget", "w1", "-n", "w", "-o", "json"]), "get")).expect("json");
    seen.push(format!(
        "after a spec patch: spec {} status {} generation {}",
        w["spec"], w["status"], w["metadata"]["generation"]
    ));

    // Server-side apply: a second manager conflicts until it forces.
    let applied = |v: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: ssa, namespace: w}}\ndata: {{k: \"{v}\"}}\n")
    };
    ok(api.kubectl_with_input(&["apply", "--server-side", "--field-manager=a", "-f", "-"], &applied("1")), "apply a");
    let conflict = api.kubectl_with_input(&["apply", "--server-side", "--field-manager=b", "-f", "-"], &applied("2"));
    seen.push(format!("second manager: {}", error_of(&conflict)));
    let forced = api.kubectl_with_input(
        &["apply", "--server-side", "--field-manager=b", "--force-conflicts", "-f", "-"],
        &applied("2"),
    );
    seen.push(format!("forced: {}", ok(forced, "forced apply").trim()));

    // Optimistic concurrency: a replace with a stale resourceVersion is refused.
    let stale = ok(api.kubectl(&["get", "configmap", "ssa", "-n", "w", "-o", "json"]), "get ssa");
    ok(api.kubectl(&["patch", "configmap", "ssa", "-n", "w", "--type=merge", "-p", r#"{"data":{"k":"3"}}"#]), "patch");
    let mut stale: Value = serde_json::from_str(&stale).expect("json");
    stale["data"]["k"] = "4".into();
    let refused = api.kubectl_with_input(&["replace", "-f", "-"], &stale.to_string());
    seen.push(format!("stale replace: {}", error_of(&refused)));

    // Events live on leases: they disappear after --event-ttl.
    let event = "apiVersion: v1\nkind: Event\nmetadata: {name: e1, namespace: w}\ninvolvedObject: {kind: ConfigMap, name: ssa, namespace: w}\nreason: Test\nmessage: hello\ntype: Normal\n";
    ok(api.kubectl_with_input(&["create", "-f", "-"], event), "create an event");
    seen.push(format!(
        "event listed: {}",
        ok(api.kubectl(&["get", "events", "-n", "w", "-o", "name"]), "events").trim()
    ));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = ok(api.kubectl(&["get", "events", "-n", "w", "-o", "name"]), "events");
        if left.trim().is_empty() {
            seen.push("event gone after its TTL".into());
            break;
        }
        assert!(Instant::now() < deadline, "the event outlived its TTL by a minute: {left}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // kube-apiserver's own compaction: a watch resumed from before it is
    // told "too old resource version" (410), and a relist works.
    let rv = sentinel_rv.expect("sentinel resourceVersion");
    let deadline = Instant::now() + Duration::from_secs(60);
    let expired = loop {
        let url = format!("/api/v1/namespaces/w/configmaps?watch=1&resourceVersion={rv}&timeoutSeconds=1");
        let out = ok(api.kubectl(&["get", "--raw", &url]), "watch from an old revision");
        let first: Option<Value> = serde_json::Deserializer::from_str(&out).into_iter().next().and_then(Result::ok);
        if let Some(e) = first.filter(|e| e["type"] == "ERROR") {
            break e;
        }
        assert!(Instant::now() < deadline, "no compaction after a minute: {out}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    seen.push(format!("resumed watch: code {} reason {}", expired["object"]["code"], expired["object"]["reason"]));
    let relisted = ok(api.kubectl(&["get", "configmaps", "-n", "w", "-o", "name"]), "relist");
    seen.push(format!("relisted: {}", relisted.trim()));
    seen
}

/// The workload through a kube-apiserver on `endpoints`, with `extra` flags.
async fn run_on(endpoints: &[String], extra: &[&str], who: &str) -> Option<Vec<String>> {
    let flags = [&STORAGE_HEAVY[..], extra].concat();
    let api = ApiServer::start(endpoints, &flags).await?;
    let seen = workload(&api).await;
    let errors = api.storage_errors(&EXPECTED_LOG);
    assert!(errors.is_empty(), "kube-apiserver on {who} logged storage errors:\n{}", errors.join("\n"));
    Some(seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_apiserver_on_ferrocd_sees_what_it_sees_on_etcd() {
    let Some(etcd_bin) = tools::require_tool("etcd-3.5") else { return };
    let etcd = Member::start(etcd_bin, &[]).await;
    let Some(on_etcd) = run_on(&[etcd.endpoint()], &[], "etcd 3.5.1").await else { return };
    drop(etcd);
    let ferrocd = Member::ferrocd(&[]).await;
    let on_ferrocd = run_on(&[ferrocd.endpoint()], &[], "ferrocd").await.expect("kube-apiserver installed");
    for (f, e) in on_ferrocd.iter().zip(&on_etcd) {
        eprintln!("ferrocd: {f}\n   etcd: {e}");
    }
    assert_eq!(on_ferrocd, on_etcd, "ferrocd (left) vs etcd 3.5.1 (right)");
    assert_whole(&on_ferrocd);
}

/// Over TLS, as production runs it: members require client certificates
/// and verify each other's peer certificates; kube-apiserver connects with
/// `--etcd-cafile/--etcd-certfile/--etcd-keyfile`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_apiserver_on_a_three_member_tls_ferrocd() {
    let p = Pki::new();
    let flags: Vec<String> = [p.server_flags(), p.peer_flags(&p.peer)].concat();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let seats = (0..3).map(|i| p.seat(&format!("m{i}"), true)).collect();
    let cluster = Cluster::start_at(tools::ferrocd_bin(), seats, &flags, None).await;
    let etcd_tls = [
        format!("--etcd-cafile={}", p.ca.file.display()),
        format!("--etcd-certfile={}", p.root.cert.display()),
        format!("--etcd-keyfile={}", p.root.key.display()),
    ];
    let etcd_tls: Vec<&str> = etcd_tls.iter().map(String::as_str).collect();
    assert!(cluster.endpoints().iter().all(|e| e.starts_with("https://")));
    let Some(seen) = run_on(&cluster.endpoints(), &etcd_tls, "a 3-member TLS ferrocd").await else { return };
    assert_whole(&seen);
    assert!(seen.contains(&"event gone after its TTL".to_string()), "{seen:#?}");
    assert!(seen.contains(&r#"resumed watch: code 410 reason "Expired""#.to_string()), "{seen:#?}");
}

/// The workload's counts: every object created, labeled, listed, deleted
/// and watched.
fn assert_whole(seen: &[String]) {
    let all = CONFIGMAPS + 1;
    for line in [
        format!("configmaps created: {CONFIGMAPS}"),
        format!("secrets created: {SECRETS}"),
        format!("configmaps labeled: {all}"),
        format!("configmaps listed in chunks: {all}"),
        format!("secrets listed: {SECRETS}"),
        format!("configmaps with the label: {all}"),
        format!("configmaps deleted: {all}"),
        format!("configmaps watched added, modified, deleted once each: {all}; others: []"),
    ] {
        assert!(seen.contains(&line), "missing {line:?} in {seen:#?}");
    }
}

/// ferrocd killed (-9) and restarted while kubectl creates objects through
/// kube-apiserver: kube-apiserver recovers and every object it acknowledged
/// is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_apiserver_recovers_from_a_ferrocd_crash_without_losing_objects() {
    let mut ferrocd = Member::ferrocd(&[]).await;
    let Some(api) = ApiServer::start(&[ferrocd.endpoint()], &[]).await else { return };
    ok(api.kubectl(&["create", "namespace", "w"]), "create namespace");
    let cms = object_list("ConfigMap", "w", "cm", 800, |i| format!("  data:\n    n: \"{i}\"\n"));
    let creating = {
        let kubectl = api.kubectl_for();
        std::thread::spawn(move || kubectl.run_with_input(&["create", "-f", "-"], &cms))
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    ferrocd.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    ferrocd.restart().await;
    let out = tokio::task::spawn_blocking(move || creating.join().expect("kubectl thread")).await.expect("join");
    let acked: Vec<String> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_suffix(" created").map(|n| n.trim_start_matches("configmap/").to_string()))
        .collect();
    assert!(!acked.is_empty(), "nothing was created:\n{}", out.stderr);
    assert!(
        out.stderr.lines().count() > 0 || acked.len() == 800,
        "kubectl neither failed nor finished: {} created",
        acked.len()
    );
    // kube-apiserver serves again, and has everything it acknowledged.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !api.kubectl(&["get", "--raw", "/readyz"]).success {
        assert!(Instant::now() < deadline, "kube-apiserver never recovered:\n{}", api.log_tail());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let listed = ok(api.kubectl(&["get", "configmaps", "-n", "w", "-o", "name"]), "list");
    let listed: std::collections::HashSet<&str> = listed.lines().map(|l| l.trim_start_matches("configmap/")).collect();
    let lost: Vec<&String> = acked.iter().filter(|n| !listed.contains(n.as_str())).collect();
    assert!(lost.is_empty(), "{} acknowledged objects lost: {:?}", lost.len(), &lost[..lost.len().min(10)]);
    // The outage shows in kube-apiserver's log as storage errors (which is
    // what the other tests check there are none of).
    let errors = api.storage_errors(&[]);
    assert!(!errors.is_empty(), "the crash left no storage error in kube-apiserver's log:\n{}", api.log_tail());
    eprintln!("{} created before, during and after the crash; none lost; logged: {}", acked.len(), errors[0]);
}
