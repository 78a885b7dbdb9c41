//! The Supervisor against a running lab vCenter (plain HTTP on 127.0.0.1), through real
//! HTTP where the wire matters and through the façade elsewhere.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use super::codec::{self, Key, KeySpelling};
use super::{Supervisor, SupervisorSettings, SupervisorVersion};
use crate::vcenter::InProcessVcenter;
use crate::vmstate::{NewDisk, VmMoref, VmState};

const NS: &str = "demo-ns";

struct Env {
    _dir: tempfile::TempDir,
    vc: InProcessVcenter,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let vc = InProcessVcenter::start(dir.path(), true).unwrap();
        Self { _dir: dir, vc }
    }

    fn sup(&self) -> Arc<Supervisor> {
        Arc::clone(self.vc.running().vcenter.supervisor())
    }

    fn addr(&self) -> SocketAddr {
        self.vc.running().addr
    }

    fn basic(&self) -> String {
        let r = self.vc.running();
        let b =
            base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", r.user, r.password));
        format!("Basic {b}")
    }

    fn token(&self) -> String {
        let (code, v) = http(
            self.addr(),
            "POST",
            "/api/session",
            &[("Authorization", &self.basic())],
            None,
        );
        assert_eq!(code, 201);
        v.as_str().unwrap().to_owned()
    }

    fn set_version(&self, version: SupervisorVersion) {
        let sup = self.sup();
        sup.set_settings(SupervisorSettings {
            version,
            ..sup.settings()
        })
        .unwrap();
    }
}

/// One HTTP/1.1 request; (status, JSON body or Null).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, Value) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let body = body.unwrap_or("");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: lab\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        req.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    let code: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut b = String::new();
        let mut r = rest;
        while let Some((len, tail)) = r.split_once("\r\n") {
            let n = usize::from_str_radix(len.trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            b.push_str(&tail[..n]);
            r = &tail[n + 2..];
        }
        b
    } else {
        rest.to_owned()
    };
    (code, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn wait_task(sup: &Supervisor, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let t = sup.task(id).unwrap();
        if t["status"] == "SUCCEEDED" || t["status"] == "FAILED" {
            return t;
        }
        assert!(Instant::now() < deadline, "task {id} never ended: {t}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn error_id(t: &Value) -> &str {
    t["error"]["messages"][0]["id"].as_str().unwrap_or("")
}

/// web-1 of the shared fixtures, in small: cloud-init Secret, one PVC, two classic disks.
fn make_web1(sup: &Supervisor) -> Value {
    sup.create_namespace(NS).unwrap();
    sup.apply(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "web-1-cloud-init", "namespace": NS},
                     "type": "Opaque", "data": {"user-data": "I2Nsb3VkLWNvbmZpZwo="}}))
        .unwrap();
    sup.apply(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "web-1-data", "namespace": NS},
                     "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "32Mi"}},
                              "storageClassName": "vsan-default-storage-policy"}}))
        .unwrap();
    sup.apply(json!({
        "apiVersion": "vmoperator.vmware.com/v1alpha3", "kind": "VirtualMachine",
        "metadata": {"name": "web-1", "namespace": NS,
            "labels": {"app": "my-web-app", "tier": "frontend", "topology.kubernetes.io/zone": "zone-a"},
            "annotations": {"app.example.com/owner": "team-web", "lab.vadp-agent.dev/classic-disks": "32Mi,16Mi",
                            "vmoperator.vmware.com/created-at-build-version": "1.8.6+a6b2f0c+24146529",
                            "kubectl.kubernetes.io/last-applied-configuration": "{}"}},
        "spec": {"className": "best-effort-small", "imageName": "ubuntu-22.04-server-cloudimg-amd64",
            "image": {"kind": "ClusterVirtualMachineImage", "name": "vmi-5c625c510fadfced9"},
            "storageClass": "vsan-default-storage-policy", "powerState": "PoweredOn",
            "advanced": {"bootDiskCapacity": "64Mi"},
            "bootstrap": {"cloudInit": {"rawCloudConfig": {"name": "web-1-cloud-init", "key": "user-data"}}},
            "network": {"interfaces": [
                {"name": "eth0", "network": {"apiVersion": "crd.nsx.vmware.com/v1alpha1", "kind": "Subnet", "name": "subnet-prod-a"}},
                {"name": "eth1"}]},
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "web-1-data"}}]}
    }))
    .unwrap()
}

fn vsphere_vm(sup: &Supervisor, cr: &Value) -> VmState {
    sup.lab()
        .vm(&VmMoref(
            cr["status"]["uniqueID"].as_str().unwrap().to_owned(),
        ))
        .unwrap()
}

fn ec_get(vm: &VmState, k: Key, s: KeySpelling) -> Option<String> {
    vm.extra_config
        .iter()
        .find(|(key, _)| key == k.name(s))
        .map(|(_, v)| v.clone())
}

fn decoded_yaml(vm: &VmState) -> Value {
    let raw = Key::VmYaml
        .get(&vm.extra_config, KeySpelling::Code)
        .unwrap();
    codec::from_yaml(&codec::decode(raw).unwrap()).unwrap()
}

/// What a VADP vendor does: a new VM in `folder` with the backed-up disks (same backing
/// UUIDs), BIOS/instance UUIDs and ExtraConfig.
fn vendor_restore(
    sup: &Supervisor,
    name: &str,
    folder: &str,
    backup: &VmState,
    ec: Vec<(String, String)>,
) -> VmMoref {
    let disks: Vec<NewDisk> = backup
        .disks
        .iter()
        .map(|d| NewDisk {
            capacity_bytes: d.capacity_bytes,
            thin: true,
            fcd: false,
        })
        .collect();
    let lab = sup.lab();
    let moref = lab.create_vm(name, folder, &disks).unwrap();
    lab.modify_vm(&moref, |s| {
        s.bios_uuid.clone_from(&backup.bios_uuid);
        s.instance_uuid.clone_from(&backup.instance_uuid);
        for (d, o) in s.disks.iter_mut().zip(&backup.disks) {
            d.uuid.clone_from(&o.uuid);
        }
        s.extra_config = ec;
        Ok(())
    })
    .unwrap();
    moref
}

/// `ec` with its VM YAML (code spelling) changed by `f`.
fn edit_yaml(ec: &[(String, String)], f: impl Fn(&mut Value)) -> Vec<(String, String)> {
    let mut ec = ec.to_vec();
    for (k, val) in &mut ec {
        if k == Key::VmYaml.name(KeySpelling::Code) {
            let mut yaml = codec::from_yaml(&codec::decode(val).unwrap()).unwrap();
            f(&mut yaml);
            *val = codec::encode(&codec::to_yaml(&yaml));
        }
    }
    ec
}

fn register(env: &Env, ns: &str, body: &Value) -> (u16, Value) {
    let token = env.token();
    http(
        env.addr(),
        "POST",
        &format!("/api/vcenter/namespaces/instances/{ns}/registervm"),
        &[("vmware-api-session-id", &token)],
        Some(&body.to_string()),
    )
}

fn register_ok(env: &Env, vm: &VmMoref) -> Value {
    let (code, id) = register(env, NS, &json!({"vm": vm.0}));
    assert_eq!(code, 200, "{id}");
    let t = wait_task(&env.sup(), id.as_str().unwrap());
    assert_eq!(t["status"], "SUCCEEDED", "{t}");
    t
}

fn register_fails(env: &Env, vm: &str) -> String {
    let (code, id) = register(env, NS, &json!({"vm": vm}));
    assert_eq!(code, 200, "{id}");
    let t = wait_task(&env.sup(), id.as_str().unwrap());
    assert_eq!(t["status"], "FAILED", "{t}");
    error_id(&t).to_owned()
}

