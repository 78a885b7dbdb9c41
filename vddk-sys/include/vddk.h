/*
 * vddk.h — the subset of VMware's VDDK (libvixDiskLib) C ABI that vadp-agent uses.
 *
 * Written by the vadp-agent authors from public facts about the ABI (see
 * ../shared/reference/VDDK.md and vddk-sys/FUNCTIONS.md); it is not VMware's
 * vixDiskLib.h, which is not ours to redistribute. Layouts are for x86_64 LP64 and are
 * checked by the layout tests bindgen emits (vddk-sys/src/bindings.rs).
 *
 * bindgen turns this header into vddk-sys/src/bindings.rs (scripts/gen-bindings). The
 * library is loaded at run time with libloading; nothing links against it at build time.
 */
#ifndef VADP_VDDK_H
#define VADP_VDDK_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* ---- Scalar types (vm_basic_types.h) ------------------------------------------------ */

typedef uint64_t VixError;
/* VDDK's Bool is a char: one byte, 0 = FALSE, anything else = TRUE. */
typedef char Bool;
typedef uint64_t VixDiskLibSectorType;

/* ---- Constants ------------------------------------------------------------------------ */

#define VIXDISKLIB_SECTOR_SIZE 512

#define VIXDISKLIB_FLAG_OPEN_UNBUFFERED 1
#define VIXDISKLIB_FLAG_OPEN_SINGLE_LINK 2
#define VIXDISKLIB_FLAG_OPEN_READ_ONLY 4
#define VIXDISKLIB_FLAG_OPEN_COMPRESSION_ZLIB 16
#define VIXDISKLIB_FLAG_OPEN_COMPRESSION_FASTLZ 32
#define VIXDISKLIB_FLAG_OPEN_COMPRESSION_SKIPZ 64

/* QueryAllocatedBlocks: smallest chunk (sectors) and most chunks per call. */
#define VIXDISKLIB_MIN_CHUNK_SIZE 128
#define VIXDISKLIB_MAX_CHUNK_NUMBER 524288

/* VixError: the error number is the low 16 bits; compare on VIX_ERROR_CODE(e). */
#define VIX_ERROR_CODE_MASK 0xFFFF

#define VIX_OK 0
#define VIX_E_FAIL 1
#define VIX_E_OUT_OF_MEMORY 2
#define VIX_E_INVALID_ARG 3
#define VIX_E_FILE_NOT_FOUND 4
#define VIX_E_NOT_SUPPORTED 6
#define VIX_E_CANCELLED 10
#define VIX_E_FILE_READ_ONLY 11
#define VIX_E_FILE_ACCESS_ERROR 13
#define VIX_E_FILE_ALREADY_LOCKED 15
#define VIX_E_BUFFER_TOOSMALL 24
#define VIX_E_OBJECT_NOT_FOUND 25
#define VIX_E_HOST_NOT_CONNECTED 26
#define VIX_E_AUTHENTICATION_FAIL 35
#define VIX_E_HOST_CONNECTION_LOST 36
#define VIX_E_INVALID_HANDLE 1000
#define VIX_E_VM_NOT_FOUND 4000
#define VIX_E_SNAPSHOT_NOTFOUND 13003
#define VIX_E_HOST_SERVER_NOT_FOUND 14008
#define VIX_E_HOST_NETWORK_CONN_REFUSED 14009
#define VIX_E_HOST_TCP_CONN_LOST 14011
#define VIX_E_DISK_INVAL 16000
#define VIX_E_DISK_NOINIT 16001
#define VIX_E_DISK_OUTOFRANGE 16007
#define VIX_E_DISK_KEY_NOTFOUND 16052
#define VIX_E_DISK_INVALID_CONNECTION 16054
#define VIX_E_CANNOT_CONNECT_TO_HOST 18000
/* Not an error: an asynchronous request was queued. */
#define VIX_ASYNC 25000
#define VIX_E_ASYNC_MIXEDMODE_UNSUPPORTED 26000
#define VIX_E_NET_HTTP_SSL_SECURITY 30035

/* ---- Enumerations (C int, 4 bytes) ---------------------------------------------------- */

typedef enum VixDiskLibDiskType {
  VIXDISKLIB_DISK_MONOLITHIC_SPARSE = 1,
  VIXDISKLIB_DISK_MONOLITHIC_FLAT = 2,
  VIXDISKLIB_DISK_SPLIT_SPARSE = 3,
  VIXDISKLIB_DISK_SPLIT_FLAT = 4,
  VIXDISKLIB_DISK_VMFS_FLAT = 5,
  VIXDISKLIB_DISK_STREAM_OPTIMIZED = 6,
  VIXDISKLIB_DISK_VMFS_THIN = 7,
  VIXDISKLIB_DISK_VMFS_SPARSE = 8,
  VIXDISKLIB_DISK_UNKNOWN = 256
} VixDiskLibDiskType;

