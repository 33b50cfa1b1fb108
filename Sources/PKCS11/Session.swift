import CP11Kit
import Foundation

/// A read-write PKCS#11 session on one token.
///
/// A session runs one operation at a time, so one thread uses it at a time; take
/// sessions for concurrent work from a `SessionPool`. The session closes itself
/// when released.
public final class Session: @unchecked Sendable {
    public let token: Token
    let handle: CK_SESSION_HANDLE
    /// The module generation the session belongs to; after a fork it is void.
    let generation: Int
    var module: Module { token.module }

    init(token: Token) throws {
        self.token = token
        var handle: CK_SESSION_HANDLE = 0
        let flags = CK_FLAGS(CKF_SERIAL_SESSION | CKF_RW_SESSION)
        try token.module.call("C_OpenSession", \.C_OpenSession, context: token.description) {
            $0(CK_SLOT_ID(token.slot), flags, nil, nil, &handle)
        }
        self.handle = handle
        generation = token.module.generation
    }

    deinit {
        // A session of the parent process is gone in a forked child; its handle may
        // now name another session, so it is not closed.
        guard generation == module.generation else {
            return
        }
        _ = try? module.call("C_CloseSession", \.C_CloseSession) { $0(handle) }
    }

    /// False when the module was initialised again since the session opened (after a fork).
    public var isCurrent: Bool { generation == module.generation }

    /// Logs the normal user in. A token where the user is already logged in (login
    /// state is shared by all sessions of the process) counts as success.
    public func login(pin: SecretBytes) throws {
        try login(userType: UInt(CKU_USER), pin: pin)
    }

    /// Logs the security officer in, for token administration.
    public func loginSecurityOfficer(pin: SecretBytes) throws {
        try login(userType: UInt(CKU_SO), pin: pin)
    }

    /// SoftHSM 2.6 returns `CKR_GENERAL_ERROR` when another process is writing its
    /// token folder at that moment, so such a failure is tried again twice. It is not
    /// a PIN failure, so no retry counter of the token moves.
    private func login(userType: UInt, pin: SecretBytes) throws {
        var attempt = 1
        while true {
            do {
                try loginOnce(userType: userType, pin: pin)
                return
            } catch let error as PKCS11Error where error.returnValue == UInt(CKR_GENERAL_ERROR) && attempt < 3 {
                usleep(UInt32(100_000 * attempt))
                attempt += 1
            }
        }
    }

    private func loginOnce(userType: UInt, pin: SecretBytes) throws {
        try pin.withUnsafeBytes { bytes in
            let pointer = UnsafeMutablePointer(mutating: bytes.bindMemory(to: UInt8.self).baseAddress)
            try module.call(
                "C_Login", \.C_Login, context: token.description,
                accepted: [UInt(CKR_USER_ALREADY_LOGGED_IN)]
            ) {
                $0(handle, CK_USER_TYPE(userType), pointer, CK_ULONG(bytes.count))
            }
        }
    }

    public func logout() throws {
        try module.call("C_Logout", \.C_Logout, context: token.description, accepted: [UInt(CKR_USER_NOT_LOGGED_IN)]) {
            $0(handle)
        }
    }

    /// Sets the user PIN; the security officer must be logged in.
    public func initializeUserPIN(_ pin: SecretBytes) throws {
        try pin.withUnsafeBytes { bytes in
            let pointer = UnsafeMutablePointer(mutating: bytes.bindMemory(to: UInt8.self).baseAddress)
            try module.call("C_InitPIN", \.C_InitPIN, context: token.description) {
                $0(handle, pointer, CK_ULONG(bytes.count))
            }
        }
    }

    /// Returns the handles of all objects that match `template`.
    public func findObjects(_ template: [Attribute]) throws -> [ObjectHandle] {
        try withTemplate(template) { attributes, count in
            try module.call("C_FindObjectsInit", \.C_FindObjectsInit, context: token.description) {
                $0(handle, attributes, count)
            }
        }
        defer {
            _ = try? module.call("C_FindObjectsFinal", \.C_FindObjectsFinal) { $0(handle) }
        }
        var found: [ObjectHandle] = []
        var batch = [CK_OBJECT_HANDLE](repeating: 0, count: 64)
        while true {
            var count: CK_ULONG = 0
            try module.call("C_FindObjects", \.C_FindObjects, context: token.description) {
                $0(handle, &batch, CK_ULONG(batch.count), &count)
            }
            if count == 0 {
                break
            }
            found += batch.prefix(Int(count)).map { ObjectHandle(UInt($0)) }
        }
        return found
    }

