//! The control plane goes through the lab's vCenter over HTTPS: ConnectEx logs in (the
//! server's InvalidLogin is AUTHENTICATION_FAIL, an unknown session cookie is rejected),
//! PrepareForAccess/EndAccess change the server's `disabledMethod` with the identity as
//! source, and with the server stopped ConnectEx fails with a connection error.

// These tests dlopen the simulator and call its C ABI, which is unsafe by nature.
#![allow(unsafe_code, clippy::undocumented_unsafe_blocks)]

mod common;

#[cfg(test)]
mod tests {
    use std::ffi::CString;

    use lab::vmstate::{DisabledMethod, RELOCATE_METHOD};
    use vadp_tests::SimVariant;
    use vddk_sys::*;

    use super::common::*;

    #[test]
    fn control_plane_goes_through_the_vcenter() {
        let mut fx = Fixture::with_vcenter("", false);
        let thumbprint = fx.vcenter.thumbprint().expect("https").to_owned();
        assert_eq!(fx.settings.thumbprint, thumbprint);
        assert!(
            fx.settings
                .vcenter_url
                .as_deref()
                .unwrap()
                .starts_with("https://")
        );
        let (lib, _) = load(SimVariant::Vddk8);
        assert_eq!(init(&lib, &fx.config), 0);
        let vm = fx.snapped.clone();
        let mut p = Params::for_vm(&fx.settings, &vm);
        // Real VDDK's form: the host in serverName, the port in `port`.
        p.server = Some(CString::new(fx.vcenter.host()).unwrap());
        let port = u32::from(fx.vcenter.port());
        let with_port = |p: &Params| {
            let mut raw = p.raw();
            raw.port = port;
            raw
        };
        let connect_raw = |raw: &VixDiskLibConnectParams| {
            let mut conn: VixDiskLibConnection = std::ptr::null_mut();
            let err = unsafe {
                lib.VixDiskLib_ConnectEx(raw, 1, std::ptr::null(), std::ptr::null(), &mut conn)
            };
            if err == 0 { Ok(conn) } else { Err(err) }
        };

        // Over TLS, with the disk readable when the caller's thumbprint is right.
        let conn = connect_raw(&with_port(&p)).expect("connect over https");
        let h = open(
            &lib,
            conn,
            &fx.disk_path(&vm, 0),
            VIXDISKLIB_FLAG_OPEN_READ_ONLY,
        )
        .expect("open with the right thumbprint");
        assert_eq!(close(&lib, h), 0);
        assert_eq!(unsafe { lib.VixDiskLib_Disconnect(conn) }, 0);

        // PrepareForAccess/EndAccess change the server's state, tagged with the identity.
        let server_lab = fx.vcenter.running().vcenter.lab().clone();
        let raw = with_port(&p);
        let identity = CString::new("vadp-agent routing").unwrap();
        assert_eq!(
            unsafe { lib.VixDiskLib_PrepareForAccess(&raw, identity.as_ptr()) },
            0
        );
        assert_eq!(
            server_lab.disabled_methods(&vm).unwrap(),
            vec![DisabledMethod {
                method: RELOCATE_METHOD.into(),
                source: "vadp-agent routing".into(),
            }]
        );
        // Another source: vCenter's MethodAlreadyDisabledFault is VIX_E_FAIL with its text.
        let other = CString::new("someone else").unwrap();
        let err = unsafe { lib.VixDiskLib_PrepareForAccess(&raw, other.as_ptr()) };
        assert_eq!(code(err), VIX_E_FAIL);
        assert!(
            error_text(&lib, err).contains("MethodAlreadyDisabledFault"),
            "{}",
            error_text(&lib, err)
        );
        assert_eq!(
            unsafe { lib.VixDiskLib_EndAccess(&raw, identity.as_ptr()) },
            0
        );
        assert!(server_lab.disabled_methods(&vm).unwrap().is_empty());

        // Credentials are the server's to check.
        let mut bad = Params::for_vm(&fx.settings, &vm);
        bad.password = Some(CString::new("wrong").unwrap());
        let err = connect_raw(&bad.raw()).unwrap_err();
        assert_eq!(code(err), VIX_E_AUTHENTICATION_FAIL);
        assert!(error_text(&lib, err).contains("InvalidLogin"));
        let mut cookie = Params::for_vm(&fx.settings, &vm);
        cookie.cookie = Some(CString::new("vmware_soap_session=\"bogus\"").unwrap());
        let err = connect_raw(&cookie.raw()).unwrap_err();
        assert_eq!(code(err), VIX_E_AUTHENTICATION_FAIL);
        cookie.cookie = Some(CString::new(fx.vcenter.session_cookie().unwrap()).unwrap());
        let conn = connect_raw(&cookie.raw()).expect("a live session's cookie");
        assert_eq!(unsafe { lib.VixDiskLib_Disconnect(conn) }, 0);

        // No server: a connection error, for ConnectEx and PrepareForAccess alike.
        fx.vcenter.stop();
        let err = connect_raw(&with_port(&p)).unwrap_err();
        assert_eq!(
            code(err),
            VIX_E_HOST_NETWORK_CONN_REFUSED,
            "{}",
            error_text(&lib, err)
        );
        let err = unsafe { lib.VixDiskLib_PrepareForAccess(&raw, identity.as_ptr()) };
        assert_eq!(code(err), VIX_E_HOST_NETWORK_CONN_REFUSED);
        unsafe { lib.VixDiskLib_Exit() };
    }
}