typedef enum VixDiskLibAdapterType {
  VIXDISKLIB_ADAPTER_IDE = 1,
  VIXDISKLIB_ADAPTER_SCSI_BUSLOGIC = 2,
  VIXDISKLIB_ADAPTER_SCSI_LSILOGIC = 3,
  VIXDISKLIB_ADAPTER_UNKNOWN = 256
} VixDiskLibAdapterType;

typedef enum VixDiskLibCredType {
  VIXDISKLIB_CRED_UID = 1,
  VIXDISKLIB_CRED_SESSIONID = 2,
  VIXDISKLIB_CRED_TICKETID = 3,
  VIXDISKLIB_CRED_SSPI = 4,
  VIXDISKLIB_CRED_UNKNOWN = 256
} VixDiskLibCredType;

typedef enum VixDiskLibSpecType {
  VIXDISKLIB_SPEC_VMX = 0,
  VIXDISKLIB_SPEC_VSTORAGE_OBJECT = 1,
  VIXDISKLIB_SPEC_UNKNOWN = 2
} VixDiskLibSpecType;

/* ---- Opaque handles -------------------------------------------------------------------- */

typedef struct VixDiskLibHandleStruct *VixDiskLibHandle;
typedef struct VixDiskLibConnectParam *VixDiskLibConnection;
typedef struct VixDiskLibConnectParamsState VixDiskLibConnectParamsState;
typedef struct VixDiskLibTicketIdCreds VixDiskLibTicketIdCreds;

/* ---- Structures ------------------------------------------------------------------------- */

typedef struct VixDiskLibUidPasswdCreds {
  char *userName;
  char *password;
} VixDiskLibUidPasswdCreds;

typedef struct VixDiskLibSessionIdCreds {
  char *cookie;
  char *userName;
  char *key;
} VixDiskLibSessionIdCreds;

typedef union VixDiskLibCreds {
  VixDiskLibUidPasswdCreds uid;
  VixDiskLibSessionIdCreds sessionId;
  VixDiskLibTicketIdCreds *ticketId;
} VixDiskLibCreds;

/* A first-class disk (FCD) identity; unused for VM disks. */
typedef struct VixDiskLibVStorageObjectSpec {
  char *id;
  char *datastoreMoRef;
  char *ssId;
} VixDiskLibVStorageObjectSpec;

typedef union VixDiskLibConnectSpec {
  VixDiskLibVStorageObjectSpec vStorageObjSpec;
} VixDiskLibConnectSpec;

/* 128 bytes. Caller-allocated and zeroed, or from VixDiskLib_AllocateConnectParams (6.7+). */
typedef struct VixDiskLibConnectParams {
  char *vmxSpec;          /* "moref=vm-42" */
  char *serverName;       /* vCenter host name or address */
  char *thumbPrint;       /* SHA-1 of the server certificate, "AA:BB:..." */
  long privateUse;        /* ignored */
  VixDiskLibCredType credType;
  VixDiskLibCreds creds;
  uint32_t port;          /* 0 = 443 */
  uint32_t nfcHostPort;   /* 0 = 902 */
  char *vimApiVer;        /* unused */
  char reserved[8];
  VixDiskLibConnectParamsState *state;
  VixDiskLibConnectSpec spec;
  VixDiskLibSpecType specType;
} VixDiskLibConnectParams;

typedef struct VixDiskLibGeometry {
  uint32_t cylinders;
  uint32_t heads;
  uint32_t sectors;
} VixDiskLibGeometry;

/* GetInfo's result from VDDK 7.0 on: 64 bytes. */
typedef struct VixDiskLibInfo {
  VixDiskLibGeometry biosGeo;
  VixDiskLibGeometry physGeo;
  VixDiskLibSectorType capacity; /* sectors */
  VixDiskLibAdapterType adapterType;
  int numLinks;                  /* base + redo logs */
  char *parentFileNameHint;
  char *uuid;
  uint32_t logicalSectorSize;    /* 7.0+ only */
  uint32_t physicalSectorSize;   /* 7.0+ only */
} VixDiskLibInfo;

/* GetInfo's result before VDDK 7.0: 56 bytes, no sector sizes. Never read the 7.0 fields
 * from a library whose major version is below 7: they lie past the allocation. */
typedef struct VixDiskLibInfoV6 {
  VixDiskLibGeometry biosGeo;
  VixDiskLibGeometry physGeo;
  VixDiskLibSectorType capacity;
  VixDiskLibAdapterType adapterType;
  int numLinks;
  char *parentFileNameHint;
  char *uuid;
} VixDiskLibInfoV6;

/* Create parameters from VDDK 7.0 on: 32 bytes. */
typedef struct VixDiskLibCreateParams {
  VixDiskLibDiskType diskType;
  VixDiskLibAdapterType adapterType;
  uint16_t hwVersion;
  VixDiskLibSectorType capacity;
  uint32_t logicalSectorSize;
  uint32_t physicalSectorSize;
} VixDiskLibCreateParams;

/* Create parameters before VDDK 7.0: 24 bytes. */
typedef struct VixDiskLibCreateParamsV6 {
  VixDiskLibDiskType diskType;
  VixDiskLibAdapterType adapterType;
  uint16_t hwVersion;
  VixDiskLibSectorType capacity;
} VixDiskLibCreateParamsV6;

