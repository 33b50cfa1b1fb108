import CP11Kit

/// A PKCS#11 URI (RFC 7512) that names a token and, optionally, an object on it.
///
/// Parsing goes through p11-kit. `pin-value` is rejected because a PIN in a URI
/// ends up in shell history and process lists; `pin-source` is kept for the caller.
public struct PKCS11URI: Sendable, Equatable, CustomStringConvertible {
    public enum ObjectClass: String, Sendable {
        case certificate = "cert"
        case privateKey = "private"
        case publicKey = "public"
        case secretKey = "secret-key"
        case data = "data"
    }

    public var token: String?
    public var manufacturer: String?
    public var model: String?
    public var serial: String?
    /// The object's `CKA_LABEL`.
    public var object: String?
    /// The object's `CKA_ID`.
    public var id: [UInt8]?
    public var type: ObjectClass?
    public var modulePath: String?
    public var pinSource: String?

    public init(
        token: String? = nil, manufacturer: String? = nil, model: String? = nil, serial: String? = nil,
        object: String? = nil, id: [UInt8]? = nil, type: ObjectClass? = nil
    ) {
        self.token = token
        self.manufacturer = manufacturer
        self.model = model
        self.serial = serial
        self.object = object
        self.id = id
        self.type = type
    }

    /// Parses `text`, which must start with `pkcs11:`.
    public init(parsing text: String) throws {
        guard text.lowercased().hasPrefix("pkcs11:") else {
            throw PKCS11Error(kind: .invalidURI, context: "invalid PKCS#11 URI \"\(text)\": it must start with \"pkcs11:\"")
        }
        guard let uri = p11_kit_uri_new() else {
            throw PKCS11Error(kind: .invalidURI, context: "p11_kit_uri_new failed: out of memory")
        }
        defer { p11_kit_uri_free(uri) }
        let code = p11_kit_uri_parse(text, P11_KIT_URI_FOR_ANY, uri)
        guard code == P11_KIT_URI_OK.rawValue else {
            let reason = p11_kit_uri_message(code).map { String(cString: $0) } ?? "code \(code)"
            throw PKCS11Error(kind: .invalidURI, context: "invalid PKCS#11 URI \"\(text)\": \(reason.lowercased())")
        }
        if p11_kit_uri_any_unrecognized(uri) != 0 {
            throw PKCS11Error(
                kind: .invalidURI,
                context:
                    "invalid PKCS#11 URI \"\(text)\": it contains an attribute TokenTLS does not know; check the spelling against RFC 7512"
            )
        }
        try PKCS11URI.checkType(text)
        if p11_kit_uri_get_pin_value(uri) != nil {
            throw PKCS11Error(
                kind: .invalidURI,
                context:
                    "PKCS#11 URIs with pin-value are not accepted: remove pin-value and give the PIN through TOKENTLS_PIN, --pin-file or the prompt"
            )
        }

        if let info = p11_kit_uri_get_token_info(uri) {
            token = try PKCS11URI.field(info.pointee.label, "token", in: text)
            manufacturer = try PKCS11URI.field(info.pointee.manufacturerID, "manufacturer", in: text)
            model = try PKCS11URI.field(info.pointee.model, "model", in: text)
            serial = try PKCS11URI.field(info.pointee.serialNumber, "serial", in: text)
        }
        if let label = p11_kit_uri_get_attribute(uri, CK_ATTRIBUTE_TYPE(CKA_LABEL)) {
            object = try PKCS11URI.utf8(PKCS11URI.bytes(label.pointee), "object", in: text)
        }
        if let identifier = p11_kit_uri_get_attribute(uri, CK_ATTRIBUTE_TYPE(CKA_ID)) {
            id = PKCS11URI.bytes(identifier.pointee)
        }
        if let objectClass = p11_kit_uri_get_attribute(uri, CK_ATTRIBUTE_TYPE(CKA_CLASS)) {
            switch ulongValue(PKCS11URI.bytes(objectClass.pointee)).map({ CK_OBJECT_CLASS($0) }) {
            case CK_OBJECT_CLASS(CKO_CERTIFICATE): type = .certificate
            case CK_OBJECT_CLASS(CKO_PRIVATE_KEY): type = .privateKey
            case CK_OBJECT_CLASS(CKO_PUBLIC_KEY): type = .publicKey
            case CK_OBJECT_CLASS(CKO_SECRET_KEY): type = .secretKey
            case CK_OBJECT_CLASS(CKO_DATA): type = .data
            default:
                throw PKCS11Error(kind: .invalidURI, context: "invalid PKCS#11 URI \"\(text)\": unsupported object type")
            }
        }
        modulePath = p11_kit_uri_get_module_path(uri).map { String(cString: $0) }
        pinSource = p11_kit_uri_get_pin_source(uri).map { String(cString: $0) }
    }

