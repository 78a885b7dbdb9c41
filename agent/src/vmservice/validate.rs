//! Seed 001 §5.3 validation of one VM's backup: the decoded ExtraConfig checked against the
//! folder the VM was in and the disks the backup captured, plus each disk's role.

use serde::{Deserialize, Serialize};

use super::decode::{self, PayloadState, Problem, PvcDiskData, VmServiceData};
use super::keys::Content;
use crate::repo::catalog::DiskRole;

/// WCP's error when the VM is not in its namespace folder (seed 001 §7.2.3).
const WCP_NOT_IN_FOLDER: &str = "VCenterWcpWorkloadRegisterVMNotFoundInNamespaceFolder";

/// A disk as captured by a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturedDisk {
    /// Device key (2000, …).
    pub key: i32,
    /// Device label ("Hard disk 1").
    pub label: String,
    /// The backing's `fileName` (`[datastore] dir/file.vmdk`).
    pub file_name: String,
    /// The backing's `uuid`, when it has one.
    pub uuid: Option<String>,
    /// The backing has a `vDiskId`: a First Class Disk, i.e. a PVC volume.
    pub fcd: bool,
    /// The backup holds this disk's data.
    pub captured: bool,
}

/// Outcome of [`validate_backup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValidationStatus {
    /// A VM Service VM whose backup WCP should be able to register.
    Valid,
    /// A VM Service VM whose backup has problems; the data is kept, the operator is warned.
    Warning,
    /// Not a VM Service VM (no `vmservice.*` backup key): nothing to validate.
    NotVmService,
}

/// The validation of one VM's backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Validation {
    /// Valid, warning or not a VM Service VM.
    pub status: ValidationStatus,
    /// Every problem: decoding's first (the same as `data.problems`), then the backup's.
    pub problems: Vec<Problem>,
    /// What was decoded (`None` for a VM that is not a VM Service VM).
    pub data: Option<VmServiceData>,
    /// `(device key, role)` for each captured disk, in input order.
    pub roles: Vec<(i32, DiskRole)>,
}

/// Seed 001 §5.3 validation of one VM's backup.
///
/// `extra` is the VM's ExtraConfig as backed up, `folder_name` the name of the folder the VM
/// was in (WCP registers only VMs in their namespace folder), `disks` every virtual disk of
/// the VM in device order. Every problem is reported, none stops the checks. A problem about
/// a disk names the disk-data key of the disk's role (PVC or classic).
///
/// Roles: a disk matched by an entry of the PVC disk data is [`DiskRole::Pvc`]; otherwise the
/// first disk is [`DiskRole::Os`] and the others are [`DiskRole::Classic`]. Entries match a
/// disk by `FileName` or by `UUID` (case, `-` and blanks ignored): the file name alone can
/// differ when one side was read while a snapshot existed (it then names the delta file).
#[must_use]
pub fn validate_backup(
    extra: &[(String, String)],
    folder_name: Option<&str>,
    disks: &[CapturedDisk],
) -> Validation {
    let Some(decoded) = decode::decode_detailed(extra) else {
        return Validation {
            status: ValidationStatus::NotVmService,
            problems: Vec::new(),
            data: None,
            roles: roles(disks, &vec![false; disks.len()]),
        };
    };
    let data = decoded.data;
    let mut problems = data.problems.clone();
    let version_key = decode::key_for(extra, Content::BackupVersion);
    let version_unreadable = problems.iter().any(|p| p.key == version_key);
    let mut problem = |key: &str, reason: String| {
        problems.push(Problem {
            key: key.to_owned(),
            reason,
        });
    };

    if let (Some(folder), Some(ns)) = (folder_name, data.namespace.as_deref())
        && folder != ns
    {
        problem(
            &decode::key_for(extra, Content::NamespacedName),
            format!(
                "VM is in folder {folder}, not in its namespace folder {ns}; WCP would \
                 refuse with {WCP_NOT_IN_FOLDER}"
            ),
        );
    }

    let pvc_key = decode::key_for(extra, Content::PvcDiskData);
    let classic_key = decode::key_for(extra, Content::ClassicDiskData);
    let mut is_pvc = vec![false; disks.len()];
    for entry in &data.pvc_disks {
        let mut hit = false;
        for (i, disk) in disks.iter().enumerate() {
            if entry_matches(entry, disk) {
                is_pvc[i] = true;
                hit = true;
            }
        }
        if !hit {
            problem(
                &pvc_key,
                format!(
                    "lists PVC {:?} ({}, UUID {}), which matches no disk of the VM",
                    entry.pvc_name, entry.file_name, entry.uuid
                ),
            );
        }
    }
    // An undecodable list was reported already; do not blame each disk for it.
    if decoded.pvc_state != PayloadState::Bad {
        for (disk, _) in disks.iter().zip(&is_pvc).filter(|(d, pvc)| d.fcd && !**pvc) {
            let reason = if decoded.pvc_state == PayloadState::Absent {
                format!(
                    "missing, but disk {} ({}) is a First Class Disk (a PVC volume); WCP would \
                     refuse with {}",
                    disk.label,
                    disk.file_name,
                    decode::WCP_VALIDATE_FAILED
                )
            } else {
                format!(
                    "does not list disk {} ({}), a First Class Disk (a PVC volume)",
                    disk.label, disk.file_name
                )
            };
            problem(&pvc_key, reason);
        }
    }

    // §7.1.3: without it WCP cannot choose between restoring onto the VirtualMachine and
    // restoring disks only, and refuses both (an unreadable value was reported already).
    if data.backup_version_ms.is_none() && !version_unreadable {
        problem(
            &version_key,
            "missing: this point can be restored only as a new VM (WCP needs the backup \
             version to restore onto an existing VirtualMachine or to restore disks only)"
                .into(),
        );
    }

    for (disk, pvc) in disks.iter().zip(&is_pvc).filter(|(d, _)| !d.captured) {
        let key = if *pvc { &pvc_key } else { &classic_key };
        problem(
            key,
            format!("disk {} ({}) was not captured", disk.label, disk.file_name),
        );
    }

    let status = if problems.is_empty() {
        ValidationStatus::Valid
    } else {
        ValidationStatus::Warning
    };
    Validation {
        status,
        problems,
        data: Some(data),
        roles: roles(disks, &is_pvc),
    }
}