typedef struct VixDiskLibBlock {
  VixDiskLibSectorType offset; /* sectors */
  VixDiskLibSectorType length; /* sectors */
} VixDiskLibBlock;

/* Allocated by the library (flexible array), freed with VixDiskLib_FreeBlockList. */
typedef struct VixDiskLibBlockList {
  uint32_t numBlocks;
  VixDiskLibBlock blocks[1];
} VixDiskLibBlockList;

/* ---- Callbacks -------------------------------------------------------------------------- */

/* Log, warning and panic sinks; called from any VDDK thread. */
typedef void VixDiskLibGenericLogFunc(const char *fmt, va_list args);
typedef void (*VixDiskLibCompletionCB)(void *cbData, VixError result);
typedef Bool (*VixDiskLibProgressFunc)(void *progressData, int percentCompleted);

/* ---- Library lifecycle -------------------------------------------------------------------- */

VixError VixDiskLib_InitEx(uint32_t majorVersion, uint32_t minorVersion,
                           VixDiskLibGenericLogFunc *log, VixDiskLibGenericLogFunc *warn,
                           VixDiskLibGenericLogFunc *panic, const char *libDir,
                           const char *configFile);
void VixDiskLib_Exit(void);
const char *VixDiskLib_ListTransportModes(void);
char *VixDiskLib_GetErrorText(VixError err, const char *locale);
void VixDiskLib_FreeErrorText(char *errMsg);

/* ---- Connections ---------------------------------------------------------------------- */

VixDiskLibConnectParams *VixDiskLib_AllocateConnectParams(void);
void VixDiskLib_FreeConnectParams(VixDiskLibConnectParams *connectParams);
VixError VixDiskLib_ConnectEx(const VixDiskLibConnectParams *connectParams, Bool readOnly,
                              const char *snapshotRef, const char *transportModes,
                              VixDiskLibConnection *connection);
VixError VixDiskLib_Disconnect(VixDiskLibConnection connection);
VixError VixDiskLib_Cleanup(const VixDiskLibConnectParams *connectParams,
                            uint32_t *numCleanedUp, uint32_t *numRemaining);
VixError VixDiskLib_PrepareForAccess(const VixDiskLibConnectParams *connectParams,
                                     const char *identity);
VixError VixDiskLib_EndAccess(const VixDiskLibConnectParams *connectParams,
                              const char *identity);

/* ---- Disks ------------------------------------------------------------------------------ */

VixError VixDiskLib_Open(const VixDiskLibConnection connection, const char *path, uint32_t flags,
                         VixDiskLibHandle *diskHandle);
VixError VixDiskLib_Close(VixDiskLibHandle diskHandle);
const char *VixDiskLib_GetTransportMode(VixDiskLibHandle diskHandle);
VixError VixDiskLib_GetInfo(VixDiskLibHandle diskHandle, VixDiskLibInfo **info);
void VixDiskLib_FreeInfo(VixDiskLibInfo *info);
VixError VixDiskLib_Read(VixDiskLibHandle diskHandle, VixDiskLibSectorType startSector,
                         VixDiskLibSectorType numSectors, uint8_t *readBuffer);
VixError VixDiskLib_Write(VixDiskLibHandle diskHandle, VixDiskLibSectorType startSector,
                          VixDiskLibSectorType numSectors, const uint8_t *writeBuffer);
VixError VixDiskLib_ReadAsync(VixDiskLibHandle diskHandle, VixDiskLibSectorType startSector,
                              VixDiskLibSectorType numSectors, uint8_t *readBuffer,
                              VixDiskLibCompletionCB callback, void *cbData);
VixError VixDiskLib_WriteAsync(VixDiskLibHandle diskHandle, VixDiskLibSectorType startSector,
                               VixDiskLibSectorType numSectors, const uint8_t *writeBuffer,
                               VixDiskLibCompletionCB callback, void *cbData);
VixError VixDiskLib_Wait(VixDiskLibHandle diskHandle);
VixError VixDiskLib_Flush(VixDiskLibHandle diskHandle);
VixError VixDiskLib_QueryAllocatedBlocks(VixDiskLibHandle diskHandle,
                                         VixDiskLibSectorType startSector,
                                         VixDiskLibSectorType numSectors,
                                         VixDiskLibSectorType chunkSize,
                                         VixDiskLibBlockList **blockList);
VixError VixDiskLib_FreeBlockList(VixDiskLibBlockList *blockList);
VixError VixDiskLib_GetMetadataKeys(VixDiskLibHandle diskHandle, char *keysBuffer,
                                    size_t bufLen, size_t *requiredLen);
VixError VixDiskLib_ReadMetadata(VixDiskLibHandle diskHandle, const char *key, char *buf,
                                 size_t bufLen, size_t *requiredLen);
VixError VixDiskLib_WriteMetadata(VixDiskLibHandle diskHandle, const char *key,
                                  const char *val);

#endif /* VADP_VDDK_H */
