import CP11Kit
import Foundation
import Synchronization

/// A loaded and initialised PKCS#11 module.
///
/// A module is loaded once per process and path, through p11-kit's loader, and
/// initialised with `CKF_OS_LOCKING_OK` so that several threads may call it.
/// It stays loaded until `finalize()`; every `Session` holds a reference to it.
public final class Module: @unchecked Sendable {
    // The function list is immutable after loading and the module was initialised with
    // CKF_OS_LOCKING_OK, so PKCS#11 allows sharing it between threads.
    let functions: UnsafeMutablePointer<CK_FUNCTION_LIST>
    public let path: String
    /// False when another component of the process had already initialised the module;
    /// then `finalize()` leaves it initialised.
    private let ownsInitialization: Bool
    private let finalized = Atomic<Bool>(false)
    /// The process that initialised the module; a different `getpid()` means this is a
    /// child after `fork()`, where PKCS#11 requires a new `C_Initialize`.
    private let initializedProcess: Atomic<Int32>
    private let generationCounter = Atomic<Int>(0)
    private let forkRecovery = Mutex(())

    private static let loaded = Mutex<[String: Module]>([:])

    /// The module that Debian's softhsm2 package installs.
    public static let defaultPath = "/usr/lib/softhsm/libsofthsm2.so"

    /// Returns the module at `path`, loading and initialising it on first use.
    public static func load(path: String) throws -> Module {
        try loaded.withLock { modules in
            if let module = modules[path], !module.finalized.load(ordering: .acquiring) {
                return module
            }
            let module = try Module(path: path)
            modules[path] = module
            return module
        }
    }

    /// Finalises every module this process loaded. Call it before the process exits,
    /// because a module that uses OpenSSL itself (SoftHSM does) can crash in OpenSSL's
    /// exit-time cleanup when it is still initialised.
    public static func finalizeAll() {
        let modules = loaded.withLock { modules in
            let all = Array(modules.values)
            modules.removeAll()
            return all
        }
        for module in modules {
            module.finalize()
        }
    }

    private init(path: String) throws {
        self.path = path
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), !isDirectory.boolValue else {
            throw PKCS11Error(
                kind: .moduleLoad,
                context: "PKCS#11 module \(path) not found: set --module or TOKENTLS_MODULE to the path of a module file")
        }
        guard let list = p11_kit_module_load(path, Int32(P11_KIT_MODULE_UNMANAGED)) else {
            let reason = p11_kit_message().map { String(cString: $0) } ?? "unknown reason"
            throw PKCS11Error(
                kind: .moduleLoad,
                context:
                    "\(path) is not a loadable PKCS#11 module (\(reason)): set --module or TOKENTLS_MODULE to a PKCS#11 module")
        }
        functions = list

