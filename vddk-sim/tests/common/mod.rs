//! Shared fixtures of the dlopen tests: a lab built with the lab crate, the simulator
//! loaded through `vddk_sys::VixDiskLib` (as the agent loads VDDK), log capture, and
//! connect-parameter builders.

// Test support: not every binary uses every helper; it calls the C ABI (unsafe by
// nature) and, like test code, panics on failed setup.
#![allow(
    dead_code,
    unsafe_code,
    clippy::undocumented_unsafe_blocks,
    clippy::unwrap_used,
    clippy::missing_safety_doc
)]

use std::ffi::{CStr, CString, c_char, c_int};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use lab::Lab;
use lab::vmstate::{DiskKey, LabSettings, NewDisk, SnapshotMoref, VmMoref};
use vadp_tests::{SimVariant, vddk_sim_libdir};
use vddk_sys::*;

/// Capacity of every fixture disk: 64 MiB = 131072 sectors.
pub const CAPACITY_BYTES: u64 = 64 << 20;
pub const CAPACITY_SECTORS: u64 = CAPACITY_BYTES / 512;

/// The lab every test of a binary shares.
pub struct Fixture {
    /// The lab's vCenter, which the simulator's control plane talks to.
    pub vcenter: lab::vcenter::InProcessVcenter,
    pub dir: tempfile::TempDir,
    pub lab: Lab,
    pub settings: LabSettings,
    /// A VM without snapshots: four thin disks (0: 8 KiB written at 1 MiB, only read;
    /// 1: read/write tests; 2: metadata tests; 3: lock tests).
    pub plain: VmMoref,
    /// A VM with one snapshot.
    pub snapped: VmMoref,
    pub snapshot: SnapshotMoref,
    pub config: PathBuf,
}

impl Fixture {
    /// A lab with its vCenter over plain HTTP.
    pub fn new(extra_config: &str) -> Self {
        Self::with_vcenter(extra_config, true)
    }

