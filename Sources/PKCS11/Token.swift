import CP11Kit
import Foundation

/// A token as `C_GetTokenInfo` describes it, with the slot it was found in.
///
/// The slot id is valid only while the module stays loaded: SoftHSM, for one,
/// moves a token to a new slot id when it is initialised. Never store it.
public struct Token: Sendable, CustomStringConvertible {
    public let module: Module
    public let slot: UInt
    public let label: String
    public let manufacturer: String
    public let model: String
    public let serial: String
    public let flags: UInt
    /// The PIN lengths the token accepts, in bytes.
    public let minimumPINLength: Int
    public let maximumPINLength: Int

    init(module: Module, slot: UInt, info: CK_TOKEN_INFO) {
        self.module = module
        self.slot = slot
        label = paddedString(info.label)
        manufacturer = paddedString(info.manufacturerID)
        model = paddedString(info.model)
        serial = paddedString(info.serialNumber)
        flags = UInt(info.flags)
        minimumPINLength = Int(info.ulMinPinLen)
        maximumPINLength = Int(info.ulMaxPinLen)
    }

    public var isInitialized: Bool { flags & UInt(CKF_TOKEN_INITIALIZED) != 0 }
    public var isLoginRequired: Bool { flags & UInt(CKF_LOGIN_REQUIRED) != 0 }
    public var isWriteProtected: Bool { flags & UInt(CKF_WRITE_PROTECTED) != 0 }
    public var isUserPINLocked: Bool { flags & UInt(CKF_USER_PIN_LOCKED) != 0 }

    /// The token's PKCS#11 URI (RFC 7512), naming it by label, manufacturer, model and serial.
    public var uri: String {
        PKCS11URI(token: label, manufacturer: manufacturer, model: model, serial: serial).description
    }

    public var description: String { "token \"\(label)\" (serial \(serial))" }

    /// Opens a read-write session on this token.
    public func openSession() throws -> Session {
        try Session(token: self)
    }

    /// Returns the mechanisms this token supports.
    public func mechanisms() throws -> Set<UInt> {
        try module.mechanisms(inSlot: slot)
    }
}

/// A description of the token to use: any combination of label, serial, manufacturer and model,
/// usually taken from `--token` or a PKCS#11 URI.
public struct TokenSelector: Sendable, Equatable, CustomStringConvertible {
    public var label: String?
    public var serial: String?
    public var manufacturer: String?
    public var model: String?

    public init(label: String? = nil, serial: String? = nil, manufacturer: String? = nil, model: String? = nil) {
        self.label = label
        self.serial = serial
        self.manufacturer = manufacturer
        self.model = model
    }

    public func matches(_ token: Token) -> Bool {
        if let label, label != token.label { return false }
        if let serial, serial != token.serial { return false }
        if let manufacturer, manufacturer != token.manufacturer { return false }
        if let model, model != token.model { return false }
        return true
    }

    public var description: String {
        var parts: [String] = []
        if let label { parts.append("label \"\(label)\"") }
        if let serial { parts.append("serial \(serial)") }
        if let manufacturer { parts.append("manufacturer \"\(manufacturer)\"") }
        if let model { parts.append("model \"\(model)\"") }
        return parts.isEmpty ? "any token" : parts.joined(separator: ", ")
    }
}

extension Module {
    /// Finds the one initialised token that matches `selector`.
    ///
    /// Throws `tokenNotFound` when none or more than one matches, naming the tokens present.
    public func findToken(_ selector: TokenSelector) throws -> Token {
        var all = try tokens()
        var candidates = all.filter { $0.isInitialized && selector.matches($0) }
        // A token that another process is writing can be unreadable for a moment
        // (SoftHSM's file store), so look again a few times before giving up.
        var attempt = 1
        while candidates.isEmpty && attempt < 5 {
            usleep(UInt32(50_000 * attempt))
            attempt += 1
            all = try tokens()
            candidates = all.filter { $0.isInitialized && selector.matches($0) }
        }
        if candidates.count == 1 {
            return candidates[0]
        }
        let present = all.filter(\.isInitialized).map { "\"\($0.label)\" (serial \($0.serial))" }
        let presentText = present.isEmpty ? "none" : present.joined(separator: ", ")
        if candidates.isEmpty {
            throw PKCS11Error(
                kind: .tokenNotFound,
                context: "no token matches \(selector) in module \(path); tokens present: \(presentText); "
                    + "create one with 'tokentls token init --label LABEL' or pick another with --token")
        }
        throw PKCS11Error(
            kind: .tokenNotFound,
            context: "\(candidates.count) tokens match \(selector) in module \(path) (\(presentText)); "
                + "name one by label or serial with --token or a pkcs11: URI")
    }
}