        var arguments = CK_C_INITIALIZE_ARGS()
        arguments.flags = CK_FLAGS(CKF_OS_LOCKING_OK)
        guard let initialize = list.pointee.C_Initialize else {
            p11_kit_module_release(list)
            throw PKCS11Error(kind: .moduleLoad, context: "\(path) has no C_Initialize: it is not a PKCS#11 module")
        }
        initializedProcess = Atomic(getpid())
        let rv = withUnsafeMutablePointer(to: &arguments) { initialize(UnsafeMutableRawPointer($0)) }
        Trace.call("C_Initialize", rv)
        switch UInt(rv) {
        case UInt(CKR_OK):
            ownsInitialization = true
        case UInt(CKR_CRYPTOKI_ALREADY_INITIALIZED):
            ownsInitialization = false
        default:
            p11_kit_module_release(list)
            throw PKCS11Error.call("C_Initialize", UInt(rv), context: "module \(path)")
        }
    }

    /// Calls `C_Finalize` (when this process initialised the module) and unloads it.
    /// Sessions and keys of this module must not be used afterwards.
    public func finalize() {
        guard !finalized.exchange(true, ordering: .acquiringAndReleasing) else {
            return
        }
        if ownsInitialization, let finalizeFunction = functions.pointee.C_Finalize {
            let rv = finalizeFunction(nil)
            Trace.call("C_Finalize", rv)
        }
        p11_kit_module_release(functions)
    }

    /// Calls one function of the module's function list and checks its return value.
    ///
    /// - Parameters:
    ///   - name: the `C_` function name, used in errors and in the trace.
    ///   - function: the function pointer's place in `CK_FUNCTION_LIST`.
    ///   - context: the token or object involved, for the error message.
    ///   - accepted: return values other than `CKR_OK` that count as success.
    /// - Returns: the return value, which is `CKR_OK` or one of `accepted`.
    @discardableResult
    func call<Function>(
        _ name: String,
        _ function: KeyPath<CK_FUNCTION_LIST, Function?>,
        context: @autoclosure () -> String = "",
        traceDetail: String = "",
        accepted: Set<UInt> = [],
        _ body: (Function) -> CK_RV
    ) throws -> UInt {
        guard !finalized.load(ordering: .acquiring) else {
            throw PKCS11Error.call(name, UInt(CKR_CRYPTOKI_NOT_INITIALIZED), context: "module \(path) was finalised")
        }
        try initializeIfForked()
        guard let pointer = functions.pointee[keyPath: function] else {
            throw PKCS11Error.call(name, UInt(CKR_FUNCTION_NOT_SUPPORTED), context: "module \(path) does not provide \(name)")
        }
        let rv = UInt(body(pointer))
        Trace.call(name, CK_RV(rv), detail: traceDetail)
        if rv != UInt(CKR_OK) && !accepted.contains(rv) {
            throw PKCS11Error.call(name, rv, context: context())
        }
        return rv
    }

    /// Initialises the module again when this is a child process after `fork()`.
    /// Every `C_` call through the module does this first.
    public func initializeIfForked() throws {
        if initializedProcess.load(ordering: .acquiring) != getpid() {
            try initializeAfterFork()
        }
    }

    /// Counts the initialisations of the module in this process; it changes in a child
    /// after `fork()`, when every session and object handle of the parent is void.
    public var generation: Int { generationCounter.load(ordering: .acquiring) }

    /// Initialises the module again in a child process. A module that kept its state
    /// across the fork (SoftHSM does unless `library.reset_on_fork` is set) reports
    /// `CKR_CRYPTOKI_ALREADY_INITIALIZED`, so it is finalised first to drop the
    /// parent's sessions.
    ///
    /// NOTE: a lock that another parent thread held at the moment of `fork()` stays
    /// locked in the child; fork while no other thread uses TokenTLS.
    private func initializeAfterFork() throws {
        try forkRecovery.withLock { _ in
            guard initializedProcess.load(ordering: .acquiring) != getpid() else {
                return
            }
            guard let initialize = functions.pointee.C_Initialize else {
                throw PKCS11Error.call("C_Initialize", UInt(CKR_FUNCTION_NOT_SUPPORTED), context: "module \(path)")
            }
            var arguments = CK_C_INITIALIZE_ARGS()
            arguments.flags = CK_FLAGS(CKF_OS_LOCKING_OK)
            var rv = withUnsafeMutablePointer(to: &arguments) { initialize(UnsafeMutableRawPointer($0)) }
            Trace.call("C_Initialize", rv, detail: "after fork")
            if UInt(rv) == UInt(CKR_CRYPTOKI_ALREADY_INITIALIZED), let finalizeFunction = functions.pointee.C_Finalize {
                Trace.call("C_Finalize", finalizeFunction(nil), detail: "after fork")
                rv = withUnsafeMutablePointer(to: &arguments) { initialize(UnsafeMutableRawPointer($0)) }
                Trace.call("C_Initialize", rv, detail: "after fork")
            }
            guard UInt(rv) == UInt(CKR_OK) else {
                throw PKCS11Error.call("C_Initialize", UInt(rv), context: "module \(path) in a child process after fork")
            }
            generationCounter.add(1, ordering: .acquiringAndReleasing)
            initializedProcess.store(getpid(), ordering: .releasing)
        }
    }

    /// The module's description from `C_GetInfo`: manufacturer, library description and version.
    public func info() throws -> ModuleInfo {
        var info = CK_INFO()
        try call("C_GetInfo", \.C_GetInfo, context: "module \(path)") { $0(&info) }
        return ModuleInfo(
            manufacturer: paddedString(info.manufacturerID),
            description: paddedString(info.libraryDescription),
            version: "\(info.libraryVersion.major).\(info.libraryVersion.minor)")
    }

    /// Returns the slots that currently contain a token.
    public func slotsWithToken() throws -> [UInt] {
        var count: CK_ULONG = 0
        try call("C_GetSlotList", \.C_GetSlotList, context: "module \(path)") { $0(1, nil, &count) }
        var slots = [CK_SLOT_ID](repeating: 0, count: Int(count))
        try call("C_GetSlotList", \.C_GetSlotList, context: "module \(path)") { $0(1, &slots, &count) }
        return slots.prefix(Int(count)).map { UInt($0) }
    }

    /// Describes the token in `slot`.
    public func token(inSlot slot: UInt) throws -> Token {
        var info = CK_TOKEN_INFO()
        try call("C_GetTokenInfo", \.C_GetTokenInfo, context: "slot \(slot)") { $0(CK_SLOT_ID(slot), &info) }
        return Token(module: self, slot: slot, info: info)
    }

    /// Every token the module presents, initialised or not.
    ///
    /// A slot whose token cannot be described after three tries is left out, because
    /// SoftHSM returns `CKR_GENERAL_ERROR` for a token that another process is initialising.
    public func tokens() throws -> [Token] {
        var tokens: [Token] = []
        for slot in try slotsWithToken() {
            for attempt in 1...3 {
                do {
                    tokens.append(try token(inSlot: slot))
                    break
                } catch let error as PKCS11Error where error.returnValue != UInt(CKR_CRYPTOKI_NOT_INITIALIZED) {
                    if attempt < 3 {
                        usleep(20_000)
                    }
                }
            }
        }
        return tokens
    }

    /// Returns the mechanisms that the token in `slot` supports.
    public func mechanisms(inSlot slot: UInt) throws -> Set<UInt> {
        var count: CK_ULONG = 0
        try call("C_GetMechanismList", \.C_GetMechanismList, context: "slot \(slot)") {
            $0(CK_SLOT_ID(slot), nil, &count)
        }
        var list = [CK_MECHANISM_TYPE](repeating: 0, count: Int(count))
        try call("C_GetMechanismList", \.C_GetMechanismList, context: "slot \(slot)") {
            $0(CK_SLOT_ID(slot), &list, &count)
        }
        return Set(list.prefix(Int(count)).map { UInt($0) })
    }
}

