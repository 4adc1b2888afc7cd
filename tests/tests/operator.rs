//! ferrocd-operator end to end on the local Kubernetes test bed (a real
//! kube-apiserver, controller-manager and scheduler; members as real ferrocd
//! processes in pods): one EtcdCluster created, scaled 3→5→3, its pods
//! deleted (a follower, then the leader), its members rolled onto new
//! options, a member's data lost, the operator killed mid-scale-up, and the
//! cluster deleted — while a client writes through the ready members all
//! along. No acknowledged write is lost; quorum is never lost.

use std::cell::Cell;
use std::time::{Duration, Instant};

use ferrocd_tests::operator::{converged, member_ids, service_endpoints, tls_options, OperatorBed, Writer};
use ferrocd_tests::testbed::Fault;
use serde_json::Value;

const CLUSTER: &str = r#"
apiVersion: ferrocd.io/v1alpha1
kind: EtcdCluster
metadata: {name: main, namespace: default}
spec:
  replicas: 3
  storage: {size: 100Mi}
"#;
const SELECTOR: &str = "ferrocd.io/cluster=main";
const CONVERGE: Duration = Duration::from_secs(180);

fn leader(c: &Value) -> String {
    c["status"]["leader"].as_str().unwrap_or_default().to_string()
}

/// Waits until cluster `name` refuses its spec (Progressing: SpecRefused);
/// the cluster, and the refusal's message.
async fn spec_refused(ob: &OperatorBed, name: &str, what: &str) -> (Value, String) {
    let c = ob.wait_for(name, what, CONVERGE, |c| condition(c, "Progressing")["reason"] == "SpecRefused").await;
    let message = condition(&c, "Progressing")["message"].as_str().unwrap_or_default().to_string();
    (c, message)
}

fn pod(ob: &OperatorBed, name: &str) -> Value {
    ob.bed.json(&["get", "pod", "-n", "default", name]).unwrap_or_default()
}

fn scale(ob: &OperatorBed, n: u32) {
    let patch = format!("{{\"spec\":{{\"replicas\":{n}}}}}");
    let out = ob.bed.kubectl(&["patch", "etcdcluster", "main", "--type=merge", "-p", &patch]);
    assert!(out.success, "scale to {n}: {}", out.stderr);
}

