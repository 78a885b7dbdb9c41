//! Test access to `agent/tests/fixtures/vmservice/` (copied from shared/fixtures/vmservice).

use serde_json::Value;

use super::CapturedDisk;

/// Path of a file under the fixture directory.
pub(crate) fn path(rel: &str) -> String {
    format!(
        "{}/tests/fixtures/vmservice/{rel}",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// A fixture file's text.
pub(crate) fn text(rel: &str) -> String {
    std::fs::read_to_string(path(rel)).unwrap_or_else(|e| panic!("read fixture {rel}: {e}"))
}

/// A fixture JSON file.
pub(crate) fn json(rel: &str) -> Value {
    serde_json::from_str(&text(rel)).unwrap_or_else(|e| panic!("parse fixture {rel}: {e}"))
}

/// An ExtraConfig list from literal pairs.
pub(crate) fn entries(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// An `extraconfig.*.json` or `bad/*.json` map as an ExtraConfig list.
pub(crate) fn extra_config(rel: &str) -> Vec<(String, String)> {
    let Value::Object(map) = json(rel) else {
        panic!("fixture {rel} is not a JSON object");
    };
    map.into_iter()
        .map(|(k, v)| {
            let v = v
                .as_str()
                .unwrap_or_else(|| panic!("fixture {rel}: value of {k} is not a string"))
                .to_owned();
            (k, v)
        })
        .collect()
}

/// The disks of a VM's `devices.json`, all captured.
pub(crate) fn captured_disks(vm: &str) -> Vec<CapturedDisk> {
    let devices = json(&format!("{vm}/devices.json"));
    let disks = devices["disks"].as_array().expect("devices.json has disks");
    disks
        .iter()
        .map(|d| CapturedDisk {
            key: i32::try_from(d["deviceKey"].as_i64().expect("deviceKey")).expect("i32 key"),
            label: d["label"].as_str().expect("label").to_owned(),
            file_name: d["fileName"].as_str().expect("fileName").to_owned(),
            uuid: d["uuid"].as_str().map(str::to_owned),
            fcd: d["fcd"].as_bool().expect("fcd"),
            captured: true,
        })
        .collect()
}

/// The namespace folder a VM's `devices.json` puts it in.
pub(crate) fn folder(vm: &str) -> String {
    json(&format!("{vm}/devices.json"))["vm"]["folder"]["name"]
        .as_str()
        .expect("folder name")
        .to_owned()
}