    /// Rejects a `type` value that p11-kit would skip silently.
    private static func checkType(_ text: String) throws {
        let path = text.dropFirst("pkcs11:".count).split(separator: "?", maxSplits: 1).first ?? ""
        for attribute in path.split(separator: ";") where attribute.lowercased().hasPrefix("type=") {
            let value = String(attribute.dropFirst("type=".count))
            guard ObjectClass(rawValue: value) != nil else {
                throw PKCS11Error(
                    kind: .invalidURI,
                    context:
                        "invalid PKCS#11 URI \"\(text)\": unknown object type \"\(value)\"; use cert, private, public, secret-key or data"
                )
            }
        }
    }

    /// The token part as a selector.
    public var tokenSelector: TokenSelector {
        TokenSelector(label: token, serial: serial, manufacturer: manufacturer, model: model)
    }

    /// The URI text, with every attribute that is set, percent-encoded as RFC 7512 requires.
    public var description: String {
        var parts: [String] = []
        if let token { parts.append("token=" + PKCS11URI.encode(Array(token.utf8))) }
        if let manufacturer { parts.append("manufacturer=" + PKCS11URI.encode(Array(manufacturer.utf8))) }
        if let model { parts.append("model=" + PKCS11URI.encode(Array(model.utf8))) }
        if let serial { parts.append("serial=" + PKCS11URI.encode(Array(serial.utf8))) }
        if let object { parts.append("object=" + PKCS11URI.encode(Array(object.utf8))) }
        if let id { parts.append("id=" + PKCS11URI.encode(id, everyByte: true)) }
        if let type { parts.append("type=" + type.rawValue) }
        var query: [String] = []
        if let modulePath { query.append("module-path=" + PKCS11URI.encode(Array(modulePath.utf8), inQuery: true)) }
        if let pinSource { query.append("pin-source=" + PKCS11URI.encode(Array(pinSource.utf8), inQuery: true)) }
        var text = "pkcs11:" + parts.joined(separator: ";")
        if !query.isEmpty {
            text += "?" + query.joined(separator: "&")
        }
        return text
    }

    /// Percent-encodes bytes for a path attribute; `everyByte` encodes all of them, as is usual for `id`.
    /// `inQuery` also encodes "&", which separates query attributes but may stand as is in the path.
    static func encode(_ bytes: [UInt8], everyByte: Bool = false, inQuery: Bool = false) -> String {
        var unreserved = Set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~:[]@!$'()*+,=&".utf8)
        if inQuery {
            unreserved.remove(UInt8(ascii: "&"))
        }
        var text = ""
        for byte in bytes {
            if !everyByte && unreserved.contains(byte) {
                text.append(Character(Unicode.Scalar(byte)))
            } else {
                text += "%" + (byte < 16 ? "0" : "") + String(byte, radix: 16)
            }
        }
        return text
    }

    /// Decodes a token-info field from p11-kit, which is all zero bytes when the URI
    /// left it out and blank-padded otherwise. Throws for invalid UTF-8.
    private static func field<T>(_ value: T, _ attribute: String, in text: String) throws -> String? {
        let bytes = withUnsafeBytes(of: value) { Array($0) }
        if bytes.allSatisfy({ $0 == 0 }) {
            return nil
        }
        _ = try utf8(bytes, attribute, in: text)
        return paddedString(value)
    }

    /// Decodes an attribute value that PKCS#11 defines as UTF-8 text (`CK_UTF8CHAR`).
    ///
    /// Invalid UTF-8 is rejected rather than replaced with U+FFFD: no conforming token
    /// has such a label, and the replaced text would make `description` name another
    /// value, which can even exceed the 32-byte token label field.
    private static func utf8(_ bytes: [UInt8], _ attribute: String, in text: String) throws -> String {
        guard let value = String(validating: bytes, as: UTF8.self) else {
            throw PKCS11Error(
                kind: .invalidURI,
                context:
                    "invalid PKCS#11 URI \"\(text)\": the \(attribute) value is not valid UTF-8: percent-encode the UTF-8 bytes of the label"
            )
        }
        return value
    }

    private static func bytes(_ attribute: CK_ATTRIBUTE) -> [UInt8] {
        guard let value = attribute.pValue, attribute.ulValueLen > 0, attribute.ulValueLen != CK_ULONG(bitPattern: -1) else {
            return []
        }
        return Array(UnsafeRawBufferPointer(start: value, count: Int(attribute.ulValueLen)))
    }
}
