//! `libvixDiskLib.so.8`: the VDDK C ABI implemented over the lab's datastores.