    /// Creates an object and returns its handle.
    public func createObject(_ template: [Attribute]) throws -> ObjectHandle {
        var object: CK_OBJECT_HANDLE = 0
        try withTemplate(template) { attributes, count in
            try module.call("C_CreateObject", \.C_CreateObject, context: token.description) {
                $0(handle, attributes, count, &object)
            }
        }
        return ObjectHandle(UInt(object))
    }

    public func destroyObject(_ object: ObjectHandle) throws {
        try module.call("C_DestroyObject", \.C_DestroyObject, context: "object \(object.rawValue) on \(token)") {
            $0(handle, CK_OBJECT_HANDLE(object.rawValue))
        }
    }

    /// Changes attributes of an object with `C_SetAttributeValue`.
    public func setAttributes(_ object: ObjectHandle, _ template: [Attribute]) throws {
        try withTemplate(template) { attributes, count in
            try module.call("C_SetAttributeValue", \.C_SetAttributeValue, context: "object \(object.rawValue) on \(token)") {
                $0(handle, CK_OBJECT_HANDLE(object.rawValue), attributes, count)
            }
        }
    }

    /// Copies an object with `C_CopyObject`, changing the attributes in `template`.
    public func copyObject(_ object: ObjectHandle, _ template: [Attribute]) throws -> ObjectHandle {
        var copy: CK_OBJECT_HANDLE = 0
        try withTemplate(template) { attributes, count in
            try module.call("C_CopyObject", \.C_CopyObject, context: "object \(object.rawValue) on \(token)") {
                $0(handle, CK_OBJECT_HANDLE(object.rawValue), attributes, count, &copy)
            }
        }
        return ObjectHandle(UInt(copy))
    }

    /// Reads attributes of an object.
    ///
    /// An attribute that the object lacks (`CKR_ATTRIBUTE_TYPE_INVALID`) or refuses to
    /// reveal (`CKR_ATTRIBUTE_SENSITIVE`) comes back as `nil`; other failures throw.
    public func attributes(_ object: ObjectHandle, _ types: [UInt]) throws -> [UInt: [UInt8]] {
        let context = "object \(object.rawValue) on \(token)"
        let tolerated: Set<UInt> = [UInt(CKR_ATTRIBUTE_SENSITIVE), UInt(CKR_ATTRIBUTE_TYPE_INVALID)]
        var template = types.map { CK_ATTRIBUTE(type: CK_ATTRIBUTE_TYPE($0), pValue: nil, ulValueLen: 0) }
        try module.call("C_GetAttributeValue", \.C_GetAttributeValue, context: context, accepted: tolerated) {
            $0(handle, CK_OBJECT_HANDLE(object.rawValue), &template, CK_ULONG(template.count))
        }
        let unavailable = CK_ULONG(bitPattern: -1)
        let buffers: [UnsafeMutableRawPointer?] = template.map { attribute in
            attribute.ulValueLen == unavailable
                ? nil : UnsafeMutableRawPointer.allocate(byteCount: max(Int(attribute.ulValueLen), 1), alignment: 8)
        }
        defer {
            for (index, buffer) in buffers.enumerated() {
                guard let buffer else { continue }
                SecretBytes.clear(UnsafeMutableRawBufferPointer(start: buffer, count: max(Int(template[index].ulValueLen), 0)))
                buffer.deallocate()
            }
        }
        var readable: [Int] = []
        for index in template.indices where buffers[index] != nil {
            readable.append(index)
        }
        var second = readable.map { template[$0] }
        for (position, index) in readable.enumerated() {
            second[position].pValue = buffers[index]
        }
        if !second.isEmpty {
            try module.call("C_GetAttributeValue", \.C_GetAttributeValue, context: context, accepted: tolerated) {
                $0(handle, CK_OBJECT_HANDLE(object.rawValue), &second, CK_ULONG(second.count))
            }
        }
        var result: [UInt: [UInt8]] = [:]
        for (position, index) in readable.enumerated() {
            let attribute = second[position]
            guard attribute.ulValueLen != unavailable, let buffer = buffers[index] else { continue }
            let length = Int(attribute.ulValueLen)
            result[UInt(attribute.type)] = Array(UnsafeRawBufferPointer(start: buffer, count: length))
        }
        return result
    }