/// Waits until the pod `name` is a new one (not `uid`).
async fn recreated(ob: &OperatorBed, name: &str, uid: &Value) {
    let deadline = Instant::now() + CONVERGE;
    while pod(ob, name)["metadata"]["uid"] == *uid || pod(ob, name)["metadata"]["uid"].is_null() {
        assert!(Instant::now() < deadline, "{name} was not recreated:\n{}", ob.operator_log());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Polls until converged at `n`, noting whether the cluster was ever seen
/// without quorum on the way.
async fn converge_keeping_quorum(ob: &OperatorBed, n: i64, what: &str) -> Value {
    let lost = Cell::new(false);
    let c = ob
        .wait_for("main", what, CONVERGE, |c| {
            let unavailable = c["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|k| k["type"] == "Available" && k["status"] == "False" && k["reason"] == "QuorumLost");
            lost.set(lost.get() || unavailable);
            converged(c, n)
        })
        .await;
    assert!(!lost.get(), "{what}: the cluster lost quorum on the way");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_creates_scales_heals_rolls_and_deletes_a_cluster_without_losing_a_write() {
    let dir = tempfile::tempdir().expect("dir");
    let Some(mut ob) = OperatorBed::start(dir.path()).await else { return };
    let mut report: Vec<String> = Vec::new();

    // Created: one seed, the others join as learners and are promoted.
    let t = Instant::now();
    ob.apply(CLUSTER);
    let c = ob.wait_converged("main", 3, CONVERGE).await;
    report.push(format!("create 3 members: {:.0} s", t.elapsed().as_secs_f64()));
    assert_eq!(c["status"]["phase"], "Running");
    assert_eq!(ob.pod_ips("default", SELECTOR).len(), 3);
    let claims = ob.bed.json(&["get", "pvc", "-n", "default", "-l", SELECTOR]).expect("claims");
    assert_eq!(claims["items"].as_array().map(Vec::len), Some(3));
    assert!(claims["items"].as_array().into_iter().flatten().all(|c| c["status"]["phase"] == "Bound"));
    // The operator's own metrics and health.
    assert_eq!(ob.operator_http("/healthz").await.0, 200);
    let (code, metrics) = ob.operator_http("/metrics").await;
    assert_eq!(code, 200);
    for line in [
        r#"ferrocd_operator_ready_members{cluster="main",namespace="default"} 3"#,
        r#"ferrocd_operator_cluster_available{cluster="main",namespace="default"} 1"#,
        r#"ferrocd_operator_actions_total{reason="MemberPromoted"} 2"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "no `{line}` in /metrics:\n{metrics}");
    }

    let kubectl = ob.kubectl();
    let writer = Writer::start(move || service_endpoints(&kubectl, "default", "main-client"));

    // 3 → 5 → 3.
    writer.scenario("scale 3→5→3");
    scale(&ob, 5);
    converge_keeping_quorum(&ob, 5, "scaled to 5").await;
    scale(&ob, 3);
    let c = converge_keeping_quorum(&ob, 3, "scaled back to 3").await;
    assert_eq!(ob.pod_ips("default", SELECTOR).len(), 3, "removed members' pods are gone");
    let claims = ob.bed.json(&["get", "pvc", "-n", "default", "-l", SELECTOR]).expect("claims");
    assert_eq!(claims["items"].as_array().map(Vec::len), Some(3), "removed members' claims are gone");

    // A follower's pod deleted: it comes back with the same identity.
    writer.scenario("follower pod deleted");
    let ids = member_ids(&c);
    let follower = ids.keys().find(|n| **n != leader(&c)).expect("a follower").clone();
    let uid = pod(&ob, &follower)["metadata"]["uid"].clone();
    assert!(ob.bed.kubectl(&["delete", "pod", &follower, "--wait=false"]).success);
    recreated(&ob, &follower, &uid).await;
    let c = converge_keeping_quorum(&ob, 3, "healed after a follower's pod was deleted").await;
    assert_eq!(member_ids(&c), ids, "the recreated pod is the same member");

    // The leader's pod deleted: leadership moves before the process is told to stop.
    writer.scenario("leader pod deleted");
    let old_leader = leader(&c);
    let uid = pod(&ob, &old_leader)["metadata"]["uid"].clone();
    assert!(ob.bed.kubectl(&["delete", "pod", &old_leader, "--wait=false"]).success);
    recreated(&ob, &old_leader, &uid).await;
    let c = converge_keeping_quorum(&ob, 3, "healed after the leader's pod was deleted").await;
    assert_eq!(member_ids(&c), ids);
    let uid = uid.as_str().expect("uid");
    let log = std::fs::read_to_string(ob.bed.container_log(uid, "ferrocd")).expect("the old leader's log");
    let moved = log.find("starts to transfer leadership").expect("the old leader handed leadership over");
    let term = log.find("received SIGTERM").expect("the old leader got SIGTERM");
    assert!(moved < term, "leadership moved only after SIGTERM (the preStop hook did not hand it over)");

    // New options: a rolling restart, followers first, the leader last.
    writer.scenario("rolling restart");
    let before = leader(&c);
    let patch = r#"{"spec":{"options":{"snapshotCount":20000}}}"#;
    assert!(ob.bed.kubectl(&["patch", "etcdcluster", "main", "--type=merge", "-p", patch]).success);
    let c = ob
        .wait_for("main", "rolled onto the new options", CONVERGE, |c| {
            let revision = c["status"]["target"]["revision"].clone();
            converged(c, 3)
                && c["status"]["target"]["generation"] == c["metadata"]["generation"]
                && member_ids(c)
                    .keys()
                    .all(|p| pod(&ob, p)["metadata"]["annotations"]["ferrocd.io/revision"] == revision)
        })
        .await;
    assert_eq!(member_ids(&c), ids, "a rolling restart keeps every member's identity");
    let created = |p: &str| pod(&ob, p)["metadata"]["creationTimestamp"].as_str().unwrap_or_default().to_string();
    let last = ids.keys().map(|p| created(p)).max().unwrap_or_default();
    assert_eq!(created(&before), last, "the leader {before} was not restarted last");
    for p in ids.keys() {
        let args = pod(&ob, p)["spec"]["containers"][0]["args"].to_string();
        assert!(args.contains("--snapshot-count=20000"), "{p}: {args}");
    }

    // A member's data lost: it refuses to rejoin under its old identity and
    // is replaced by a new member.
    writer.scenario("member data lost");
    let t = Instant::now();
    let victim = ids.keys().find(|n| **n != leader(&c)).expect("a follower").clone();
    let victim_uid = pod(&ob, &victim)["metadata"]["uid"].as_str().expect("uid").to_string();
    ob.bed.lose_volume("default", &victim).expect("lose the member's data");
    ob.bed.fault(Fault::KillContainers { namespace: "default".into(), name: victim.clone() });
    // (Its replacement may reuse the freed name; its ID is new.)
    ob.wait_for("main", "replaced the member whose data was lost", CONVERGE, |c| {
        converged(c, 3) && !member_ids(c).values().any(|id| *id == ids[&victim])
    })
    .await;
    report.push(format!("replace a member whose data was lost: {:.0} s", t.elapsed().as_secs_f64()));
    let log = std::fs::read_to_string(ob.bed.container_log(&victim_uid, "ferrocd")).unwrap_or_default();
    assert!(log.contains("has already been bootstrapped"), "the emptied member did not refuse to rejoin:\n{log}");

    // The operator killed in the middle of a scale-up, then started again.
    writer.scenario("operator killed mid scale-up");
    scale(&ob, 5);
    ob.wait_for("main", "scaling", CONVERGE, |c| c["status"]["members"].as_array().map_or(0, Vec::len) == 4).await;
    ob.kill_operator();
    tokio::time::sleep(Duration::from_secs(3)).await;
    ob.start_operator();
    converge_keeping_quorum(&ob, 5, "scaled to 5 after the operator restarted").await;
    scale(&ob, 3);
    let c = converge_keeping_quorum(&ob, 3, "scaled back to 3").await;

    // Every acknowledged write is there, and the members agree.
    let writes = writer.finish();
    assert!(writes.acked.len() > 100, "the writer made no progress: {}", writes.last_error);
    let ips: Vec<String> =
        ob.pod_ips("default", SELECTOR).into_values().map(|ip| format!("http://{ip}:2379")).collect();
    let mut client = etcd_client::Client::connect(&ips, None).await.expect("connect");
    let got = client.get("w/", Some(etcd_client::GetOptions::new().with_prefix().with_keys_only())).await.expect("get");
    let present: std::collections::HashSet<&[u8]> = got.kvs().iter().map(|kv| kv.key()).collect();
    let missing: Vec<&String> = writes.acked.iter().filter(|k| !present.contains(k.as_bytes())).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged writes lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let revision = got.header().map(|h| h.revision()).expect("revision");
    let mut hashes = Vec::new();
    for ip in &ips {
        let mut m = etcd_client::Client::connect([ip], None).await.expect("connect to a member");
        hashes.push(m.hash_kv(revision).await.expect("hash kv").hash());
    }
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "members differ at revision {revision}: {hashes:?}");
    assert_eq!(member_ids(&c).len(), 3);

    // Deleted: every pod and claim goes, then the EtcdCluster itself.
    assert!(ob.bed.kubectl(&["delete", "etcdcluster", "main", "--wait=false"]).success);
    let deadline = Instant::now() + CONVERGE;
    loop {
        let gone = !ob.bed.kubectl(&["get", "etcdcluster", "main"]).success;
        let pods = ob.bed.json(&["get", "pods", "-n", "default", "-l", SELECTOR]).unwrap_or_default();
        let claims = ob.bed.json(&["get", "pvc", "-n", "default", "-l", SELECTOR]).unwrap_or_default();
        let none = |v: &Value| v["items"].as_array().is_some_and(Vec::is_empty);
        if gone && none(&pods) && none(&claims) {
            break;
        }
        assert!(Instant::now() < deadline, "the cluster was not torn down:\n{}", ob.operator_log());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    report.push(format!("acknowledged writes: {}", writes.acked.len()));
    for (scenario, retried) in &writes.retried {
        report.push(format!("{scenario}: {retried} attempts failed and were retried on a ready member"));
    }
    report.push(format!("puts that failed all {} attempts: {:?}", ferrocd_tests::operator::ATTEMPTS, writes.failed));
    println!("operator end-to-end:\n  {}", report.join("\n  "));
}

fn condition(c: &Value, kind: &str) -> Value {
    c["status"]["conditions"].as_array().into_iter().flatten().find(|k| k["type"] == kind).cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_runs_the_operator_in_the_cluster_and_refuses_bad_specs() {
    let dir = tempfile::tempdir().expect("dir");
    let Some(ob) = OperatorBed::bare(dir.path()).await else { return };
    let chart = ferrocd_tests::tools::workspace_root().join("charts/ferrocd-operator");
    let chart = chart.to_string_lossy();
    // The operator runs as the chart's Deployment, with the chart's
    // service account and RBAC, using in-cluster configuration.
    // --server-side=false: 1.20's server-side apply refuses the CRD's
    // validation rules (CEL came in 1.25); a client-side create drops them.
    // Two replicas: the holder of the leader Lease acts, the other waits.
    let install = [
        "install",
        "ops",
        &chart,
        "-n",
        "ops",
        "--create-namespace",
        "--server-side=false",
        "--set",
        "logJson=false,replicas=2",
    ];
    let Some(out) = ob.helm(&[&install[..], &["--wait", "--timeout", "90s"]].concat()) else { return };
    if !out.success {
        let pods = ob.bed.json(&["get", "pods", "-n", "ops"]).unwrap_or_default();
        let logs: Vec<String> = pods["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["metadata"]["uid"].as_str())
            .map(|uid| std::fs::read_to_string(ob.bed.container_log(uid, "operator")).unwrap_or_default())
            .collect();
        panic!(
            "helm install --wait: {}{}
pods: {pods}
logs:
{}",
            out.stdout,
            out.stderr,
            logs.join("\n")
        );
    }
    ob.wait_crd();
    let operators = || {
        let pods = ob.bed.json(&["get", "pods", "-n", "ops", "-l", "app.kubernetes.io/name=ferrocd-operator"]);
        let pods = pods.expect("pods")["items"].as_array().cloned().unwrap_or_default();
        pods.iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .map(|p| (p["metadata"]["name"].as_str().unwrap_or_default().to_string(), p["metadata"]["uid"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(operators().len(), 2, "two operator pods");
    let holder = || {
        let lease = ob.bed.json(&["get", "lease", "ferrocd-operator", "-n", "ops"]).unwrap_or_default();
        lease["spec"]["holderIdentity"].as_str().unwrap_or_default().to_string()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !operators().iter().any(|(name, _)| *name == holder()) {
        assert!(Instant::now() < deadline, "no operator pod holds the leader lease: {:?}", holder());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let first = holder();
    let (_, waiting_uid) = operators().into_iter().find(|(name, _)| *name != first).expect("the other replica");
    let waiting_log =
        || std::fs::read_to_string(ob.bed.container_log(waiting_uid.as_str().unwrap_or_default(), "operator"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !waiting_log().unwrap_or_default().contains("another replica holds the leader lease") {
        assert!(Instant::now() < deadline, "the other replica does not wait: {:?}", waiting_log());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The holder stopped: the other replica takes over and runs the cluster below.
    assert!(ob.bed.kubectl(&["delete", "pod", "-n", "ops", &first, "--wait=false"]).success);
    let deadline = Instant::now() + Duration::from_secs(60);
    while holder() == first || holder().is_empty() {
        assert!(Instant::now() < deadline, "nobody took the leader lease over from {first}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The schema refuses what it can tell is wrong.
    let bad = CLUSTER.replace("replicas: 3", "replicas: -1");
    let refused = ob.bed.kubectl_with_input(&["apply", "-f", "-"], &bad);
    assert!(!refused.success && refused.stderr.contains("spec.replicas"), "{}", refused.stderr);

    ob.apply(CLUSTER);
    let c = ob.wait_converged("main", 3, CONVERGE).await;
    assert_eq!(c["status"]["phase"], "Running");

    // A quorum-aware budget over the voters (policy/v1beta1 on 1.20): one
    // voluntary disruption at a time.
    let counted = ob
        .wait_for("main", "its budget counted", CONVERGE, |_| {
            let b = ob.bed.json(&["get", "pdb", "main", "-n", "default"]).unwrap_or_default();
            b["status"]["currentHealthy"] == 3 && b["status"]["disruptionsAllowed"] == 1
        })
        .await;
    let pdb = ob.bed.json(&["get", "pdb", "main", "-n", "default"]).expect("the budget");
    assert_eq!(pdb["spec"]["minAvailable"], 2, "{pdb}");
    assert_eq!(pdb["spec"]["selector"]["matchLabels"]["ferrocd.io/role"], "voter");
    let names: Vec<String> = member_ids(&counted).into_keys().collect();
    let first = ob.bed.evict("default", &names[0]);
    assert!(first.success, "the first eviction was refused: {}", first.stderr);
    let second = ob.bed.evict("default", &names[1]);
    assert!(
        !second.success && second.stderr.contains("disruption budget"),
        "a second eviction went through: {}",
        second.stderr
    );
    ob.wait_converged("main", 3, CONVERGE).await;

    // What only the operator can tell on an API server without CEL rules:
    // a volume size change is refused in a condition and nothing changes.
    let patch = r#"{"spec":{"storage":{"size":"200Mi"}}}"#;
    assert!(ob.bed.kubectl(&["patch", "etcdcluster", "main", "--type=merge", "-p", patch]).success);
    let (c, message) = spec_refused(&ob, "main", "refusing the size change").await;
    assert!(message.contains("storage.size") && message.contains("100Mi") && message.contains("200Mi"), "{message}");
    assert_eq!(condition(&c, "Available")["status"], "True");
    let patch = r#"{"spec":{"storage":{"size":"100Mi"}}}"#;
    assert!(ob.bed.kubectl(&["patch", "etcdcluster", "main", "--type=merge", "-p", patch]).success);
    ob.wait_converged("main", 3, CONVERGE).await;

    // A call the operator is not allowed to make (the budget's permission
    // taken away): the cluster stays as it is, the status and an Event say
    // why; with the permission back, all is well again.
    let role = "ops-ferrocd-operator";
    let rules = ob.bed.json(&["get", "clusterrole", role]).expect("the operator's role")["rules"].clone();
    let policy =
        rules.as_array().into_iter().flatten().position(|r| r["apiGroups"][0] == "policy").expect("a policy rule");
    let remove = format!(r#"[{{"op":"remove","path":"/rules/{policy}"}}]"#);
    assert!(ob.bed.kubectl(&["patch", "clusterrole", role, "--type=json", "-p", &remove]).success);
    let c = ob
        .wait_for("main", "reporting the forbidden call", CONVERGE, |c| {
            condition(c, "Progressing")["reason"] == "ReconcileFailed"
        })
        .await;
    let message = condition(&c, "Progressing")["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("poddisruptionbudgets") && message.contains("forbidden"), "{message}");
    assert_eq!(condition(&c, "Available")["status"], "True");
    assert_eq!(member_ids(&c).len(), 3);
    let events =
        ob.bed.json(&["get", "events", "-n", "default", "--field-selector", "reason=ReconcileFailed"]).expect("events");
    assert!(events["items"].as_array().is_some_and(|e| !e.is_empty()), "no ReconcileFailed event");
    let add = format!(r#"[{{"op":"add","path":"/rules/-","value":{}}}]"#, rules[policy]);
    assert!(ob.bed.kubectl(&["patch", "clusterrole", role, "--type=json", "-p", &add]).success);
    ob.wait_converged("main", 3, CONVERGE).await;

    // Deleted with volumeRetention: Retain, its claims stay, released.
    let patch = r#"{"spec":{"volumeRetention":"Retain"}}"#;
    assert!(ob.bed.kubectl(&["patch", "etcdcluster", "main", "--type=merge", "-p", patch]).success);
    assert!(ob.bed.kubectl(&["delete", "etcdcluster", "main", "--timeout=120s"]).success);
    let claims = ob.bed.json(&["get", "pvc", "-n", "default", "-l", SELECTOR]).expect("claims");
    let claims = claims["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(claims.len(), 3, "retained claims");
    assert!(claims.iter().all(|c| c["metadata"]["ownerReferences"].as_array().is_none_or(Vec::is_empty)), "{claims:?}");

    // Uninstalled after its cluster is gone, the chart leaves the CRD.
    let out = ob.helm(&["uninstall", "ops", "-n", "ops", "--wait"]).expect("helm");
    assert!(out.success, "helm uninstall: {}", out.stderr);
    assert!(ob.bed.kubectl(&["get", "crd", "etcdclusters.ferrocd.io"]).success, "uninstall deleted the CRD");
}

/// A TLS cluster (clients and peers, certificates issued by the operator)
/// loses two of its three members' data: with the opt-in, the survivor is
/// restarted alone and the cluster grown again, all over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_quorum_is_reported_and_recovered_from_the_survivor_when_the_spec_opts_in() {
    let dir = tempfile::tempdir().expect("dir");
    let Some(ob) = OperatorBed::start(dir.path()).await else { return };
    // Over TLS, clients and peers, with certificates the operator issues.
    ob.apply(&CLUSTER.replace("replicas: 3", "replicas: 3\n  quorumLossRecovery: true\n  tls: {client: {}, peer: {}}"));
    let c = ob.wait_converged("main", 3, CONVERGE).await;
    assert_eq!(c["status"]["tls"]["clientSecret"], "main-client-tls", "{}", c["status"]);
    assert_eq!(c["status"]["tls"]["peerSecret"], "main-peer-tls");
    assert!(c["status"]["members"].as_array().into_iter().flatten().all(|m| {
        m["peerUrls"].as_array().into_iter().flatten().all(|u| u.as_str().is_some_and(|u| u.starts_with("https://")))
    }));
    let tls = tls_options(&ob.kubectl(), "default", "main", "main-operator-tls");
    let connect = |ip: &str| {
        let tls = tls.clone();
        let url = format!("https://{ip}:2379");
        async move { etcd_client::Client::connect([url], Some(tls)).await.expect("connect over TLS") }
    };
    let ids = member_ids(&c);
    let survivor = leader(&c);
    let ips = ob.pod_ips("default", SELECTOR);
    let mut client = connect(&ips[&survivor]).await;
    // Without a client certificate, nothing.
    let plain = etcd_client::Client::connect([format!("http://{}:2379", ips[&survivor])], None).await;
    assert!(plain.is_err() || plain.expect("client").get("k/", None).await.is_err(), "plain text is refused");
    let keys: Vec<String> = (0..200).map(|i| format!("k/{i:03}")).collect();
    for k in &keys {
        client.put(k.as_str(), "v", None).await.expect("put");
    }
    // Every member has applied them before two of them lose their data.
    for (name, ip) in &ips {
        let mut m = connect(ip).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        let serializable = || etcd_client::GetOptions::new().with_prefix().with_count_only().with_serializable();
        while m.get("k/", Some(serializable())).await.map_or(0, |r| r.count()) < 200 {
            assert!(Instant::now() < deadline, "{name} did not apply the writes");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let lost: Vec<String> = ids.keys().filter(|n| **n != survivor).cloned().collect();
    for name in &lost {
        ob.bed.lose_volume("default", name).expect("lose a member's data");
        ob.bed.fault(Fault::KillContainers { namespace: "default".into(), name: name.clone() });
    }
    // Reported, then recovered: the survivor restarted alone from its data,
    // the lost members replaced by new ones.
    ob.wait_for("main", "reporting the lost quorum", CONVERGE, |c| {
        condition(c, "Available")["reason"] == "QuorumLost" && c["status"]["phase"] == "QuorumLost"
    })
    .await;
    // (A replacement may reuse a freed name; its ID is new.)
    let gone = |c: &Value| lost.iter().all(|n| !member_ids(c).values().any(|id| *id == ids[n]));
    let c = ob.wait_for("main", "recovered", CONVERGE, |c| converged(c, 3) && gone(c)).await;
    assert_eq!(member_ids(&c).get(&survivor), ids.get(&survivor), "the survivor keeps its identity");
    let events =
        ob.bed.json(&["get", "events", "-n", "default", "--field-selector", "reason=QuorumRecovery"]).expect("events");
    assert_eq!(events["items"].as_array().map(Vec::len), Some(1), "one QuorumRecovery event: {events}");
    // Nothing acknowledged before the loss is lost, on any member.
    for ip in ob.pod_ips("default", SELECTOR).values() {
        let mut m = connect(ip).await;
        let got = m.get("k/", Some(etcd_client::GetOptions::new().with_prefix().with_count_only())).await.expect("get");
        assert_eq!(got.count(), 200, "member at {ip}");
    }
    // The recovered member no longer runs with --force-new-cluster.
    let args = pod(&ob, &survivor)["spec"]["containers"][0]["args"].to_string();
    assert!(!args.contains("--force-new-cluster"), "{args}");
    assert!(args.contains("--client-cert-auth") && args.contains("--peer-client-cert-auth"), "{args}");

    // Taking TLS away from a running cluster is refused, and nothing restarts.
    let patch = r#"{"spec":{"tls":null}}"#;
    assert!(ob.bed.kubectl(&["patch", "etcdcluster", "main", "--type=merge", "-p", patch]).success);
    let (c, message) = spec_refused(&ob, "main", "refusing the TLS change").await;
    assert!(message.contains("tls cannot be changed"), "{message}");
    assert_eq!(condition(&c, "Available")["status"], "True");

    // A cluster naming a Secret that does not exist is refused, and made of nothing.
    ob.apply(
        r#"
apiVersion: ferrocd.io/v1alpha1
kind: EtcdCluster
metadata: {name: named, namespace: default}
spec:
  replicas: 1
  storage: {size: 100Mi}
  tls: {client: {secretName: absent-tls, operatorSecretName: absent-operator}}
"#,
    );
    let (_, message) = spec_refused(&ob, "named", "refusing the missing Secret").await;
    assert!(message.contains("absent-tls") && message.contains("does not exist"), "{message}");
    let pods = ob.bed.json(&["get", "pods", "-n", "default", "-l", "ferrocd.io/cluster=named"]).expect("pods");
    assert_eq!(pods["items"].as_array().map(Vec::len), Some(0), "{pods}");
}