/// `GET /api/session` answers for a live vAPI session and 401 once vCenter ended it (as
/// its idle timeout does); the Supervisor's API refuses the ended token too, and the next
/// registervm ends every session before it is checked when asked to.
#[test]
fn ended_vapi_sessions_are_refused_by_vapi_and_the_supervisor() {
    let env = Env::new();
    let vc = &env.vc.running().vcenter;
    let token = env.token();
    let session = [("vmware-api-session-id", token.as_str())];
    let bearer = format!("Bearer {token}");
    let (code, v) = http(env.addr(), "GET", "/api/session", &session, None);
    assert_eq!(
        (code, v["user"].as_str()),
        (200, Some(env.vc.running().user.as_str()))
    );
    let namespaces = "/api/v1/namespaces/ns1";
    let k8s = [("Authorization", bearer.as_str())];
    assert_ne!(http(env.addr(), "GET", namespaces, &k8s, None).0, 401);
    assert_eq!(vc.api_login_count(), 1);

    vc.end_api_sessions();
    assert_eq!(
        http(env.addr(), "GET", "/api/session", &session, None).0,
        401
    );
    assert_eq!(http(env.addr(), "GET", namespaces, &k8s, None).0, 401);

    let token = env.token();
    let session = [("vmware-api-session-id", token.as_str())];
    vc.end_api_sessions_before_next_registervm();
    assert_eq!(
        http(env.addr(), "GET", "/api/session", &session, None).0,
        200
    );
    let path = "/api/vcenter/namespaces/instances/ns1/registervm";
    let (code, _) = http(env.addr(), "POST", path, &session, Some(r#"{"vm":"vm-1"}"#));
    assert_eq!(code, 401);
    assert_eq!(
        http(env.addr(), "GET", "/api/session", &session, None).0,
        401
    );
    assert_eq!(vc.api_login_count(), 2);
}

#[test]
fn kubernetes_api_semantics_over_http() {
    let env = Env::new();
    let a = env.addr();
    let (code, st) = http(a, "GET", "/api/v1/namespaces", &[], None);
    assert_eq!(
        (code, st["kind"].as_str(), st["reason"].as_str()),
        (401, Some("Status"), Some("Unauthorized"))
    );
    let bearer = format!("Bearer {}", env.token());
    let h: &[(&str, &str)] = &[("Authorization", &bearer)];
    let (code, ns) = http(
        a,
        "POST",
        "/api/v1/namespaces",
        h,
        Some(r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"n1"}}"#),
    );
    assert_eq!(code, 201, "{ns}");
    assert!(env.sup().vc_folder_exists("n1"));
    let cm = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c1","labels":{"app":"x"}},"data":{"k":"v"}}"#;
    let (code, c1) = http(a, "POST", "/api/v1/namespaces/n1/configmaps", h, Some(cm));
    assert_eq!(code, 201);
    assert_eq!(c1["metadata"]["namespace"], "n1");
    assert!(c1["metadata"]["uid"].is_string() && c1["metadata"]["creationTimestamp"].is_string());
    let (code, dup) = http(a, "POST", "/api/v1/namespaces/n1/configmaps", h, Some(cm));
    assert_eq!((code, dup["reason"].as_str()), (409, Some("AlreadyExists")));
    let basic = env.basic();
    let (code, got) = http(
        a,
        "GET",
        "/api/v1/namespaces/n1/configmaps/c1",
        &[("Authorization", &basic)],
        None,
    );
    assert_eq!((code, &got["data"]["k"]), (200, &json!("v")));
    let (code, nf) = http(a, "GET", "/api/v1/namespaces/n1/configmaps/nope", h, None);
    assert_eq!(
        (code, nf["reason"].as_str(), nf["code"].as_u64()),
        (404, Some("NotFound"), Some(404))
    );
    let (code, list) = http(
        a,
        "GET",
        "/api/v1/namespaces/n1/configmaps?labelSelector=app%3Dx",
        h,
        None,
    );
    assert_eq!(
        (
            code,
            list["kind"].as_str(),
            list["items"].as_array().unwrap().len()
        ),
        (200, Some("ConfigMapList"), 1)
    );
    assert!(list["metadata"]["resourceVersion"].is_string());
    let (_, list) = http(
        a,
        "GET",
        "/api/v1/namespaces/n1/configmaps?labelSelector=app%3Dy",
        h,
        None,
    );
    assert!(list["items"].as_array().unwrap().is_empty());
    // Replace with the current resourceVersion, then again with the now stale one.
    let mut c2 = c1.clone();
    c2["data"]["k"] = "w".into();
    let (code, replaced) = http(
        a,
        "PUT",
        "/api/v1/namespaces/n1/configmaps/c1",
        h,
        Some(&c2.to_string()),
    );
    assert_eq!(code, 200);
    let rv = |v: &Value| {
        v["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    assert!(rv(&replaced) > rv(&c1));
    let (code, conflict) = http(
        a,
        "PUT",
        "/api/v1/namespaces/n1/configmaps/c1",
        h,
        Some(&c2.to_string()),
    );
    assert_eq!((code, conflict["reason"].as_str()), (409, Some("Conflict")));
    let merge = [
        ("Authorization", bearer.as_str()),
        ("Content-Type", "application/merge-patch+json"),
    ];
    let (code, patched) = http(
        a,
        "PATCH",
        "/api/v1/namespaces/n1/configmaps/c1",
        &merge,
        Some(r#"{"data":{"k2":"v2","k":null}}"#),
    );
    assert_eq!(code, 200);
    assert_eq!(patched["data"], json!({"k2": "v2"}));
    let stale = format!(
        r#"{{"metadata":{{"resourceVersion":"{}"}},"data":{{"k":"z"}}}}"#,
        rv(&c1)
    );
    let (code, _) = http(
        a,
        "PATCH",
        "/api/v1/namespaces/n1/configmaps/c1",
        &merge,
        Some(&stale),
    );
    assert_eq!(code, 409);
    let jp = [
        ("Authorization", bearer.as_str()),
        ("Content-Type", "application/json-patch+json"),
    ];
    let (code, patched) = http(
        a,
        "PATCH",
        "/api/v1/namespaces/n1/configmaps/c1",
        &jp,
        Some(r#"[{"op":"add","path":"/data/k3","value":"v3"}]"#),
    );
    assert_eq!((code, &patched["data"]["k3"]), (200, &json!("v3")));
    // VM Operator kinds: one object, any served version.
    let svc = r#"{"apiVersion":"vmoperator.vmware.com/v1alpha3","kind":"VirtualMachineService","metadata":{"name":"lb"},"spec":{"type":"LoadBalancer"}}"#;
    let (code, _) = http(
        a,
        "POST",
        "/apis/vmoperator.vmware.com/v1alpha3/namespaces/n1/virtualmachineservices",
        h,
        Some(svc),
    );
    assert_eq!(code, 201);
    let (code, v5) = http(
        a,
        "GET",
        "/apis/vmoperator.vmware.com/v1alpha5/namespaces/n1/virtualmachineservices/lb",
        h,
        None,
    );
    assert_eq!(
        (code, v5["apiVersion"].as_str()),
        (200, Some("vmoperator.vmware.com/v1alpha5"))
    );
    let (code, _) = http(
        a,
        "GET",
        "/apis/vmoperator.vmware.com/v1alpha1/namespaces/n1/virtualmachineservices/lb",
        h,
        None,
    );
    assert_eq!(code, 404);
    let (code, all) = http(
        a,
        "GET",
        "/apis/vmoperator.vmware.com/v1alpha2/virtualmachineservices",
        h,
        None,
    );
    assert_eq!(
        (code, all["items"][0]["apiVersion"].as_str()),
        (200, Some("vmoperator.vmware.com/v1alpha2"))
    );
    let (code, all) = http(a, "GET", "/api/v1/configmaps", h, None);
    assert_eq!(
        (code, all["items"].as_array().map(Vec::len)),
        (200, Some(1))
    );
    let (_, n1) = http(a, "GET", "/api/v1/namespaces/n1", h, None);
    assert!(
        n1["metadata"]["annotations"]["vmware-system-vm-folder"]
            .as_str()
            .unwrap()
            .starts_with("group-v")
    );
    let (code, groups) = http(a, "GET", "/apis", h, None);
    assert_eq!(
        (code, groups["groups"][0]["name"].as_str()),
        (200, Some("vmoperator.vmware.com"))
    );
    // Delete answers the object; a second delete is 404.
    let (code, del) = http(a, "DELETE", "/api/v1/namespaces/n1/configmaps/c1", h, None);
    assert_eq!((code, del["metadata"]["name"].as_str()), (200, Some("c1")));
    let (code, _) = http(a, "DELETE", "/api/v1/namespaces/n1/configmaps/c1", h, None);
    assert_eq!(code, 404);
    // A namespace that does not exist cannot hold objects.
    let (code, _) = http(a, "POST", "/api/v1/namespaces/nope/configmaps", h, Some(cm));
    assert_eq!(code, 404);
    // Persisted: a new Supervisor over the same lab sees the objects.
    let again = super::store::Store::load(env.sup().lab().root()).unwrap();
    assert!(
        again
            .get(&super::kind("virtualmachineservices"), "n1", "lb")
            .is_some()
    );
}

impl Supervisor {
    fn vc_folder_exists(&self, ns: &str) -> bool {
        let path = self.namespace_folder(ns);
        lock_inv(self).folder_by_path(&path).is_some()
    }
}

fn lock_inv(s: &Supervisor) -> std::sync::MutexGuard<'_, crate::vcenter::inventory::Inventory> {
    super::lock(&s.inv)
}

#[test]
fn vm_operator_creates_the_vm_and_keeps_backup_data_in_both_spellings() {
    let env = Env::new();
    let sup = env.sup();
    let cr = make_web1(&sup);
    let vm = vsphere_vm(&sup, &cr);
    assert_eq!(vm.folder, "/dc1/vm/Namespaces/demo-ns");
    assert_eq!(vm.name, "web-1");
    let caps: Vec<u64> = vm.disks.iter().map(|d| d.capacity_bytes).collect();
    assert_eq!(caps, [64 << 20, 32 << 20, 32 << 20, 16 << 20]);
    assert!(vm.disks.iter().all(|d| d.thin));
    assert_eq!(vm.power_state, crate::vmstate::PowerState::PoweredOn);
    assert_eq!(vm.bios_uuid, cr["spec"]["biosUUID"].as_str().unwrap());
    assert_eq!(cr["status"]["powerState"], "PoweredOn");
    let pvc = sup.get("PersistentVolumeClaim", NS, "web-1-data").unwrap();
    assert_eq!(pvc["status"]["phase"], "Bound");
    assert_eq!(
        pvc["metadata"]["annotations"][super::DISK_UUID_ANNOTATION],
        vm.disks[1].uuid.as_str()
    );
    let manager = cr["metadata"]["annotations"]["vmoperator.vmware.com/manager-id"]
        .as_str()
        .unwrap();
    assert_eq!(manager, sup.instance_uuid());
    assert_eq!(
        cr["metadata"]["annotations"]["vmoperator.vmware.com/instance-id"],
        cr["spec"]["bootstrap"]["cloudInit"]["instanceID"]
    );
    // ExtraConfig as VM Operator writes it (code spelling by default).
    let version = ec_get(&vm, Key::BackupVersion, KeySpelling::Code).unwrap();
    assert_eq!(
        cr["metadata"]["annotations"]["vmoperator.vmware.com/backup-version"],
        version.as_str()
    );
    let yaml = decoded_yaml(&vm);
    assert_eq!(yaml["status"], json!({}));
    assert_eq!(
        yaml["metadata"]["annotations"]["vmoperator.vmware.com/backup-version"],
        version.as_str()
    );
    assert!(
        yaml["metadata"]["labels"]
            .get("topology.kubernetes.io/zone")
            .is_none()
    );
    assert!(
        yaml["metadata"]["annotations"]
            .get("kubectl.kubernetes.io/last-applied-configuration")
            .is_none()
    );
    assert_eq!(
        yaml["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "web-1-data"
    );
    let pvc_data =
        codec::decode(&ec_get(&vm, Key::PvcDiskData, KeySpelling::Code).unwrap()).unwrap();
    let expect = format!(
        "[{{\"FileName\":\"{}\",\"PVCName\":\"web-1-data\",\"AccessModes\":[\"ReadWriteOnce\"],\"UUID\":\"{}\"}}]",
        vm.disks[1].file_name, vm.disks[1].uuid
    );
    assert_eq!(pvc_data, expect);
    let classic: Vec<Value> = serde_json::from_str(
        &codec::decode(&ec_get(&vm, Key::ClassicDiskData, KeySpelling::Code).unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(classic.len(), 3);
    assert_eq!(classic[0]["UUID"], vm.disks[0].uuid.as_str());
    let additional =
        codec::decode(&ec_get(&vm, Key::AdditionalResources, KeySpelling::Code).unwrap()).unwrap();
    let docs = codec::from_yaml_documents(&additional).unwrap();
    assert_eq!(
        (
            docs[0]["kind"].as_str(),
            docs[0]["metadata"]["name"].as_str()
        ),
        (Some("Secret"), Some("web-1-cloud-init"))
    );
    assert!(
        vm.extra_config
            .contains(&("vmservice.namespacedName".into(), "demo-ns/web-1".into()))
    );
    // Same shape as the shared fixture's keys (when the fixtures are present).
    if let Ok(b) = std::fs::read("/work/shared/fixtures/vmservice/web-1/extraconfig.code.json") {
        let fixture: std::collections::BTreeMap<String, String> =
            serde_json::from_slice(&b).unwrap();
        for (k, _) in fixture
            .iter()
            .filter(|(k, _)| k.starts_with("vmservice.") && !k.contains("Automatic"))
        {
            assert!(
                vm.extra_config.iter().any(|(key, _)| key == k),
                "missing {k}"
            );
        }
    }
    // A reconcile without changes writes nothing.
    sup.reconcile_all().unwrap();
    assert_eq!(vsphere_vm(&sup, &cr).extra_config, vm.extra_config);
    // A label change is a new backup version.
    let mut cr2 = sup.get("VirtualMachine", NS, "web-1").unwrap();
    cr2["metadata"]["labels"]["tier"] = "edge".into();
    let cr2 = sup.apply(cr2).unwrap();
    let vm2 = vsphere_vm(&sup, &cr2);
    let v2 = ec_get(&vm2, Key::BackupVersion, KeySpelling::Code).unwrap();
    assert!(v2.parse::<u64>().unwrap() > version.parse::<u64>().unwrap());
    assert_eq!(decoded_yaml(&vm2)["metadata"]["labels"]["tier"], "edge");
    // The guide spelling replaces the code keys.
    sup.set_settings(SupervisorSettings {
        key_spelling: KeySpelling::Guide,
        ..sup.settings()
    })
    .unwrap();
    sup.reconcile_all().unwrap();
    let vm3 = vsphere_vm(&sup, &cr2);
    assert!(ec_get(&vm3, Key::VmYaml, KeySpelling::Code).is_none());
    let g = ec_get(&vm3, Key::VmYaml, KeySpelling::Guide).unwrap();
    assert_eq!(
        codec::from_yaml(&codec::decode(&g).unwrap()).unwrap()["metadata"]["name"],
        "web-1"
    );
    assert!(ec_get(&vm3, Key::PvcDiskData, KeySpelling::Guide).is_some());
    // C.4: annotation newer than ExtraConfig ⇒ restored: nothing written, backup paused.
    let before = vsphere_vm(&sup, &cr2).extra_config;
    let mut cr4 = sup.get("VirtualMachine", NS, "web-1").unwrap();
    cr4["metadata"]["annotations"]["vmoperator.vmware.com/backup-version"] =
        "99999999999999".into();
    let cr4 = sup.apply(cr4).unwrap();
    assert_eq!(vsphere_vm(&sup, &cr4).extra_config, before);
    let cond = cr4["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "VirtualMachineBackupUpToDate")
        .unwrap()
        .clone();
    assert_eq!(
        (cond["status"].as_str(), cond["reason"].as_str()),
        (Some("False"), Some("VirtualMachineBackupPaused"))
    );
    // Power follows the spec; deleting the CR destroys the VM and its directory; the PVC
    // object remains, and so does its disk, a First Class Disk in `fcd/` (CNS keeps it).
    let mut cr5 = cr4.clone();
    cr5["spec"]["powerState"] = "PoweredOff".into();
    let cr5 = sup.apply(cr5).unwrap();
    assert_eq!(
        vsphere_vm(&sup, &cr5).power_state,
        crate::vmstate::PowerState::PoweredOff
    );
    let err = sup.delete("namespaces", "", NS).unwrap_err();
    assert_eq!(err.code, 409);
    let state = sup.lab().vm(&vm.moref).unwrap();
    let pvc_disk = state.disks[1].file_name.clone();
    assert!(pvc_disk.to_string().starts_with("[ds1] fcd/"), "{pvc_disk}");
    assert!(sup.lab().fcd_id(&pvc_disk).is_some());
    sup.delete("VirtualMachine", NS, "web-1").unwrap();
    assert!(sup.lab().vm(&vm.moref).is_err());
    assert!(sup.get("PersistentVolumeClaim", NS, "web-1-data").is_some());
    let root = sup.lab().root().to_owned();
    assert!(!state.vmx_path.resolve(&root).parent().unwrap().exists());
    assert!(!state.disks[0].file_name.resolve(&root).exists());
    assert!(pvc_disk.resolve(&root).exists());
    assert!(sup.lab().fcd_id(&pvc_disk).is_some());
}

/// web-1 backed up and its CR deleted: (backup VM state, backup ExtraConfig).
fn backed_up_and_deleted(sup: &Supervisor) -> (Value, VmState) {
    let cr = make_web1(sup);
    let vm = vsphere_vm(sup, &cr);
    sup.delete("VirtualMachine", NS, "web-1").unwrap();
    sup.delete("Secret", NS, "web-1-cloud-init").unwrap();
    (cr, vm)
}

#[test]
fn restore_to_new_follows_seed_section_8() {
    let env = Env::new();
    let sup = env.sup();
    let (old_cr, backup) = backed_up_and_deleted(&sup);
    let folder = sup.namespace_folder(NS);
    // Older VM Operator builds kept the zone label in the YAML (fixtures README).
    let ec = edit_yaml(&backup.extra_config, |y| {
        y["metadata"]["labels"]["topology.kubernetes.io/zone"] = "zone-a".into();
    });
    let vm = vendor_restore(&sup, "web-1", &folder, &backup, ec);
    let t = register_ok(&env, &vm);
    assert_eq!(t["operation"], "register_VM");
    let id = t["target"]["id"].as_str().unwrap();
    assert_eq!(id, vm.0);
    let cr = sup.get("VirtualMachine", NS, "web-1").unwrap();
    // §8.1.1: a restored-<6 hex> PVC bound to the restored disk, volume name kept.
    let claim = cr["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
        .as_str()
        .unwrap();
    assert_eq!(cr["spec"]["volumes"][0]["name"], "data");
    assert!(
        claim.starts_with("restored-")
            && claim.len() == 15
            && claim[9..].chars().all(|c| c.is_ascii_hexdigit()),
        "{claim}"
    );
    let pvc = sup.get("PersistentVolumeClaim", NS, claim).unwrap();
    let restored = sup.lab().vm(&vm).unwrap();
    assert_eq!(pvc["status"]["phase"], "Bound");
    assert_eq!(
        pvc["metadata"]["annotations"][super::DISK_UUID_ANNOTATION],
        restored.disks[1].uuid.as_str()
    );
    assert_eq!(
        pvc["metadata"]["annotations"][super::DISK_FILE_ANNOTATION],
        restored.disks[1].file_name.to_string().as_str()
    );
    // §8.1.2 labels, §8.1.3 annotations, §8.1.4 power, §8.1.5 cloud-init.
    assert_eq!(cr["metadata"]["labels"]["app"], "my-web-app");
    assert!(
        cr["metadata"]["labels"]
            .get("topology.kubernetes.io/zone")
            .is_none()
    );
    assert_eq!(
        cr["metadata"]["annotations"]["app.example.com/owner"],
        "team-web"
    );
    assert!(
        cr["metadata"]["annotations"]
            .get("vmoperator.vmware.com/restored-vm")
            .is_some()
    );
    assert!(
        cr["metadata"]["annotations"]
            .get("vmoperator.vmware.com/failed-over-vm")
            .is_none()
    );
    let old_id = old_cr["spec"]["bootstrap"]["cloudInit"]["instanceID"]
        .as_str()
        .unwrap();
    let new_id = cr["spec"]["bootstrap"]["cloudInit"]["instanceID"]
        .as_str()
        .unwrap();
    assert_ne!(old_id, new_id);
    assert_ne!(
        cr["metadata"]["annotations"]["vmoperator.vmware.com/instance-id"],
        old_id
    );
    assert_eq!(cr["spec"]["powerState"], "PoweredOff");
    assert_eq!(restored.power_state, crate::vmstate::PowerState::PoweredOff);
    assert_eq!(
        (
            cr["status"]["uniqueID"].as_str(),
            cr["status"]["biosUUID"].as_str()
        ),
        (Some(vm.0.as_str()), Some(backup.bios_uuid.as_str()))
    );
    assert_eq!(
        cr["spec"]["imageName"],
        "ubuntu-22.04-server-cloudimg-amd64"
    );
    // Bootstrap Secret recreated from additional-resources.
    let secret = sup.get("Secret", NS, "web-1-cloud-init").unwrap();
    assert_eq!(secret["data"]["user-data"], "I2Nsb3VkLWNvbmZpZwo=");
    // §12.3 stages.
    let task_id = sup
        .tasks_for(Some(&format!("VirtualMachine:{}", vm.0)))
        .keys()
        .next()
        .unwrap()
        .clone();
    assert_eq!(sup.registration_stages(&task_id), [5, 10, 20, 40, 80, 100]);
    let token = env.token();
    let (code, list) = http(
        env.addr(),
        "GET",
        &format!("/api/cis/tasks?targets=VirtualMachine:{}", vm.0),
        &[("vmware-api-session-id", &token)],
        None,
    );
    assert_eq!(code, 200);
    assert_eq!(list[&task_id]["status"], "SUCCEEDED");
    assert_eq!(list[&task_id]["progress"]["completed"], 100);
    let (code, one) = http(
        env.addr(),
        "GET",
        &format!("/api/cis/tasks/{task_id}"),
        &[("vmware-api-session-id", &token)],
        None,
    );
    assert_eq!((code, one["status"].as_str()), (200, Some("SUCCEEDED")));
}

#[test]
fn registervm_refusals_carry_the_seed_error_ids() {
    let env = Env::new();
    let sup = env.sup();
    let (_, backup) = backed_up_and_deleted(&sup);
    let folder = sup.namespace_folder(NS);
    assert_eq!(
        register_fails(&env, "vm-9999"),
        "VCenterWcpWorkloadRegisterVMVMNotFound"
    );
    let outside = vendor_restore(
        &sup,
        "outside",
        "/dc1/vm",
        &backup,
        backup.extra_config.clone(),
    );
    assert_eq!(
        register_fails(&env, &outside.0),
        "VCenterWcpWorkloadRegisterVMNotFoundInNamespaceFolder"
    );
    let mut no_yaml = backup.extra_config.clone();
    no_yaml.retain(|(k, _)| k != Key::VmYaml.name(KeySpelling::Code));
    let v = vendor_restore(&sup, "noyaml", &folder, &backup, no_yaml);
    assert_eq!(
        register_fails(&env, &v.0),
        "VCenterWcpWorkloadRegisterVMValidateVMResourceFailed"
    );
    // A second VM with the same BIOS UUID in the folder.
    assert_eq!(
        register_fails(&env, &v.0),
        "VCenterWcpWorkloadRegisterVMValidateVMResourceFailed"
    );
    let dup = vendor_restore(&sup, "dup", &folder, &backup, backup.extra_config.clone());
    assert_eq!(
        register_fails(&env, &dup.0),
        "VCenterWcpWorkloadRegisterVMDuplicateVMBiosUUID"
    );
    sup.lab().destroy_vm(&v).unwrap();
    sup.lab().destroy_vm(&dup).unwrap();
    // PVC volume without pvc-disk-data.
    let mut no_pvc = backup.extra_config.clone();
    no_pvc.retain(|(k, _)| k != Key::PvcDiskData.name(KeySpelling::Code));
    let v = vendor_restore(&sup, "nopvc", &folder, &backup, no_pvc);
    assert_eq!(
        register_fails(&env, &v.0),
        "VCenterWcpWorkloadRegisterVMValidateVMResourceFailed"
    );
    sup.lab().destroy_vm(&v).unwrap();
    // apiVersion older than v1alpha2.
    let mut yaml = decoded_yaml(&backup);
    yaml["apiVersion"] = "vmoperator.vmware.com/v1alpha1".into();
    let mut old = backup.extra_config.clone();
    for (k, val) in &mut old {
        if k == Key::VmYaml.name(KeySpelling::Code) {
            *val = codec::encode(&codec::to_yaml(&yaml));
        }
    }
    let v = vendor_restore(&sup, "old", &folder, &backup, old);
    assert_eq!(
        register_fails(&env, &v.0),
        "VCenterWcpWorkloadRegisterVMConvertUnstructuredToVMTypeFailed"
    );
    sup.lab().destroy_vm(&v).unwrap();
    // Snapshot revert in progress (§7.2.1).
    let mut yaml = decoded_yaml(&backup);
    yaml["metadata"]["annotations"]["vmoperator.vmware.com/snapshot-revert-in-progress"] =
        "true".into();
    let mut rev = backup.extra_config.clone();
    for (k, val) in &mut rev {
        if k == Key::VmYaml.name(KeySpelling::Code) {
            *val = codec::encode(&codec::to_yaml(&yaml));
        }
    }
    let v = vendor_restore(&sup, "rev", &folder, &backup, rev);
    let id = register_fails(&env, &v.0);
    assert!(id.contains("SnapshotRevert"), "{id}");
    sup.lab().destroy_vm(&v).unwrap();
    // Strict body.
    let (code, e) = register(&env, NS, &json!({"vm": "vm-1", "extra": 1}));
    assert_eq!(
        (code, e["error_type"].as_str()),
        (400, Some("INVALID_ARGUMENT"))
    );
    let (code, _) = http(
        env.addr(),
        "POST",
        "/api/vcenter/namespaces/instances/demo-ns/registervm",
        &[],
        Some("{\"vm\":\"vm-1\"}"),
    );
    assert_eq!(code, 401);
}

#[test]
fn version_8_0u3_refuses_existing_vms_and_network_override() {
    let env = Env::new();
    env.set_version(SupervisorVersion::V80U3);
    let sup = env.sup();
    let cr = make_web1(&sup);
    let vm = vsphere_vm(&sup, &cr);
    let folder = sup.namespace_folder(NS);
    // The CR exists: another copy (new BIOS UUID so only the CR rule applies).
    let mut ec = vm.extra_config.clone();
    ec.push((
        Key::DisableAutoRegistration.name(KeySpelling::Code).into(),
        "TRUE".into(),
    ));
    let copy = vendor_restore(&sup, "copy", &folder, &vm, ec);
    sup.lab()
        .modify_vm(&copy, |s| {
            s.bios_uuid = uuid::Uuid::new_v4().to_string();
            Ok(())
        })
        .unwrap();
    assert_eq!(
        register_fails(&env, &copy.0),
        "VCenterWcpWorkloadRegisterVMAlreadyExistsOnSupervisor"
    );
    let (code, e) = register(
        &env,
        NS,
        &json!({"vm": copy.0, "network_config_override": {"subnet_mappings": [
        {"current_subnet": {"type": "SUBNET", "name": "a"}, "new_subnet": {"type": "SUBNET", "name": "b"}}]}}),
    );
    assert_eq!((code, e["error_type"].as_str()), (400, Some("UNSUPPORTED")));
    // ServiceContent.about follows the version.
    let envelope = r#"<?xml version="1.0"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><RetrieveServiceContent xmlns="urn:vim25"><_this type="ServiceInstance">ServiceInstance</_this></RetrieveServiceContent></soapenv:Body></soapenv:Envelope>"#;
    let about = |env: &Env| {
        let mut s = std::net::TcpStream::connect(env.addr()).unwrap();
        let req = format!(
            "POST /sdk HTTP/1.1\r\nHost: lab\r\nConnection: close\r\nContent-Type: text/xml\r\nSOAPAction: \"urn:vim25/8.0.3.0\"\r\nContent-Length: {}\r\n\r\n{envelope}",
            envelope.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    assert!(about(&env).contains("<apiVersion>8.0.3.0</apiVersion>"));
    env.set_version(SupervisorVersion::V90);
    assert!(about(&env).contains("<apiVersion>9.0.0.0</apiVersion>"));
}

/// web-1 backed up, then changed (a newer backup version): the backup's ExtraConfig (zone
/// label changed in it) and the CR after the change.
fn backed_up_then_changed(sup: &Supervisor) -> (VmState, Vec<(String, String)>, Value) {
    let cr = make_web1(sup);
    let vm = vsphere_vm(sup, &cr);
    let backup_ec = edit_yaml(&vm.extra_config, |y| {
        y["metadata"]["labels"]["topology.kubernetes.io/zone"] = "zone-b".into();
    });
    let backup_version: u64 = ec_get(&vm, Key::BackupVersion, KeySpelling::Code)
        .unwrap()
        .parse()
        .unwrap();
    // The VM changes after the backup: a new label, so a newer backup version.
    let mut later = sup.get("VirtualMachine", NS, "web-1").unwrap();
    later["metadata"]["labels"]["tier"] = "changed".into();
    later["metadata"]["annotations"]["vmoperator.vmware.com/upgraded-to-build-version"] =
        "2.0".into();
    let later = sup.apply(later).unwrap();
    let ann: u64 = later["metadata"]["annotations"]["vmoperator.vmware.com/backup-version"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(ann > backup_version);
    (vm, backup_ec, later)
}

/// What a vendor restoring in place does with a PVC disk (a First Class Disk): detaches
/// it, keeping its file, and restores into a new disk at the same controller and unit with
/// the backed-up uuid. Returns the FCD's file and the new one.
fn vendor_swap(
    sup: &Supervisor,
    vm: &VmMoref,
    key: crate::vmstate::DiskKey,
) -> (
    crate::datastore::DatastorePath,
    crate::datastore::DatastorePath,
) {
    let lab = sup.lab();
    let state = lab.vm(vm).unwrap();
    let d = state.disks.iter().find(|d| d.key == key).unwrap().clone();
    lab.detach_disk(vm, key, false).unwrap();
    let new = state.vmx_path.sibling("restored-disk-1.vmdk").unwrap();
    lab.create_virtual_disk(&new, d.capacity_bytes, true)
        .unwrap();
    lab.set_disk_uuid(&new, &d.uuid).unwrap();
    lab.attach_disk_at(vm, &new, Some((d.controller_key, d.unit_number)))
        .unwrap();
    (d.file_name, new)
}

#[test]
fn restore_to_existing_pauses_replaces_pvcs_and_keeps_identity() {
    let env = Env::new();
    let sup = env.sup();
    let (vm, backup_ec, later) = backed_up_then_changed(&sup);
    // In-place restore: the PVC disk restored into a new disk, the VM given the backup's
    // ExtraConfig back.
    let (fcd, new) = vendor_swap(&sup, &vm.moref, crate::vmstate::DiskKey(2001));
    sup.lab().set_extra_config(&vm.moref, backup_ec).unwrap();
    register_ok(&env, &vm.moref);
    let cr = sup.get("VirtualMachine", NS, "web-1").unwrap();
    assert_eq!(cr["metadata"]["uid"], later["metadata"]["uid"]);
    let claim = cr["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
        .as_str()
        .unwrap();
    assert!(claim.starts_with("restored-"));
    assert!(
        sup.get("PersistentVolumeClaim", NS, "web-1-data").is_none(),
        "the dangling PVC is deleted"
    );
    // Reclaim policy Delete: its volume, the detached FCD, went with it; the new disk is
    // the new PVC's First Class Disk.
    assert!(!fcd.resolve(sup.lab().root()).exists(), "{fcd} deleted");
    assert!(sup.lab().fcd_id(&fcd).is_none());
    let pvc = sup.get("PersistentVolumeClaim", NS, claim).unwrap();
    assert_eq!(
        pvc["metadata"]["annotations"][super::DISK_FILE_ANNOTATION],
        new.to_string()
    );
    assert_eq!(
        sup.lab().fcd_id(&new).as_deref(),
        pvc["metadata"]["annotations"][super::FCD_ID_ANNOTATION].as_str()
    );
    assert_eq!(
        cr["metadata"]["labels"]["tier"], "frontend",
        "user labels from the backup"
    );
    assert_eq!(
        cr["metadata"]["labels"]["topology.kubernetes.io/zone"], "zone-a",
        "zone label preserved"
    );
    assert_eq!(
        cr["metadata"]["annotations"]["vmoperator.vmware.com/upgraded-to-build-version"], "2.0",
        "immutable annotation preserved"
    );
    assert!(
        cr["metadata"]["annotations"]
            .get("vmoperator.vmware.com/restored-vm")
            .is_some()
    );
    assert!(
        cr["metadata"]["annotations"]
            .get("vmoperator.vmware.com/pause")
            .is_none(),
        "pause removed"
    );
    assert_eq!(
        cr["spec"]["bootstrap"]["cloudInit"]["instanceID"],
        later["spec"]["bootstrap"]["cloudInit"]["instanceID"]
    );
    assert_eq!(cr["spec"]["powerState"], "PoweredOff");
    assert_eq!(
        sup.lab().vm(&vm.moref).unwrap().power_state,
        crate::vmstate::PowerState::PoweredOff
    );
}

#[test]
fn in_place_registration_refuses_a_disk_that_is_still_a_first_class_disk() {
    let env = Env::new();
    let sup = env.sup();
    let (vm, backup_ec, _) = backed_up_then_changed(&sup);
    let lab = sup.lab();
    // The PVC's disk is a First Class Disk: vCenter shows its id, which stays with the file
    // when it is detached and attached again; the OS disk is none.
    let pvc = sup.get("PersistentVolumeClaim", NS, "web-1-data").unwrap();
    let fcd_id = pvc["metadata"]["annotations"][super::FCD_ID_ANNOTATION]
        .as_str()
        .unwrap()
        .to_owned();
    let key = crate::vmstate::DiskKey(2001);
    assert_eq!(lab.vm_disk_fcd_id(&vm, key).as_deref(), Some(&*fcd_id));
    assert_eq!(lab.vm_disk_fcd_id(&vm, crate::vmstate::DiskKey(2000)), None);
    let fcd = vm.disks[1].file_name.clone();
    lab.detach_disk(&vm.moref, key, false).unwrap();
    assert_eq!(lab.fcd_id(&fcd).as_deref(), Some(&*fcd_id));
    lab.attach_disk_at(&vm.moref, &fcd, Some((1000, 1)))
        .unwrap();
    let now = lab.vm(&vm.moref).unwrap();
    let again = now.disks.iter().find(|d| d.file_name == fcd).unwrap();
    assert_eq!(again.unit_number, 1);
    assert_eq!(
        lab.vm_disk_fcd_id(&now, again.key).as_deref(),
        Some(&*fcd_id)
    );

    // Written in place, the disk is still web-1-data's FCD: CnsRegisterVolume refuses it,
    // and nothing is deleted.
    lab.set_extra_config(&vm.moref, backup_ec.clone()).unwrap();
    let (code, id) = register(&env, NS, &json!({"vm": vm.moref.0}));
    assert_eq!(code, 200, "{id}");
    let t = wait_task(&sup, id.as_str().unwrap());
    assert_eq!(t["status"], "FAILED", "{t}");
    assert_eq!(
        error_id(&t),
        "VCenterWcpWorkloadRegisterVMRegisterPVCFailed"
    );
    let said = t["error"]["messages"][0]["default_message"]
        .as_str()
        .unwrap();
    assert!(
        said.contains("is already First Class Disk") && said.contains("web-1-data"),
        "{said}"
    );
    assert!(sup.get("PersistentVolumeClaim", NS, "web-1-data").is_some());
    assert!(fcd.resolve(lab.root()).exists());

    // Swapped for a new disk, but the old FCD attached to the VM again elsewhere (with
    // another uuid): the old PVC is dangling, yet CNS does not delete an attached volume,
    // so the claim and its file stay.
    let now = lab.vm(&vm.moref).unwrap();
    let key = now.disks.iter().find(|d| d.file_name == fcd).unwrap().key;
    vendor_swap(&sup, &vm.moref, key);
    lab.set_disk_uuid(&fcd, "6000C29a-1b2c-3d4e-5f60-718293a4b5c6")
        .unwrap();
    lab.attach_disk_at(&vm.moref, &fcd, Some((1000, 9)))
        .unwrap();
    register_ok(&env, &vm.moref);
    let cr = sup.get("VirtualMachine", NS, "web-1").unwrap();
    let claim = cr["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
        .as_str()
        .unwrap();
    assert!(claim.starts_with("restored-"), "{claim}");
    assert!(
        sup.get("PersistentVolumeClaim", NS, "web-1-data").is_some(),
        "an attached volume's claim stays"
    );
    assert!(fcd.resolve(lab.root()).exists());
    assert_eq!(lab.fcd_id(&fcd).as_deref(), Some(&*fcd_id));
    assert!(matches!(
        lab.delete_fcd(&fcd_id),
        Err(crate::vmstate::LabError::DiskInUse { .. })
    ));
    // Detached, CNS can delete it.
    let now = lab.vm(&vm.moref).unwrap();
    let key = now.disks.iter().find(|d| d.file_name == fcd).unwrap().key;
    lab.detach_disk(&vm.moref, key, false).unwrap();
    assert_eq!(lab.delete_fcd(&fcd_id).unwrap(), Some(fcd.clone()));
    assert!(!fcd.resolve(lab.root()).exists());
}

#[test]
fn disk_only_restore_registers_only_unknown_disks() {
    let env = Env::new();
    let sup = env.sup();
    let cr = make_web1(&sup);
    let vm = vsphere_vm(&sup, &cr);
    // A disk the vendor restored into the VM (neither in the disk data nor a PVC's).
    let donor = sup
        .lab()
        .create_vm(
            "donor",
            "/dc1/vm",
            &[NewDisk {
                capacity_bytes: 8 << 20,
                thin: true,
                fcd: false,
            }],
        )
        .unwrap();
    let mut disk = sup.lab().vm(&donor).unwrap().disks[0].clone();
    disk.key = crate::vmstate::DiskKey(2010);
    disk.unit_number = 10;
    sup.lab()
        .modify_vm(&vm.moref, |s| {
            s.disks.push(disk.clone());
            Ok(())
        })
        .unwrap();
    register_ok(&env, &vm.moref);
    let after = sup.get("VirtualMachine", NS, "web-1").unwrap();
    let vols = after["spec"]["volumes"].as_array().unwrap();
    assert_eq!(vols.len(), 2);
    assert_eq!(vols[0]["persistentVolumeClaim"]["claimName"], "web-1-data");
    let claim = vols[1]["persistentVolumeClaim"]["claimName"]
        .as_str()
        .unwrap();
    assert!(claim.starts_with("restored-"));
    let pvc = sup.get("PersistentVolumeClaim", NS, claim).unwrap();
    assert_eq!(
        pvc["metadata"]["annotations"][super::DISK_UUID_ANNOTATION],
        disk.uuid.as_str()
    );
    assert!(
        after["metadata"]["annotations"]
            .get("vmoperator.vmware.com/restored-vm")
            .is_none(),
        "nothing else changes"
    );
    assert_eq!(after["spec"]["powerState"], "PoweredOn");
}

#[test]
fn failover_clears_the_image_reuses_pvcs_and_remaps_networks() {
    let env = Env::new();
    let sup = env.sup();
    let (_, backup) = backed_up_and_deleted(&sup);
    // The backup came from another vCenter.
    let mut yaml = decoded_yaml(&backup);
    yaml["metadata"]["annotations"]["vmoperator.vmware.com/manager-id"] =
        "99679956-80ae-42b6-9b8a-1b49662c7af7".into();
    let mut ec = backup.extra_config.clone();
    for (k, val) in &mut ec {
        if k == Key::VmYaml.name(KeySpelling::Code) {
            *val = codec::encode(&codec::to_yaml(&yaml));
        }
    }
    let folder = sup.namespace_folder(NS);
    let vm = vendor_restore(&sup, "web-1", &folder, &backup, ec);
    let body = json!({"vm": vm.0, "network_config_override": {"subnet_mappings": [
        {"current_subnet": {"type": "SUBNET", "name": "subnet-prod-a"}, "new_subnet": {"type": "SUBNET", "name": "subnet-dr-a"}},
        {"current_subnet": {"type": "SUBNETSET", "name": ""}, "new_subnet": {"type": "SUBNETSET", "name": "subnet-dr-default"}}]}});
    let (code, id) = register(&env, NS, &body);
    assert_eq!(code, 200);
    let t = wait_task(&sup, id.as_str().unwrap());
    assert_eq!(t["status"], "SUCCEEDED", "{t}");
    let cr = sup.get("VirtualMachine", NS, "web-1").unwrap();
    assert!(cr["spec"].get("image").is_none());
    assert_eq!(cr["spec"]["imageName"], "");
    assert!(
        cr["metadata"]["annotations"]
            .get("vmoperator.vmware.com/failed-over-vm")
            .is_some()
    );
    assert!(
        cr["metadata"]["annotations"]
            .get("vmoperator.vmware.com/restored-vm")
            .is_none()
    );
    // The PVC that already backs the disk (same backing UUID) is reused.
    assert_eq!(
        cr["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "web-1-data"
    );
    let ifaces = &cr["spec"]["network"]["interfaces"];
    assert_eq!(
        (
            ifaces[0]["network"]["kind"].as_str(),
            ifaces[0]["network"]["name"].as_str()
        ),
        (Some("Subnet"), Some("subnet-dr-a"))
    );
    assert_eq!(
        (
            ifaces[1]["network"]["kind"].as_str(),
            ifaces[1]["network"]["name"].as_str()
        ),
        (Some("SubnetSet"), Some("subnet-dr-default"))
    );
    // Manager-id is now this vCenter's.
    assert_eq!(
        cr["metadata"]["annotations"]["vmoperator.vmware.com/manager-id"],
        sup.instance_uuid().as_str()
    );
}

fn wait_scans(sup: &Supervisor, n: u64) {
    let start = sup.watcher_scans();
    let deadline = Instant::now() + Duration::from_secs(60);
    while sup.watcher_scans() < start + n {
        assert!(Instant::now() < deadline, "the watcher stopped");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_auto_task(sup: &Supervisor, vm: &VmMoref) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((id, _)) = sup
            .tasks_for(Some(&format!("VirtualMachine:{}", vm.0)))
            .into_iter()
            .next()
        {
            return wait_task(sup, &id);
        }
        assert!(
            Instant::now() < deadline,
            "no automatic registration of {vm}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn auto_registration_9_0_is_opt_in_and_waits_for_end_access() {
    let env = Env::new();
    let sup = env.sup();
    let (_, backup) = backed_up_and_deleted(&sup);
    let folder = sup.namespace_folder(NS);
    // Without the opt-in key nothing happens.
    let plain = vendor_restore(&sup, "plain", &folder, &backup, backup.extra_config.clone());
    wait_scans(&sup, 3);
    assert!(
        sup.tasks_for(Some(&format!("VirtualMachine:{}", plain.0)))
            .is_empty()
    );
    sup.lab().destroy_vm(&plain).unwrap();
    // With it, but while RelocateVM_Task is disabled, the trigger waits for EndAccess.
    let vm = vendor_restore(&sup, "web-1", &folder, &backup, Vec::new());
    sup.lab().prepare_for_access(&vm, "vendor").unwrap();
    let mut ec = backup.extra_config.clone();
    ec.push((
        Key::EnableAutoRegistration.name(KeySpelling::Guide).into(),
        "true".into(),
    ));
    sup.lab().set_extra_config(&vm, ec).unwrap();
    wait_scans(&sup, 3);
    assert!(
        sup.tasks_for(Some(&format!("VirtualMachine:{}", vm.0)))
            .is_empty()
    );
    sup.lab().end_access(&vm, "vendor").unwrap();
    let t = wait_auto_task(&sup, &vm);
    assert_eq!(t["status"], "SUCCEEDED", "{t}");
    assert_eq!(t["user"], super::watcher::AUTO_USER);
    assert!(sup.get("VirtualMachine", NS, "web-1").is_some());
    // The registered VM's own backups do not trigger again.
    wait_scans(&sup, 3);
    assert_eq!(
        sup.tasks_for(Some(&format!("VirtualMachine:{}", vm.0)))
            .len(),
        1
    );
}

#[test]
fn auto_registration_proceeds_early_after_the_timeout() {
    let env = Env::new();
    let sup = env.sup();
    sup.set_settings(SupervisorSettings {
        auto_registration_timeout_secs: 0,
        ..sup.settings()
    })
    .unwrap();
    let (_, backup) = backed_up_and_deleted(&sup);
    let folder = sup.namespace_folder(NS);
    let vm = vendor_restore(&sup, "web-1", &folder, &backup, Vec::new());
    sup.lab().prepare_for_access(&vm, "vendor").unwrap();
    let mut ec = backup.extra_config.clone();
    ec.push((
        Key::EnableAutoRegistration.name(KeySpelling::Code).into(),
        "yes".into(),
    ));
    sup.lab().set_extra_config(&vm, ec).unwrap();
    let t = wait_auto_task(&sup, &vm);
    assert_eq!(t["status"], "SUCCEEDED", "{t}");
    assert!(
        !sup.lab().disabled_methods(&vm).unwrap().is_empty(),
        "registered while still disabled"
    );
}

#[test]
fn auto_registration_8_0u3_is_opt_out_on_folder_arrival() {
    let env = Env::new();
    env.set_version(SupervisorVersion::V80U3);
    let sup = env.sup();
    let (_, backup) = backed_up_and_deleted(&sup);
    let folder = sup.namespace_folder(NS);
    let mut opted_out = backup.extra_config.clone();
    opted_out.push((
        Key::DisableAutoRegistration.name(KeySpelling::Code).into(),
        "True".into(),
    ));
    let quiet = vendor_restore(&sup, "quiet", &folder, &backup, opted_out);
    wait_scans(&sup, 3);
    assert!(
        sup.tasks_for(Some(&format!("VirtualMachine:{}", quiet.0)))
            .is_empty()
    );
    sup.lab().destroy_vm(&quiet).unwrap();
    // Created outside, then moved into the namespace folder: registered.
    let vm = vendor_restore(
        &sup,
        "web-1",
        "/dc1/vm",
        &backup,
        backup.extra_config.clone(),
    );
    wait_scans(&sup, 2);
    assert!(
        sup.tasks_for(Some(&format!("VirtualMachine:{}", vm.0)))
            .is_empty()
    );
    sup.lab()
        .modify_vm(&vm, |s| {
            s.folder.clone_from(&folder);
            Ok(())
        })
        .unwrap();
    let t = wait_auto_task(&sup, &vm);
    assert_eq!(t["status"], "SUCCEEDED", "{t}");
    assert!(sup.get("VirtualMachine", NS, "web-1").is_some());
}

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../agent/tests/fixtures/vmservice"
);

fn fixture_ec(file: &str) -> Vec<(String, String)> {
    let b = std::fs::read(format!("{FIXTURES}/{file}")).unwrap();
    let map: std::collections::BTreeMap<String, String> = serde_json::from_slice(&b).unwrap();
    map.into_iter().collect()
}

/// A vendor-restored copy of a fixture VM (`web-1`, `db-1`): its BIOS/instance and disk
/// backing UUIDs (1 MiB disks), with `ec` as ExtraConfig.
fn fixture_vm(sup: &Supervisor, vm_dir: &str, name: &str, ec: Vec<(String, String)>) -> VmMoref {
    let b = std::fs::read(format!("{FIXTURES}/{vm_dir}/devices.json")).unwrap();
    let dev: Value = serde_json::from_slice(&b).unwrap();
    let disks = dev["disks"].as_array().unwrap();
    let lab = sup.lab();
    let moref = lab
        .create_vm(
            name,
            &sup.namespace_folder(NS),
            &vec![
                NewDisk {
                    capacity_bytes: 1 << 20,
                    thin: true,
                    fcd: false
                };
                disks.len()
            ],
        )
        .unwrap();
    lab.modify_vm(&moref, |s| {
        s.bios_uuid = dev["vm"]["uuid"].as_str().unwrap().to_owned();
        s.instance_uuid = dev["vm"]["instanceUuid"].as_str().unwrap().to_owned();
        for (d, f) in s.disks.iter_mut().zip(disks) {
            d.uuid = f["uuid"].as_str().unwrap().to_owned();
        }
        s.extra_config = ec;
        Ok(())
    })
    .unwrap();
    moref
}

#[test]
fn the_shared_fixtures_restore_on_8_0u3_in_the_guide_spelling() {
    let env = Env::new();
    env.set_version(SupervisorVersion::V80U3);
    let sup = env.sup();
    sup.create_namespace(NS).unwrap();
    let mut ec = fixture_ec("web-1/extraconfig.guide.json");
    ec.push((
        Key::DisableAutoRegistration.name(KeySpelling::Guide).into(),
        "true".into(),
    ));
    let vm = fixture_vm(&sup, "web-1", "web-1", ec);
    register_ok(&env, &vm);
    let cr = sup.get("VirtualMachine", NS, "web-1").unwrap();
    // 8.0U3 has no failover: the foreign manager-id is simply replaced.
    assert!(
        cr["metadata"]["annotations"]
            .get("vmoperator.vmware.com/restored-vm")
            .is_some()
    );
    assert_eq!(cr["spec"]["image"]["name"], "vmi-5c625c510fadfced9");
    assert_eq!(
        cr["metadata"]["annotations"]["vmoperator.vmware.com/manager-id"],
        sup.instance_uuid().as_str()
    );
    assert_eq!(
        cr["metadata"]["annotations"]["app.example.com/owner"],
        "team-web"
    );
    let claim = cr["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
        .as_str()
        .unwrap();
    let pvc = sup.get("PersistentVolumeClaim", NS, claim).unwrap();
    assert_eq!(
        pvc["metadata"]["annotations"][super::DISK_UUID_ANNOTATION],
        "6000C29e-f450-eaed-7875-8651aadf505c"
    );
    assert_eq!(
        pvc["spec"]["storageClassName"],
        "vsan-default-storage-policy"
    );
    assert!(sup.get("Secret", NS, "web-1-cloud-init").is_some());
    // Settings persist.
    assert_eq!(
        super::settings::load(sup.lab().root()).unwrap().version,
        SupervisorVersion::V80U3
    );
}

#[test]
fn the_shared_fixtures_fail_over_on_9_0() {
    let env = Env::new();
    let sup = env.sup();
    sup.create_namespace(NS).unwrap();
    let mut web = fixture_ec("web-1/extraconfig.code.json");
    web.retain(|(k, _)| !k.contains("Automatic"));
    let web = fixture_vm(&sup, "web-1", "web-1", web);
    register_ok(&env, &web);
    let cr = sup.get("VirtualMachine", NS, "web-1").unwrap();
    assert!(
        cr["metadata"]["annotations"]
            .get("vmoperator.vmware.com/failed-over-vm")
            .is_some()
    );
    assert!(cr["spec"].get("image").is_none());
    let db = fixture_vm(
        &sup,
        "db-1",
        "db-1",
        fixture_ec("db-1/extraconfig.code.json"),
    );
    register_ok(&env, &db);
    let cr = sup.get("VirtualMachine", NS, "db-1").unwrap();
    assert_eq!(cr["apiVersion"], "vmoperator.vmware.com/v1alpha5");
    assert!(sup.get("Secret", NS, "db-1-sysprep").is_some());
    assert!(sup.get("Secret", NS, "db-1-domain-join").is_some());
}

#[test]
fn the_shared_bad_fixtures_are_refused() {
    let env = Env::new();
    let sup = env.sup();
    sup.create_namespace(NS).unwrap();
    let cases = [
        (
            "not-base64.json",
            "VCenterWcpWorkloadRegisterVMValidateVMResourceFailed",
        ),
        (
            "base64-not-gzip.json",
            "VCenterWcpWorkloadRegisterVMValidateVMResourceFailed",
        ),
        (
            "gzip-not-yaml.json",
            "VCenterWcpWorkloadRegisterVMValidateVMResourceFailed",
        ),
        (
            "missing-vm-yaml.json",
            "VCenterWcpWorkloadRegisterVMValidateVMResourceFailed",
        ),
        (
            "pvc-not-in-vm.json",
            "VCenterWcpWorkloadRegisterVMValidateVMResourceFailed",
        ),
        (
            "backup-version-not-decimal.json",
            "VCenterWcpWorkloadRegisterVMValidateVMResourceFailed",
        ),
        (
            "apiversion-v1alpha1.json",
            "VCenterWcpWorkloadRegisterVMConvertUnstructuredToVMTypeFailed",
        ),
    ];
    for (file, id) in cases {
        let mut ec = fixture_ec(&format!("bad/{file}"));
        ec.retain(|(k, _)| !k.contains("Automatic"));
        let vm = fixture_vm(&sup, "web-1", "web-1", ec);
        assert_eq!(register_fails(&env, &vm.0), id, "{file}");
        sup.lab().destroy_vm(&vm).unwrap();
    }
    assert!(sup.list("VirtualMachine", Some(NS)).is_empty());
}