    /// Calls `C_GetAttributeValue` for one attribute and returns the raw return value,
    /// without treating failures as errors. Meant for checks that an attribute is refused.
    public func attributeReturnValue(_ object: ObjectHandle, _ type: UInt) -> UInt {
        var attribute = CK_ATTRIBUTE(type: CK_ATTRIBUTE_TYPE(type), pValue: nil, ulValueLen: 0)
        guard let function = module.functions.pointee.C_GetAttributeValue else {
            return UInt(CKR_FUNCTION_NOT_SUPPORTED)
        }
        return UInt(function(handle, CK_OBJECT_HANDLE(object.rawValue), &attribute, 1))
    }

    /// Signs `data` with `key` in one `C_SignInit`/`C_Sign` pair.
    ///
    /// `data` is what the mechanism expects: a digest for `CKM_RSA_PKCS_PSS` and
    /// `CKM_ECDSA`, a DigestInfo for `CKM_RSA_PKCS`.
    public func sign(_ mechanism: Mechanism, key: ObjectHandle, data: [UInt8]) throws -> [UInt8] {
        let context = "key object \(key.rawValue) on \(token)"
        try mechanism.withUnsafeMechanism { pointer in
            try module.call("C_SignInit", \.C_SignInit, context: context, traceDetail: mechanism.name) {
                $0(handle, pointer, CK_OBJECT_HANDLE(key.rawValue))
            }
        }
        var input = data
        var length: CK_ULONG = 0
        try module.call("C_Sign", \.C_Sign, context: context) { $0(handle, &input, CK_ULONG(input.count), nil, &length) }
        var signature = [UInt8](repeating: 0, count: Int(length))
        try module.call("C_Sign", \.C_Sign, context: context) {
            $0(handle, &input, CK_ULONG(input.count), &signature, &length)
        }
        return Array(signature.prefix(Int(length)))
    }

    /// Generates a key pair, for tests and key creation in place.
    public func generateKeyPair(_ mechanism: Mechanism, publicTemplate: [Attribute], privateTemplate: [Attribute]) throws -> (
        publicKey: ObjectHandle, privateKey: ObjectHandle
    ) {
        var publicKey: CK_OBJECT_HANDLE = 0
        var privateKey: CK_OBJECT_HANDLE = 0
        try mechanism.withUnsafeMechanism { pointer in
            try withTemplate(publicTemplate) { publicAttributes, publicCount in
                try withTemplate(privateTemplate) { privateAttributes, privateCount in
                    try module.call("C_GenerateKeyPair", \.C_GenerateKeyPair, context: token.description) {
                        $0(
                            handle, pointer, publicAttributes, publicCount, privateAttributes, privateCount, &publicKey,
                            &privateKey)
                    }
                }
            }
        }
        return (ObjectHandle(UInt(publicKey)), ObjectHandle(UInt(privateKey)))
    }

    /// Generates a secret key.
    public func generateKey(_ mechanism: Mechanism, template: [Attribute]) throws -> ObjectHandle {
        var key: CK_OBJECT_HANDLE = 0
        try mechanism.withUnsafeMechanism { pointer in
            try withTemplate(template) { attributes, count in
                try module.call("C_GenerateKey", \.C_GenerateKey, context: token.description) {
                    $0(handle, pointer, attributes, count, &key)
                }
            }
        }
        return ObjectHandle(UInt(key))
    }

    /// Wraps (encrypts) `key` under `wrappingKey` and returns the wrapped bytes.
    public func wrapKey(_ mechanism: Mechanism, wrappingKey: ObjectHandle, key: ObjectHandle) throws -> [UInt8] {
        let context = "key object \(key.rawValue) on \(token)"
        var length: CK_ULONG = 0
        try mechanism.withUnsafeMechanism { pointer in
            try module.call("C_WrapKey", \.C_WrapKey, context: context) {
                $0(handle, pointer, CK_OBJECT_HANDLE(wrappingKey.rawValue), CK_OBJECT_HANDLE(key.rawValue), nil, &length)
            }
        }
        var wrapped = [UInt8](repeating: 0, count: Int(length))
        try mechanism.withUnsafeMechanism { pointer in
            try module.call("C_WrapKey", \.C_WrapKey, context: context) {
                $0(handle, pointer, CK_OBJECT_HANDLE(wrappingKey.rawValue), CK_OBJECT_HANDLE(key.rawValue), &wrapped, &length)
            }
        }
        return Array(wrapped.prefix(Int(length)))
    }
}

/// An object handle, valid within the session or token that produced it.
public struct ObjectHandle: Sendable, Hashable {
    public let rawValue: UInt
    public init(_ rawValue: UInt) { self.rawValue = rawValue }
}