fn roles(disks: &[CapturedDisk], is_pvc: &[bool]) -> Vec<(i32, DiskRole)> {
    disks
        .iter()
        .zip(is_pvc)
        .enumerate()
        .map(|(i, (disk, &pvc))| {
            let role = if pvc {
                DiskRole::Pvc
            } else if i == 0 {
                DiskRole::Os
            } else {
                DiskRole::Classic
            };
            (disk.key, role)
        })
        .collect()
}

/// A disk UUID for comparison: lowercase, without `-` and blanks (vSphere prints
/// `6000C29d-f6ad-…`, other tools print it in other cases and groupings).
fn normalize_uuid(uuid: &str) -> String {
    uuid.chars()
        .filter(|c| *c != '-' && !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

fn entry_matches(entry: &PvcDiskData, disk: &CapturedDisk) -> bool {
    let by_file = !entry.file_name.is_empty() && entry.file_name == disk.file_name;
    let entry_uuid = normalize_uuid(&entry.uuid);
    let by_uuid = !entry_uuid.is_empty()
        && disk
            .uuid
            .as_deref()
            .is_some_and(|u| normalize_uuid(u) == entry_uuid);
    by_file || by_uuid
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::vmservice::fixtures;
    use crate::vmservice::payload::encode_gzip_base64;

    fn validate_fixture(vm: &str, spelling: &str) -> Validation {
        let extra = fixtures::extra_config(&format!("{vm}/extraconfig.{spelling}.json"));
        validate_backup(
            &extra,
            Some(&fixtures::folder(vm)),
            &fixtures::captured_disks(vm),
        )
    }

    fn web1_bad(name: &str) -> Validation {
        let extra = fixtures::extra_config(&format!("bad/{name}"));
        validate_backup(&extra, Some("demo-ns"), &fixtures::captured_disks("web-1"))
    }

    #[test]
    fn fixtures_are_valid_with_their_roles() {
        for spelling in ["code", "guide"] {
            let v = validate_fixture("web-1", spelling);
            assert_eq!(v.problems, [], "web-1 {spelling}");
            assert_eq!(v.status, ValidationStatus::Valid);
            assert_eq!(v.roles, [(2000, DiskRole::Os), (2001, DiskRole::Pvc)]);
            assert_eq!(v.data.unwrap().pvc_disks[0].pvc_name, "web-1-data");

            let v = validate_fixture("db-1", spelling);
            assert_eq!(v.problems, [], "db-1 {spelling}");
            assert_eq!(v.status, ValidationStatus::Valid);
            assert_eq!(v.roles, [(2000, DiskRole::Os), (2001, DiskRole::Classic)]);
        }
    }

    /// A bad guide-spelled value next to an empty code-spelled key: one problem, named by
    /// the key whose value was read (the empty one hides nothing).
    #[test]
    fn a_problem_names_the_key_whose_value_was_read() {
        let mut extra = fixtures::extra_config("web-1/extraconfig.guide.json");
        let guide = Content::BackupVersion.guide_key();
        for (k, v) in &mut extra {
            if k == guide {
                *v = "abc".into();
            }
        }
        extra.push((Content::BackupVersion.code_key().to_owned(), String::new()));
        let v = validate_backup(
            &extra,
            Some(&fixtures::folder("web-1")),
            &fixtures::captured_disks("web-1"),
        );
        assert_eq!(v.problems.len(), 1, "{:#?}", v.problems);
        assert_eq!(v.problems[0].key, guide, "{:#?}", v.problems);
    }

    /// The roles agree with devices.json's own `role` column.
    #[test]
    fn roles_match_the_fixtures_device_roles() {
        for vm in ["web-1", "db-1"] {
            let devices = fixtures::json(&format!("{vm}/devices.json"));
            let expected: Vec<(i32, String)> = devices["disks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| {
                    (
                        i32::try_from(d["deviceKey"].as_i64().unwrap()).unwrap(),
                        d["role"].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
            let got: Vec<(i32, String)> = validate_fixture(vm, "code")
                .roles
                .into_iter()
                .map(|(k, r)| (k, serde_json::to_value(r).unwrap().as_str().unwrap().into()))
                .collect();
            assert_eq!(got, expected, "{vm}");
        }
    }

    /// Each bad fixture: (file, key named, words the reason must contain).
    const BAD: &[(&str, &str, &[&str])] = &[
        (
            "not-base64.json",
            "vmservice.virtualmachine.resource.yaml",
            &["not base64"],
        ),
        (
            "base64-not-gzip.json",
            "vmservice.virtualmachine.resource.yaml",
            &["base64 but not gzip", "78 9c (zlib)"],
        ),
        (
            "gzip-not-yaml.json",
            "vmservice.virtualmachine.resource.yaml",
            &["not YAML"],
        ),
        (
            "apiversion-v1alpha1.json",
            "vmservice.virtualmachine.resource.yaml",
            &[
                "vmoperator.vmware.com/v1alpha1",
                "VCenterWcpWorkloadRegisterVMConvertUnstructuredToVMTypeFailed",
            ],
        ),
        (
            "missing-vm-yaml.json",
            "vmservice.virtualmachine.resource.yaml",
            &[
                "missing",
                "VCenterWcpWorkloadRegisterVMValidateVMResourceFailed",
            ],
        ),
        (
            "pvc-not-in-vm.json",
            "vmservice.virtualmachine.pvc.disk.data",
            &["\"web-1-logs\"", "claimName: web-1-data"],
        ),
        (
            "backup-version-not-decimal.json",
            "vmservice.virtualmachine.backupVersion",
            &["2025-10-14T09:12:41Z", "not a decimal"],
        ),
    ];

    #[test]
    fn each_bad_fixture_warns_about_its_key_and_layer() {
        for (file, key, words) in BAD {
            let v = web1_bad(file);
            assert_eq!(v.status, ValidationStatus::Warning, "{file}");
            assert_eq!(v.problems.len(), 1, "{file}: {:#?}", v.problems);
            let p = &v.problems[0];
            assert_eq!(p.key, *key, "{file}");
            for word in *words {
                assert!(p.reason.contains(word), "{file}: {p} lacks {word:?}");
            }
            // The disks keep their roles whatever the YAML says.
            assert_eq!(v.roles, [(2000, DiskRole::Os), (2001, DiskRole::Pvc)]);
        }
    }

    #[test]
    fn every_bad_fixture_is_covered() {
        let mut on_disk: Vec<String> = std::fs::read_dir(fixtures::path("bad"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".json"))
            .collect();
        on_disk.sort();
        let mut covered: Vec<String> = BAD.iter().map(|(f, _, _)| (*f).to_owned()).collect();
        covered.sort();
        assert_eq!(on_disk, covered);
    }

    #[test]
    fn a_disk_not_captured_is_a_problem() {
        let extra = fixtures::extra_config("web-1/extraconfig.code.json");
        let mut disks = fixtures::captured_disks("web-1");
        disks[0].captured = false;
        disks[1].captured = false;
        let v = validate_backup(&extra, Some("demo-ns"), &disks);
        assert_eq!(v.status, ValidationStatus::Warning);
        let got: Vec<String> = v.problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "ExtraConfig key vmservice.virtualmachine.classicDiskData: disk Hard disk 1 \
                 ([vsanDatastore] 6adfdb68-ead9-34d7-702b-0cc47a1b2c3d/web-1.vmdk) was not \
                 captured",
                "ExtraConfig key vmservice.virtualmachine.pvc.disk.data: disk Hard disk 2 \
                 ([vsanDatastore] c5aa2168-81c2-2d18-9689-0cc47a1b2c3d/\
                 216a864276cd48e6cf8f67820e9ee7ee.vmdk) was not captured",
            ]
        );
        assert_eq!(v.roles, [(2000, DiskRole::Os), (2001, DiskRole::Pvc)]);
    }

    #[test]
    fn a_vm_outside_its_namespace_folder_is_a_problem() {
        let extra = fixtures::extra_config("db-1/extraconfig.guide.json");
        let v = validate_backup(&extra, Some("vm"), &fixtures::captured_disks("db-1"));
        assert_eq!(v.status, ValidationStatus::Warning);
        assert_eq!(v.problems.len(), 1, "{:#?}", v.problems);
        assert_eq!(v.problems[0].key, "vmservice.namespacedName");
        assert!(
            v.problems[0]
                .reason
                .contains("folder vm, not in its namespace folder demo-ns"),
            "{}",
            v.problems[0]
        );
        assert!(v.problems[0].reason.contains("NotFoundInNamespaceFolder"));
        // No folder known: nothing to compare.
        let v = validate_backup(&extra, None, &fixtures::captured_disks("db-1"));
        assert_eq!(v.status, ValidationStatus::Valid);
    }

    #[test]
    fn not_a_vm_service_vm() {
        let extra = vec![("nvram".to_owned(), "x.nvram".to_owned())];
        let mut disks = fixtures::captured_disks("web-1");
        disks.push(CapturedDisk {
            key: 2002,
            ..disks[1].clone()
        });
        let v = validate_backup(&extra, Some("vm"), &disks);
        assert_eq!(v.status, ValidationStatus::NotVmService);
        assert_eq!(v.problems, []);
        assert_eq!(v.data, None);
        assert_eq!(
            v.roles,
            [
                (2000, DiskRole::Os),
                (2001, DiskRole::Classic),
                (2002, DiskRole::Classic)
            ]
        );
    }

    /// §7.1.3: a backup without the backup version restores only as a new VM; said once,
    /// and not again when the value was unreadable.
    #[test]
    fn a_missing_backup_version_is_a_warning() {
        for file in ["web-1/extraconfig.code.json", "db-1/extraconfig.guide.json"] {
            let vm = file.split('/').next().unwrap();
            let mut extra = fixtures::extra_config(file);
            let present = decode::key_for(&extra, Content::BackupVersion);
            extra.retain(|(k, _)| *k != present);
            let key = decode::key_for(&extra, Content::BackupVersion);
            let v = validate_backup(&extra, Some("demo-ns"), &fixtures::captured_disks(vm));
            assert_eq!(v.status, ValidationStatus::Warning, "{file}");
            let about: Vec<_> = v.problems.iter().filter(|p| p.key == key).collect();
            assert_eq!(about.len(), 1, "{file}: {:#?}", v.problems);
            assert!(
                about[0].reason.contains("only as a new VM"),
                "{:?}",
                about[0]
            );
        }
        let extra = fixtures::extra_config("bad/backup-version-not-decimal.json");
        let key = decode::key_for(&extra, Content::BackupVersion);
        let v = validate_backup(&extra, Some("demo-ns"), &fixtures::captured_disks("web-1"));
        let about: Vec<_> = v.problems.iter().filter(|p| p.key == key).collect();
        assert_eq!(about.len(), 1, "{:#?}", v.problems);
        assert!(!about[0].reason.contains("only as a new VM"));
    }

    #[test]
    fn pvc_entries_match_by_uuid_when_file_names_differ() {
        let extra = fixtures::extra_config("web-1/extraconfig.code.json");
        let mut disks = fixtures::captured_disks("web-1");
        // Read while a snapshot existed: the delta file, and a differently written UUID.
        disks[1].file_name = "[vsanDatastore] c5aa2168/web-1-000001.vmdk".to_owned();
        disks[1].uuid = Some("6000C29E F450 EAED 7875 8651AADF505C".to_owned());
        let v = validate_backup(&extra, Some("demo-ns"), &disks);
        assert_eq!(v.problems, []);
        assert_eq!(v.roles[1], (2001, DiskRole::Pvc));

        // Neither matches: the entry matches no disk and the FCD is unlisted.
        disks[1].uuid = None;
        let v = validate_backup(&extra, Some("demo-ns"), &disks);
        assert_eq!(v.problems.len(), 2, "{:#?}", v.problems);
        assert!(v.problems[0].reason.contains("matches no disk"));
        assert!(
            v.problems[1]
                .reason
                .contains("does not list disk Hard disk 2")
        );
        assert_eq!(v.roles[1], (2001, DiskRole::Classic));
    }

    #[test]
    fn an_fcd_without_pvc_disk_data_is_a_problem() {
        // db-1 has no PVC; give it an FCD the ExtraConfig does not know about.
        let extra = fixtures::extra_config("db-1/extraconfig.code.json");
        let mut disks = fixtures::captured_disks("db-1");
        disks[1].fcd = true;
        let v = validate_backup(&extra, Some("demo-ns"), &disks);
        assert_eq!(v.problems.len(), 1, "{:#?}", v.problems);
        assert_eq!(v.problems[0].key, "vmservice.virtualmachine.pvc.disk.data");
        assert!(
            v.problems[0]
                .reason
                .starts_with("missing, but disk Hard disk 2")
        );

        // An undecodable list is reported once, not once per disk.
        let mut extra = fixtures::extra_config("web-1/extraconfig.code.json");
        for (k, v) in &mut extra {
            if k == Content::PvcDiskData.code_key() {
                *v = encode_gzip_base64("not json");
            }
        }
        let v = validate_backup(&extra, Some("demo-ns"), &fixtures::captured_disks("web-1"));
        assert_eq!(v.problems.len(), 1, "{:#?}", v.problems);
    }

    #[test]
    fn serializes_for_the_catalog() {
        let v = validate_fixture("web-1", "code");
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["status"], "valid");
        assert_eq!(
            json["roles"],
            serde_json::json!([[2000, "os"], [2001, "pvc"]])
        );
        assert!(json["data"].get("vm_yaml").is_none());
        assert_eq!(json["data"]["backup_version_ms"], 1_760_433_161_318_u64);
        let back: Validation = serde_json::from_value(json).unwrap();
        assert_eq!(back.roles, v.roles);

        let v = validate_backup(&[], None, &[]);
        assert_eq!(serde_json::to_value(v.status).unwrap(), "notvmservice");
        let v = web1_bad("not-base64.json");
        assert_eq!(serde_json::to_value(&v).unwrap()["status"], "warning");
    }

    /// Keys: the real ones (either spelling) or anything; values: anything, or a valid
    /// encoding of arbitrary text, so the parsers behind the decoding layers are reached too.
    fn arb_extra() -> impl Strategy<Value = Vec<(String, String)>> {
        let key = prop_oneof![
            prop::sample::select(
                Content::ALL
                    .iter()
                    .flat_map(|c| [c.code_key(), c.guide_key()])
                    .collect::<Vec<_>>()
            )
            .prop_map(str::to_owned),
            "vmservice\\.[a-zA-Z./-]{0,20}",
            ".{0,20}",
        ];
        let text = prop_oneof![
            ".{0,200}",
            "(apiVersion|kind|metadata|spec|volumes|name|[-:/ \\[\\]{}\n]|[a-z0-9]){0,80}",
            r#"\[(\{"FileName":"[a-z]{0,3}","PVCName":"[a-z-]{0,8}","UUID":"[0-9a-f-]{0,8}"\},?){0,3}\]"#,
        ];
        let value = prop_oneof![
            ".{0,40}",
            "[A-Za-z0-9+/=]{0,40}",
            text.prop_map(|t| encode_gzip_base64(&t)),
        ];
        prop::collection::vec((key, value), 0..12)
    }

    fn arb_disks() -> impl Strategy<Value = Vec<CapturedDisk>> {
        let disk = (
            any::<i32>(),
            ".{0,10}",
            "[a-z]{0,3}",
            prop::option::of("[0-9a-fA-F -]{0,8}"),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(
                |(key, label, file_name, uuid, fcd, captured)| CapturedDisk {
                    key,
                    label,
                    file_name,
                    uuid,
                    fcd,
                    captured,
                },
            );
        prop::collection::vec(disk, 0..4)
    }

    proptest! {
        #[test]
        fn decode_and_validate_never_panic(
            extra in arb_extra(),
            folder in prop::option::of(".{0,10}"),
            disks in arb_disks(),
        ) {
            let data = crate::vmservice::decode(&extra);
            let v = validate_backup(&extra, folder.as_deref(), &disks);
            prop_assert_eq!(v.roles.len(), disks.len());
            prop_assert_eq!(data.is_none(), v.status == ValidationStatus::NotVmService);
            prop_assert_eq!(v.problems.is_empty(), v.status != ValidationStatus::Warning);
            serde_json::to_string(&v).expect("a validation serializes");
        }
    }
}
