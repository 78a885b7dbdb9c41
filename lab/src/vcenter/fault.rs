//! vim25 faults: the SOAP fault of a method call and the `LocalizedMethodFault` of a
//! failed task, shaped as vCenter sends them (VSPHERE.md §A.1, §A.13).

use std::fmt::Write as _;

use super::xml::esc;
use crate::datastore::DatastoreError;
use crate::vmstate::LabError;

/// One fault: its vim25 type, message, and the fault's fields as XML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fault {
    /// The fault type, e.g. `InvalidPowerState`.
    pub kind: &'static str,
    /// `faultstring` / `localizedMessage`.
    pub message: String,
    /// The fault's fields, already serialised.
    pub fields: String,
}

impl Fault {
    fn new(kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            fields: String::new(),
        }
    }

    fn with(mut self, name: &str, value: &str) -> Self {
        let _ = write!(self.fields, "<{name}>{}</{name}>", esc(value));
        self
    }

    pub(crate) fn not_authenticated() -> Self {
        Self::new("NotAuthenticated", "The session is not authenticated.")
    }

    pub(crate) fn invalid_login() -> Self {
        Self::new(
            "InvalidLogin",
            "Cannot complete login due to an incorrect user name or password.",
        )
    }

    pub(crate) fn not_found_object(kind: &str, id: &str) -> Self {
        let mut f = Self::new(
            "ManagedObjectNotFound",
            "The object has already been deleted or has not been completely created",
        );
        let _ = write!(f.fields, "<obj type=\"{}\">{}</obj>", esc(kind), esc(id));
        f
    }

    pub(crate) fn invalid_argument(property: &str) -> Self {
        Self::new(
            "InvalidArgument",
            format!("A specified parameter was not correct: {property}"),
        )
        .with("invalidProperty", property)
    }

    pub(crate) fn invalid_property(name: &str) -> Self {
        Self::new("InvalidProperty", format!("invalid property {name}")).with("name", name)
    }

    pub(crate) fn invalid_request(message: &str) -> Self {
        Self::new("InvalidRequest", message)
    }

    pub(crate) fn method_not_found(method: &str) -> Self {
        Self::new(
            "MethodNotFound",
            format!("method {method} is not implemented by the lab"),
        )
        .with("method", method)
    }

    pub(crate) fn invalid_power_state(requested: &str, existing: &str) -> Self {
        Self::new(
            "InvalidPowerState",
            "The attempted operation cannot be performed in the current state.",
        )
        .with("requestedState", requested)
        .with("existingState", existing)
    }

    pub(crate) fn duplicate_name(name: &str, kind: &str, id: &str) -> Self {
        let mut f = Self::new(
            "DuplicateName",
            format!("The name '{name}' already exists."),
        )
        .with("name", name);
        let _ = write!(
            f.fields,
            "<object type=\"{}\">{}</object>",
            esc(kind),
            esc(id)
        );
        f
    }

    pub(crate) fn already_exists(name: &str) -> Self {
        Self::new(
            "AlreadyExists",
            format!("The specified key, name, or identifier '{name}' already exists."),
        )
        .with("name", name)
    }

    pub(crate) fn not_found(message: &str) -> Self {
        Self::new("NotFound", message)
    }

    pub(crate) fn file_fault(file: &str, message: &str) -> Self {
        Self::new("FileFault", message).with("file", file)
    }

    pub(crate) fn file_not_found(file: &str) -> Self {
        Self::new("FileNotFound", format!("File {file} was not found")).with("file", file)
    }

    pub(crate) fn file_already_exists(file: &str) -> Self {
        Self::new("FileAlreadyExists", format!("File {file} already exists")).with("file", file)
    }

    pub(crate) fn invalid_datastore(name: &str) -> Self {
        Self::new("InvalidDatastore", format!("Invalid datastore {name}")).with("name", name)
    }

    pub(crate) fn method_disabled(source: &str) -> Self {
        Self::new(
            "MethodDisabled",
            format!("The method is disabled by '{source}'"),
        )
        .with("source", source)
    }

    pub(crate) fn method_already_disabled(source: &str) -> Self {
        Self::new(
            "MethodAlreadyDisabledFault",
            format!("The method is already disabled by '{source}'"),
        )
        .with("sourceId", source)
    }

    /// `TaskInProgress`: another task holds the object (a vMotion, another product's
    /// snapshot operation); `task` names it.
    pub(crate) fn task_in_progress(task: &str) -> Self {
        let mut f = Self::new(
            "TaskInProgress",
            "The operation is not allowed in the current state because another task is in progress.",
        );
        let _ = write!(f.fields, "<task type=\"Task\">{}</task>", esc(task));
        f
    }

    pub(crate) fn system_error(reason: &str) -> Self {
        Self::new(
            "SystemError",
            format!("A general system error occurred: {reason}"),
        )
        .with("reason", reason)
    }

    /// A lab error as the fault vCenter would give for it.
    pub(crate) fn from_lab(err: &LabError) -> Self {
        match err {
            LabError::VmNotFound(vm) => Self::not_found_object("VirtualMachine", &vm.0),
            LabError::SnapshotNotFound { snapshot, .. } => {
                Self::not_found_object("VirtualMachineSnapshot", &snapshot.0)
            }
            LabError::DiskNotFound { vm, disk } => {
                Self::not_found(&format!("device {disk} not found on {vm}"))
            }
            LabError::VmxNotFound(p) => Self::not_found(&format!("File {p} was not found")),
            LabError::AlreadyRegistered { vmx, .. } => Self::already_exists(&vmx.to_string()),
            LabError::Datastore { source, .. } => Self::from_datastore(source, err),
            LabError::UnitInUse { .. } => Self::new("InvalidDeviceSpec", chain(err)),
            LabError::DiskInUse { .. } => Self::new("FileLocked", chain(err)),
            other => Self::system_error(&chain(other)),
        }
    }

    fn from_datastore(source: &DatastoreError, err: &LabError) -> Self {
        match source {
            DatastoreError::InvalidChangeId { change_id } => {
                Self::file_fault(change_id, &chain(err))
            }
            DatastoreError::ChangeTrackingDisabled { disk }
            | DatastoreError::ChangeIdMismatch { disk, .. }
            | DatastoreError::ChangeIdFromFuture { disk, .. } => {
                Self::file_fault(disk, &chain(err))
            }
            DatastoreError::AlreadyExists { path } => {
                Self::file_already_exists(&path.display().to_string())
            }
            DatastoreError::NotFound { path } => Self::file_not_found(&path.display().to_string()),
            DatastoreError::Frozen { .. } | DatastoreError::Busy { .. } => {
                Self::new("FileLocked", chain(err))
            }
            _ => Self::system_error(&chain(err)),
        }
    }

    /// The `<soapenv:Fault>` element.
    pub(crate) fn soap(&self) -> String {
        format!(
            concat!(
                "<soapenv:Fault><faultcode>ServerFaultCode</faultcode>",
                "<faultstring>{msg}</faultstring><detail>",
                "<{k}Fault xmlns=\"urn:vim25\" xsi:type=\"{k}\">{f}</{k}Fault>",
                "</detail></soapenv:Fault>"
            ),
            msg = esc(&self.message),
            k = self.kind,
            f = self.fields
        )
    }

    /// The fields of a `LocalizedMethodFault` {fault, localizedMessage}.
    pub(crate) fn localized_fields(&self) -> String {
        format!(
            "<fault xsi:type=\"{k}\">{f}</fault><localizedMessage>{m}</localizedMessage>",
            k = self.kind,
            f = self.fields,
            m = esc(&self.message)
        )
    }
}

fn chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut src = err.source();
    while let Some(e) = src {
        let _ = write!(s, ": {e}");
        src = e.source();
    }
    s
}
