import CP11Kit

/// An error from a PKCS#11 module or from loading one.
///
/// A call failure keeps the raw `CK_RV` (vendor codes included), the name of the
/// `C_` function that returned it and, where known, the token or object involved.
/// Two errors are equal when their kind and return value are equal.
public struct PKCS11Error: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// A `C_` function returned a value other than `CKR_OK`.
        case call
        /// The module file could not be loaded as a PKCS#11 module.
        case moduleLoad
        /// No token matched the requested label, serial or URI.
        case tokenNotFound
        /// A PKCS#11 URI could not be parsed or requests something unsupported.
        case invalidURI
        /// The module returned data that breaks the PKCS#11 contract.
        case protocolViolation
        /// A PIN was rejected before it reached the token: empty, too short or too long.
        case invalidPIN
        /// A token label cannot be stored as given.
        case invalidLabel
    }

    public let kind: Kind
    /// The raw return value; `CKR_OK` (0) for errors that are not call failures.
    public let returnValue: UInt
    /// The `C_` function that failed, or an empty string.
    public let function: String
    /// The token, object or file involved, for the operator to act on.
    public let context: String

    public init(kind: Kind, returnValue: UInt = 0, function: String = "", context: String = "") {
        self.kind = kind
        self.returnValue = returnValue
        self.function = function
        self.context = context
    }

    /// Creates the error for a failed call.
    public static func call(_ function: String, _ returnValue: UInt, context: String = "") -> PKCS11Error {
        PKCS11Error(kind: .call, returnValue: returnValue, function: function, context: context)
    }

    /// The symbolic name of the return value, such as `CKR_PIN_INCORRECT`, or
    /// `CKR_VENDOR_DEFINED+0x...` for vendor codes.
    public var returnValueName: String {
        PKCS11Error.name(ofReturnValue: returnValue)
    }

    public static func name(ofReturnValue value: UInt) -> String {
        if let name = returnValueNames[value] {
            return name
        }
        let vendorDefined: UInt = 0x8000_0000
        if value >= vendorDefined {
            return "CKR_VENDOR_DEFINED+0x" + String(value - vendorDefined, radix: 16)
        }
        return "unknown return value"
    }

    public var description: String {
        switch kind {
        case .call:
            let code = "\(returnValueName) (0x\(String(returnValue, radix: 16)))"
            let base = "\(function) failed: \(code)"
            return context.isEmpty ? base : "\(base) for \(context)"
        case .moduleLoad, .tokenNotFound, .invalidURI, .protocolViolation, .invalidPIN, .invalidLabel:
            return context
        }
    }

    /// Whether a read failed only because another process changed the token meanwhile:
    /// the object went away, or an attribute changed size between the two
    /// `C_GetAttributeValue` calls. Reading again can succeed.
    public static func isTransientRead(_ error: PKCS11Error) -> Bool {
        error.kind == .call
            && (error.returnValue == UInt(CKR_OBJECT_HANDLE_INVALID) || error.returnValue == UInt(CKR_BUFFER_TOO_SMALL))
    }

    public static func == (lhs: PKCS11Error, rhs: PKCS11Error) -> Bool {
        lhs.kind == rhs.kind && lhs.returnValue == rhs.returnValue
    }
}