    /// A lab with its vCenter over HTTP or HTTPS (the settings name the running server).
    pub fn with_vcenter(extra_config: &str, plain_http: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let lab = Lab::create(dir.path()).expect("create lab");
        let vcenter =
            lab::vcenter::InProcessVcenter::start(dir.path(), plain_http).expect("start vcenter");
        let settings = lab.settings().expect("settings");
        let disk = NewDisk {
            capacity_bytes: CAPACITY_BYTES,
            thin: true,
            fcd: false,
        };
        let plain = lab
            .create_vm("plain", "/dc1/vm", &[disk, disk, disk, disk])
            .expect("vm");
        lab.guest_write(&plain, DiskKey(2000), 1 << 20, &[0xAB; 8192])
            .expect("guest write");
        let snapped = lab.create_vm("snapped", "/dc1/vm", &[disk]).expect("vm");
        lab.guest_write(&snapped, DiskKey(2000), 0, &[1; 4096])
            .expect("write");
        let snapshot = lab
            .create_snapshot(&snapped, "backup", "")
            .expect("snapshot");
        lab.guest_write(&snapped, DiskKey(2000), 0, &[2; 4096])
            .expect("write");
        let config = dir.path().join("vddk.conf");
        std::fs::write(
            &config,
            format!(
                "# vddk-sim test config\nvadp.lab.root = \"{}\"\ntmpDirectory=/tmp\n{extra_config}",
                dir.path().display()
            ),
        )
        .expect("write config");
        Self {
            vcenter,
            dir,
            lab,
            settings,
            plain,
            snapped,
            snapshot,
            config,
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The current file of a VM's first disk.
    pub fn disk_path(&self, vm: &VmMoref, index: usize) -> String {
        self.lab.vm(vm).expect("vm").disks[index]
            .file_name
            .to_string()
    }

    /// The file the snapshot froze.
    pub fn frozen_path(&self) -> String {
        self.lab
            .snapshot(&self.snapped, &self.snapshot)
            .expect("snapshot")
            .disks[0]
            .file_name
            .to_string()
    }
}

/// Loads a simulator build the way the agent loads VDDK.
pub fn load(variant: SimVariant) -> (VixDiskLib, PathBuf) {
    let libdir = vddk_sim_libdir(variant);
    let name = match variant {
        SimVariant::Vddk8 => "libvixDiskLib.so.8",
        SimVariant::Vddk65 => "libvixDiskLib.so.6",
    };
    let path = libdir.join("lib64").join(name);
    let lib = unsafe { VixDiskLib::new(&path) }.expect("dlopen vddk-sim");
    (lib, path)
}

static LOG: Mutex<Vec<(&'static str, String)>> = Mutex::new(Vec::new());

unsafe extern "C" {
    fn vsnprintf(buf: *mut c_char, n: usize, fmt: *const c_char, ap: *mut __va_list_tag) -> c_int;
}

fn capture(level: &'static str, fmt: *const c_char, args: *mut __va_list_tag) {
    let mut buf = [0 as c_char; 4096];
    unsafe { vsnprintf(buf.as_mut_ptr(), buf.len(), fmt, args) };
    let text = unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    LOG.lock().unwrap().push((level, text));
}

pub unsafe extern "C" fn log_fn(fmt: *const c_char, args: *mut __va_list_tag) {
    capture("log", fmt, args);
}
pub unsafe extern "C" fn warn_fn(fmt: *const c_char, args: *mut __va_list_tag) {
    capture("warn", fmt, args);
}
pub unsafe extern "C" fn panic_fn(fmt: *const c_char, args: *mut __va_list_tag) {
    capture("panic", fmt, args);
}

/// Captured (level, message) pairs so far.
pub fn logged() -> Vec<(&'static str, String)> {
    LOG.lock().unwrap().clone()
}

/// InitEx with the capturing callbacks.
pub fn init(lib: &VixDiskLib, config: &Path) -> VixError {
    let config = CString::new(config.to_str().unwrap()).unwrap();
    unsafe {
        lib.VixDiskLib_InitEx(
            6,
            5,
            Some(log_fn),
            Some(warn_fn),
            Some(panic_fn),
            std::ptr::null(),
            config.as_ptr(),
        )
    }
}

/// Owned strings behind a `VixDiskLibConnectParams`.
pub struct Params {
    pub vmx: Option<CString>,
    pub server: Option<CString>,
    pub thumbprint: Option<CString>,
    pub user: Option<CString>,
    pub password: Option<CString>,
    pub cookie: Option<CString>,
}

fn c(s: &str) -> Option<CString> {
    Some(CString::new(s).unwrap())
}

fn ptr(s: &Option<CString>) -> *mut c_char {
    s.as_ref()
        .map_or(std::ptr::null_mut(), |s| s.as_ptr().cast_mut())
}

impl Params {
    /// Valid parameters for `vm` on the lab.
    pub fn for_vm(settings: &LabSettings, vm: &VmMoref) -> Self {
        Self {
            vmx: c(&format!("moref={vm}")),
            server: c(&settings.server_name),
            thumbprint: c(&settings.thumbprint),
            user: c(&settings.user),
            password: c(&settings.password),
            cookie: None,
        }
    }

    pub fn raw(&self) -> VixDiskLibConnectParams {
        let mut p = VixDiskLibConnectParams {
            vmxSpec: ptr(&self.vmx),
            serverName: ptr(&self.server),
            thumbPrint: ptr(&self.thumbprint),
            specType: VIXDISKLIB_SPEC_VMX,
            ..Default::default()
        };
        if self.cookie.is_some() {
            p.credType = VIXDISKLIB_CRED_SESSIONID;
            p.creds.sessionId = VixDiskLibSessionIdCreds {
                cookie: ptr(&self.cookie),
                userName: ptr(&self.user),
                key: ptr(&self.password),
            };
        } else {
            p.credType = VIXDISKLIB_CRED_UID;
            p.creds.uid = VixDiskLibUidPasswdCreds {
                userName: ptr(&self.user),
                password: ptr(&self.password),
            };
        }
        p
    }
}

/// The low 16 bits.
pub fn code(err: VixError) -> u32 {
    u32::try_from(vix_error_code(err)).unwrap()
}

/// GetErrorText + FreeErrorText.
pub fn error_text(lib: &VixDiskLib, err: VixError) -> String {
    unsafe {
        let p = lib.VixDiskLib_GetErrorText(err, std::ptr::null());
        assert!(!p.is_null());
        let s = CStr::from_ptr(p).to_string_lossy().into_owned();
        lib.VixDiskLib_FreeErrorText(p);
        s
    }
}

/// ConnectEx; Err(code) on failure.
pub fn connect(
    lib: &VixDiskLib,
    params: &Params,
    read_only: bool,
    snapshot: Option<&str>,
) -> Result<VixDiskLibConnection, u32> {
    let raw = params.raw();
    let snapshot = snapshot.map(|s| CString::new(s).unwrap());
    let mut conn: VixDiskLibConnection = std::ptr::null_mut();
    let err = unsafe {
        lib.VixDiskLib_ConnectEx(
            &raw,
            Bool::from(read_only),
            snapshot.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            std::ptr::null(),
            &mut conn,
        )
    };
    if err == 0 { Ok(conn) } else { Err(code(err)) }
}

/// Callers serialise Open/Close, as VDDK requires (and the simulator enforces).
pub static OPEN_CLOSE: Mutex<()> = Mutex::new(());

/// Open; Err(code) on failure.
pub fn open(
    lib: &VixDiskLib,
    conn: VixDiskLibConnection,
    path: &str,
    flags: u32,
) -> Result<VixDiskLibHandle, u32> {
    let _serial = OPEN_CLOSE.lock().unwrap_or_else(|p| p.into_inner());
    let path = CString::new(path).unwrap();
    let mut h: VixDiskLibHandle = std::ptr::null_mut();
    let err = unsafe { lib.VixDiskLib_Open(conn, path.as_ptr(), flags, &mut h) };
    if err == 0 { Ok(h) } else { Err(code(err)) }
}

pub fn close(lib: &VixDiskLib, h: VixDiskLibHandle) -> u32 {
    let _serial = OPEN_CLOSE.lock().unwrap_or_else(|p| p.into_inner());
    code(unsafe { lib.VixDiskLib_Close(h) })
}

/// The `VixDiskLib_*` function names declared in our ABI header.
pub fn header_functions() -> Vec<String> {
    let header = Path::new(env!("CARGO_MANIFEST_DIR")).join("../vddk-sys/include/vddk.h");
    let text = std::fs::read_to_string(header).expect("read vddk.h");
    let mut names = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("VixDiskLib_") {
        rest = &rest[at..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if rest[end..].starts_with('(') {
            names.push(rest[..end].to_owned());
        }
        rest = &rest[end..];
    }
    names.sort();
    names.dedup();
    names
}

/// The optional functions VDDK 6.5 lacks.
pub const OPTIONAL: [&str; 3] = [
    "VixDiskLib_AllocateConnectParams",
    "VixDiskLib_FreeBlockList",
    "VixDiskLib_QueryAllocatedBlocks",
];

/// Whether `name` resolves in the library at `path` (dlsym through libloading).
pub fn has_symbol(lib: &libloading::Library, name: &str) -> bool {
    let sym = CString::new(name).unwrap();
    unsafe { lib.get::<*const ()>(sym.as_bytes_with_nul()) }.is_ok()
}