/// The module's identification from `C_GetInfo`.
public struct ModuleInfo: Sendable {
    public let manufacturer: String
    public let description: String
    public let version: String
}

/// Returns the text of a blank-padded PKCS#11 character field, without the padding.
func paddedString<T>(_ field: T) -> String {
    withUnsafeBytes(of: field) { bytes in
        var data = Array(bytes)
        while let last = data.last, last == 0x20 || last == 0 {
            data.removeLast()
        }
        return String(decoding: data, as: UTF8.self)
    }
}

extension Module {
    /// Initialises the token in `slot` with `label` (at most 32 bytes of UTF-8) and the
    /// security officer PIN, then sets the user PIN. Returns the token as it is found
    /// afterwards, by label, because some modules move it to another slot id.
    public func initializeToken(inSlot slot: UInt, label: String, securityOfficerPIN: SecretBytes, userPIN: SecretBytes) throws
        -> Token
    {
        let labelBytes = Array(label.utf8)
        guard !labelBytes.isEmpty, labelBytes.count <= 32 else {
            throw PKCS11Error(
                kind: .invalidLabel,
                context:
                    "invalid token label \"\(label)\": it must be 1 to 32 bytes of UTF-8 text, and it has \(labelBytes.count)")
        }
        guard labelBytes.last != 0x20, labelBytes.first != 0x20 else {
            // PKCS#11 pads the 32-byte label field with blanks, so blanks at the end
            // cannot be distinguished from padding, and leading ones are easy to mistype.
            throw PKCS11Error(
                kind: .invalidLabel,
                context:
                    "invalid token label \"\(label)\": it starts or ends with a blank, which the token cannot store faithfully; remove the blanks"
            )
        }
        let slotToken = try token(inSlot: slot)
        for (name, pin) in [("security officer PIN", securityOfficerPIN), ("user PIN", userPIN)] {
            guard pin.count >= slotToken.minimumPINLength, pin.count <= slotToken.maximumPINLength else {
                throw PKCS11Error(
                    kind: .invalidPIN,
                    context:
                        "invalid \(name): it has \(pin.count) bytes, and the token accepts \(slotToken.minimumPINLength) to \(slotToken.maximumPINLength)"
                )
            }
        }
        var padded = [UInt8](repeating: 0x20, count: 32)
        padded.replaceSubrange(0..<labelBytes.count, with: labelBytes)
        try securityOfficerPIN.withUnsafeBytes { pin in
            let pointer = UnsafeMutablePointer(mutating: pin.bindMemory(to: UInt8.self).baseAddress)
            try call("C_InitToken", \.C_InitToken, context: "slot \(slot)") {
                $0(CK_SLOT_ID(slot), pointer, CK_ULONG(pin.count), &padded)
            }
        }
        let token = try findToken(TokenSelector(label: label))
        let session = try token.openSession()
        try session.loginSecurityOfficer(pin: securityOfficerPIN)
        try session.initializeUserPIN(userPIN)
        try session.logout()
        return try findToken(TokenSelector(label: label))
    }
}
